//! Configuration as nginx stores it: one main conf per `http{}`, one location
//! conf per level. Fields are `Option` while unset; defaults live in
//! `engine::config::defaults` and are applied only by merge/init, exactly like core
//! nginx directives.

use std::path::PathBuf;
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::Duration;

use ngx::ffi::{ngx_http_complex_value_t, ngx_open_file_t, ngx_shm_zone_t};
use ngx::http::{HttpModuleLocationConf, HttpModuleMainConf, Merge, MergeConfigError};

use crate::engine::EngineSettings;
use crate::engine::client::{
    ALPN_H2, ALPN_HTTP1, BreakerSettings, ClientSettings, CopyOptions, TlsSettings, client_config,
};
use crate::engine::compare::CompareSettings;
use crate::engine::config::{HttpVersion, PathKind, SinkSpec, TargetSpec, defaults};
use crate::engine::copy::{Location, Route};
use crate::engine::ids::{RateId, SpecId, Table, TargetId};
use crate::engine::record::RecordSettings;

/// The module as the glue needs to know it: whose configuration structs are these.
/// Handlers and setters are generic over it, so only the registration names the module.
pub trait Registered:
    HttpModuleMainConf<MainConf = MainConf> + HttpModuleLocationConf<LocationConf = LocConf> + 'static
{
}

/// Set once any location compares responses or holds copies for the primary's status:
/// until then the response filters return at once.
pub static RESPONSE_FILTERS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// One `async_mirror_compare_log` file, opened (and reopened) by nginx.
#[derive(Debug)]
pub struct CompareLog {
    pub file: NonNull<ngx_open_file_t>,
    pub rate: u32,
}

/// What makes two uses of a URL one target: the TLS settings (https only) and the
/// HTTP version.
type TargetKey = (String, Option<TlsSettings>, HttpVersion);

/// http-level settings and the registry of every target named anywhere in `http{}`.
#[derive(Debug, Default)]
pub struct MainConf {
    /// Every distinct URL written in an `async_mirror` line.
    pub specs: Table<SpecId, TargetSpec>,
    /// Targets as the engine runs them: a URL plus, for https, the TLS settings of the
    /// locations using it. Each has one pool and one set of counters per worker.
    pub targets: Table<TargetId, TargetSpec>,
    target_keys: Table<TargetId, TargetKey>,
    /// One client configuration per TLS settings and ALPN offer.
    tls_configs: Vec<((TlsSettings, bool), Arc<rustls::ClientConfig>)>,
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
    pub rates: Table<RateId, u32>,
    /// `async_mirror_compare_log` files; a location refers to one by index.
    pub compare_logs: Vec<CompareLog>,
    /// The `sample=` of every `async_mirror` line, by URL as written (for the API).
    pub samples: Vec<(String, u32)>,
    /// `async_mirror_log` files, opened (and reopened) by nginx.
    pub copy_logs: Vec<NonNull<ngx_open_file_t>>,
    /// Capture targets (`file:`, `kafka://`) by URL.
    pub sinks: Vec<SinkEntry>,
}

impl MainConf {
    /// The id of `spec` among the written URLs, adding it if new.
    ///
    /// # Errors
    /// The URL was written before with another `resolve=`.
    pub fn add_spec(&mut self, spec: TargetSpec) -> Result<SpecId, String> {
        match self.specs.position(|t| t.url == spec.url) {
            Some(id) if self.specs[id].resolve != spec.resolve => {
                Err(format!("\"{}\" is used with different resolve= settings", spec.url))
            }
            Some(id) if self.specs[id].allowed != spec.allowed => {
                Err(format!("\"{}\" is used with different hosts= lists", spec.url))
            }
            Some(id) => Ok(id),
            None => Ok(self.specs.push(spec)),
        }
    }

