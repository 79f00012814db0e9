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

use tokio::sync::Notify;

use super::breaker::{Breaker, BreakerSettings};
use super::http1;
use super::http2;
use super::idle::IdlePool;
use super::limits::{CONNECTS_IN_PROGRESS, DestKey, Limits};
use super::resolve::Resolver;
use super::response::{Keep, MirrorResponse};
use crate::engine::capture::{BodyRx, RequestHead, empty_body};
use crate::engine::config::{Dest, TargetSpec};
use crate::engine::error_log::ErrorLog;
use crate::engine::ids::TargetId;
use crate::engine::outcome::{DropReason, FailReason, Failure, Outcome, TargetStats};

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
    /// Copies in flight at most: a copy waits in the backlog for room.
    max_inflight: usize,
    /// Signalled when a copy in flight gives its room back.
    room: Notify,
    pub(super) max_connections: usize,
    /// How long an idle connection is kept.
    pub(super) keepalive: Duration,
    pub(super) limits: Arc<Limits>,
    pub(super) h1: IdlePool<http1::Conn>,
    pub(super) h2: Option<http2::Pool>,
    /// An `https://` target asked for HTTP/2 whose server chose HTTP/1.1 in ALPN.
    pub(super) h1_only: AtomicBool,
    pub(super) log: Arc<ErrorLog>,
    /// `resolve=`: the name's current addresses.
    pub resolver: Option<Arc<Resolver>>,
}

/// A registration for the target's next "a connection or stream may be free".
pub(super) type Waiter<'a> = Pin<Box<tokio::sync::futures::Notified<'a>>>;

/// How a copy's delivery ended without a response.
pub(super) enum Miss {
    Failed(Failure),
    /// The breaker opened while the copy waited for a connection.
    BreakerOpen,
}

impl From<Failure> for Miss {
    fn from(f: Failure) -> Miss {
        Miss::Failed(f)
    }
}

/// Per-copy settings, from the location that made the copy.
#[derive(Debug, Clone, Copy)]
pub struct CopyOptions {
    pub connect_timeout: Duration,
    /// Whole exchange: sending the request to the last byte of the response.
    pub timeout: Duration,
    pub breaker: BreakerSettings,
}

/// One copy as the client sends it.
pub struct Outgoing<'a> {
    /// Over HTTP/1.1 its header map goes into the request when nothing else holds the
    /// head; afterwards the copy reads only its method and request target.
    pub head: &'a mut Arc<RequestHead>,
    /// For a URL with variables: where this copy goes.
    pub dest: Option<&'a crate::engine::config::Dest>,
    pub body: Option<BodyRx>,
    pub opts: CopyOptions,
    /// The breaker's probe goes even while the breaker is open.
    pub probe: bool,
    /// How much of the answer's body to keep, charged to what budget.
    pub keep: Keep,
    /// When it left the backlog: its time limit runs from here (one clock read serves
    /// the whole delivery).
    pub departed: Instant,
}

/// What a delivery needs besides the request.
pub(super) struct Delivery<'a> {
    pub(super) dest: &'a Dest,
    pub(super) key: DestKey,
    pub(super) opts: CopyOptions,
    pub(super) probe: bool,
    pub(super) deadline: Instant,
    pub(super) departed: Instant,
    /// Response body bytes to keep (for comparison).
    pub(super) keep: Keep,
    /// `resolve=`: the address picked for this copy.
    pub(super) at: Option<std::net::SocketAddr>,
}

impl Target {
    pub fn new(id: TargetId, spec: TargetSpec, settings: &ClientSettings, log: Arc<ErrorLog>) -> Target {
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
            let depth = spec.pipeline.unwrap_or(1);
            (Limits::new(max, CONNECTS_IN_PROGRESS), max.saturating_mul(depth), None)
        };
        Target {
            id,
            spec,
            stats: Arc::default(),
            breaker: Arc::default(),
            max_inflight: inflight,
            room: Notify::new(),
            max_connections: max,
            keepalive: settings.keepalive_timeout,
            h1: IdlePool::new(limits.clone(), settings.keepalive_timeout),
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
        let keep = |key: &DestKey| self.resolver.as_ref().is_none_or(|r| r.keeps(key));
        self.h1.sweep(keep);
        if let Some(h2) = &self.h2 {
            h2.sweep(keep);
        }
    }

    /// Whether a copy may leave the backlog now: fewer than the most copies in flight and,
    /// over HTTP/2, a stream or room for a connection (a copy in flight that waits for a
    /// stream holds far more memory than one in the queue).
    pub fn has_room(&self) -> bool {
        let inflight = self.stats.inflight.load(Ordering::Relaxed).max(0) as usize;
        if inflight >= self.max_inflight {
            return false;
        }
        match &self.h2 {
            Some(pool) if !self.h1_only.load(Ordering::Relaxed) => {
                inflight < pool.budget(self.max_connections)
            }
            _ => true,
        }
    }

    /// A copy left the backlog: it is in flight.
    pub fn took_room(&self) {
        self.stats.inflight.fetch_add(1, Ordering::Relaxed);
    }

