//! The captured request head: what nginx accepted, minus hop-by-hop headers, ready to replay.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Uri};

use crate::engine::config::defaults::MARK_HEADER;
use crate::engine::config::{Dest, PathKind};

/// [`MARK_HEADER`] as a header name, for every copy's loop guard.
static MARK: HeaderName = HeaderName::from_static("x-async-mirror");

/// Headers that describe one connection, not the request (RFC 9110 §7.6.1), plus
/// the legacy `Proxy-Connection`; never forwarded to a mirror.
const HOP_BY_HOP: [&str; 7] =
    ["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"];

/// Why a request cannot be replayed as a copy; the copy is counted `skipped` (the
/// variant is kept for debugging, not shown to the client or the log).
#[derive(Debug, PartialEq, Eq)]
pub enum CaptureError {
    Method,
    Uri,
    Header(String),
}

/// An immutable snapshot of the client request, shared by every target's copy.
#[derive(Debug, Clone)]
pub struct RequestHead {
    pub method: Method,
    /// `$request_uri`: path and query exactly as the client sent them.
    pub request_uri: Bytes,
    pub headers: HeaderMap,
    /// The client sent `TE: trailers` (gRPC does): kept on HTTP/2 copies, the one
    /// hop-by-hop header HTTP/2 allows.
    pub te_trailers: bool,
}

/// What a scrubbed header's value becomes on a copy.
pub const SCRUBBED: &str = "[scrubbed]";

/// Header edits from `async_mirror_set_header`, `async_mirror_scrub_header` and the mark
/// header, evaluated by nginx.
#[derive(Debug, Default, Clone)]
pub struct HeaderEdits<'a> {
    /// `(name, value)`; an empty value removes the header.
    pub set: Vec<(&'a [u8], &'a [u8])>,
    /// Headers whose values are replaced by [`SCRUBBED`] (credentials).
    pub scrub: &'a [String],
    /// Loop-guard header added with value `1`.
    pub mark: Option<&'a [u8]>,
    /// The authority nginx routed on when the request line had one (absolute form):
    /// it, not the client's `Host` header, is the copy's `Host`.
    pub host: Option<&'a [u8]>,
}

