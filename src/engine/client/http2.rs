//! The HTTP/2 exchange, and the connections it multiplexes copies over.
//!
//! Copies share a connection up to the server's `SETTINGS_MAX_CONCURRENT_STREAMS`
//! (learned from its preface, see `preface.rs`); when every connection to the target is
//! full, another is opened, up to `async_mirror_max_connections`. Idle connections
//! (no stream for `async_mirror_keepalive_timeout`) are closed.

use std::error::Error as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::Request;
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::time::timeout;

use super::connect::{Stream, exchange_failure};
use super::limits::{ConnSlot, DestKey, Limits};
use super::preface::{Preface, Sniff};
use super::response::{Keep, MirrorResponse};
use crate::engine::capture::CopyBody;
use crate::engine::outcome::{FailReason, Failure};

/// Streams used on one connection when the server sets no limit.
pub const MAX_STREAMS: usize = 256;

pub struct Conn {
    sender: SendRequest<CopyBody>,
    key: DestKey,
    active: AtomicUsize,
    preface: Arc<Preface>,
    /// Milliseconds since the pool's epoch when the last stream ended.
    last_used: AtomicU64,
    _slot: ConnSlot,
}

impl Conn {
    fn capacity(&self) -> usize {
        self.preface.max_streams().unwrap_or(MAX_STREAMS).min(MAX_STREAMS)
    }

    /// Takes a stream if the connection has one free.
    fn try_stream(&self) -> bool {
        let cap = self.capacity();
        let mut n = self.active.load(Ordering::Acquire);
        loop {
            if n >= cap || self.sender.is_closed() {
                return false;
            }
            match self.active.compare_exchange_weak(n, n + 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return true,
                Err(now) => n = now,
            }
        }
    }
}

/// Starts an HTTP/2 client connection over `io` and waits for the server's preface
/// (within `limit`), so its stream limit is known before the first copy goes out.
///
/// # Errors
/// `failed{connect}`: the handshake failed, or the peer does not speak HTTP/2.
pub async fn handshake(
    io: Stream,
    key: DestKey,
    slot: ConnSlot,
    limit: Duration,
    who: &str,
) -> Result<Conn, Failure> {
    let preface = Arc::new(Preface::default());
    let io = Sniff::new(io, preface.clone());
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| Failure::new(FailReason::Connect, format!("HTTP/2 handshake with {who} failed: {e}")))?;
    let ended = preface.clone();
    tokio::spawn(async move {
        let _ = conn.await;
        ended.connection_ended();
    });
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let mut changed = std::pin::pin!(preface.changed());
        changed.as_mut().enable();
        if preface.is_http2() {
            break;
        }
        if let Some(first) = preface.not_http2() {
            return Err(Failure::new(
                FailReason::Connect,
                format!(
                    "{who} does not speak HTTP/2 (it answered \"{first}\"); use async_mirror_http_version 1.1"
                ),
            ));
        }
        if sender.is_closed() || tokio::time::timeout_at(deadline, changed).await.is_err() {
            return Err(Failure::new(FailReason::Connect, format!("no HTTP/2 preface from {who}")));
        }
    }
    Ok(Conn { sender, key, active: AtomicUsize::new(0), preface, last_used: AtomicU64::new(0), _slot: slot })
}

/// The target's HTTP/2 connections.
pub struct Pool {
    conns: Mutex<Vec<Arc<Conn>>>,
    limits: Arc<Limits>,
    keepalive: Duration,
    epoch: Instant,
}

/// One stream on a connection, given back on drop.
pub struct Lease {
    conn: Arc<Conn>,
    limits: Arc<Limits>,
    epoch: Instant,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.conn.last_used.store(self.epoch.elapsed().as_millis() as u64, Ordering::Release);
        self.conn.active.fetch_sub(1, Ordering::AcqRel);
        self.limits.notify.notify_one();
    }
}

impl Pool {
    pub fn new(limits: Arc<Limits>, keepalive: Duration) -> Pool {
        Pool { conns: Mutex::new(Vec::new()), limits, keepalive, epoch: Instant::now() }
    }

