//! Request bodies streamed to a copy as nginx reads them.
//!
//! The nginx thread pushes each chunk the request-body filter sees through a
//! [`BodyTx`]; the copy's hyper request reads them from the matching [`BodyRx`].
//! Bytes waiting in between are charged to the worker's backlog budget. Any
//! way a body can end early (budget, size limit, client gone, nginx discarding
//! the body) ends the stream with an error, so hyper aborts the request and the
//! mirror never sees a truncated body that looks complete.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::backlog::Backlog;
use crate::engine::outcome::{DropReason, FailReason, Outcome};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of a copy as the HTTP clients take it.
pub type CopyBody = BoxBody<Bytes, BoxError>;

/// The body of a copy without one.
pub fn empty() -> CopyBody {
    http_body_util::Empty::<Bytes>::new().map_err(|never| match never {}).boxed()
}

/// Why a body stream ended early; also the copy's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum BodyAbort {
    /// The worker's byte budget (`async_mirror_queue_bytes`) was exhausted.
    Budget = 1,
    /// More than `async_mirror_body_max_size`.
    TooLarge = 2,
    /// The client went away, or nginx discarded or spooled the body unseen.
    Incomplete = 3,
}

impl BodyAbort {
    pub fn outcome(self) -> Outcome {
        match self {
            BodyAbort::Budget => Outcome::Dropped(DropReason::QueueFull),
            BodyAbort::TooLarge => Outcome::Dropped(DropReason::BodyTooLarge),
            BodyAbort::Incomplete => Outcome::Failed(FailReason::BodyAborted),
        }
    }

    fn from_u8(v: u8) -> Option<BodyAbort> {
        match v {
            1 => Some(BodyAbort::Budget),
            2 => Some(BodyAbort::TooLarge),
            3 => Some(BodyAbort::Incomplete),
            _ => None,
        }
    }
}

const COMPLETE: u8 = 0xff;

/// Shared end state: 0 while streaming, COMPLETE, or a [`BodyAbort`]; and the bytes
/// handed to the mirror's connection so far (for `async_mirror_log`).
#[derive(Debug, Default)]
pub struct BodyState {
    end: AtomicU8,
    sent: AtomicU64,
}

impl BodyState {
    /// The abort that ended the body, if it did not complete.
    pub fn aborted(&self) -> Option<BodyAbort> {
        BodyAbort::from_u8(self.end.load(Ordering::Acquire))
    }

    /// Whether the client's whole body went through (nothing is still to arrive).
    pub fn complete(&self) -> bool {
        self.end.load(Ordering::Acquire) == COMPLETE
    }

    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    fn set(&self, v: u8) {
        // The first end wins.
        let _ = self.end.compare_exchange(0, v, Ordering::AcqRel, Ordering::Acquire);
    }
}

/// The nginx thread's end of one copy's body.
pub struct BodyTx {
    tx: Option<UnboundedSender<Bytes>>,
    state: Arc<BodyState>,
    backlog: Arc<Backlog>,
    sent: u64,
    max: u64,
}

/// The copy's end: an `http_body::Body`.
pub struct BodyRx {
    rx: UnboundedReceiver<Bytes>,
    pub state: Arc<BodyState>,
    backlog: Arc<Backlog>,
    length: Option<u64>,
}

/// A body channel; `length` is the Content-Length when the client sent one.
pub fn channel(backlog: Arc<Backlog>, max: u64, length: Option<u64>) -> (BodyTx, BodyRx) {
    let (tx, rx) = unbounded_channel();
    let state = Arc::new(BodyState::default());
    (
        BodyTx { tx: Some(tx), state: state.clone(), backlog: backlog.clone(), sent: 0, max },
        BodyRx { rx, state, backlog, length },
    )
}

impl BodyTx {
    /// Forwards one chunk. On `Err` the stream is already aborted; drop this sender.
    ///
    /// # Errors
    /// The reason the body can no longer be copied.
    pub fn send(&mut self, chunk: &Bytes) -> Result<(), BodyAbort> {
        if self.tx.is_none() {
            return Err(self.state.aborted().unwrap_or(BodyAbort::Incomplete));
        }
        self.sent += chunk.len() as u64;
        if self.sent > self.max {
            return Err(self.abort(BodyAbort::TooLarge));
        }
        if chunk.is_empty() {
            return Ok(());
        }
        if !self.backlog.take_bytes(chunk.len()) {
            return Err(self.abort(BodyAbort::Budget));
        }
        let tx = self.tx.as_ref().expect("checked above");
        if tx.send(chunk.clone()).is_err() {
            // The copy is gone (failed or shut down); its outcome is already decided.
            self.backlog.give_bytes(chunk.len());
            self.tx = None;
        }
        Ok(())
    }