    /// The target for written URL `spec` under a location's TLS settings.
    ///
    /// # Errors
    /// TLS settings whose certificates cannot be loaded.
    pub fn resolve(&mut self, spec: SpecId, tls: &TlsSettings, v: HttpVersion) -> Result<TargetId, String> {
        let base = &self.specs[spec];
        // One capture target per URL, whatever the protocol its locations speak.
        let sink = self.sinks.iter().any(|s| s.url == base.url);
        let (http2, pipeline) = (v.0 && !sink, v.1.filter(|_| !sink));
        let key = (base.url.clone(), base.https.then(|| tls.clone()), (http2, pipeline));
        if let Some(id) = self.target_keys.position(|k| *k == key) {
            return Ok(id);
        }
        let mut target = base.clone();
        target.http2 = http2;
        // Pipelining needs one place for every copy: not a URL with variables.
        target.pipeline = pipeline.filter(|_| base.dest.is_some());
        if target.https {
            let which = (tls.clone(), http2);
            let config = match self.tls_configs.iter().find(|(k, _)| *k == which) {
                Some((_, c)) => c.clone(),
                None => {
                    let c = client_config(tls, if http2 { ALPN_H2 } else { ALPN_HTTP1 })?;
                    self.tls_configs.push((which, c.clone()));
                    c
                }
            };
            target.tls = Some(config);
        }
        let id = self.targets.push(target);
        self.target_keys.push(key);
        Ok(id)
    }

    pub fn engine_settings(&self) -> EngineSettings {
        EngineSettings {
            threads: self.threads.unwrap_or(defaults::THREADS),
            queue_size: self.queue_size.unwrap_or(defaults::QUEUE_SIZE),
            queue_bytes: self.queue_bytes.unwrap_or(defaults::QUEUE_BYTES),
            client: ClientSettings {
                max_connections: self.max_connections.unwrap_or(defaults::MAX_CONNECTIONS),
                keepalive_timeout: self.keepalive_timeout.unwrap_or(defaults::KEEPALIVE_TIMEOUT),
                hosts_file: None,
            },
            compare_logs: self.compare_logs.iter().map(|l| l.rate).collect(),
            sinks: self.sinks.iter().map(|s| (s.url.clone(), s.spec.clone())).collect(),
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
    pub spec: SpecId,
    /// Set when the location's configuration is merged (its TLS settings are final only then).
    pub target: Option<TargetId>,
    /// Fraction of requests copied, in parts per million.
    pub sample_ppm: u32,
    /// `key=`: consistent sampling on this value instead of random.
    pub key: Option<NonNull<ngx_http_complex_value_t>>,
    pub rate: Option<RateId>,
    /// A URL with variables, evaluated for each request.
    pub url: Option<NonNull<ngx_http_complex_value_t>>,
    /// With variables in the URL's path, the path replaces `$request_uri` (`Target`).
    pub path: PathKind,
    /// `baseline`: runs production's version; its differences are the noise floor.
    pub baseline: bool,
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
    pub body_buffer_size: Option<u64>,
    pub ssl_verify: Option<bool>,
    pub ssl_trusted_certificate: Option<PathBuf>,
    pub ssl_certificate: Option<PathBuf>,
    pub ssl_certificate_key: Option<PathBuf>,
    pub http_version: Option<HttpVersion>,
    pub compare: Option<bool>,
    /// Lowercase names.
    pub compare_headers: Option<Vec<String>>,
    /// Folded JSON paths.
    pub compare_ignore_json: Option<Vec<String>>,
    pub compare_max_body: Option<u64>,
    pub compare_key: Option<NonNull<ngx_http_complex_value_t>>,
    /// Index into [`MainConf::compare_logs`]; `Some(None)` is `off`.
    pub compare_log: Option<Option<usize>>,
    /// `async_mirror_primary_status`: inclusive status ranges.
    pub primary_status: Option<Vec<(u16, u16)>>,
    /// Built when the location is merged, if it compares.
    pub compare_settings: Option<Arc<CompareSettings>>,
    /// `async_mirror_api [write=on]` in this location: whether changes are allowed.
    pub api_write: Option<bool>,
    /// `async_mirror_log`; `Some(None)` is `off`.
    pub copy_log: Option<Option<CopyLogRef>>,
    /// `async_mirror_scrub_header`: header names whose values copies never carry;
    /// `Some(empty)` is `off`.
    pub scrub_headers: Option<Vec<String>>,
    /// The location serves `async_mirror_status` or `async_mirror_api`: operator
    /// traffic, never copied (it is not inherited).
    pub operator: bool,
    /// Built when the location is resolved, if it has capture targets.
    pub record: Option<Arc<RecordSettings>>,
}

/// One capture target, by the URL its lines name it with.
#[derive(Debug)]
pub struct SinkEntry {
    pub url: String,
    pub spec: SinkSpec,
    /// A file target's file as nginx opened it (and reopens it on `nginx -s reopen`).
    pub file: Option<NonNull<ngx_open_file_t>>,
}

/// One `async_mirror_log FILE [if=VALUE]` line.
#[derive(Debug, Clone, Copy)]
pub struct CopyLogRef {
    /// Index into [`MainConf::copy_logs`].
    pub index: usize,
    pub cond: Option<NonNull<ngx_http_complex_value_t>>,
}

impl MirrorRef {
    /// `None` until the location's configuration is merged.
    pub fn route(&self) -> Option<Route> {
        Some(Route {
            target: self.target?,
            sample_ppm: self.sample_ppm,
            keyed: self.key.is_some(),
            template: self.url.map(|_| self.path),
            rate: self.rate,
            baseline: self.baseline,
        })
    }
}

impl LocConf {
    /// # Errors
    /// A certificate without its key or a key without its certificate.
    pub fn tls_settings(&self) -> Result<TlsSettings, String> {
        let client_cert = match (&self.ssl_certificate, &self.ssl_certificate_key) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
            (None, None) => None,
            (Some(c), None) => {
                return Err(format!("no async_mirror_ssl_certificate_key for \"{}\"", c.display()));
            }
            (None, Some(k)) => {
                return Err(format!("no async_mirror_ssl_certificate for \"{}\"", k.display()));
            }
        };
        Ok(TlsSettings {
            verify: self.ssl_verify.unwrap_or(true),
            trusted: self.ssl_trusted_certificate.clone(),
            client_cert,
        })
    }

    /// Points every `async_mirror` line at its target under this location's TLS settings.
    ///
    /// # Errors
    /// As [`MainConf::resolve`].
    pub fn resolve_targets(&mut self, mc: &mut MainConf) -> Result<(), String> {
        let tls = self.tls_settings()?;
        let version = self.http_version.unwrap_or((defaults::HTTP2, None));
        for m in self.mirrors.iter_mut().flatten() {
            m.target = Some(mc.resolve(m.spec, &tls, version)?);
        }
        Ok(())
    }

    pub fn body(&self) -> bool {
        self.body.unwrap_or(defaults::BODY)
    }

    pub fn body_max_size(&self) -> u64 {
        self.body_max_size.unwrap_or(defaults::BODY_MAX_SIZE)
    }

    pub fn mirrors(&self) -> &[MirrorRef] {
        self.mirrors.as_deref().unwrap_or(&[])
    }

    /// This level's lines as the engine routes copies, each with its place in the list.
    pub fn routes(&self) -> impl Iterator<Item = (usize, Route)> + Clone + '_ {
        self.mirrors().iter().enumerate().filter_map(|(i, m)| Some((i, m.route()?)))
    }