    /// A copy in flight ended: room for the next.
    pub fn gave_room(&self) {
        self.stats.inflight.fetch_sub(1, Ordering::Relaxed);
        self.room.notify_one();
    }

    /// Resolves once room may have been freed (a copy ended, a stream or connection freed).
    pub async fn room_freed(&self) {
        tokio::select! {
            () = self.room.notified() => {}
            () = self.limits.notify.notified() => {}
        }
    }

    /// Registers for the next wake-up. A copy registers only when it is about to wait, and
    /// looks again before it does, so a wake-up is neither missed nor taken by a copy
    /// that is busy with its exchange.
    pub(super) fn arm(&self) -> Waiter<'_> {
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
        out: Outgoing<'_>,
        now_ms: impl Fn() -> u64,
    ) -> (Outcome, Option<MirrorResponse>) {
        let state = out.body.as_ref().map(|b| b.state.clone());
        let body = out.body.map_or_else(empty_body, BodyRx::boxed);
        let opts = out.opts;
        let (dest, key) = match (out.dest, self.spec.dest.as_ref()) {
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
        let (departed, deadline) = (out.departed, out.departed + opts.timeout);
        let d = Delivery { dest, key, opts, probe: out.probe, deadline, departed, keep: out.keep, at };
        let h2 = self.h2.is_some() && !self.h1_only.load(Ordering::Relaxed);
        let req = if h2 {
            out.head.to_h2_request(dest, body)
        } else {
            RequestHead::take_request(out.head, dest, body)
        };
        // Never sent anywhere but where the copy means to go.
        let Some(req) = req else { return (Outcome::Skipped, None) };
        let result = if h2 {
            // Without a body, a stream the server did not process can be sent again.
            let again = state.is_none().then(|| out.head.clone());
            // Boxed: HTTP/2's states are larger than HTTP/1.1's, and every copy's future
            // would be as large as the largest.
            Box::pin(self.send_h2(req, &d, again, &now_ms)).await
        } else {
            self.send_h1(req, &d, &now_ms).await
        };
        // A body that ended early decides the outcome and says nothing about the mirror.
        if let Some(why) = state.as_ref().and_then(|s| s.aborted()) {
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
            // Time ran out while the client's body was still arriving: not the mirror's doing.
            Miss::Failed(Failure { reason: FailReason::Timeout, .. })
                if state.as_ref().is_some_and(|s| !s.complete()) =>
            {
                Outcome::Failed(FailReason::BodySlow)
            }
            Miss::Failed(f) => {
                self.record_failure(&f, Some(opts.breaker), now_ms());
                Outcome::Failed(f.reason)
            }
        };
        (outcome, None)
    }

    /// A failure the mirror caused: its error line, and the breaker hears of it.
    pub(super) fn record_failure(&self, f: &Failure, breaker: Option<BreakerSettings>, now_ms: u64) {
        let outcome = Outcome::Failed(f.reason);
        self.log.push(self.id, || format!("copy failed ({outcome}): {}", f.detail));
        let Some(settings) = breaker else { return };
        if self.breaker.failure(now_ms, settings) {
            let (n, t) = (settings.max_fails, settings.fail_timeout);
            self.log.push(self.id, || format!("{n} consecutive failures, target skipped for {t:?}"));
            // Copies waiting for a connection give up now.
            self.limits.notify.notify_waiters();
        }
    }

    /// Whether the breaker keeps copies away now.
    pub(super) fn breaker_open(&self, now_ms: u64) -> bool {
        self.breaker.still_open(now_ms)
    }

    /// Whether the breaker keeps this copy away (the probe always goes).
    fn kept_away(&self, d: &Delivery<'_>, now_ms: &impl Fn() -> u64) -> bool {
        !d.probe && d.opts.breaker.max_fails > 0 && self.breaker.still_open(now_ms())
    }

    /// Waits until a connection or stream may be free, or until `until` (time to open
    /// one), never past the copy's deadline; `Err` when the copy should stop: its time ran
    /// out, perhaps while the runtime thread was off the CPU, or the breaker opened.
    pub(super) async fn wait(
        &self,
        notified: Pin<&mut tokio::sync::futures::Notified<'_>>,
        d: &Delivery<'_>,
        now_ms: &impl Fn() -> u64,
        until: Instant,
    ) -> Result<(), Miss> {
        if self.kept_away(d, now_ms) {
            return Err(Miss::BreakerOpen);
        }
        let stop = until.min(d.deadline);
        let woken = tokio::time::timeout_at(stop.into(), notified).await.is_ok();
        if !woken && stop < d.deadline {
            // Answers that arrived in the same turn of the runtime check their
            // connections in first.
            tokio::task::yield_now().await;
        }
        if (!woken && stop == d.deadline) || Instant::now() >= d.deadline {
            return Err(Miss::Failed(Failure::new(
                FailReason::Timeout,
                "no connection to the mirror became free in time",
            )));
        }
        // The breaker opening wakes every waiting copy, to give up.
        if woken && self.kept_away(d, now_ms) {
            return Err(Miss::BreakerOpen);
        }
        Ok(())
    }
}