    /// The whole body went through: the stream ends cleanly.
    pub fn finish(mut self) {
        self.state.set(COMPLETE);
        self.tx = None;
    }

    pub fn abort(&mut self, why: BodyAbort) -> BodyAbort {
        self.state.set(why as u8);
        self.tx = None;
        self.state.aborted().unwrap_or(why)
    }

    pub fn is_open(&self) -> bool {
        self.tx.is_some()
    }
}

impl Drop for BodyTx {
    /// A sender dropped before `finish` (request ended, body never fully read).
    fn drop(&mut self) {
        if self.tx.is_some() {
            self.abort(BodyAbort::Incomplete);
        }
    }
}

impl Body for BodyRx {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(chunk)) => {
                self.backlog.give_bytes(chunk.len());
                self.state.sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
            Poll::Ready(None) => match self.state.aborted() {
                None => Poll::Ready(None),
                Some(why) => Poll::Ready(Some(Err(format!("request body not copied: {why:?}").into()))),
            },
            Poll::Pending => Poll::Pending,
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.length.map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

impl Drop for BodyRx {
    fn drop(&mut self) {
        // Give back the budget of chunks nobody will send.
        self.rx.close();
        while let Ok(chunk) = self.rx.try_recv() {
            self.backlog.give_bytes(chunk.len());
        }
    }
}

impl BodyRx {
    /// The whole body, when the client's body is complete and nothing was read from the
    /// stream yet (a pipelined copy is written in one piece); the stream is then spent.
    pub fn take_complete(&mut self) -> Option<Bytes> {
        if !self.state.complete() {
            return None;
        }
        let mut whole = bytes::BytesMut::new();
        while let Ok(chunk) = self.rx.try_recv() {
            self.backlog.give_bytes(chunk.len());
            self.state.sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            whole.extend_from_slice(&chunk);
        }
        Some(whole.freeze())
    }

    pub fn boxed(self) -> CopyBody {
        BodyExt::boxed(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn streams_and_completes() {
        let backlog = Backlog::new(10, 100);
        let (mut tx, rx) = channel(backlog.clone(), 1000, Some(10));
        tx.send(&Bytes::from_static(b"hello")).unwrap();
        tx.send(&Bytes::from_static(b"world")).unwrap();
        assert_eq!(backlog.bytes(), 10);
        tx.finish();
        let state = rx.state.clone();
        let body = rx.collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"helloworld");
        assert_eq!(backlog.bytes(), 0);
        assert_eq!(state.aborted(), None);
    }

    #[tokio::test]
    async fn aborts_on_size_budget_and_drop() {
        let backlog = Backlog::new(10, 8);
        let (mut tx, rx) = channel(backlog.clone(), 1000, None);
        assert_eq!(tx.send(&Bytes::from_static(b"0123456789")), Err(BodyAbort::Budget));
        assert!(rx.collect().await.is_err(), "an aborted body must not look complete");
        assert_eq!(backlog.bytes(), 0);

        let (mut tx, rx) = channel(backlog.clone(), 4, None);
        assert_eq!(tx.send(&Bytes::from_static(b"12345")), Err(BodyAbort::TooLarge));
        assert_eq!(rx.state.aborted(), Some(BodyAbort::TooLarge));

        let (mut tx, rx) = channel(backlog.clone(), 100, None);
        tx.send(&Bytes::from_static(b"abc")).unwrap();
        drop(tx);
        let state = rx.state.clone();
        assert!(rx.collect().await.is_err());
        assert_eq!(state.aborted(), Some(BodyAbort::Incomplete));
        assert_eq!(backlog.bytes(), 0);
        assert_eq!(BodyAbort::Incomplete.outcome(), Outcome::Failed(FailReason::BodyAborted));
    }
}