impl RequestHead {
    /// Builds the snapshot from raw parts as nginx holds them.
    ///
    /// # Errors
    /// When the method, URI or a header cannot be expressed as a valid HTTP/1.1
    /// request (nginx is more lenient than the `http` crate in places).
    pub fn capture<'h>(
        method: &[u8],
        request_uri: &[u8],
        headers: impl Iterator<Item = (&'h [u8], &'h [u8])> + Clone,
        edits: &HeaderEdits<'_>,
    ) -> Result<RequestHead, CaptureError> {
        let method = Method::from_bytes(method).map_err(|_| CaptureError::Method)?;
        if request_uri.first() != Some(&b'/') && request_uri != b"*" {
            return Err(CaptureError::Uri);
        }
        let mut drop_named: Vec<&[u8]> = Vec::new();
        let mut te_trailers = false;
        for (name, value) in headers.clone() {
            if name.eq_ignore_ascii_case(b"connection") {
                drop_named.extend(value.split(|&b| b == b',').map(trim).filter(|t| !t.is_empty()));
            }
            if name.eq_ignore_ascii_case(b"te") {
                te_trailers |= value.split(|&b| b == b',').any(|t| trim(t).eq_ignore_ascii_case(b"trailers"));
            }
        }
        // Left out: hop-by-hop headers, and those `async_mirror_set_header` replaces.
        let kept = |name: &[u8]| {
            !named(name, HOP_BY_HOP.iter().map(|h| h.as_bytes()))
                && !named(name, drop_named.iter().copied())
                && !named(name, edits.set.iter().map(|(n, _)| *n))
        };
        let scrubbed = |name: &[u8]| named(name, edits.scrub.iter().map(|s| s.as_bytes()));
        let copied = |name: &[u8]| kept(name) && !scrubbed(name);
        // The request-target and the values the copy keeps are copied once, into one
        // buffer the head's parts share: a copy's head is two allocations, not one per
        // header, freed on the runtime, away from the nginx thread's allocator. Values left
        // out or scrubbed are never copied.
        let values = headers.clone().filter(|(n, _)| copied(n));
        let mut buf =
            Vec::with_capacity(request_uri.len() + values.clone().map(|(_, v)| v.len()).sum::<usize>());
        buf.extend_from_slice(request_uri);
        values.for_each(|(_, v)| buf.extend_from_slice(v));
        let buf = Bytes::from(buf);
        let request_uri = buf.slice(..request_uri.len());
        // Checked here, on the capture path, so building the request later cannot fail.
        Uri::from_maybe_shared(request_uri.clone()).map_err(|_| CaptureError::Uri)?;

        // A hint only: a client may send thousands of headers, which a map holds as extra
        // values of a few names, never as that many slots.
        let mut map = HeaderMap::with_capacity(headers.clone().count().min(64) + edits.set.len() + 2);
        let mut at = request_uri.len();
        for (name, value) in headers.filter(|(n, _)| kept(n)) {
            let header = |e| CaptureError::Header(String::from_utf8_lossy(e).into_owned());
            let n = HeaderName::from_bytes(name).map_err(|_| header(name))?;
            let v = if scrubbed(name) {
                HeaderValue::from_static(SCRUBBED)
            } else {
                let value_at = at..at + value.len();
                at = value_at.end;
                HeaderValue::from_maybe_shared(buf.slice(value_at)).map_err(|_| header(name))?
            };
            map.append(n, v);
        }
        for (name, value) in &edits.set {
            let header = || CaptureError::Header(String::from_utf8_lossy(name).into_owned());
            let n = HeaderName::from_bytes(name).map_err(|_| header())?;
            map.remove(&n);
            if !value.is_empty() {
                map.insert(n, HeaderValue::from_bytes(value).map_err(|_| header())?);
            }
        }
        if let Some(host) = edits.host {
            let v = HeaderValue::from_bytes(host).map_err(|_| CaptureError::Header("host".into()))?;
            map.insert(http::header::HOST, v);
        }
        if let Some(mark) = edits.mark {
            // The default name is parsed once, not per request (a name hyper does not
            // know is an allocation).
            let n = if mark.eq_ignore_ascii_case(MARK_HEADER.as_bytes()) {
                MARK.clone()
            } else {
                HeaderName::from_bytes(mark).map_err(|_| CaptureError::Header("mark".into()))?
            };
            map.insert(n, HeaderValue::from_static("1"));
        }
        Ok(RequestHead { method, request_uri, headers: map, te_trailers })
    }

    /// Rough heap footprint, charged against the backlog byte budget.
    pub fn weight(&self) -> usize {
        let headers: usize = self.headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 32).sum();
        std::mem::size_of::<Self>() + self.request_uri.len() + headers
    }

    pub(super) fn path(&self, dest: &Dest) -> Bytes {
        match dest.kind {
            PathKind::Target => Bytes::from(dest.url.path.clone()),
            // `OPTIONS *` asks about the server as a whole: no prefix goes before it.
            PathKind::Prefix if &self.request_uri[..] == b"*" => self.request_uri.clone(),
            PathKind::Prefix if dest.url.path.is_empty() => self.request_uri.clone(),
            PathKind::Prefix => {
                let prefix = dest.url.path.as_bytes();
                let mut p = Vec::with_capacity(prefix.len() + self.request_uri.len());
                p.extend_from_slice(prefix);
                p.extend_from_slice(&self.request_uri);
                Bytes::from(p)
            }
        }
    }
}

