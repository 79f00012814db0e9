//! What an HTTP/2 server says first. hyper does not expose the peer's
//! `SETTINGS_MAX_CONCURRENT_STREAMS`, which decides when a connection is full and
//! another must be opened (hyper's own pool never opens a second one: hyper#2197).
//! The server's connection preface must begin with a SETTINGS frame (RFC 9113 §3.4),
//! so a reader that passes bytes through to hyper while looking at that first frame
//! learns the limit, or learns that the peer does not speak HTTP/2 at all.

use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::sync::futures::Notified;

const HTTP2: u8 = 1;
const NOT_HTTP2: u8 = 2;
const SETTINGS: u8 = 0x4;
const MAX_CONCURRENT_STREAMS: u16 = 0x3;
/// Frames above the default SETTINGS_MAX_FRAME_SIZE are not a valid first frame.
const MAX_FIRST_FRAME: usize = 16_384;

/// What the first frame said; shared between the reader and the pool.
#[derive(Debug, Default)]
pub struct Preface {
    state: AtomicU8,
    /// 0 while unknown or unlimited.
    max_streams: AtomicUsize,
    /// The first bytes of a peer that is not HTTP/2, for the error log.
    not_h2: Mutex<Vec<u8>>,
    /// Signalled when the verdict is in, or the connection is gone.
    changed: Notify,
}

impl Preface {
    /// The peer's stream limit, once known (`None` also when it sets none: unlimited).
    pub fn max_streams(&self) -> Option<usize> {
        match self.max_streams.load(Ordering::Acquire) {
            0 => None,
            n => Some(n),
        }
    }

    /// Whether the peer answered with something that is not an HTTP/2 preface.
    pub fn not_http2(&self) -> Option<String> {
        (self.state.load(Ordering::Acquire) == NOT_HTTP2).then(|| {
            let bytes = self.not_h2.lock().map(|b| b.clone()).unwrap_or_default();
            let text = String::from_utf8_lossy(&bytes);
            text.lines().next().unwrap_or("").chars().take(60).collect()
        })
    }

    pub fn is_http2(&self) -> bool {
        self.state.load(Ordering::Acquire) == HTTP2
    }

    /// Wakes whoever waits for the verdict: the connection ended without one.
    pub fn connection_ended(&self) {
        self.changed.notify_waiters();
    }

    /// A registration for the next change; register, then look, then wait.
    pub fn changed(&self) -> Notified<'_> {
        self.changed.notified()
    }

    /// Feeds the first bytes the server sent; `true` once the verdict is in.
    fn feed(&self, first: &[u8]) -> bool {
        // A valid first frame is at most 16 KiB long: its length's first byte is 0.
        if first.first().is_some_and(|&b| b != 0) {
            return self.reject(first);
        }
        if first.len() < 9 {
            return false;
        }
        let len = usize::from(first[0]) << 16 | usize::from(first[1]) << 8 | usize::from(first[2]);
        let stream = u32::from_be_bytes([first[5], first[6], first[7], first[8]]) & 0x7fff_ffff;
        if first[3] != SETTINGS || first[4] & 0x1 != 0 || stream != 0 || len % 6 != 0 || len > MAX_FIRST_FRAME
        {
            return self.reject(first);
        }
        if first.len() < 9 + len {
            return false;
        }
        for entry in first[9..9 + len].chunks_exact(6) {
            if u16::from_be_bytes([entry[0], entry[1]]) == MAX_CONCURRENT_STREAMS {
                let v = u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]);
                self.max_streams.store(usize::try_from(v).unwrap_or(usize::MAX).max(1), Ordering::Release);
            }
        }
        self.state.store(HTTP2, Ordering::Release);
        self.changed.notify_waiters();
        true
    }

    fn reject(&self, first: &[u8]) -> bool {
        if let Ok(mut b) = self.not_h2.lock() {
            *b = first[..first.len().min(120)].to_vec();
        }
        self.state.store(NOT_HTTP2, Ordering::Release);
        self.changed.notify_waiters();
        true
    }
}

/// A stream that shows the server's first bytes to a [`Preface`] on their way through.
pub struct Sniff<IO> {
    io: IO,
    seen: Option<Vec<u8>>,
    preface: std::sync::Arc<Preface>,
}

impl<IO> Sniff<IO> {
    pub fn new(io: IO, preface: std::sync::Arc<Preface>) -> Sniff<IO> {
        Sniff { io, seen: Some(Vec::new()), preface }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Sniff<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if let (Poll::Ready(Ok(())), Some(seen)) = (&r, this.seen.as_mut()) {
            let new = &buf.filled()[before..];
            let room = (9 + MAX_FIRST_FRAME).saturating_sub(seen.len());
            seen.extend_from_slice(&new[..new.len().min(room)]);
            if new.is_empty() || this.preface.feed(seen) {
                this.seen = None;
            }
        }
        r
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Sniff<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(entries: &[(u16, u32)]) -> Vec<u8> {
        let len = entries.len() * 6;
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, SETTINGS, 0, 0, 0, 0, 0];
        for (id, v) in entries {
            f.extend_from_slice(&id.to_be_bytes());
            f.extend_from_slice(&v.to_be_bytes());
        }
        f
    }

    #[test]
    fn reads_the_stream_limit_from_the_first_frame() {
        let p = Preface::default();
        let f = settings(&[(0x4, 65535), (MAX_CONCURRENT_STREAMS, 2)]);
        assert!(!p.feed(&f[..10]), "waits for the whole frame");
        assert!(p.feed(&f));
        assert_eq!((p.is_http2(), p.max_streams(), p.not_http2()), (true, Some(2), None));
        let unlimited = Preface::default();
        assert!(unlimited.feed(&settings(&[])));
        assert_eq!(unlimited.max_streams(), None);
    }

    #[test]
    fn tells_an_http1_server_apart() {
        let p = Preface::default();
        assert!(p.feed(b"HTTP/1.1 400 Bad Request\r\nServer: x\r\n"));
        assert_eq!(p.not_http2().as_deref(), Some("HTTP/1.1 400 Bad Request"));
        let p = Preface::default();
        assert!(p.feed(&[0, 0, 0, 0x7, 0, 0, 0, 0, 0]), "a GOAWAY first is not a preface");
        assert!(p.not_http2().is_some());
    }

    #[tokio::test]
    async fn passes_bytes_through() {
        use tokio::io::AsyncReadExt;
        let mut bytes = settings(&[(MAX_CONCURRENT_STREAMS, 7)]);
        bytes.extend_from_slice(b"rest");
        let p = std::sync::Arc::new(Preface::default());
        let mut s = Sniff::new(&bytes[..], p.clone());
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        assert_eq!((out, p.max_streams()), (bytes.clone(), Some(7)));
    }
}
