//! How a copy goes out over each protocol: a pooled or new HTTP/1.1 connection, a
//! stream on a shared HTTP/2 connection (sent once more when the server did not
//! process it), and the ALPN fallback from HTTP/2 to HTTP/1.1.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::connect::{self, Alpn};
use super::http1::{self, ExchangeError};
use super::http2;
use super::idle::{Checkout, ExchangeTime, IdlePool, Pooled};
use super::limits::ConnSlot;
use super::response::MirrorResponse;
use super::target::{Delivery, Miss, Target, Waiter};
use crate::engine::capture::{CopyBody, RequestHead, empty_body};
use crate::engine::outcome::{FailReason, Failure};

impl Target {
    pub(super) async fn send_h1(
        &self,
        mut req: http::Request<CopyBody>,
        d: &Delivery<'_>,
        now_ms: &impl Fn() -> u64,
    ) -> Result<MirrorResponse, Miss> {
        // After a pooled connection turned out closed, the copy goes out on a fresh one.
        let mut fresh_only = false;
        let mut waiter: Option<Waiter<'_>> = None;
        // Connections by need: another one opens only for a copy that has waited about as
        // long as an exchange takes (see `ExchangeTime`). A target whose copies go to
        // several addresses (variables in its host, `resolve=`) pools per address, and one
        // address's exchanges say nothing of another's: it waits the least.
        let started = d.departed;
        let grow_after = if self.spec.allowed.is_empty() && self.resolver.is_none() {
            self.h1.exchange_time().grow_after()
        } else {
            ExchangeTime::MIN_SHARED
        };
        // Set once the copy has waited for a connection: its exchange's time limit then
        // runs from when it found one, not from when it left the backlog.
        let mut has_waited = false;
        loop {
            // The clock is read again only once the copy has waited.
            let waited =
                fresh_only || self.limits.open() == 0 || (has_waited && started.elapsed() >= grow_after);
            // Leave to connect first: a place for a connection is only taken to use it.
            let permit = if waited { self.limits.try_connect() } else { None };
            match self.h1.checkout(&d.key, permit.is_some()) {
                Checkout::Idle(conn) if !fresh_only => {
                    drop(permit);
                    // A pooled connection the mirror closed meanwhile fails before anything is
                    // sent; hyper hands the request back.
                    let began = if has_waited { Instant::now() } else { started };
                    match Box::pin(self.exchange_h1(conn, req, d, true, began)).await {
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
                    // Boxed: a new connection's handshake state is large and rare; the
                    // copies that reuse a connection move and poll a smaller future.
                    let conn = Box::pin(self.connect_h1(d, slot)).await;
                    drop(permit);
                    self.limits.notify.notify_waiters();
                    return settle(Box::pin(self.exchange_h1(conn?, req, d, false, Instant::now())).await)
                        .map_err(Miss::from);
                }
                Checkout::Full => drop(permit),
            }
            match waiter.take() {
                None => waiter = Some(self.arm()),
                Some(mut n) => {
                    has_waited = true;
                    // Until a connection comes back, or the copy has waited long enough to
                    // open one (never past its deadline).
                    let until = if waited { d.deadline } else { started + grow_after };
                    self.wait(n.as_mut(), d, now_ms, until).await?;
                }
            }
        }
    }

    async fn connect_h1(&self, d: &Delivery<'_>, slot: ConnSlot) -> Result<Pooled<http1::Conn>, Failure> {
        let (io, _) =
            Box::pin(connect::connect(d.dest, d.at, self.spec.tls.as_ref(), d.opts.connect_timeout)).await?;
        self.stats.connections_opened.fetch_add(1, Ordering::Relaxed);
        let conn = http1::handshake(io).await.map_err(|e| {
            Failure::new(FailReason::Connect, format!("handshake with {} failed: {e}", d.dest.authority))
        })?;
        Ok(IdlePool::attach(conn, d.key.clone(), slot))
    }

    async fn exchange_h1(
        &self,
        mut conn: Pooled<http1::Conn>,
        req: http::Request<CopyBody>,
        d: &Delivery<'_>,
        reused: bool,
        began: Instant,
    ) -> Result<MirrorResponse, ExchangeError> {
        let (mut resp, reusable) =
            http1::exchange(&mut conn.conn, req, began + d.opts.timeout, &d.keep).await?;
        self.h1.exchange_time().record(began.elapsed());
        resp.reused = reused;
        if reusable {
            self.h1.checkin(conn);
        }
        Ok(resp)
    }

    pub(super) async fn send_h2(
        &self,
        mut req: http::Request<CopyBody>,
        d: &Delivery<'_>,
        again: Option<Arc<RequestHead>>,
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
            let lease = match pool.lease(&d.key) {
                Some(lease) => lease,
                None => match self.limits.try_connect().and_then(|p| Some((self.limits.try_slot()?, p))) {
                    Some((slot, permit)) => {
                        let connected = Box::pin(self.connect_h2(d, slot)).await;
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
                                return settle(
                                    Box::pin(self.exchange_h1(conn, req, d, false, Instant::now())).await,
                                )
                                .map_err(Miss::from);
                            }
                        }
                    }
                    None => {
                        match waiter.take() {
                            None => waiter = Some(self.arm()),
                            Some(mut n) => self.wait(n.as_mut(), d, now_ms, d.deadline).await?,
                        }
                        continue;
                    }
                },
            };
            match Box::pin(http2::exchange(
                &lease,
                req,
                d.deadline.saturating_duration_since(Instant::now()),
                &d.keep,
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
                    req = match (back, again.as_ref().and_then(|h| h.to_h2_request(d.dest, empty_body()))) {
                        (Some(back), _) => *back,
                        (None, Some(again)) => again,
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

    async fn connect_h2(&self, d: &Delivery<'_>, slot: ConnSlot) -> Result<Connected, Failure> {
        let (io, alpn) =
            connect::connect(d.dest, d.at, self.spec.tls.as_ref(), d.opts.connect_timeout).await?;
        self.stats.connections_opened.fetch_add(1, Ordering::Relaxed);
        if self.spec.tls.is_some() && alpn != Alpn::H2 {
            if !self.h1_only.swap(true, Ordering::Relaxed) {
                let dest = &d.dest.authority;
                self.log
                    .push(self.id, || format!("{dest} did not choose h2 in ALPN: copies go over HTTP/1.1"));
            }
            let conn = http1::handshake(io).await.map_err(|e| {
                Failure::new(FailReason::Connect, format!("handshake with {} failed: {e}", d.dest.authority))
            })?;
            return Ok(Connected::H1(IdlePool::attach(conn, d.key.clone(), slot)));
        }
        let left = d.opts.connect_timeout;
        http2::handshake(io, d.key.clone(), slot, left, &d.dest.authority).await.map(Connected::H2)
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
