//! Configuration as nginx stores it: one main conf per `http{}`, one location
//! conf per level. Fields are `Option` while unset; defaults live in [`defaults`]
//! and are applied only by merge/init, exactly like core nginx directives.

use std::time::Duration;

use std::ptr::NonNull;

use ngx::ffi::{ngx_http_complex_value_t, ngx_shm_zone_t};
use ngx::http::{Merge, MergeConfigError};

use crate::engine::{BreakerSettings, ClientSettings, CopyOptions, EngineSettings, TargetSpec};

pub mod defaults {
    use std::time::Duration;

    pub const MARK_HEADER: &str = "X-Async-Mirror";
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
    pub const TIMEOUT: Duration = Duration::from_secs(5);
    pub const MAX_CONNECTIONS: usize = 32;
    pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);
    pub const QUEUE_SIZE: usize = 4096;
    pub const QUEUE_BYTES: usize = 32 << 20;
    pub const THREADS: usize = 1;
    pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
    pub const MAX_FAILS: u32 = 3;
    pub const BODY: bool = true;
    pub const BODY_MAX_SIZE: u64 = 1 << 20;
    pub const FAIL_TIMEOUT: Duration = Duration::from_secs(10);
}

/// http-level settings and the registry of every target named anywhere in `http{}`.
#[derive(Debug, Default)]
pub struct MainConf {
    /// Distinct targets by URL; location confs refer to them by index, so each
    /// target has one pool and one set of counters per worker.
    pub targets: Vec<TargetSpec>,
    pub max_connections: Option<usize>,
    pub keepalive_timeout: Option<Duration>,
    pub queue_size: Option<usize>,
    pub queue_bytes: Option<usize>,
    pub threads: Option<usize>,
    pub drain_timeout: Option<Duration>,
    /// `async_mirror_zone`: counters summed over workers.
    pub zone: Option<NonNull<ngx_shm_zone_t>>,
    /// One token bucket per `rate=` parameter (copies per second), shared by every
    /// location that inherits that `async_mirror` line.
    pub rates: Vec<u32>,
}

impl MainConf {
    /// Index of `spec` in the registry, adding it if new.
    pub fn register(&mut self, spec: TargetSpec) -> usize {
        match self.targets.iter().position(|t| t.url == spec.url) {
            Some(i) => i,
            None => {
                self.targets.push(spec);
                self.targets.len() - 1
            }
        }
    }

    pub fn engine_settings(&self) -> EngineSettings {
        EngineSettings {
            threads: self.threads.unwrap_or(defaults::THREADS),
            queue_size: self.queue_size.unwrap_or(defaults::QUEUE_SIZE),
            queue_bytes: self.queue_bytes.unwrap_or(defaults::QUEUE_BYTES),
            client: ClientSettings {
                max_connections: self.max_connections.unwrap_or(defaults::MAX_CONNECTIONS),
                keepalive_timeout: self.keepalive_timeout.unwrap_or(defaults::KEEPALIVE_TIMEOUT),
            },
        }
    }

    pub fn drain_timeout(&self) -> Duration {
        self.drain_timeout.unwrap_or(defaults::DRAIN_TIMEOUT)
    }
}

/// `async_mirror_set_header NAME VALUE`; the value may hold variables.
#[derive(Debug)]
pub struct SetHeader {
    pub name: String,
    pub value: *mut ngx_http_complex_value_t,
}

/// One `async_mirror URL [sample=] [key=] [rate=]` line.
#[derive(Debug, Clone, Copy)]
pub struct MirrorRef {
    /// Index into `MainConf::targets`.
    pub target: usize,
    /// Fraction of requests copied, in parts per million.
    pub sample_ppm: u32,
    /// `key=`: consistent sampling on this value instead of random.
    pub key: Option<NonNull<ngx_http_complex_value_t>>,
    /// Index into `MainConf::rates`.
    pub rate: Option<usize>,
}

#[derive(Debug, Default)]
pub struct LocConf {
    /// `Some(empty)` is `async_mirror off`.
    pub mirrors: Option<Vec<MirrorRef>>,
    pub set_headers: Option<Vec<SetHeader>>,
    pub conditions: Option<Vec<*mut ngx_http_complex_value_t>>,
    /// `Some(None)` is `async_mirror_mark_header off`.
    pub mark_header: Option<Option<String>>,
    pub connect_timeout: Option<Duration>,
    pub timeout: Option<Duration>,
    pub max_fails: Option<u32>,
    pub fail_timeout: Option<Duration>,
    pub body: Option<bool>,
    pub body_max_size: Option<u64>,
}

impl LocConf {
    pub fn body(&self) -> bool {
        self.body.unwrap_or(defaults::BODY)
    }

    pub fn body_max_size(&self) -> u64 {
        self.body_max_size.unwrap_or(defaults::BODY_MAX_SIZE)
    }

    pub fn mirrors(&self) -> &[MirrorRef] {
        self.mirrors.as_deref().unwrap_or(&[])
    }

    pub fn mark_header(&self) -> Option<&str> {
        self.mark_header.as_ref().map_or(Some(defaults::MARK_HEADER), |m| m.as_deref())
    }

    pub fn copy_options(&self) -> CopyOptions {
        CopyOptions {
            connect_timeout: self.connect_timeout.unwrap_or(defaults::CONNECT_TIMEOUT),
            timeout: self.timeout.unwrap_or(defaults::TIMEOUT),
            breaker: BreakerSettings {
                max_fails: self.max_fails.unwrap_or(defaults::MAX_FAILS),
                fail_timeout: self.fail_timeout.unwrap_or(defaults::FAIL_TIMEOUT),
            },
        }
    }
}

fn inherit<T>(this: &mut Option<Vec<T>>, prev: &Option<Vec<T>>)
where
    T: Copy,
{
    if this.is_none() {
        *this = prev.clone();
    }
}

impl Merge for LocConf {
    /// A level that sets any value of a list directive replaces the inherited
    /// list, as with `proxy_set_header`; scalars inherit when unset.
    fn merge(&mut self, prev: &LocConf) -> Result<(), MergeConfigError> {
        inherit(&mut self.mirrors, &prev.mirrors);
        inherit(&mut self.conditions, &prev.conditions);
        if self.set_headers.is_none() {
            self.set_headers = prev
                .set_headers
                .as_ref()
                .map(|v| v.iter().map(|h| SetHeader { name: h.name.clone(), value: h.value }).collect());
        }
        if self.mark_header.is_none() {
            self.mark_header = prev.mark_header.clone();
        }
        self.connect_timeout = self.connect_timeout.or(prev.connect_timeout);
        self.timeout = self.timeout.or(prev.timeout);
        self.max_fails = self.max_fails.or(prev.max_fails);
        self.fail_timeout = self.fail_timeout.or(prev.fail_timeout);
        self.body = self.body.or(prev.body);
        self.body_max_size = self.body_max_size.or(prev.body_max_size);
        Ok(())
    }
}