    /// What the engine needs of this location for a request's copies; `log` is the copy
    /// log this request writes to, if any.
    pub fn location(&self, log: Option<usize>) -> Location<'_> {
        Location {
            opts: self.copy_options(),
            body: self.body(),
            body_max_size: self.body_max_size(),
            body_buffer_size: self.body_buffer_size.unwrap_or(defaults::BODY_BUFFER_SIZE),
            held: self.primary_status.as_deref(),
            compare: self.compare_settings.as_ref(),
            record: self.record.as_ref(),
            log,
        }
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
        self.body_buffer_size = self.body_buffer_size.or(prev.body_buffer_size);
        self.ssl_verify = self.ssl_verify.or(prev.ssl_verify);
        self.http_version = self.http_version.or(prev.http_version);
        if self.ssl_trusted_certificate.is_none() {
            self.ssl_trusted_certificate = prev.ssl_trusted_certificate.clone();
        }
        // The pair is inherited together, as proxy_ssl_certificate/_key are set together.
        if self.ssl_certificate.is_none() && self.ssl_certificate_key.is_none() {
            self.ssl_certificate = prev.ssl_certificate.clone();
            self.ssl_certificate_key = prev.ssl_certificate_key.clone();
        }
        self.compare = self.compare.or(prev.compare);
        if self.compare_headers.is_none() {
            self.compare_headers = prev.compare_headers.clone();
        }
        if self.compare_ignore_json.is_none() {
            self.compare_ignore_json = prev.compare_ignore_json.clone();
        }
        self.compare_max_body = self.compare_max_body.or(prev.compare_max_body);
        self.compare_key = self.compare_key.or(prev.compare_key);
        self.compare_log = self.compare_log.or(prev.compare_log);
        self.copy_log = self.copy_log.or(prev.copy_log);
        if self.primary_status.is_none() {
            self.primary_status = prev.primary_status.clone();
        }
        if self.scrub_headers.is_none() {
            self.scrub_headers = prev.scrub_headers.clone();
        }
        Ok(())
    }
}
