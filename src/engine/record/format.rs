//! GoReplay's record format, written and read.
//!
//! A record is one header line, `1 <id> <unix ns> 0` for a request or
//! `2 <id> <unix ns> <latency ns>` for the answer to it (same id), then the raw HTTP/1.1
//! message. A file holds records each followed by [`SEPARATOR`], as GoReplay's
//! `--output-file` writes them; a Kafka message holds one record. A body that contains the
//! separator could forge records, so such a record is never written.

use std::io::{self, Read};

use bytes::Bytes;

use crate::engine::capture::{RequestHead, SCRUBBED};

/// What follows every record in a file.
pub const SEPARATOR: &[u8] = "\n\u{1F435}\u{1F648}\u{1F649}\n".as_bytes();
pub const REQUEST: u8 = b'1';
pub const RESPONSE: u8 = b'2';

/// What a capture hides in a record's headers, and the one it leaves out (the mark header
/// that only copies carry).
#[derive(Debug, Clone, Copy, Default)]
pub struct Redaction<'a> {
    pub scrub: &'a [String],
    pub leave_out: Option<&'a str>,
}

impl Redaction<'_> {
    fn push(&self, out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
        if self.leave_out.is_some_and(|m| name.eq_ignore_ascii_case(m.as_bytes())) {
            return;
        }
        let scrubbed = self.scrub.iter().any(|s| name.eq_ignore_ascii_case(s.as_bytes()));
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(if scrubbed { SCRUBBED.as_bytes() } else { value });
        out.extend_from_slice(b"\r\n");
    }
}

/// A record id as GoReplay makes them: 24 hex digits. `seed` tells workers apart, `n`
/// requests within one.
pub fn record_id(seed: u64, n: u64) -> String {
    let mut z = seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    format!("{:08x}{:016x}", (seed >> 32) as u32 ^ seed as u32, z ^ (z >> 31))
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    find(hay, needle).is_some()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let first = needle[0];
    let mut at = 0;
    while let Some(i) = hay.get(at..)?.iter().position(|&b| b == first) {
        let start = at + i;
        if hay.get(start..start + needle.len()) == Some(needle) {
            return Some(start);
        }
        at = start + 1;
    }
    None
}

/// The request record: the request line as the client sent it, the captured headers
/// (redacted), and the body with its length (the client's chunked framing is gone).
/// `None` when the body holds the separator.
pub fn request_record(
    id: &str,
    at_ns: u64,
    head: &RequestHead,
    body: &[u8],
    r: &Redaction<'_>,
) -> Option<Vec<u8>> {
    if contains(body, SEPARATOR) {
        return None;
    }
    let mut out = Vec::with_capacity(128 + head.request_uri.len() + body.len());
    out.extend_from_slice(format!("1 {id} {at_ns} 0\n{} ", head.method).as_bytes());
    out.extend_from_slice(&head.request_uri);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &head.headers {
        r.push(&mut out, name.as_str().as_bytes(), value.as_bytes());
    }
    if !body.is_empty() && !head.headers.contains_key(http::header::CONTENT_LENGTH) {
        out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    Some(out)
}

/// The answer's record: status line, headers (`Name: value\r\n` lines, redacted) and body
/// as far as it was kept. `None` when the body holds the separator.
pub fn response_record(
    id: &str,
    at_ns: u64,
    latency_ns: u64,
    status: u16,
    headers: &[u8],
    body: &[u8],
    r: &Redaction<'_>,
) -> Option<Vec<u8>> {
    if contains(body, SEPARATOR) {
        return None;
    }
    let reason = http::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("");
    let mut out = Vec::with_capacity(128 + body.len());
    out.extend_from_slice(format!("2 {id} {at_ns} {latency_ns}\nHTTP/1.1 {status} {reason}\r\n").as_bytes());
    for line in headers.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(colon) = line.iter().position(|&b| b == b':') {
            let value = &line[colon + 1..];
            r.push(&mut out, &line[..colon], value.strip_prefix(b" ").unwrap_or(value));
        }
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    Some(out)
}

/// One record, read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    pub kind: u8,
    pub id: String,
    /// Unix time in nanoseconds.
    pub at_ns: u64,
    pub latency_ns: u64,
    pub http: Bytes,
}

