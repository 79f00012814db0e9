//! One target as a worker runs it: its spec, counters, breaker, limits and pools,
//! and the delivery of one copy over them.
//!
//! Capacity: a copy in flight takes a connection (HTTP/1.1) or a stream (HTTP/2).
//! When none is free and fewer than `async_mirror_max_connections` exist, another
//! connection is opened, at most [`CONNECTS_IN_PROGRESS`] at a time (one at a time
//! over HTTP/2, whose connections carry many streams), so a dead target costs that
//! many pending connects until its breaker opens. Copies that find nothing free wait
//! for a connection or a stream to come back, within their `async_mirror_timeout`.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::body::{self, CopyBody};
use super::breaker::Breaker;
use super::connect::{self, Alpn};
use super::copy::{Copy, CopyOptions};
use super::http1::{self, ExchangeError};
use super::http2;
use super::ids::TargetId;
use super::logq::LogQueue;
use super::outcome::{DropReason, FailReason, Failure, Outcome, TargetStats};
use super::parse::{Dest, TargetSpec};
use super::pool::{CONNECTS_IN_PROGRESS, Checkout, Key, Limits, Pool, Pooled, Slot};
use super::resolve::Resolver;
use super::response::MirrorResponse;
use super::verdict::VerdictStats;

/// Per-target connection settings (from the http-level directives).
#[derive(Debug, Clone)]
pub struct ClientSettings {
    pub keepalive_timeout: Duration,
    pub max_connections: usize,
    /// `resolve=` looks names up in this hosts-format file instead of the system
    /// resolver (set by test builds only).
    pub hosts_file: Option<std::path::PathBuf>,
}

pub struct Target {
    pub id: TargetId,
    pub spec: TargetSpec,
    pub stats: Arc<TargetStats>,
    pub breaker: Arc<Breaker>,
    /// Comparison verdicts, by endpoint and field.
    pub verdicts: VerdictStats,
    /// Copies in flight; a copy waits for a permit in the backlog.
    pub inflight: Arc<Semaphore>,
    max_connections: usize,
    limits: Arc<Limits>,
    h1: Pool<http1::Conn>,
    h2: Option<http2::Pool>,
    /// An `https://` target asked for HTTP/2 whose server chose HTTP/1.1 in ALPN.
    h1_only: AtomicBool,
    log: Arc<LogQueue>,
    /// `resolve=`: the name's current addresses.
    pub resolver: Option<Arc<Resolver>>,
}

/// A registration for the target's next "a connection or stream may be free".
type Waiter<'a> = Pin<Box<tokio::sync::futures::Notified<'a>>>;

/// How a copy's delivery ended without a response.
enum Miss {
    Failed(Failure),
    /// The breaker opened while the copy waited for a connection.
    BreakerOpen,
}

impl From<Failure> for Miss {
    fn from(f: Failure) -> Miss {
        Miss::Failed(f)
    }
}

/// What a delivery needs besides the request.
struct Job<'a> {
    dest: &'a Dest,
    key: Key,
    opts: CopyOptions,
    probe: bool,
    deadline: Instant,
    /// Response body bytes to keep (for comparison).
    keep: usize,
    /// `resolve=`: the address picked for this copy.
    at: Option<std::net::SocketAddr>,
}

impl Target {
    pub fn new(id: TargetId, spec: TargetSpec, settings: &ClientSettings, log: Arc<LogQueue>) -> Target {
        let max = settings.max_connections;
        let resolver = match (&spec.dest, spec.resolve) {
            (Some(d), Some(every)) if d.addr.is_none() => {
                Some(Arc::new(Resolver::new(&d.url.host, d.url.port, every, settings.hosts_file.clone())))
            }
            _ => None,
        };
        let (limits, inflight, h2) = if spec.http2 {
            let limits = Limits::new(max, 1);
            let pool = http2::Pool::new(limits.clone(), settings.keepalive_timeout);
            (limits, max.saturating_mul(http2::MAX_STREAMS), Some(pool))
        } else {
            (Limits::new(max, CONNECTS_IN_PROGRESS), max, None)
        };
        Target {
            id,
            spec,
            stats: Arc::default(),
            breaker: Arc::default(),
            verdicts: VerdictStats::default(),
            inflight: Arc::new(Semaphore::new(inflight)),
            max_connections: max,
            h1: Pool::new(limits.clone(), settings.keepalive_timeout),
            h2,
            h1_only: AtomicBool::new(false),
            resolver,
            limits,
            log,
        }
    }

