//! HTTP/1.1 answers read straight off a connection's buffer, for pipelined copies: the
//! status line and headers with `httparse` (the parser hyper itself uses), then the body
//! by `Content-Length`, chunks or the connection's end, read to the end and kept up to a
//! limit. Only what a copy needs is built: a header map only when the answer is compared.

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};

/// Headers an answer may have before it is refused as malformed.
const MAX_HEADERS: usize = 64;

/// One whole answer.
#[derive(Debug)]
pub struct Answered {
    pub status: u16,
    /// Built only when asked for (comparison).
    pub headers: HeaderMap,
    pub body: Bytes,
    pub body_len: u64,
    /// The mirror closes the connection after this answer.
    pub close: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked,
    /// Until the connection ends.
    Close,
}

#[derive(Debug)]
enum Stage {
    Head,
    Body {
        framing: Framing,
        left: u64,
        status: u16,
        headers: HeaderMap,
        close: bool,
    },
    /// Inside a chunked body: the next chunk's size line, or its data.
    ChunkData {
        left: u64,
        status: u16,
        headers: HeaderMap,
        close: bool,
    },
    ChunkSize {
        status: u16,
        headers: HeaderMap,
        close: bool,
        trailers: bool,
    },
}

/// Reads answers one after another from a connection's bytes.
#[derive(Debug)]
pub struct Reader {
    state: Stage,
    kept: BytesMut,
    len: u64,
}

/// The bytes are not an HTTP/1.1 answer.
#[derive(Debug, PartialEq, Eq)]
pub struct Malformed(pub String);

impl Default for Reader {
    fn default() -> Self {
        Reader { state: Stage::Head, kept: BytesMut::new(), len: 0 }
    }
}