/// Reads a record's header line.
///
/// # Errors
/// Anything that is not `K ID TIME [LATENCY]\n...`.
pub fn parse_payload(p: &[u8]) -> Result<Payload, String> {
    let nl = p.iter().position(|&b| b == b'\n').ok_or("no header line")?;
    let line = std::str::from_utf8(&p[..nl]).map_err(|_| "header line is not UTF-8")?;
    let mut parts = line.split(' ');
    let kind = match parts.next() {
        Some(k) if k.len() == 1 => k.as_bytes()[0],
        _ => return Err(format!("bad record type in \"{line}\"")),
    };
    let id = parts.next().filter(|s| !s.is_empty()).ok_or("no id")?.to_string();
    let at_ns = parts.next().and_then(|t| t.parse().ok()).ok_or("bad time")?;
    let latency_ns = parts.next().map_or(Some(0), |l| l.parse::<i64>().ok().map(|v| v.max(0) as u64));
    let latency_ns = latency_ns.ok_or("bad latency")?;
    Ok(Payload { kind, id, at_ns, latency_ns, http: Bytes::copy_from_slice(&p[nl + 1..]) })
}

/// An HTTP/1.x message read from a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The start line's three parts: method, target, version (or version, status, reason).
    pub start: [String; 3],
    pub headers: Vec<(Bytes, Bytes)>,
    pub body: Bytes,
}

impl Message {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes())).map(|(_, v)| &v[..])
    }
}

/// Parses the HTTP part of a record: the body is whatever follows the head (a chunked one
/// is decoded).
///
/// # Errors
/// A message without a complete head.
pub fn parse_http(raw: &[u8]) -> Result<Message, String> {
    let end = find(raw, b"\r\n\r\n").map(|i| (i, i + 4)).or_else(|| find(raw, b"\n\n").map(|i| (i, i + 2)));
    let (head_end, body_start) = end.ok_or("no end of head")?;
    let head = std::str::from_utf8(&raw[..head_end]).map_err(|_| "head is not UTF-8")?;
    let mut lines = head.split('\n').map(|l| l.trim_end_matches('\r'));
    let first = lines.next().ok_or("empty head")?;
    let mut words = first.splitn(3, ' ');
    let start = [0, 1, 2].map(|_| words.next().unwrap_or("").to_string());
    if start[0].is_empty() || start[1].is_empty() {
        return Err(format!("bad start line \"{first}\""));
    }
    let mut headers = Vec::new();
    for line in lines {
        let (n, v) = line.split_once(':').ok_or_else(|| format!("bad header line \"{line}\""))?;
        headers
            .push((Bytes::copy_from_slice(n.trim().as_bytes()), Bytes::copy_from_slice(v.trim().as_bytes())));
    }
    let mut message = Message { start, headers, body: Bytes::copy_from_slice(&raw[body_start..]) };
    if message.header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case(b"chunked")) {
        if let Some(body) = dechunk(&message.body) {
            message.body = body;
            message.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(b"transfer-encoding"));
        }
    }
    Ok(message)
}

fn dechunk(mut raw: &[u8]) -> Option<Bytes> {
    let mut out = Vec::new();
    loop {
        let nl = raw.iter().position(|&b| b == b'\n')?;
        let size = std::str::from_utf8(&raw[..nl]).ok()?.trim().split(';').next()?.trim();
        let n = usize::from_str_radix(size, 16).ok()?;
        raw = &raw[nl + 1..];
        if n == 0 {
            return Some(out.into());
        }
        out.extend_from_slice(raw.get(..n)?);
        raw = raw.get(n..)?;
        raw = raw.strip_prefix(b"\r\n").or_else(|| raw.strip_prefix(b"\n"))?;
    }
}