    /// A free stream to `key` on an existing connection. Connections are filled in the
    /// order they were opened, so a lull lets the newest ones go idle and close.
    pub fn lease(&self, key: &DestKey) -> Option<Lease> {
        let conns = self.conns.lock().ok()?;
        let conn = conns.iter().find(|c| c.key == *key && c.try_stream())?.clone();
        Some(Lease { conn, limits: self.limits.clone(), epoch: self.epoch })
    }

    /// A new connection joins the pool, with its first stream taken.
    pub fn add(&self, conn: Conn) -> Lease {
        conn.active.store(1, Ordering::Release);
        let conn = Arc::new(conn);
        if let Ok(mut conns) = self.conns.lock() {
            conns.push(conn.clone());
        }
        // Copies waiting for a stream can use this connection too.
        self.limits.notify.notify_waiters();
        Lease { conn, limits: self.limits.clone(), epoch: self.epoch }
    }

    /// Closes connections idle past the keepalive timeout (or idle to a destination `keep`
    /// no longer wants) and forgets closed ones.
    pub fn sweep(&self, keep: impl Fn(&DestKey) -> bool) {
        let now = self.epoch.elapsed().as_millis() as u64;
        let ttl = self.keepalive.as_millis() as u64;
        if let Ok(mut conns) = self.conns.lock() {
            conns.retain(|c| {
                let unused = c.active.load(Ordering::Acquire) == 0;
                let idle = unused && now.saturating_sub(c.last_used.load(Ordering::Acquire)) >= ttl;
                let gone = unused && !keep(&c.key);
                !c.sender.is_closed() && !idle && !gone
            });
        }
    }

    /// How many copies may be in flight now: the streams of the open connections plus
    /// those of one more (assumed as large as the largest, or 100, RFC 9113's floor),
    /// never more than `max` connections' worth. Copies beyond it stay in the backlog
    /// instead of waiting in flight for a stream.
    pub fn budget(&self, max: usize) -> usize {
        let Ok(conns) = self.conns.lock() else { return 0 };
        let open: usize = conns.iter().filter(|c| !c.sender.is_closed()).map(|c| c.capacity()).sum();
        let largest = conns.iter().map(|c| c.capacity()).max().unwrap_or(100);
        let more = if conns.len() < max { largest } else { 0 };
        open + more
    }
}

/// How an HTTP/2 exchange went wrong.
pub enum ExchangeError {
    /// The server did not process the stream (`REFUSED_STREAM`, or above a GOAWAY's last
    /// stream id), or the connection was gone before it was sent: safe to send again.
    Unprocessed(Option<Box<Request<CopyBody>>>),
    Failed(Failure),
}

/// Sends `req` on a leased stream and reads the whole response within `limit`.
///
/// # Errors
/// See [`ExchangeError`].
pub async fn exchange(
    lease: &Lease,
    req: Request<CopyBody>,
    limit: Duration,
    keep: &Keep,
) -> Result<MirrorResponse, ExchangeError> {
    let mut sender = lease.conn.sender.clone();
    let work = async {
        let resp = sender.try_send_request(req).await.map_err(|mut e| {
            let back = e.take_message().map(Box::new);
            let err = e.into_error();
            if back.is_some() || unprocessed(&err) {
                ExchangeError::Unprocessed(back)
            } else {
                ExchangeError::Failed(exchange_failure(&err))
            }
        })?;
        MirrorResponse::read(resp, keep).await.map_err(|e| ExchangeError::Failed(exchange_failure(&e)))
    };
    match timeout(limit, work).await {
        Ok(r) => r,
        Err(_) => Err(ExchangeError::Failed(Failure::new(FailReason::Timeout, "mirror timed out"))),
    }
}

/// RFC 9113 §8.7: a refused stream, or one a GOAWAY's last stream id leaves out, was not
/// processed and may be retried.
fn unprocessed(err: &hyper::Error) -> bool {
    let mut source = err.source();
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM) || (h2.is_go_away() && h2.is_remote());
        }
        source = s.source();
    }
    false
}
