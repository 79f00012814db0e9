//! Writing to nginx's error log; only ever called on the nginx thread.

use ngx::ffi::{NGX_LOG_ALERT, NGX_LOG_NOTICE, NGX_LOG_WARN, ngx_cycle, ngx_log_t};
use ngx::ngx_log_error;

/// The current cycle's log.
pub fn cycle_log() -> *mut ngx_log_t {
    // SAFETY: ngx_cycle is valid in any process once configuration is loaded.
    unsafe { (*ngx_cycle).log }
}

fn log(level: u32, msg: &str) {
    let log = cycle_log();
    ngx_log_error!(level, log, "{msg}");
}

pub fn alert(msg: &str) {
    log(NGX_LOG_ALERT, msg);
}

pub fn warn(msg: &str) {
    log(NGX_LOG_WARN, msg);
}

pub fn notice(msg: &str) {
    log(NGX_LOG_NOTICE, msg);
}