/// The records of a file, one at a time, split on [`SEPARATOR`] as GoReplay's reader does.
pub struct PayloadReader<R> {
    r: R,
    buf: Vec<u8>,
    /// Where the next record starts in `buf`.
    start: usize,
    /// Where the separator search goes on (everything before has none).
    scanned: usize,
    eof: bool,
}

impl<R: Read> PayloadReader<R> {
    pub fn new(r: R) -> Self {
        PayloadReader { r, buf: Vec::new(), start: 0, scanned: 0, eof: false }
    }

    /// The next record's bytes (without the separator), or `None` at the end.
    ///
    /// # Errors
    /// A read error.
    pub fn next_payload(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(i) = find(&self.buf[self.scanned..], SEPARATOR) {
                let end = self.scanned + i;
                let payload = self.buf[self.start..end].to_vec();
                self.start = end + SEPARATOR.len();
                self.scanned = self.start;
                return Ok(Some(payload));
            }
            if self.eof {
                let last = self.buf.split_off(self.start);
                (self.start, self.scanned) = (0, 0);
                self.buf.clear();
                return Ok((!last.iter().all(u8::is_ascii_whitespace)).then_some(last));
            }
            // Records already read leave the buffer before it grows.
            self.buf.drain(..self.start);
            self.scanned = self.buf.len().saturating_sub(SEPARATOR.len() - 1);
            self.start = 0;
            let mut chunk = [0u8; 64 << 10];
            match self.r.read(&mut chunk) {
                Ok(0) => self.eof = true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::capture::HeaderEdits;
    use proptest::prelude::*;

    fn head(method: &str, uri: &str, headers: &[(String, String)]) -> RequestHead {
        let h: Vec<(&[u8], &[u8])> = headers.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())).collect();
        RequestHead::capture(method.as_bytes(), uri.as_bytes(), h.into_iter(), &HeaderEdits::default())
            .unwrap()
    }

    #[test]
    fn a_request_and_its_answer() {
        let h = head(
            "POST",
            "/a?b=1",
            &[
                ("Host".into(), "shop".into()),
                ("Cookie".into(), "s=1".into()),
                ("X-Async-Mirror".into(), "1".into()),
            ],
        );
        let scrub = vec!["cookie".to_string(), "set-cookie".to_string()];
        let r = Redaction { scrub: &scrub, leave_out: Some("X-Async-Mirror") };
        let rec = request_record("ab12", 1_700_000_000_000_000_000, &h, b"{\"x\":1}", &r).unwrap();
        let text = String::from_utf8(rec.clone()).unwrap();
        assert_eq!(
            text,
            "1 ab12 1700000000000000000 0\nPOST /a?b=1 HTTP/1.1\r\nhost: shop\r\ncookie: [scrubbed]\r\n\
             content-length: 7\r\n\r\n{\"x\":1}"
        );
        let p = parse_payload(&rec).unwrap();
        assert_eq!(
            (p.kind, p.id.as_str(), p.at_ns, p.latency_ns),
            (REQUEST, "ab12", 1_700_000_000_000_000_000, 0)
        );
        let m = parse_http(&p.http).unwrap();
        assert_eq!(
            (m.start[0].as_str(), m.start[1].as_str(), &m.body[..]),
            ("POST", "/a?b=1", &b"{\"x\":1}"[..])
        );
        let resp = response_record("ab12", 5, 3, 404, b"Set-Cookie: t=2\r\n", b"no", &r).unwrap();
        assert_eq!(
            String::from_utf8(resp).unwrap(),
            "2 ab12 5 3\nHTTP/1.1 404 Not Found\r\nSet-Cookie: [scrubbed]\r\n\r\nno"
        );
        let forged = [b"x".as_ref(), SEPARATOR, b"1 f 0 0\nGET /admin HTTP/1.1\r\n\r\n"].concat();
        assert!(request_record("c", 0, &h, &forged, &r).is_none(), "a body must not forge records");
        assert!(response_record("c", 0, 0, 200, b"", &forged, &r).is_none());
        assert_ne!(record_id(1, 1), record_id(1, 2));
        assert_eq!(record_id(7, 9).len(), 24);
    }

