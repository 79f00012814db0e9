//! A tiny HTTP/1.1 client for the front nginx, raw exchanges for hostile input, and
//! readers of the status page; test data and hashes.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::patience;
use super::peers::read_message;

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub elapsed: Duration,
}

/// One keepalive HTTP/1.1 connection to the front nginx.
pub struct Client {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Client {
    pub fn connect(port: u16) -> Client {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(patience(Duration::from_secs(20)))).unwrap();
        s.set_nodelay(true).unwrap();
        Client { w: s.try_clone().unwrap(), r: BufReader::new(s) }
    }

    /// Sends `METHOD path` with `headers` (Host defaults to localhost) and reads the response.
    pub fn request(&mut self, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
        self.try_request(method, path, headers).expect("response")
    }

    pub fn try_request(&mut self, method: &str, path: &str, headers: &[(&str, &str)]) -> Option<Response> {
        let mut req = format!("{method} {path} HTTP/1.1\r\n");
        if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
            req.push_str("Host: localhost\r\n");
        }
        for (n, v) in headers {
            req.push_str(&format!("{n}: {v}\r\n"));
        }
        req.push_str("\r\n");
        let started = Instant::now();
        self.w.write_all(req.as_bytes()).ok()?;
        let (line, headers, body) = read_message(&mut self.r)?;
        let status = line.split(' ').nth(1)?.parse().ok()?;
        Some(Response { status, headers, body, elapsed: started.elapsed() })
    }

    pub fn get(&mut self, path: &str) -> Response {
        self.request("GET", path, &[])
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.w.shutdown(Shutdown::Both);
    }
}

/// Sends raw bytes on a fresh connection and returns everything read until the
/// server closes (or `limit` passes). The write side stays open: nginx treats a
/// half-closed client as gone while it waits for an upstream.
pub fn raw_exchange(port: u16, bytes: &[u8], limit: Duration) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(limit)).unwrap();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

/// Status codes of every response in a raw HTTP/1.x byte stream, in order.
pub fn statuses(raw: &[u8]) -> Vec<u16> {
    let text = String::from_utf8_lossy(raw);
    text.match_indices("HTTP/1.")
        .filter_map(|(i, _)| text[i..].split(' ').nth(1)?.get(..3)?.parse().ok())
        .filter(|s| (100..600).contains(s))
        .collect()
}

/// GET on a fresh connection; the body as text.
pub fn fetch(port: u16, path: &str) -> String {
    let r = get_once(port, path).expect("response");
    String::from_utf8_lossy(&r.body).into_owned()
}

/// One request on a fresh connection with `Connection: close`.
pub fn get_once(port: u16, path: &str) -> Option<Response> {
    let s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(patience(Duration::from_secs(20)))).ok()?;
    let mut c = Client { w: s.try_clone().ok()?, r: BufReader::new(s) };
    c.try_request("GET", path, &[("Connection", "close")])
}

/// Parsed status page: (metric, target, outcome/reason) -> value.
pub type Metrics = BTreeMap<(String, String, String), f64>;

pub fn scrape(port: u16) -> Metrics {
    let r = get_once(port, "/status").expect("status");
    assert_eq!(r.status, 200);
    let ctype =
        r.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case("content-type")).map(|(_, v)| v.clone());
    assert_eq!(ctype.as_deref(), Some("text/plain; version=0.0.4; charset=utf-8"));
    let text = String::from_utf8(r.body).unwrap();
    let scrape =
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("valid exposition");
    let mut m = Metrics::new();
    for s in scrape.samples {
        let value = match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(h) => h.last().map_or(0.0, |b| b.count),
            prometheus_parse::Value::Summary(_) => continue,
        };
        let target = s.labels.get("target").unwrap_or("").to_string();
        let kind = format!(
            "{}{}",
            s.labels.get("outcome").unwrap_or(""),
            s.labels.get("reason").map(|r| format!(":{r}")).unwrap_or_default()
        );
        m.insert((s.metric, target, kind), value);
    }
    m
}

/// The status page once `cond` holds of it, read again until `limit` passes (with
/// `wait_until`'s patience); panics with `what` and the last page read if it never does.
pub fn scrape_when(
    port: u16,
    limit: Duration,
    what: &str,
    mut cond: impl FnMut(&Metrics) -> bool,
) -> Metrics {
    let mut m = scrape(port);
    let held = super::wait_until(limit, || {
        m = scrape(port);
        cond(&m)
    });
    assert!(held, "{what}: {m:?}");
    m
}

pub fn metric(m: &Metrics, name: &str, target: &str, kind: &str) -> u64 {
    m.get(&(name.to_string(), target.to_string(), kind.to_string())).copied().unwrap_or(0.0) as u64
}

pub fn copies_sum(m: &Metrics, target: &str) -> u64 {
    m.iter()
        .filter(|((n, t, _), _)| n == "nginx_async_mirror_copies_total" && t == target)
        .map(|(_, v)| *v as u64)
        .sum()
}

/// SHA-256 of a body, for byte-exact comparisons.
pub fn sha(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

/// Deterministic, non-repeating test data.
pub fn data(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// POSTs `body` on a fresh connection, with Content-Length or chunked (7000-byte chunks),
/// and reads until the server closes.
pub fn post(port: u16, path: &str, body: &[u8], chunked: bool) -> Response {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let head = if chunked {
        format!("POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
    } else {
        format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
    };
    s.write_all(head.as_bytes()).unwrap();
    if chunked {
        for piece in body.chunks(7000) {
            s.write_all(format!("{:x}\r\n", piece.len()).as_bytes()).unwrap();
            s.write_all(piece).unwrap();
            s.write_all(b"\r\n").unwrap();
        }
        s.write_all(b"0\r\n\r\n").unwrap();
    } else {
        s.write_all(body).unwrap();
    }
    let started = Instant::now();
    let raw = {
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        out
    };
    let st = statuses(&raw);
    Response {
        status: st.first().copied().unwrap_or(0),
        headers: vec![],
        body: raw,
        elapsed: started.elapsed(),
    }
}

/// Distinct values, for connection-id checks.
pub fn distinct<T: std::hash::Hash + Eq>(items: impl IntoIterator<Item = T>) -> usize {
    items.into_iter().collect::<HashSet<_>>().len()
}

/// Resident set size of a process in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
