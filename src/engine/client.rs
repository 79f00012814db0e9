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
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::timeout;

use super::breaker::{Breaker, BreakerSettings};
use super::job::RequestHead;
use super::logq::LogQueue;
use super::outcome::{FailReason, Outcome, TargetStats};
use super::parse::TargetSpec;

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
    pub async fn deliver(&self, head: &RequestHead, opts: CopyOptions, now_ms: impl Fn() -> u64) -> Outcome {
        let outcome = self.exchange_once(head, opts).await;
        match outcome {
            Outcome::Failed(_) => {
                if self.breaker.failure(now_ms(), opts.breaker) {
                    let t = opts.breaker.fail_timeout;
                    self.log.push(self.index, || {
                        format!("{} consecutive failures, target skipped for {t:?}", opts.breaker.max_fails)
                    });
                }
            }
            _ => self.breaker.success(),
        }
        outcome
    }

    async fn exchange_once(&self, head: &RequestHead, limits: CopyOptions) -> Outcome {
        // A pooled connection the mirror closed meanwhile fails before anything is
        // sent; that one case is retried once on a fresh connection.
        if let Some(sender) = self.checkout() {
            match self.exchange(sender, head, limits.timeout).await {
                Err(Failure::Stale) => {}
                done => return self.settle(done),
            }
        }
        let sender = match self.connect(limits.connect_timeout).await {
            Ok(s) => s,
            Err(o) => return o,
        };
        self.settle(self.exchange(sender, head, limits.timeout).await)
    }

    fn settle(&self, r: Result<Outcome, Failure>) -> Outcome {
        match r {
            Ok(o) => o,
            Err(Failure::Stale) => self.fail(FailReason::Reset, "connection closed by mirror".into()),
            Err(Failure::Timeout) => self.fail(FailReason::Timeout, "mirror timed out".into()),
            Err(Failure::Http(e)) => self.fail(FailReason::Reset, e.to_string()),
        }
    }

    fn fail(&self, reason: FailReason, detail: String) -> Outcome {
        let outcome = Outcome::Failed(reason);
        self.log.push(self.index, || format!("copy failed ({outcome}): {detail}"));
        outcome
    }

    fn checkout(&self) -> Option<SendRequest<CopyBody>> {
        let mut idle = self.idle.lock().ok()?;
        while let Some(Idle { sender, since }) = idle.pop() {
            if since.elapsed() < self.settings.keepalive_timeout && sender.is_ready() {
                return Some(sender);
            }
        }
        None
    }

    fn checkin(&self, sender: SendRequest<CopyBody>) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(Idle { sender, since: Instant::now() });
        }
    }

    /// Closes pooled connections idle longer than `async_mirror_keepalive_timeout`.
    pub fn sweep(&self) {
        if let Ok(mut idle) = self.idle.lock() {
            let ttl = self.settings.keepalive_timeout;
            idle.retain(|i| i.since.elapsed() < ttl && !i.sender.is_closed());
        }
    }

    async fn connect(&self, limit: Duration) -> Result<SendRequest<CopyBody>, Outcome> {
        let addr = self.spec.addr;
        let stream = match timeout(limit, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return Err(self.fail(FailReason::Connect, format!("connect() to {addr} failed: {e}")));
            }
            Err(_) => {
                return Err(
                    self.fail(FailReason::Connect, format!("connect() to {addr} timed out after {limit:?}"))
                );
            }
        };
        self.stats.connections_opened.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        let (sender, conn) = match http1::handshake(TokioIo::new(stream)).await {
            Ok(pair) => pair,
            Err(e) => {
                return Err(self.fail(FailReason::Connect, format!("handshake with {addr} failed: {e}")));
            }
        };
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    async fn exchange(
        &self,
        mut sender: SendRequest<CopyBody>,
        head: &RequestHead,
        limit: Duration,
    ) -> Result<Outcome, Failure> {
        let req = head.to_request(&self.spec.prefix, &self.authority, empty_body());
        let work = async {
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| if e.is_canceled() { Failure::Stale } else { Failure::Http(e) })?;
            let outcome = Outcome::from_status(resp.status().as_u16());
            // Read to the end: only a fully read response leaves the connection reusable.
            let mut body = resp.into_body();
            while let Some(frame) = body.frame().await {
                frame.map_err(Failure::Http)?;
            }
            if sender.ready().await.is_ok() {
                self.checkin(sender);
            }
            Ok(outcome)
        };
        timeout(limit, work).await.unwrap_or(Err(Failure::Timeout))
    }
}

enum Failure {
    Stale,
    Timeout,
    Http(hyper::Error),
}

fn empty_body() -> CopyBody {
    http_body_util::Empty::<Bytes>::new().map_err(|never| match never {}).boxed()
}