    #[test]
    fn goreplay_files_read_back_chunked_bodies_decoded() {
        let raw = "1 a 10 0\nPOST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        let file = [raw.as_bytes(), SEPARATOR, b"2 a 11 1\nHTTP/1.1 200 OK\r\n\r\n", SEPARATOR].concat();
        let mut reader = PayloadReader::new(&file[..]);
        let first = parse_payload(&reader.next_payload().unwrap().unwrap()).unwrap();
        let m = parse_http(&first.http).unwrap();
        assert_eq!((&m.body[..], m.header("transfer-encoding")), (&b"abcde"[..], None));
        let second = parse_payload(&reader.next_payload().unwrap().unwrap()).unwrap();
        assert_eq!((second.kind, second.latency_ns), (RESPONSE, 1));
        assert!(reader.next_payload().unwrap().is_none());
        for bad in [&b""[..], b"1 a\n", b"1 a x 0\n", b"12 a 1 0\n", b"1  1 0\n"] {
            assert!(parse_payload(bad).is_err(), "{bad:?}");
        }
        assert!(parse_http(b"GET / HTTP/1.1\r\nno-colon\r\n\r\n").is_err());
    }

    fn token() -> impl Strategy<Value = String> {
        "[A-Za-z][A-Za-z0-9-]{0,12}".prop_filter("not hop-by-hop or framing", |n| {
            let l = n.to_ascii_lowercase();
            !["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"]
                .contains(&l.as_str())
                && l != "content-length"
        })
    }

    proptest! {
        /// Any request the capture accepts is written and read back as the same method,
        /// target, headers and body, however the file is cut into reads.
        #[test]
        fn records_round_trip(
            method in prop_oneof![Just("GET"), Just("POST"), Just("PUT"), Just("DELETE"), Just("PATCH")],
            uri in "/[a-zA-Z0-9._~%/?&=-]{0,40}",
            headers in proptest::collection::vec((token(), "[ -~]{0,30}"), 0..8),
            body in proptest::collection::vec(any::<u8>(), 0..300),
            read in 1usize..64,
        ) {
            let headers: Vec<(String, String)> =
                headers.into_iter().map(|(n, v)| (n, v.trim().to_string())).collect();
            let h = head(method, &uri, &headers);
            let rec = request_record("id", 42, &h, &body, &Redaction::default());
            prop_assume!(rec.is_some());
            let file = [rec.unwrap().as_slice(), SEPARATOR].concat().repeat(3);
            // A reader that returns at most `read` bytes at a time.
            struct Drip<'a>(&'a [u8], usize);
            impl Read for Drip<'_> {
                fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
                    let n = self.1.min(b.len()).min(self.0.len());
                    b[..n].copy_from_slice(&self.0[..n]);
                    self.0 = &self.0[n..];
                    Ok(n)
                }
            }
            let mut reader = PayloadReader::new(Drip(&file, read));
            for _ in 0..3 {
                let p = parse_payload(&reader.next_payload().unwrap().unwrap()).unwrap();
                let m = parse_http(&p.http).unwrap();
                prop_assert_eq!(&m.start[0], method);
                prop_assert_eq!(&m.start[1], &uri);
                prop_assert_eq!(&m.body[..], &body[..]);
                let got: Vec<(String, String)> = m.headers.iter()
                    .filter(|(n, _)| !n.eq_ignore_ascii_case(b"content-length"))
                    .map(|(n, v)| (String::from_utf8_lossy(n).into_owned(), String::from_utf8_lossy(v).into_owned()))
                    .collect();
                let mut want: Vec<(String, String)> = Vec::new();
                for (name, _) in &headers {
                    let l = name.to_ascii_lowercase();
                    if want.iter().any(|(n, _)| *n == l) { continue; }
                    for (n2, v2) in &headers {
                        if n2.eq_ignore_ascii_case(name) { want.push((l.clone(), v2.clone())); }
                    }
                }
                prop_assert_eq!(got, want);
            }
            prop_assert!(reader.next_payload().unwrap().is_none());
        }
    }
}
