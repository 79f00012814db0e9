//! Worker lifecycle: the engine starts in each worker (never in the master or
//! cache processes) and stops, after a bounded drain, when the worker exits.
//! A timer on the nginx thread folds counters into the shared zone and carries
//! runtime error reports into the error log.

use std::cell::RefCell;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ngx::ffi::{
    NGX_OK, NGX_PROCESS_SINGLE, NGX_PROCESS_WORKER, ngx_add_timer, ngx_cycle_t, ngx_del_timer, ngx_event_t,
    ngx_int_t, ngx_open_file_t, ngx_process,
};

use super::conf::Registered;
use super::log;
use super::shm;
use crate::engine::Engine;
use crate::engine::copy::{FLUSH_AT, Selection};
use crate::engine::report::LineFile;
use crate::engine::zone::ZoneLink;

/// How long runtime threads get to stop once draining is over.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);
/// Counters reach the shared zone this often; error reports go out every fourth tick (1 s).
const TICK_MS: usize = 250;
const REPORT_EVERY: u32 = 4;

pub struct Worker {
    pub engine: Engine,
    pub select: Selection,
    pub zone: Option<ZoneLink>,
    /// `async_mirror_compare_log` files, as nginx opened them (it reopens them in place).
    compare_logs: Vec<(NonNull<ngx_open_file_t>, LineFile)>,
    /// `async_mirror_log` files.
    copy_logs: Vec<(NonNull<ngx_open_file_t>, LineFile)>,
    /// Capture targets' files, by URL, with the descriptor last handed to their writers.
    capture_files: Vec<(NonNull<ngx_open_file_t>, String, i32)>,
    drain_timeout: Duration,
    ticks: u32,
}

thread_local! {
    // Touched only on the nginx thread: request handlers, the timer, the process hooks.
    static WORKER: RefCell<Option<Worker>> = const { RefCell::new(None) };
}

static mut REPORT_TIMER: ngx_event_t = unsafe { std::mem::zeroed() };
static mut FLUSH_TIMER: ngx_event_t = unsafe { std::mem::zeroed() };

/// How long submitted copies may wait on the nginx thread to be handed over together.
const FLUSH_MS: usize = 1;

/// After copies were submitted: they are handed to their lanes at once when many wait,
/// otherwise by a timer within a millisecond, so that the copies of many requests share
/// one wake-up of the runtime.
pub fn handoff(engine: &Engine) {
    let n = engine.lanes().pending();
    if n == 0 {
        return;
    }
    if n >= FLUSH_AT {
        engine.lanes().flush();
        return;
    }
    // SAFETY: the static event is only used on the nginx thread.
    unsafe {
        let ev = &raw mut FLUSH_TIMER;
        if (*ev).timer_set() == 0 {
            (*ev).handler = Some(flush_timer_handler);
            (*ev).log = log::cycle_log();
            // A pending flush must not keep a gracefully exiting worker alive: it exits
            // after handing over what is pending anyway.
            (*ev).set_cancelable(1);
            ngx_add_timer(ev, FLUSH_MS as _);
        }
    }
}

unsafe extern "C" fn flush_timer_handler(_ev: *mut ngx_event_t) {
    let flushed = std::panic::catch_unwind(|| with_worker(|w| w.engine.lanes().flush()));
    if flushed.is_err() {
        log::alert("async_mirror: panic while handing copies over");
    }
}

/// Runs `f` with this worker's state, if a runtime is running.
pub fn with_worker<T: Default>(f: impl FnOnce(&mut Worker) -> T) -> T {
    WORKER.with_borrow_mut(|w| w.as_mut().map(f).unwrap_or_default())
}

