//! Sending copies to one target over a small keepalive pool of HTTP/1.1 connections.
//!
//! The pool is hand-rolled on hyper's connection API instead of hyper-util's
//! legacy client because the connection cap must be exact: a copy holds a
//! semaphore permit from checkout until its connection is back in the idle
//! list (or closed), so no more than `max_connections` sockets to a target can
//! exist at once, and a dead target costs at most that many pending connects.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::Request;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;

use super::body::BodyRx;
use super::breaker::{Breaker, BreakerSettings};
use super::job::RequestHead;
use super::logq::LogQueue;
use super::outcome::{FailReason, Outcome, TargetStats};
use super::parse::{Dest, TargetSpec};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type CopyBody = BoxBody<Bytes, BoxError>;

/// Per-target connection settings (from the http-level directives).
#[derive(Debug, Clone, Copy)]
pub struct ClientSettings {
    pub keepalive_timeout: Duration,
    pub max_connections: usize,
}

/// Per-copy settings, from the location that made the copy.
#[derive(Debug, Clone, Copy)]
pub struct CopyOptions {
    pub connect_timeout: Duration,
    /// Whole exchange: sending the request to the last byte of the response.
    pub timeout: Duration,
    pub breaker: BreakerSettings,
}

struct Idle {
    /// For targets with variables: the host and port the connection goes to.
    key: Option<(String, u16)>,
    sender: SendRequest<CopyBody>,
    since: Instant,
}

pub struct Target {
    pub index: usize,
    pub spec: TargetSpec,
    pub stats: Arc<TargetStats>,
    pub permits: Arc<Semaphore>,
    pub breaker: Breaker,
    authority: String,
    settings: ClientSettings,
    idle: Mutex<Vec<Idle>>,
    log: Arc<LogQueue>,
}

impl Target {
    pub fn new(index: usize, spec: TargetSpec, settings: ClientSettings, log: Arc<LogQueue>) -> Target {
        Target {
            index,
            authority: spec.authority(),
            spec,
            stats: Arc::default(),
            permits: Arc::new(Semaphore::new(settings.max_connections)),
            breaker: Breaker::default(),
            settings,
            idle: Mutex::new(Vec::new()),
            log,
        }
    }

    /// Sends one copy, reads the whole response and feeds the result to the breaker;
    /// the caller holds a permit.
    pub async fn deliver(
        &self,
        head: &RequestHead,
        dest: Option<&Dest>,
        body: Option<BodyRx>,
        opts: CopyOptions,
        now_ms: impl Fn() -> u64,
    ) -> Outcome {
        let state = body.as_ref().map(|b| b.state.clone());
        let body = body.map_or_else(empty_body, BodyRx::boxed);
        let req = match dest {
            None => head.to_request(&self.spec.prefix, &self.authority, body),
            Some(d) if d.verbatim => head.to_request_at(Bytes::from(d.path.clone()), &d.authority, body),
            Some(d) => head.to_request(&d.path, &d.authority, body),
        };
        let result = self.send(req, dest, opts).await;
        // A body that ended early decides the outcome and says nothing about the mirror.
        if let Some(why) = state.and_then(|s| s.aborted()) {
            return why.outcome();
        }
        match result {
            Ok(outcome) => {
                self.breaker.success();
                outcome
            }
            Err(Failed(reason, detail)) => {
                let outcome = Outcome::Failed(reason);
                self.log.push(self.index, || format!("copy failed ({outcome}): {detail}"));
                if self.breaker.failure(now_ms(), opts.breaker) {
                    let t = opts.breaker.fail_timeout;
                    self.log.push(self.index, || {
                        format!("{} consecutive failures, target skipped for {t:?}", opts.breaker.max_fails)
                    });
                }
                outcome
            }
        }
    }

    async fn send(
        &self,
        mut req: Request<CopyBody>,
        dest: Option<&Dest>,
        opts: CopyOptions,
    ) -> Result<Outcome, Failed> {
        let key = dest.map(|d| (d.host.clone(), d.port));
        // The connect and exchange futures (TLS, hyper) are large; boxing them keeps the
        // task spawned per copy small, which tokio moves several times in its life.
        // A pooled connection the mirror closed meanwhile fails before anything is
        // sent; hyper then hands the request back and it goes out on a fresh connection.
        if let Some(sender) = self.checkout(&key) {
            match Box::pin(self.exchange(sender, &key, req, opts.timeout)).await {
                Err((Failure::Stale, Some(back))) => req = back,
                done => return self.settle(done.map_err(|(f, _)| f)),
            }
        }
        let sender = Box::pin(self.connect(dest, opts.connect_timeout)).await?;
        self.settle(Box::pin(self.exchange(sender, &key, req, opts.timeout)).await.map_err(|(f, _)| f))
    }

    fn settle(&self, r: Result<Outcome, Failure>) -> Result<Outcome, Failed> {
        r.map_err(|f| match f {
            Failure::Stale => Failed(FailReason::Reset, "connection closed by mirror".into()),
            Failure::Timeout => Failed(FailReason::Timeout, "mirror timed out".into()),
            Failure::Http(e) => Failed(FailReason::Reset, e.to_string()),
        })
    }