    /// Closes idle connections past their keepalive timeout, or to an address the
    /// target's name no longer resolves to.
    pub fn sweep(&self) {
        let keep = |key: &Key| self.resolver.as_ref().is_none_or(|r| r.keeps(key));
        self.h1.sweep(keep);
        if let Some(h2) = &self.h2 {
            h2.sweep(keep);
        }
    }

    /// Over HTTP/2, waits (in the backlog) until a copy would find a stream or room for
    /// a connection; a copy in flight that waits for a stream holds far more memory than
    /// one in the queue. Over HTTP/1.1 the in-flight permit is the whole limit.
    pub async fn wait_for_room(&self) {
        let Some(pool) = &self.h2 else { return };
        let max_connections = self.max_connections;
        let mut waiter: Option<Waiter<'_>> = None;
        loop {
            let inflight = self.stats.inflight.load(Ordering::Relaxed).max(0) as usize;
            if self.h1_only.load(Ordering::Relaxed) || inflight < pool.budget(max_connections) {
                return;
            }
            match waiter.take() {
                None => waiter = Some(self.arm()),
                Some(mut n) => {
                    let _ = tokio::time::timeout(Duration::from_millis(10), n.as_mut()).await;
                }
            }
        }
    }

    /// Registers for the next wake-up. A copy registers only when it is about to wait, and
    /// looks again before it does, so a wake-up is neither missed nor taken by a copy
    /// that is busy with its exchange.
    fn arm(&self) -> Waiter<'_> {
        let mut n = Box::pin(self.limits.notify.notified());
        n.as_mut().enable();
        n
    }

    /// Connections open now, over every protocol.
    pub fn connections(&self) -> usize {
        self.limits.open()
    }

    /// Sends one departed copy, reads the whole response (keeping `keep` body bytes),
    /// tells the breaker and returns the copy's outcome and, when the mirror answered,
    /// its response (the caller holds an in-flight permit).
    pub async fn deliver(
        &self,
        copy: &mut Copy,
        keep: usize,
        now_ms: impl Fn() -> u64,
    ) -> (Outcome, Option<MirrorResponse>) {
        let state = copy.body.as_ref().map(|b| b.state.clone());
        let body = copy.body.take().map_or_else(body::empty, body::BodyRx::boxed);
        let opts = copy.opts;
        let (dest, key) = match (copy.dest.as_ref(), self.spec.dest.as_ref()) {
            (Some(d), _) => (d, Some((d.url.host.clone(), d.url.port))),
            (None, Some(d)) => (d, None),
            (None, None) => return (Outcome::Failed(FailReason::Connect), None),
        };
        // `resolve=`: one of the name's current addresses, round-robin; connections are
        // pooled per address.
        let (at, key) = match &self.resolver {
            None => (None, key),
            Some(r) => match r.pick() {
                Some(a) => (Some(a), Some((a.ip().to_string(), a.port()))),
                None => {
                    let host = &r.host;
                    self.log.push(self.id, || {
                        format!("copy failed (failed_connect): \"{host}\" has not resolved")
                    });
                    return (Outcome::Failed(FailReason::Connect), None);
                }
            },
        };
        let deadline = Instant::now() + opts.timeout;
        let job = Job { dest, key, opts, probe: copy.is_probe(), deadline, keep, at };
        let result = if self.h2.is_some() && !self.h1_only.load(Ordering::Relaxed) {
            // Without a body, a stream the server did not process can be sent again.
            let again = state.is_none().then(|| copy.head.clone());
            self.send_h2(copy.head.to_h2_request(dest, body), &job, again, &now_ms).await
        } else {
            self.send_h1(copy.head.to_request(dest, body), &job, &now_ms).await
        };
        // A body that ended early decides the outcome and says nothing about the mirror.
        if let Some(why) = state.and_then(|s| s.aborted()) {
            return (why.outcome(), None);
        }
        let resp = match result {
            Ok(resp) => {
                self.breaker.success();
                return (resp.outcome(), Some(resp));
            }
            Err(e) => e,
        };
        let outcome = match resp {
            Miss::BreakerOpen => Outcome::Dropped(DropReason::BreakerOpen),
            Miss::Failed(Failure { reason, detail }) => {
                let outcome = Outcome::Failed(reason);
                self.log.push(self.id, || format!("copy failed ({outcome}): {detail}"));
                if self.breaker.failure(now_ms(), opts.breaker) {
                    let (n, t) = (opts.breaker.max_fails, opts.breaker.fail_timeout);
                    self.log.push(self.id, || format!("{n} consecutive failures, target skipped for {t:?}"));
                    // Copies waiting for a connection give up now.
                    self.limits.notify.notify_waiters();
                }
                outcome
            }
        };
        (outcome, None)
    }

    /// Waits until a connection or stream may be free; `Err` when the copy should stop.
    async fn wait(
        &self,
        notified: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>,
        job: &Job<'_>,
        now_ms: &impl Fn() -> u64,
    ) -> Result<(), Miss> {
        if !job.probe && job.opts.breaker.max_fails > 0 && self.breaker.still_open(now_ms()) {
            return Err(Miss::BreakerOpen);
        }
        let left = job.deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, notified).await {
            Ok(()) => Ok(()),
            Err(_) => Err(Miss::Failed(Failure::new(
                FailReason::Timeout,
                "no connection to the mirror became free in time",
            ))),
        }
    }

    async fn send_h1(
        &self,
        mut req: http::Request<CopyBody>,
        job: &Job<'_>,
        now_ms: &impl Fn() -> u64,
    ) -> Result<MirrorResponse, Miss> {
        // After a pooled connection turned out closed, the copy goes out on a fresh one.
        let mut fresh_only = false;
        let mut waiter: Option<Waiter<'_>> = None;
        loop {
            // Leave to connect first: a place for a connection is only taken to use it.
            let permit = self.limits.try_connect();
            match self.h1.checkout(&job.key, permit.is_some()) {
                Checkout::Idle(conn) if !fresh_only => {
                    drop(permit);
                    // A pooled connection the mirror closed meanwhile fails before anything is
                    // sent; hyper hands the request back.
                    match Box::pin(self.exchange_h1(conn, req, job, true)).await {
                        Err(ExchangeError::Stale(back)) => {
                            req = *back;
                            fresh_only = true;
                            continue;
                        }
                        done => return settle(done).map_err(Miss::from),
                    }
                }
                Checkout::Idle(stale_risk) => {
                    drop(stale_risk);
                    continue;
                }
                Checkout::Room(slot) => {
                    let conn = self.connect_h1(job, slot).await;
                    drop(permit);
                    self.limits.notify.notify_waiters();
                    return settle(Box::pin(self.exchange_h1(conn?, req, job, false)).await)
                        .map_err(Miss::from);
                }
                Checkout::Full => drop(permit),
            }
            match waiter.take() {
                None => waiter = Some(self.arm()),
                Some(mut n) => self.wait(n.as_mut(), job, now_ms).await?,
            }
        }
    }

    async fn connect_h1(&self, job: &Job<'_>, slot: Slot) -> Result<Pooled<http1::Conn>, Failure> {
        let (io, _) =
            Box::pin(connect::connect(job.dest, job.at, self.spec.tls.as_ref(), job.opts.connect_timeout))
                .await?;
        self.stats.connections_opened.fetch_add(1, Ordering::Relaxed);
        let conn = http1::handshake(io).await.map_err(|e| {
            Failure::new(FailReason::Connect, format!("handshake with {} failed: {e}", job.dest.authority))
        })?;
        Ok(Pool::attach(conn, job.key.clone(), slot))
    }

    async fn exchange_h1(
        &self,
        mut conn: Pooled<http1::Conn>,
        req: http::Request<CopyBody>,
        job: &Job<'_>,
        reused: bool,
    ) -> Result<MirrorResponse, ExchangeError> {
        let (mut resp, reusable) = http1::exchange(&mut conn.conn, req, job.opts.timeout, job.keep).await?;
        resp.reused = reused;
        if reusable {
            self.h1.checkin(conn);
        }
        Ok(resp)
    }

    async fn send_h2(
        &self,
        mut req: http::Request<CopyBody>,
        job: &Job<'_>,
        again: Option<Arc<super::job::RequestHead>>,
        now_ms: &impl Fn() -> u64,
    ) -> Result<MirrorResponse, Miss> {
        let Some(pool) = &self.h2 else {
            return Err(Failure::new(FailReason::Connect, "no HTTP/2 pool").into());
        };
        let mut resent = false;
        // This copy opened the connection it goes over.
        let mut fresh = false;
        let mut waiter: Option<Waiter<'_>> = None;
        loop {
            let lease = match pool.lease(&job.key) {
                Some(lease) => lease,
                None => match self.limits.try_connect().and_then(|p| Some((self.limits.try_slot()?, p))) {
                    Some((slot, permit)) => {
                        let connected = Box::pin(self.connect_h2(job, slot)).await;
                        drop(permit);
                        self.limits.notify.notify_waiters();
                        match connected? {
                            Connected::H2(conn) => {
                                fresh = true;
                                pool.add(conn)
                            }
                            // The server chose HTTP/1.1 in ALPN: this and later copies use it.
                            Connected::H1(conn) => {
                                let req = copy_as_h1(req);
                                return settle(Box::pin(self.exchange_h1(conn, req, job, false)).await)
                                    .map_err(Miss::from);
                            }
                        }
                    }
                    None => {
                        match waiter.take() {
                            None => waiter = Some(self.arm()),
                            Some(mut n) => self.wait(n.as_mut(), job, now_ms).await?,
                        }
                        continue;
                    }
                },
            };
            match Box::pin(http2::exchange(
                &lease,
                req,
                job.deadline.saturating_duration_since(Instant::now()),
                job.keep,
            ))
            .await
            {
                Ok(mut resp) => {
                    resp.reused = !fresh;
                    return Ok(resp);
                }
                Err(http2::ExchangeError::Unprocessed(back)) if !resent => {
                    // Sent again once, on whichever connection has room (a GOAWAY'd one no longer does).
                    resent = true;
                    req = match (back, &again) {
                        (Some(back), _) => *back,
                        (None, Some(head)) => head.to_h2_request(job.dest, body::empty()),
                        (None, None) => {
                            return Err(Failure::new(
                                FailReason::Reset,
                                "stream refused by the mirror; the body cannot be sent again",
                            )
                            .into());
                        }
                    };
                }
                Err(http2::ExchangeError::Unprocessed(_)) => {
                    return Err(Failure::new(FailReason::Reset, "stream refused by the mirror twice").into());
                }
                Err(http2::ExchangeError::Failed(f)) => return Err(f.into()),
            }
        }
    }

    async fn connect_h2(&self, job: &Job<'_>, slot: Slot) -> Result<Connected, Failure> {
        let (io, alpn) =
            connect::connect(job.dest, job.at, self.spec.tls.as_ref(), job.opts.connect_timeout).await?;
        self.stats.connections_opened.fetch_add(1, Ordering::Relaxed);
        if self.spec.tls.is_some() && alpn != Alpn::H2 {
            if !self.h1_only.swap(true, Ordering::Relaxed) {
                let dest = &job.dest.authority;
                self.log
                    .push(self.id, || format!("{dest} did not choose h2 in ALPN: copies go over HTTP/1.1"));
            }
            let conn = http1::handshake(io).await.map_err(|e| {
                Failure::new(
                    FailReason::Connect,
                    format!("handshake with {} failed: {e}", job.dest.authority),
                )
            })?;
            return Ok(Connected::H1(Pool::attach(conn, job.key.clone(), slot)));
        }
        let left = job.opts.connect_timeout;
        http2::handshake(io, job.key.clone(), slot, left, &job.dest.authority).await.map(Connected::H2)
    }
}

enum Connected {
    H2(http2::Conn),
    H1(Pooled<http1::Conn>),
}

/// An HTTP/2-shaped copy sent over HTTP/1.1 after all (ALPN fallback).
fn copy_as_h1(mut req: http::Request<CopyBody>) -> http::Request<CopyBody> {
    *req.version_mut() = http::Version::HTTP_11;
    req.headers_mut().remove(http::header::TE);
    if let Some(authority) = req.uri().authority().map(|a| a.as_str().to_string()) {
        if let Ok(v) = http::HeaderValue::from_str(&authority) {
            req.headers_mut().insert(http::header::HOST, v);
        }
    }
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_string();
    if let Ok(uri) = path.parse() {
        *req.uri_mut() = uri;
    }
    req
}

fn settle(r: Result<MirrorResponse, ExchangeError>) -> Result<MirrorResponse, Failure> {
    r.map_err(|e| match e {
        ExchangeError::Stale(_) => Failure::new(FailReason::Reset, "connection closed by mirror"),
        ExchangeError::Failed(f) => f,
    })
}