/// Whether process `pid` still runs (a worker that was killed left its row in the zone).
fn alive(pid: u64) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Runtime threads must not take signals meant for the nginx worker.
fn block_signals() {
    // SAFETY: plain libc calls on a local, fully initialised signal set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

pub unsafe extern "C" fn init_process<M: Registered>(cycle: *mut ngx_cycle_t) -> ngx_int_t {
    let result = std::panic::catch_unwind(|| {
        // SAFETY: set by nginx before init_process; read-only here.
        let process = unsafe { ngx_process } as u32;
        if process != NGX_PROCESS_WORKER && process != NGX_PROCESS_SINGLE {
            return;
        }
        // SAFETY: nginx passes the new, valid cycle.
        let Some(mc) = M::main_conf(unsafe { &*cycle }) else { return };
        if mc.targets.is_empty() {
            return;
        }
        #[allow(unused_mut)] // set in test builds only
        let mut settings = mc.engine_settings();
        // Test builds: `resolve=` reads a `hosts` file under the prefix when there is one,
        // so tests can move a name between addresses.
        #[cfg(feature = "test-hooks")]
        {
            // SAFETY: nginx passes the new, valid cycle; read-only.
            let prefix = unsafe { (*cycle).conf_prefix };
            let dir = String::from_utf8_lossy(super::strings::str_bytes(&prefix)).into_owned();
            let hosts = std::path::Path::new(&dir).join("hosts");
            settings.client.hosts_file = hosts.exists().then_some(hosts);
        }
        match Engine::start(settings.clone(), &mc.targets, block_signals) {
            Ok(engine) => {
                log::notice(&format!(
                    "async_mirror: runtime started: targets={} threads={} queue_size={} queue_bytes={} \
                     max_connections={}",
                    mc.targets.len(),
                    settings.threads,
                    settings.queue_size,
                    settings.queue_bytes,
                    settings.client.max_connections,
                ));
                // SAFETY: the zone was initialised by the master before workers started.
                let table = mc.zone.and_then(|z| unsafe { shm::table(z.as_ptr()) });
                let zone = table.map(|t| ZoneLink::new(t, &engine, u64::from(std::process::id()), alive));
                let seed = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64)
                    ^ u64::from(std::process::id());
                let mut select = Selection::new(seed, &mc.rates);
                select.overrides = zone.as_ref().map(ZoneLink::overrides).unwrap_or_default();
                WORKER.set(Some(Worker {
                    engine,
                    select,
                    zone,
                    compare_logs: mc.compare_logs.iter().map(|l| (l.file, LineFile::default())).collect(),
                    copy_logs: mc.copy_logs.iter().map(|f| (*f, LineFile::default())).collect(),
                    capture_files: mc
                        .sinks
                        .iter()
                        .filter_map(|s| Some((s.file?, s.url.clone(), -1)))
                        .collect(),
                    drain_timeout: mc.drain_timeout(),
                    ticks: 0,
                }));
                with_worker(hand_files);
                start_report_timer();
            }
            // Production traffic goes on unmirrored rather than losing the worker.
            Err(e) => log::alert(&format!("async_mirror: runtime not started, mirroring disabled: {e}")),
        }
    });
    if result.is_err() {
        log::alert("async_mirror: panic in init_process, mirroring disabled");
    }
    NGX_OK as ngx_int_t
}

pub unsafe extern "C" fn exit_process(_cycle: *mut ngx_cycle_t) {
    let result = std::panic::catch_unwind(|| {
        let Some(mut w) = WORKER.take() else { return };
        // SAFETY: the timer events are only used on this thread.
        unsafe {
            for ev in [&raw mut REPORT_TIMER, &raw mut FLUSH_TIMER] {
                if (*ev).timer_set() != 0 {
                    ngx_del_timer(ev);
                }
            }
        }
        // nginx unloads this module right after exit_process, so both steps are bounded.
        w.engine.drain(w.drain_timeout);
        w.engine.shutdown(SHUTDOWN_GRACE);
        write_reports(&w.engine);
        write_logs(&w.engine, &mut w.compare_logs, &mut w.copy_logs);
        if let Some(zone) = w.zone.as_mut() {
            zone.fold(&w.engine, true);
        }
        for (_, spec, stats) in w.engine.targets() {
            log::notice(&format!(
                "async_mirror: worker exiting, target \"{}\": {}",
                spec.url,
                stats.summary()
            ));
        }
    });
    if result.is_err() {
        log::alert("async_mirror: panic in exit_process");
    }
}

