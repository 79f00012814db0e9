//! One target as a worker runs it: its spec, counters, breaker, limits and pool,
//! and the delivery of one copy over them.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::Semaphore;

use super::body::{self, CopyBody};
use super::breaker::Breaker;
use super::connect;
use super::copy::{Copy, CopyOptions};
use super::http1::{self, ExchangeError};
use super::ids::TargetId;
use super::logq::LogQueue;
use super::outcome::{FailReason, Failure, Outcome, TargetStats};
use super::parse::{Dest, TargetSpec};
use super::pool::{CONNECTS_IN_PROGRESS, Checkout, Key, Limits, Pool, Pooled};
use super::response::MirrorResponse;

/// Per-target connection settings (from the http-level directives).
#[derive(Debug, Clone, Copy)]
pub struct ClientSettings {
    pub keepalive_timeout: Duration,
    pub max_connections: usize,
}

pub struct Target {
    pub id: TargetId,
    pub spec: TargetSpec,
    pub stats: Arc<TargetStats>,
    pub breaker: Arc<Breaker>,
    /// Copies in flight; a copy waits here in the backlog.
    pub inflight: Arc<Semaphore>,
    pool: Pool<http1::Conn>,
    log: Arc<LogQueue>,
}

impl Target {
    pub fn new(id: TargetId, spec: TargetSpec, settings: ClientSettings, log: Arc<LogQueue>) -> Target {
        Target {
            id,
            spec,
            stats: Arc::default(),
            breaker: Arc::default(),
            // Over HTTP/1.1 each copy in flight needs its own connection.
            inflight: Arc::new(Semaphore::new(settings.max_connections)),
            pool: Pool::new(
                Limits::new(settings.max_connections, CONNECTS_IN_PROGRESS),
                settings.keepalive_timeout,
            ),
            log,
        }
    }

    /// Closes idle connections past their keepalive timeout.
    pub fn sweep(&self) {
        self.pool.sweep();
    }

    /// Sends one departed copy, reads the whole response, tells the breaker and
    /// returns the copy's outcome (the caller holds an in-flight permit).
    pub async fn deliver(&self, copy: &mut Copy, now_ms: impl Fn() -> u64) -> Outcome {
        let state = copy.body.as_ref().map(|b| b.state.clone());
        let body = copy.body.take().map_or_else(body::empty, body::BodyRx::boxed);
        let opts = copy.opts;
        let result = match (copy.dest.as_ref(), self.spec.dest.as_ref()) {
            (Some(dest), _) => {
                let key = Some((dest.url.host.clone(), dest.url.port));
                self.send(copy.head.to_request(dest, body), dest, key, opts).await
            }
            (None, Some(dest)) => self.send(copy.head.to_request(dest, body), dest, None, opts).await,
            (None, None) => Err(Failure::new(FailReason::Connect, "no destination")),
        };
        // A body that ended early decides the outcome and says nothing about the mirror.
        if let Some(why) = state.and_then(|s| s.aborted()) {
            return why.outcome();
        }
        match result {
            Ok(resp) => {
                self.breaker.success();
                resp.outcome()
            }
            Err(Failure { reason, detail }) => {
                let outcome = Outcome::Failed(reason);
                self.log.push(self.id, || format!("copy failed ({outcome}): {detail}"));
                if self.breaker.failure(now_ms(), opts.breaker) {
                    let (n, t) = (opts.breaker.max_fails, opts.breaker.fail_timeout);
                    self.log.push(self.id, || format!("{n} consecutive failures, target skipped for {t:?}"));
                }
                outcome
            }
        }
    }

    async fn send(
        &self,
        mut req: http::Request<CopyBody>,
        dest: &Dest,
        key: Key,
        opts: CopyOptions,
    ) -> Result<MirrorResponse, Failure> {
        // The connect and exchange futures (TLS, hyper) are large; boxing them keeps the
        // task spawned per copy small, which tokio moves several times in its life.
        let slot = match self.pool.checkout(&key) {
            Checkout::Idle(conn) => {
                // A pooled connection the mirror closed meanwhile fails before anything is
                // sent; hyper hands the request back and it goes out on a fresh connection.
                match Box::pin(self.exchange(conn, req, opts)).await {
                    Err(ExchangeError::Stale(back)) => req = *back,
                    done => return settle(done),
                }
                match self.pool.checkout(&key) {
                    Checkout::Room(slot) => slot,
                    Checkout::Idle(conn) => return settle(Box::pin(self.exchange(conn, req, opts)).await),
                    Checkout::Full => {
                        return Err(Failure::new(FailReason::Connect, "no connection available"));
                    }
                }
            }
            Checkout::Room(slot) => slot,
            Checkout::Full => return Err(Failure::new(FailReason::Connect, "no connection available")),
        };
        let (io, _alpn) =
            Box::pin(connect::connect(dest, self.spec.tls.as_ref(), opts.connect_timeout)).await?;
        self.stats.connections_opened.fetch_add(1, Ordering::Relaxed);
        let conn = http1::handshake(io).await.map_err(|e| {
            Failure::new(FailReason::Connect, format!("handshake with {} failed: {e}", dest.authority))
        })?;
        settle(Box::pin(self.exchange(Pool::attach(conn, key, slot), req, opts)).await)
    }

    async fn exchange(
        &self,
        mut conn: Pooled<http1::Conn>,
        req: http::Request<CopyBody>,
        opts: CopyOptions,
    ) -> Result<MirrorResponse, ExchangeError> {
        let (resp, reusable) = http1::exchange(&mut conn.conn, req, opts.timeout, 0).await?;
        if reusable {
            self.pool.checkin(conn);
        }
        Ok(resp)
    }
}

fn settle(r: Result<MirrorResponse, ExchangeError>) -> Result<MirrorResponse, Failure> {
    r.map_err(|e| match e {
        ExchangeError::Stale(_) => Failure::new(FailReason::Reset, "connection closed by mirror"),
        ExchangeError::Failed(f) => f,
    })
}
