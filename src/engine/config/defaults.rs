//! Every default of every directive, in one place; the configuration applies them only
//! when merging, exactly like core nginx directives.

use std::time::Duration;

pub const MARK_HEADER: &str = "X-Async-Mirror";
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// Per target and worker. Little's law: a mirror answering in 20 ms that takes
/// 5,000 copies/s from a worker needs 100 in flight over HTTP/1.1.
pub const MAX_CONNECTIONS: usize = 128;
pub const HTTP2: bool = false;
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);
pub const QUEUE_SIZE: usize = 4096;
pub const QUEUE_BYTES: usize = 32 << 20;
pub const THREADS: usize = 1;
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
pub const MAX_FAILS: u32 = 3;
pub const BODY: bool = true;
pub const BODY_MAX_SIZE: u64 = 1 << 20;
/// Bodies up to this size are sent once complete, so a slow upload holds no connection.
pub const BODY_BUFFER_SIZE: u64 = 64 << 10;
pub const FAIL_TIMEOUT: Duration = Duration::from_secs(10);
/// `resolve` without a time: how often a target's name is looked up again.
pub const RESOLVE: Duration = Duration::from_secs(30);
pub const COMPARE: bool = false;
pub const COMPARE_HEADERS: &[&str] = &["content-type"];
pub const COMPARE_MAX_BODY: u64 = 64 << 10;
/// Mismatch log lines per second per worker.
pub const COMPARE_LOG_RATE: u32 = 10;
/// Headers whose values capture records hide unless `async_mirror_scrub_header` says otherwise.
pub const CAPTURE_SCRUB: &[&str] =
    &["authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"];
