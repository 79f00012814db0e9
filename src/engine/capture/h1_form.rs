//! A captured head in the form an HTTP/1.1 connection writes it, for pipelined
//! connections, which write many copies at once (hyper builds its own for the others).

use http::Uri;

use super::head::RequestHead;
use crate::engine::config::Dest;

impl RequestHead {
    /// The copy as HTTP/1.1 bytes, appended to `out` (a pipelined connection writes many
    /// at once): request line, headers (`Host` kept, or the destination's authority) and,
    /// when the copy has one, its whole body with its length. `false` if the parts make no
    /// request target (nothing is appended).
    pub fn write_h1(&self, dest: &Dest, body: Option<&[u8]>, out: &mut Vec<u8>) -> bool {
        let path = self.path(dest);
        if Uri::from_maybe_shared(path.clone()).is_err() {
            return false;
        }
        out.extend_from_slice(self.method.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(&path);
        out.extend_from_slice(b" HTTP/1.1\r\n");
        for (name, value) in &self.headers {
            // Framing is this writer's own: a wrong length would shift every answer after it.
            if name == http::header::CONTENT_LENGTH {
                continue;
            }
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if !self.headers.contains_key(http::header::HOST) {
            out.extend_from_slice(b"host: ");
            out.extend_from_slice(dest.authority.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        match body {
            Some(body) => {
                out.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
                out.extend_from_slice(body);
            }
            None => out.extend_from_slice(b"\r\n"),
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::capture::HeaderEdits;
    use crate::engine::capture::head::tests::{dest, hdrs};
    use crate::engine::config::PathKind;

    #[test]
    fn http1_bytes_for_pipelining() {
        let h = hdrs(&[("Host", "shop.example"), ("Content-Length", "99"), ("X-A", "1")]);
        let head =
            RequestHead::capture(b"POST", b"/p?q", h.iter().copied(), &HeaderEdits::default()).unwrap();
        let mut out = Vec::new();
        assert!(head.write_h1(&dest("http://m:9/pre", PathKind::Prefix), Some(b"body"), &mut out));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /pre/p?q HTTP/1.1\r\nhost: shop.example\r\nx-a: 1\r\ncontent-length: 4\r\n\r\nbody"
        );
        let none = Vec::<(&[u8], &[u8])>::new();
        let head = RequestHead::capture(b"GET", b"/", none.into_iter(), &HeaderEdits::default()).unwrap();
        let mut out = Vec::new();
        assert!(head.write_h1(&dest("http://m:9", PathKind::Prefix), None, &mut out));
        assert_eq!(out, b"GET / HTTP/1.1\r\nhost: m:9\r\n\r\n");
    }
}
