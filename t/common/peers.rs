//! Real peers for the module to mirror to: a sink that records what it got (and answers
//! as told, which makes it the slow responder too), a refused port and a listener that
//! never accepts (connects hang).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::{free_port, local_listener, wait_until};

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub uri: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub conn: usize,
    pub at: Instant,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// An HTTP/1.1 server that records every request and answers `200 ok`
/// (after `delay`, which makes it the slow responder).
pub struct Sink {
    pub port: u16,
    pub got: Arc<Mutex<Vec<Recorded>>>,
    conns: Arc<AtomicUsize>,
    /// Connections open now.
    open: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Sink {
    pub fn start() -> Sink {
        Self::with_delay(Duration::ZERO)
    }

    pub fn with_delay(delay: Duration) -> Sink {
        Self::answering(move |_| vec![(delay, reply(200, &[], b"ok", false))])
    }

    /// A peer that records every request and answers what `respond` says: the raw
    /// response bytes (see [`reply`]) in parts, each written after its delay.
    pub fn answering(
        respond: impl Fn(&Recorded) -> Vec<(Duration, Vec<u8>)> + Send + Sync + 'static,
    ) -> Sink {
        Self::bound(local_listener(), Arc::new(respond))
    }

    /// A sink answering `200 ok` on `addr` (any address of 127.0.0.0/8, a chosen port).
    pub fn on(addr: &str) -> Sink {
        let listener = TcpListener::bind(addr).unwrap();
        Self::bound(listener, Arc::new(|_| vec![(Duration::ZERO, reply(200, &[], b"ok", false))]))
    }

    fn bound(listener: TcpListener, respond: Respond) -> Sink {
        let port = listener.local_addr().unwrap().port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let conns = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (g, c, s, o) = (got.clone(), conns.clone(), stop.clone(), open.clone());
        thread::spawn(move || {
            for stream in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let id = c.fetch_add(1, Ordering::Relaxed);
                let (g, s, f) = (g.clone(), s.clone(), respond.clone());
                let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
                let open = o.clone();
                open.fetch_add(1, Ordering::SeqCst);
                thread::spawn(move || {
                    serve_stream(stream, id, g, &*f, s);
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Sink { port, got, conns, open, stop }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn count(&self) -> usize {
        self.got.lock().unwrap().len()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.got.lock().unwrap().clone()
    }

    /// Distinct TCP connections accepted so far.
    /// Connections open now (the mirror has not closed them).
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    pub fn connections(&self) -> usize {
        self.conns.load(Ordering::Relaxed)
    }

    pub fn wait_for(&self, n: usize, limit: Duration) -> bool {
        wait_until(limit, || self.count() >= n)
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// How a peer answers one request: raw bytes in parts, each after its delay.
pub type Answer = dyn Fn(&Recorded) -> Vec<(Duration, Vec<u8>)> + Send + Sync;
pub type Respond = Arc<Answer>;

/// A raw HTTP/1.1 response: `Content-Length` framing, or chunked in two chunks.
pub fn reply(status: u16, headers: &[(&str, &str)], body: &[u8], chunked: bool) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status} X\r\n");
    for (n, v) in headers {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    let mut out = if chunked {
        out.push_str("Transfer-Encoding: chunked\r\n\r\n");
        let mut out = out.into_bytes();
        let (a, b) = body.split_at(body.len() / 2);
        for part in [a, b] {
            if !part.is_empty() {
                out.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
                out.extend_from_slice(part);
                out.extend_from_slice(b"\r\n");
            }
        }
        out.extend_from_slice(b"0\r\n\r\n");
        return out;
    } else {
        out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        out.into_bytes()
    };
    out.extend_from_slice(body);
    out
}

/// Serves HTTP/1.1 on one connection (plain or TLS): records each request, answers
/// as `respond` says.
pub fn serve_stream<S: Read + Write>(
    stream: S,
    id: usize,
    got: Arc<Mutex<Vec<Recorded>>>,
    respond: &Answer,
    stop: Arc<AtomicBool>,
) {
    let mut r = BufReader::new(stream);
    while let Some((line, headers, body)) = read_message(&mut r) {
        let mut parts = line.split(' ');
        let method = parts.next().unwrap_or("").to_string();
        let uri = parts.next().unwrap_or("").to_string();
        let req = Recorded { method, uri, headers, body, conn: id, at: Instant::now() };
        let parts = respond(&req);
        got.lock().unwrap().push(req);
        for (delay, bytes) in parts {
            let end = Instant::now() + delay;
            while Instant::now() < end && !stop.load(Ordering::Relaxed) {
                thread::sleep(Duration::from_millis(20).min(delay));
            }
            let w = r.get_mut();
            if w.write_all(&bytes).is_err() || w.flush().is_err() {
                return;
            }
        }
    }
}

/// One HTTP/1.x message: start line, headers, body.
type Message = (String, Vec<(String, String)>, Vec<u8>);

/// Reads one HTTP/1.x message (body by Content-Length or chunked).
pub fn read_message(r: &mut impl BufRead) -> Option<Message> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let start = line.trim_end().to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (n, v) = h.split_once(':')?;
        headers.push((n.trim().to_string(), v.trim().to_string()));
    }
    let get = |name: &str| headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone());
    let mut body = Vec::new();
    if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).ok()?;
            let n = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).ok()?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(len) = get("content-length") {
        body.resize(len.parse().ok()?, 0);
        r.read_exact(&mut body).ok()?;
    }
    Some((start, headers, body))
}

/// A port nobody listens on: connects are refused at once.
pub fn refused_port() -> u16 {
    free_port()
}

/// A listener whose accept queue is full and that never accepts: connects hang.
pub struct BlackHole {
    pub port: u16,
    _listener: TcpListener,
    _fillers: Vec<TcpStream>,
}

impl BlackHole {
    pub fn start() -> BlackHole {
        use std::os::fd::AsRawFd;
        let listener = local_listener();
        // SAFETY: re-listening on our own socket only shrinks its backlog.
        assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 0) }, 0);
        let addr: SocketAddr = listener.local_addr().unwrap();
        let mut fillers = Vec::new();
        // Fill the accept queue until a connect no longer completes.
        while fillers.len() < 64 {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                Ok(s) => fillers.push(s),
                Err(_) => break,
            }
        }
        assert!(fillers.len() < 64, "accept queue never filled");
        BlackHole { port: addr.port(), _listener: listener, _fillers: fillers }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}
