//! What a mirror answered: status, headers, and as much of the body as was asked for.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::engine::capture::{Backlog, Charge};
use http::HeaderMap;
use http_body_util::BodyExt;
use hyper::body::Body;

use crate::engine::outcome::Outcome;

/// How much of a mirror's body to keep (for comparison), and the budget it is charged to
/// as it is read: a body is never held before it is counted.
#[derive(Debug, Clone, Default)]
pub struct Keep {
    pub max: usize,
    pub budget: Option<Arc<Backlog>>,
}

#[derive(Debug, Default)]
pub struct MirrorResponse {
    pub status: u16,
    pub headers: HeaderMap,
    /// The first `keep` bytes of the body (empty when none were asked for).
    pub body: Bytes,
    /// The whole body's length, read to the end either way.
    pub body_len: u64,
    /// Whether it came over a connection an earlier copy opened.
    pub reused: bool,
    /// The kept body's bytes in the budget, given back when the response is dropped.
    pub _charge: Option<Charge>,
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
    /// connection reusable), keeping up to `keep.max` bytes of its body, each charged to
    /// the budget as it arrives; when the budget has no room, nothing is kept (the body
    /// then counts as too large to compare).
    ///
    /// # Errors
    /// The body's error, when the mirror breaks the response off.
    pub async fn read<B>(resp: http::Response<B>, keep: &Keep) -> Result<MirrorResponse, B::Error>
    where
        B: Body<Data = Bytes> + Unpin,
    {
        let (parts, mut body) = resp.into_parts();
        let mut kept = BytesMut::new();
        let mut len = 0u64;
        let mut charge = keep.budget.as_ref().map(Charge::new);
        let mut max = keep.max;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                len += data.len() as u64;
                let take = max.saturating_sub(kept.len()).min(data.len());
                if take > 0 && charge.as_mut().is_some_and(|c| !c.grow(take)) {
                    // No room in the budget: keep nothing (the charge goes with it).
                    (kept, charge, max) = (BytesMut::new(), None, 0);
                    continue;
                }
                kept.extend_from_slice(&data[..take]);
            }
        }
        Ok(MirrorResponse {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: kept.freeze(),
            body_len: len,
            reused: false,
            _charge: charge,
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
        let r = MirrorResponse::read(resp, &Keep { max: 4, budget: None }).await.unwrap();
        assert_eq!((r.status, &r.body[..], r.body_len, r.truncated()), (404, &b"0123"[..], 10, true));
        assert_eq!(r.outcome(), Outcome::Status4xx);
        let resp = http::Response::new(Full::new(Bytes::from_static(b"ok")));
        let r = MirrorResponse::read(resp, &Keep::default()).await.unwrap();
        assert_eq!((r.body.len(), r.body_len, r.outcome()), (0, 2, Outcome::Ok));
    }

    #[tokio::test]
    async fn a_kept_body_is_charged_as_read_and_not_kept_past_the_budget() {
        let budget = Backlog::new(1, 6);
        let keep = Keep { max: 100, budget: Some(budget.clone()) };
        let r = MirrorResponse::read(http::Response::new(Full::new(Bytes::from_static(b"01234"))), &keep)
            .await
            .unwrap();
        assert_eq!((&r.body[..], budget.bytes()), (&b"01234"[..], 5), "charged while held");
        let over = MirrorResponse::read(http::Response::new(Full::new(Bytes::from_static(b"abc"))), &keep)
            .await
            .unwrap();
        assert!(over.body.is_empty() && over.truncated(), "no room: not kept, not compared");
        drop(r);
        assert_eq!(budget.bytes(), 0, "given back with the response");
    }
}