    fn checkout(&self, key: &Option<(String, u16)>) -> Option<SendRequest<CopyBody>> {
        let mut idle = self.idle.lock().ok()?;
        self.prune(&mut idle);
        let i = idle.iter().rposition(|i| i.key == *key && i.sender.is_ready())?;
        Some(idle.swap_remove(i).sender)
    }

    fn checkin(&self, key: &Option<(String, u16)>, sender: SendRequest<CopyBody>) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(Idle { key: key.clone(), sender, since: Instant::now() });
        }
    }

    /// Closes pooled connections idle longer than `async_mirror_keepalive_timeout`.
    pub fn sweep(&self) {
        if let Ok(mut idle) = self.idle.lock() {
            self.prune(&mut idle);
        }
    }

    /// Drops expired and closed connections (one clock read for the whole list).
    fn prune(&self, idle: &mut Vec<Idle>) {
        let (ttl, now) = (self.settings.keepalive_timeout, Instant::now());
        idle.retain(|i| now.saturating_duration_since(i.since) < ttl && !i.sender.is_closed());
    }

    async fn connect(&self, dest: Option<&Dest>, limit: Duration) -> Result<SendRequest<CopyBody>, Failed> {
        let started = Instant::now();
        let (addr, host) = match dest {
            None => (self.spec.addr, &self.spec.host),
            Some(d) => (resolve(d, limit).await?, &d.host),
        };
        let limit = limit.saturating_sub(started.elapsed());
        let stream = match timeout(limit, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return Err(Failed(FailReason::Connect, format!("connect() to {addr} failed: {e}")));
            }
            Err(_) => {
                return Err(Failed(
                    FailReason::Connect,
                    format!("connect() to {addr} timed out after {limit:?}"),
                ));
            }
        };
        self.stats.connections_opened.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        let http = match &self.spec.tls {
            None => http1_over(stream).await,
            Some(config) => {
                let name = ServerName::try_from(host.clone())
                    .map_err(|e| Failed(FailReason::Connect, format!("invalid TLS server name: {e}")))?;
                // The TLS handshake is part of connecting and shares its time limit.
                let tls = timeout(limit, TlsConnector::from(config.clone()).connect(name, stream)).await;
                match tls {
                    Ok(Ok(tls)) => http1_over(tls).await,
                    Ok(Err(e)) => {
                        return Err(Failed(
                            FailReason::Connect,
                            format!("TLS handshake with {addr} failed: {e}"),
                        ));
                    }
                    Err(_) => {
                        return Err(Failed(
                            FailReason::Connect,
                            format!("TLS handshake with {addr} timed out"),
                        ));
                    }
                }
            }
        };
        http.map_err(|e| Failed(FailReason::Connect, format!("handshake with {addr} failed: {e}")))
    }

    async fn exchange(
        &self,
        mut sender: SendRequest<CopyBody>,
        key: &Option<(String, u16)>,
        req: Request<CopyBody>,
        limit: Duration,
    ) -> Result<Outcome, (Failure, Option<Request<CopyBody>>)> {
        let work = async {
            let resp = sender.try_send_request(req).await.map_err(|mut e| {
                let back = e.take_message();
                let err = e.into_error();
                if err.is_canceled() { (Failure::Stale, back) } else { (Failure::Http(err), None) }
            })?;
            let outcome = Outcome::from_status(resp.status().as_u16());
            // Read to the end: only a fully read response leaves the connection reusable.
            let mut body = resp.into_body();
            while let Some(frame) = body.frame().await {
                frame.map_err(|e| (Failure::Http(e), None))?;
            }
            if sender.ready().await.is_ok() {
                self.checkin(key, sender);
            }
            Ok(outcome)
        };
        timeout(limit, work).await.unwrap_or(Err((Failure::Timeout, None)))
    }
}

/// The address of a per-request destination; names are looked up on the runtime
/// (never on the nginx thread), within the connect time limit.
async fn resolve(d: &Dest, limit: Duration) -> Result<std::net::SocketAddr, Failed> {
    if let Ok(ip) = d.host.parse::<std::net::IpAddr>() {
        return Ok((ip, d.port).into());
    }
    let host = d.host.clone();
    match timeout(limit, tokio::net::lookup_host((host.as_str(), d.port))).await {
        Ok(Ok(mut addrs)) => {
            addrs.next().ok_or_else(|| Failed(FailReason::Connect, format!("host \"{host}\" not found")))
        }
        Ok(Err(e)) => Err(Failed(FailReason::Connect, format!("host \"{host}\" not found: {e}"))),
        Err(_) => Err(Failed(FailReason::Connect, format!("resolving \"{host}\" timed out"))),
    }
}

/// An HTTP/1.1 client connection over any stream, its driver running on the runtime.
async fn http1_over<IO>(io: IO) -> Result<SendRequest<CopyBody>, hyper::Error>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, conn) = http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// A failed copy: why, and what to say in the error log.
pub struct Failed(FailReason, String);

enum Failure {
    Stale,
    Timeout,
    Http(hyper::Error),
}

fn empty_body() -> CopyBody {
    http_body_util::Empty::<Bytes>::new().map_err(|never| match never {}).boxed()
}