fn start_report_timer() {
    // SAFETY: the static event is only used on the nginx thread; zeroed is a valid idle event.
    unsafe {
        let ev = &raw mut REPORT_TIMER;
        (*ev).handler = Some(report_timer_handler);
        (*ev).log = log::cycle_log();
        (*ev).data = std::ptr::null_mut();
        // A pending report timer must not keep a gracefully exiting worker alive.
        (*ev).set_cancelable(1);
        ngx_add_timer(ev, TICK_MS as _);
    }
}

unsafe extern "C" fn report_timer_handler(ev: *mut ngx_event_t) {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        with_worker(|w| {
            hand_files(w);
            write_logs(&w.engine, &mut w.compare_logs, &mut w.copy_logs);
            if let Some(zone) = w.zone.as_mut() {
                zone.fold(&w.engine, false);
                w.select.overrides = zone.overrides();
            }
            w.ticks = w.ticks.wrapping_add(1);
            if w.ticks % REPORT_EVERY == 0 {
                write_reports(&w.engine);
            }
        });
    }));
    if result.is_err() {
        log::alert("async_mirror: panic in report timer");
    }
    // SAFETY: ev is our static timer event, called on the nginx thread.
    unsafe { ngx_add_timer(ev, TICK_MS as _) };
}

/// Hands capture targets' writers their files as nginx opened them: at start, and after
/// `nginx -s reopen` gave a file a new descriptor. The writer gets its own duplicate, so
/// nginx closing the old one never cuts a write short.
fn hand_files(w: &mut Worker) {
    for (file, url, last) in &mut w.capture_files {
        // SAFETY: the open file belongs to the cycle; nginx changes its fd only on this thread.
        let fd = unsafe { file.as_ref().fd };
        if fd < 0 || fd == *last {
            continue;
        }
        // SAFETY: duplicating a descriptor nginx holds open.
        let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if copy < 0 {
            continue;
        }
        *last = fd;
        // SAFETY: `copy` is a fresh descriptor owned by nobody else.
        let owned = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(copy) };
        w.engine.hand_file(url, owned);
    }
}

/// Error reports from the runtime, at most one line per target per interval.
fn write_reports(engine: &Engine) {
    for r in engine.error_log().take() {
        let url = engine.spec(r.target).map_or("?", |s| s.url.as_str());
        let more = match r.suppressed {
            0 => String::new(),
            n => format!(", {n} similar errors suppressed"),
        };
        log::warn(&format!("async_mirror: {} while mirroring to \"{url}\"{more}", r.message));
    }
}

/// Writes the lines runtime threads (and handlers) left for nginx's files, whole lines
/// in one `write` per file (continued when short), as nginx's access log does from the
/// worker. A failed write loses those lines (counted), nothing else.
fn write_logs(
    engine: &Engine,
    compare_logs: &mut [(NonNull<ngx_open_file_t>, LineFile)],
    copy_logs: &mut [(NonNull<ngx_open_file_t>, LineFile)],
) {
    let mismatches = engine.mismatch_log();
    write_lines(mismatches.take(), compare_logs, &mismatches.counts.written, &mismatches.counts.failed);
    let copies = engine.copy_log();
    write_lines(copies.take(), copy_logs, &copies.written, &copies.lost);
}

fn write_lines(
    lines: Vec<(usize, String)>,
    files: &mut [(NonNull<ngx_open_file_t>, LineFile)],
    written: &AtomicU64,
    failed: &AtomicU64,
) {
    if lines.is_empty() {
        return;
    }
    for (i, (file, state)) in files.iter_mut().enumerate() {
        let mine = lines.iter().filter(|(l, _)| *l == i).map(|(_, line)| line.as_str());
        // SAFETY: the open file belongs to the cycle and lives as long as it; nginx only
        // changes its fd on reopen, on this same thread.
        let fd = unsafe { file.as_ref().fd };
        let (ok, lost) = state.write(mine, |buf| {
            // SAFETY: buf is a valid buffer of buf.len() bytes.
            let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
            usize::try_from(n).map_err(|_| std::io::Error::last_os_error())
        });
        written.fetch_add(ok, Ordering::Relaxed);
        failed.fetch_add(lost, Ordering::Relaxed);
    }
}
