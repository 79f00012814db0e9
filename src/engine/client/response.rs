//! What a mirror answered: status, headers, and as much of the body as was asked for.

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body_util::BodyExt;
use hyper::body::Body;

use crate::engine::outcome::Outcome;

#[derive(Debug, Clone, Default)]
pub struct MirrorResponse {
    pub status: u16,
    pub headers: HeaderMap,
    /// The first `keep` bytes of the body (empty when none were asked for).
    pub body: Bytes,
    /// The whole body's length, read to the end either way.
    pub body_len: u64,
    /// Whether it came over a connection an earlier copy opened.
    pub reused: bool,
}

impl MirrorResponse {
    pub fn outcome(&self) -> Outcome {
        Outcome::from_status(self.status)
    }

    /// Whether more of the body arrived than was kept.
    pub fn truncated(&self) -> bool {
        self.body_len > self.body.len() as u64
    }

    /// Reads a response to the end (only a fully read response leaves an HTTP/1.1
    /// connection reusable), keeping up to `keep` bytes of its body.
    ///
    /// # Errors
    /// The body's error, when the mirror breaks the response off.
    pub async fn read<B>(resp: http::Response<B>, keep: usize) -> Result<MirrorResponse, B::Error>
    where
        B: Body<Data = Bytes> + Unpin,
    {
        let (parts, mut body) = resp.into_parts();
        let mut kept = BytesMut::new();
        let mut len = 0u64;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                len += data.len() as u64;
                let room = keep.saturating_sub(kept.len());
                kept.extend_from_slice(&data[..room.min(data.len())]);
            }
        }
        Ok(MirrorResponse {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: kept.freeze(),
            body_len: len,
            reused: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    #[tokio::test]
    async fn keeps_at_most_what_was_asked() {
        let resp =
            http::Response::builder().status(404).body(Full::new(Bytes::from_static(b"0123456789"))).unwrap();
        let r = MirrorResponse::read(resp, 4).await.unwrap();
        assert_eq!((r.status, &r.body[..], r.body_len, r.truncated()), (404, &b"0123"[..], 10, true));
        assert_eq!(r.outcome(), Outcome::Status4xx);
        let resp = http::Response::new(Full::new(Bytes::from_static(b"ok")));
        let r = MirrorResponse::read(resp, 0).await.unwrap();
        assert_eq!((r.body.len(), r.body_len, r.outcome()), (0, 2, Outcome::Ok));
    }
}