impl Reader {
    /// The next whole answer in `buf` (consumed from it), or `None` until more arrives.
    /// `head_only`: the request was HEAD (no body follows); `keep`: body bytes to keep;
    /// `want_headers`: build the header map. `eof`: the connection has ended.
    ///
    /// # Errors
    /// Bytes that are not an answer.
    pub fn next(
        &mut self,
        buf: &mut BytesMut,
        head_only: bool,
        keep: usize,
        want_headers: bool,
        eof: bool,
    ) -> Result<Option<Answered>, Malformed> {
        loop {
            match std::mem::replace(&mut self.state, Stage::Head) {
                Stage::Head => {
                    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    let mut resp = httparse::Response::new(&mut slots);
                    let used = match resp.parse(buf) {
                        Ok(httparse::Status::Complete(n)) => n,
                        Ok(httparse::Status::Partial) => return Ok(None),
                        Err(e) => return Err(Malformed(format!("invalid answer: {e}"))),
                    };
                    let status = resp.code.unwrap_or(0);
                    let (mut length, mut chunked, mut close) = (None, false, resp.version == Some(0));
                    let mut headers = HeaderMap::new();
                    for h in resp.headers.iter() {
                        if h.name.eq_ignore_ascii_case("content-length") {
                            let v =
                                std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse::<u64>().ok());
                            length = Some(v.ok_or_else(|| Malformed("invalid Content-Length".into()))?);
                        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                            chunked |= h.value.to_ascii_lowercase().ends_with(b"chunked");
                        } else if h.name.eq_ignore_ascii_case("connection") {
                            let v = h.value.to_ascii_lowercase();
                            close |= v.windows(5).any(|w| w == b"close");
                            close &= !v.windows(10).any(|w| w == b"keep-alive");
                        }
                        if want_headers {
                            if let (Ok(n), Ok(v)) =
                                (HeaderName::from_bytes(h.name.as_bytes()), HeaderValue::from_bytes(h.value))
                            {
                                headers.append(n, v);
                            }
                        }
                    }
                    buf.advance(used);
                    // Interim answers (100 Continue) precede the real one.
                    if (100..200).contains(&status) && status != 101 {
                        continue;
                    }
                    self.kept.clear();
                    self.len = 0;
                    let framing = if head_only || status == 204 || status == 304 {
                        Framing::Length(0)
                    } else if chunked {
                        Framing::Chunked
                    } else {
                        length.map_or(Framing::Close, Framing::Length)
                    };
                    self.state = match framing {
                        Framing::Chunked => Stage::ChunkSize { status, headers, close, trailers: false },
                        f => Stage::Body {
                            framing: f,
                            left: if let Framing::Length(n) = f { n } else { 0 },
                            status,
                            headers,
                            close,
                        },
                    };
                }
                Stage::Body { framing, left, status, headers, close } => {
                    let take = match framing {
                        Framing::Length(_) => (left.min(buf.len() as u64)) as usize,
                        _ => buf.len(),
                    };
                    self.eat(buf, take, keep);
                    let left = left - if framing == Framing::Close { 0 } else { take as u64 };
                    let done = match framing {
                        Framing::Length(_) => left == 0,
                        _ => eof,
                    };
                    if done {
                        let close = close || framing == Framing::Close;
                        return Ok(Some(self.answered(status, headers, close)));
                    }
                    self.state = Stage::Body { framing, left, status, headers, close };
                    return Ok(None);
                }
                Stage::ChunkSize { status, headers, close, trailers } => {
                    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
                        self.state = Stage::ChunkSize { status, headers, close, trailers };
                        return Ok(None);
                    };
                    let line = buf.split_to(end + 2);
                    if trailers {
                        // Trailer fields until an empty line.
                        if end == 0 {
                            return Ok(Some(self.answered(status, headers, close)));
                        }
                        self.state = Stage::ChunkSize { status, headers, close, trailers: true };
                        continue;
                    }
                    let text = std::str::from_utf8(&line[..end])
                        .map_err(|_| Malformed("invalid chunk size".into()))?;
                    let size = text.split(';').next().unwrap_or("").trim();
                    let size =
                        u64::from_str_radix(size, 16).map_err(|_| Malformed("invalid chunk size".into()))?;
                    self.state = if size == 0 {
                        Stage::ChunkSize { status, headers, close, trailers: true }
                    } else {
                        Stage::ChunkData { left: size + 2, status, headers, close }
                    };
                }
                Stage::ChunkData { left, status, headers, close } => {
                    let take = (left.min(buf.len() as u64)) as usize;
                    // The chunk's data, then its CRLF (never kept).
                    let data = take.min(left.saturating_sub(2) as usize);
                    self.eat(buf, data, keep);
                    buf.advance(take - data);
                    let left = left - take as u64;
                    if left > 0 {
                        self.state = Stage::ChunkData { left, status, headers, close };
                        return Ok(None);
                    }
                    self.state = Stage::ChunkSize { status, headers, close, trailers: false };
                }
            }
        }
    }

    fn eat(&mut self, buf: &mut BytesMut, n: usize, keep: usize) {
        let room = keep.saturating_sub(self.kept.len()).min(n);
        self.kept.extend_from_slice(&buf[..room]);
        buf.advance(n);
        self.len += n as u64;
    }

    fn answered(&mut self, status: u16, headers: HeaderMap, close: bool) -> Answered {
        self.state = Stage::Head;
        Answered { status, headers, body: std::mem::take(&mut self.kept).freeze(), body_len: self.len, close }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(input: &[u8], parts: usize, head_only: &[bool]) -> Vec<(u16, Vec<u8>, u64, bool)> {
        let mut r = Reader::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let step = input.len().div_ceil(parts);
        for (i, piece) in input.chunks(step.max(1)).enumerate() {
            buf.extend_from_slice(piece);
            let eof = (i + 1) * step >= input.len();
            while let Some(a) =
                r.next(&mut buf, head_only.get(out.len()).copied().unwrap_or(false), 5, true, eof).unwrap()
            {
                out.push((a.status, a.body.to_vec(), a.body_len, a.close));
            }
        }
        out
    }

    #[test]
    fn pipelined_answers_in_any_split() {
        let input = b"HTTP/1.1 204 No Content\r\nServer: x\r\n\r\n\
HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789\
HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=1\r\nabc\r\n4\r\ndefg\r\n0\r\nT: v\r\n\r\n\
HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n\
HTTP/1.0 200 OK\r\n\r\nuntil the end";
        for parts in [1, 2, 3, 7, 40, input.len()] {
            let got = read_all(input, parts, &[false, false, false, true, false]);
            assert_eq!(
                got,
                vec![
                    (204, vec![], 0, false),
                    (200, b"01234".to_vec(), 10, false),
                    (200, b"abcde".to_vec(), 7, false),
                    (200, vec![], 0, false),
                    (200, b"until".to_vec(), 13, true),
                ],
                "split in {parts}"
            );
        }
    }

    #[test]
    fn malformed_answers_are_refused() {
        for bad in [
            &b"NOT HTTP\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ] {
            let mut r = Reader::default();
            let mut buf = BytesMut::from(bad);
            let mut res = r.next(&mut buf, false, 0, false, false);
            while let Ok(Some(_)) = res {
                res = r.next(&mut buf, false, 0, false, false);
            }
            assert!(res.is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    proptest::proptest! {
        /// Arbitrary bytes never panic.
        #[test]
        fn arbitrary_bytes_never_panic(raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let mut r = Reader::default();
            let mut buf = BytesMut::from(&raw[..]);
            for _ in 0..10 {
                match r.next(&mut buf, false, 16, true, true) {
                    Ok(Some(_)) => continue,
                    _ => break,
                }
            }
        }
    }
}