/// Whether `name` is one of `names`, as header names compare.
fn named<'a>(name: &[u8], mut names: impl Iterator<Item = &'a [u8]>) -> bool {
    names.any(|n| name.eq_ignore_ascii_case(n))
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(s.len());
    let end = s.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(start, |e| e + 1);
    &s[start..end]
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::engine::config::{TargetSpec, parse_dest};

    pub(in crate::engine::capture) fn dest(url: &str, kind: PathKind) -> Dest {
        let spec = TargetSpec {
            url: url.into(),
            https: url.starts_with("https"),
            dest: None,
            tls: None,
            http2: false,
            pipeline: None,
            resolve: None,
            allowed: Vec::new(),
        };
        parse_dest(url.as_bytes(), &spec, kind).unwrap()
    }

    pub(in crate::engine::capture) fn hdrs(
        list: &[(&'static str, &'static str)],
    ) -> Vec<(&'static [u8], &'static [u8])> {
        list.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())).collect()
    }

    #[test]
    fn the_parsed_mark_is_the_default_mark() {
        assert_eq!(MARK.as_str(), MARK_HEADER.to_ascii_lowercase());
    }

    #[test]
    fn strips_hop_by_hop_and_named_headers() {
        let h = hdrs(&[
            ("Host", "example.com"),
            ("Connection", "keep-alive, X-Private"),
            ("X-Private", "secret"),
            ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"),
            ("X-Custom", "a"),
            ("X-Custom", "b"),
        ]);
        let head =
            RequestHead::capture(b"GET", b"/p?q=1", h.iter().copied(), &HeaderEdits::default()).unwrap();
        let names: Vec<_> = head.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["host", "x-custom"]);
        assert_eq!(head.headers.get_all("x-custom").iter().count(), 2);
        let req = head.to_request(&dest("http://mirror:8080/shadow", PathKind::Prefix), ()).unwrap();
        assert_eq!(req.uri(), "/shadow/p?q=1");
        assert_eq!(req.headers()["host"], "example.com");
    }

    #[test]
    fn thousands_of_headers_are_captured_and_secrets_scrubbed() {
        // nginx takes 32,000 one-byte HTTP/2 header references in its default budget.
        let mut h = vec![(&b"a"[..], &b""[..]); 32_000];
        h.push((b"Cookie", b"session=0123456789abcdef"));
        h.push((b"Connection", b"x-hop"));
        h.push((b"X-Hop", b"hop-value"));
        let edits = HeaderEdits { scrub: &["cookie".to_string()], ..Default::default() };
        let head = RequestHead::capture(b"GET", b"/p", h.iter().copied(), &edits).unwrap();
        assert_eq!(head.headers.get_all("a").iter().count(), 32_000);
        assert_eq!(head.headers["cookie"], SCRUBBED);
        assert!(!head.headers.contains_key("x-hop"));
        assert_eq!(&head.request_uri[..], b"/p");
    }

    #[test]
    fn http2_copies_carry_authority_and_trailers() {
        let h = hdrs(&[("Host", "shop.example"), ("TE", "trailers"), ("Content-Type", "application/grpc")]);
        let head =
            RequestHead::capture(b"POST", b"/svc/M", h.iter().copied(), &HeaderEdits::default()).unwrap();
        assert!(head.te_trailers && !head.headers.contains_key("te"));
        let dest = dest("http://10.0.0.1:50051/p", PathKind::Prefix);
        let req = head.to_h2_request(&dest, ()).unwrap();
        assert_eq!(req.uri(), "http://shop.example/p/svc/M");
        assert_eq!(
            (req.headers()["te"].to_str().unwrap(), req.headers().contains_key("host")),
            ("trailers", false)
        );
        assert!(
            head.to_request(&dest, ()).unwrap().headers().get("te").is_none(),
            "never on HTTP/1.1 copies"
        );
    }

    #[test]
    fn applies_edits_and_mark() {
        let h = hdrs(&[("X-A", "1"), ("X-B", "2")]);
        let edits = HeaderEdits {
            set: vec![(b"X-A", b"over"), (b"X-B", b""), (b"X-New", b"n")],
            mark: Some(b"X-Async-Mirror"),
            ..Default::default()
        };
        let head = RequestHead::capture(b"DELETE", b"/", h.iter().copied(), &edits).unwrap();
        assert_eq!(head.headers["x-a"], "over");
        assert!(!head.headers.contains_key("x-b"));
        assert_eq!(head.headers["x-new"], "n");
        assert_eq!(head.headers["x-async-mirror"], "1");
        let req = head.to_request(&dest("http://127.0.0.1:9", PathKind::Prefix), ()).unwrap();
        assert_eq!(req.headers()["host"], "127.0.0.1:9");
        assert_eq!(req.method(), Method::DELETE);
        assert!(head.weight() > 0);
    }

    #[test]
    fn scrubs_credentials_and_takes_the_routed_host() {
        let h = hdrs(&[
            ("Host", "client-said"),
            ("Authorization", "Bearer s3cret"),
            ("Cookie", "a=1"),
            ("X-Ok", "v"),
        ]);
        let scrub = ["authorization".to_string(), "Cookie".to_string()];
        let edits = HeaderEdits { scrub: &scrub, host: Some(b"routed.example:8080"), ..Default::default() };
        let head = RequestHead::capture(b"GET", b"/x", h.iter().copied(), &edits).unwrap();
        assert_eq!(
            (head.headers["authorization"].to_str().unwrap(), head.headers["cookie"].to_str().unwrap()),
            (SCRUBBED, SCRUBBED)
        );
        assert_eq!(
            (head.headers["x-ok"].to_str().unwrap(), head.headers["host"].to_str().unwrap()),
            ("v", "routed.example:8080")
        );
    }

    #[test]
    fn asterisk_form_keeps_no_prefix() {
        let none = Vec::<(&[u8], &[u8])>::new();
        let head = RequestHead::capture(b"OPTIONS", b"*", none.into_iter(), &HeaderEdits::default()).unwrap();
        let req = head.to_request(&dest("http://m:9/prefix", PathKind::Prefix), ()).unwrap();
        assert_eq!(req.uri(), "*");
    }

    #[test]
    fn rejects_unrepresentable() {
        let none = Vec::<(&[u8], &[u8])>::new();
        let e = HeaderEdits::default();
        assert_eq!(
            RequestHead::capture(b"G T", b"/", none.iter().copied(), &e).unwrap_err(),
            CaptureError::Method
        );
        assert_eq!(
            RequestHead::capture(b"GET", b"http://x/", none.iter().copied(), &e).unwrap_err(),
            CaptureError::Uri
        );
        let bad = hdrs(&[("X-Ctl", "a\u{1}b")]);
        assert!(matches!(
            RequestHead::capture(b"GET", b"/", bad.iter().copied(), &e),
            Err(CaptureError::Header(_))
        ));
    }

    proptest::proptest! {
        /// Arbitrary bytes never panic; what is captured is exactly the input minus the
        /// hop-by-hop headers, in order.
        #[test]
        fn capture_is_total_and_faithful(
            method in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..10),
            uri in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
            raw in proptest::collection::vec((proptest::collection::vec(proptest::prelude::any::<u8>(), 0..12),
                                              proptest::collection::vec(proptest::prelude::any::<u8>(), 0..20)), 0..8),
            names in proptest::collection::vec("[A-Za-z][A-Za-z0-9-]{0,10}", 0..8),
        ) {
            let h: Vec<(&[u8], &[u8])> = raw.iter().map(|(n, v)| (&n[..], &v[..])).collect();
            let _ = RequestHead::capture(&method, &uri, h.iter().copied(), &HeaderEdits::default());

            let valid: Vec<(String, String)> = names.iter().map(|n| (n.clone(), format!("v-{n}"))).collect();
            let h: Vec<(&[u8], &[u8])> = valid.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())).collect();
            let head = RequestHead::capture(b"GET", b"/x", h.iter().copied(), &HeaderEdits::default()).unwrap();
            let named: Vec<String> = valid.iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
                .flat_map(|(_, v)| v.split(',').map(|t| t.trim().to_ascii_lowercase()).collect::<Vec<_>>())
                .collect();
            let want: Vec<(String, String)> = valid.iter()
                .filter(|(n, _)| !HOP_BY_HOP.contains(&n.to_ascii_lowercase().as_str())
                    && !named.contains(&n.to_ascii_lowercase()))
                .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
                .collect();
            let mut got: Vec<(String, String)> = Vec::new();
            for name in head.headers.keys() {
                for v in head.headers.get_all(name) {
                    got.push((name.as_str().to_string(), v.to_str().unwrap().to_string()));
                }
            }
            let mut want_sorted = want.clone();
            want_sorted.sort();
            got.sort();
            proptest::prop_assert_eq!(got, want_sorted);
        }
    }
}
