//! A captured head as the `http::Request` hyper sends: one per destination, over
//! HTTP/1.1 or HTTP/2.

use std::sync::Arc;

use http::header::HeaderValue;
use http::{HeaderMap, Request, Uri};

use super::head::RequestHead;
use crate::engine::config::Dest;

impl RequestHead {
    /// The copy for one destination: its prefix + `$request_uri` (or its whole request
    /// target), `Host` kept (or the destination's authority). Both parts were checked
    /// when they were captured and configured; `None` if they still make no request
    /// target (the copy is then not sent anywhere else).
    pub fn to_request<B>(&self, dest: &Dest, body: B) -> Option<Request<B>> {
        self.request_with(dest, body, self.headers.clone())
    }

    /// As [`RequestHead::to_request`], but the header map moves into the request instead
    /// of being copied when `head` has no other holder (one target, nothing recorded):
    /// building a copy's request then allocates no second map. The head keeps its method
    /// and request target.
    pub fn take_request<B>(head: &mut Arc<RequestHead>, dest: &Dest, body: B) -> Option<Request<B>> {
        match Arc::get_mut(head) {
            Some(h) => {
                let headers = std::mem::take(&mut h.headers);
                h.request_with(dest, body, headers)
            }
            None => head.to_request(dest, body),
        }
    }

    fn request_with<B>(&self, dest: &Dest, body: B, headers: HeaderMap) -> Option<Request<B>> {
        let uri = Uri::from_maybe_shared(self.path(dest)).ok()?;
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = uri;
        *req.headers_mut() = headers;
        if !req.headers().contains_key(http::header::HOST) {
            if let Ok(v) = HeaderValue::from_str(&dest.authority) {
                req.headers_mut().insert(http::header::HOST, v);
            }
        }
        Some(req)
    }

    /// The copy as an HTTP/2 request: the client's `Host` (or the destination's authority)
    /// becomes `:authority`, and `te: trailers` is kept when the client sent it.
    pub fn to_h2_request<B>(&self, dest: &Dest, body: B) -> Option<Request<B>> {
        let mut req = self.to_request(dest, body)?;
        let host = req.headers_mut().remove(http::header::HOST);
        let authority = host
            .as_ref()
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.parse::<http::uri::Authority>().ok())
            .or_else(|| dest.authority.parse().ok());
        let mut parts = std::mem::take(req.uri_mut()).into_parts();
        parts.scheme = Some(if dest.url.https { http::uri::Scheme::HTTPS } else { http::uri::Scheme::HTTP });
        parts.authority = authority;
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
        *req.version_mut() = http::Version::HTTP_2;
        if self.te_trailers {
            req.headers_mut().insert(http::header::TE, HeaderValue::from_static("trailers"));
        }
        Some(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::capture::HeaderEdits;
    use crate::engine::capture::head::tests::{dest, hdrs};
    use crate::engine::config::PathKind;

    #[test]
    fn a_sole_holder_moves_its_headers_a_shared_head_is_copied() {
        let h = hdrs(&[("Host", "example.com"), ("X-A", "1")]);
        let dest = dest("http://m:9/p", PathKind::Prefix);
        let mut head = Arc::new(
            RequestHead::capture(b"GET", b"/x", h.iter().copied(), &HeaderEdits::default()).unwrap(),
        );
        let other = head.clone();
        let req = RequestHead::take_request(&mut head, &dest, ()).unwrap();
        assert_eq!((req.uri().to_string(), req.headers()["x-a"].to_str().unwrap()), ("/p/x".into(), "1"));
        assert_eq!(head.headers.len(), 2, "another holder still reads the headers");
        drop(other);
        let req = RequestHead::take_request(&mut head, &dest, ()).unwrap();
        assert_eq!(req.headers()["host"], "example.com");
        assert!(head.headers.is_empty(), "moved, not copied");
        assert_eq!((head.method.as_str(), &head.request_uri[..]), ("GET", &b"/x"[..]));
    }
}
