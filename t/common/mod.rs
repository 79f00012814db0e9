//! Integration-test harness: the nginx built with this module, started in a
//! temporary prefix, plus real peers (a recording sink, a refused port, a
//! listener that never accepts, a slow responder) and a tiny HTTP/1.1 client.

mod h2peer;
pub use h2peer::{H2Options, H2Peer};

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// The nginx binary: `TEST_NGINX_BINARY`, else the one nginx-sys built for this module.
pub fn nginx_binary() -> PathBuf {
    if let Ok(p) = std::env::var("TEST_NGINX_BINARY") {
        return p.into();
    }
    if let Ok(dir) = std::env::var("NGINX_BUILD_DIR") {
        return Path::new(&dir).join("nginx");
    }
    Path::new(env!("DEP_NGINX_BUILD_DIR")).join("nginx")
}

/// The nginx version as a number, 1028003 for 1.28.3 (from `nginx -v`).
pub fn nginx_version() -> u32 {
    static V: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *V.get_or_init(|| {
        let out = Command::new(nginx_binary()).arg("-v").output().expect("nginx -v");
        let text = String::from_utf8_lossy(&out.stderr);
        let v = text.split("nginx/").nth(1).unwrap_or("0.0.0");
        let mut parts = v.split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse::<u32>().ok());
        let (a, b, c) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        a * 1_000_000 + b * 1000 + c
    })
}

/// The module cargo built for this test run (next to the test binary), not a stale copy.
pub fn module_path() -> PathBuf {
    if let Ok(p) = std::env::var("TEST_NGINX_MODULE") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("test binary path");
    let deps = exe.parent().expect("deps dir");
    let so = deps.join("libngx_http_async_mirror_module.so");
    if so.exists() {
        so
    } else {
        deps.parent().expect("profile dir").join("libngx_http_async_mirror_module.so")
    }
}

/// As root, workers would run as `nobody` and could not read a test prefix under a
/// private temp directory; keep them as the invoking user.
fn run_as() -> &'static str {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 { "user root;\n" } else { "" }
}

/// A free port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `TEST_NGINX_VALGRIND=1` (`make test-valgrind`): nginx runs under valgrind's memcheck,
/// and every stopped nginx is checked for errors with a frame in the module.
pub fn valgrind() -> bool {
    std::env::var_os("TEST_NGINX_VALGRIND").is_some()
}

/// How much longer things take: valgrind slows nginx down many times.
pub fn patience(limit: Duration) -> Duration {
    if valgrind() { limit * 20 } else { limit }
}

/// Polls `cond` until it holds or `limit` passes (longer under valgrind); returns whether it held.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + patience(limit);
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

fn scratch_dir(name: &str) -> PathBuf {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "t-{}-{}-{}",
        name,
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    std::fs::create_dir_all(dir.join("html")).unwrap();
    dir
}

pub struct Nginx {
    pub prefix: PathBuf,
    pub port: u16,
    worker_processes: usize,
    child: Option<Child>,
}

/// Counters from the workers' exit lines, summed per target URL.
pub type Counters = BTreeMap<String, BTreeMap<String, u64>>;

impl Nginx {
    /// Starts nginx with `http_body` inside `http {}`; `{port}` in it is replaced by
    /// the front port, `{prefix}` by the temp prefix. Waits until it accepts.
    pub fn start(name: &str, workers: usize, main: &str, http_body: &str) -> Nginx {
        Self::prepare(name, |_| {}).start(workers, main, http_body)
    }

    /// A prefix made ready (files written) before nginx starts in it.
    pub fn prepare(name: &str, setup: impl FnOnce(&Path)) -> Prepared {
        let prefix = scratch_dir(name);
        setup(&prefix);
        Prepared { prefix }
    }
}

pub struct Prepared {
    prefix: PathBuf,
}

impl Prepared {
    pub fn start(self, workers: usize, main: &str, http_body: &str) -> Nginx {
        let prefix = self.prefix;
        let port = free_port();
        let body =
            http_body.replace("{port}", &port.to_string()).replace("{prefix}", prefix.to_str().unwrap());
        let conf = format!(
            "load_module {module};\n\
             daemon off;\nmaster_process on;\nworker_processes {workers};\n\
             error_log {prefix}/logs/error.log notice;\npid {prefix}/logs/nginx.pid;\n{user}{main}\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  keepalive_requests 100000;\n  client_body_temp_path {prefix}/tmp_body;\n\
               proxy_temp_path {prefix}/tmp_proxy;\n{body}\n}}\n",
            module = module_path().display(),
            prefix = prefix.display(),
            user = run_as(),
        );
        std::fs::write(prefix.join("nginx.conf"), conf).unwrap();
        let mut cmd = if valgrind() {
            let mut v = Command::new("valgrind");
            v.args([
                "--tool=memcheck",
                "--leak-check=full",
                "--show-leak-kinds=definite",
                "--errors-for-leak-kinds=definite",
            ])
            // One file per process: workers are forked from the master.
            .arg(format!("--log-file={}/logs/valgrind.%p.log", prefix.display()))
            .arg(nginx_binary());
            v
        } else {
            Command::new(nginx_binary())
        };
        let child = cmd
            .arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(prefix.join("nginx.conf"))
            .arg("-e")
            .arg(prefix.join("logs/error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        let mut ng = Nginx { prefix, port, worker_processes: workers, child: Some(child) };
        let workers_up =
            |ng: &Nginx| ng.error_log().matches("async_mirror: runtime started").count() >= workers;
        let up = wait_until(Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
                && (!http_body.contains("async_mirror http") || workers_up(&ng))
        });
        if !up {
            let log = ng.error_log();
            ng.kill();
            panic!("nginx did not start:\n{log}");
        }
        ng
    }
}

impl Nginx {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(self.pid() as i32, sig) };
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.prefix.join("logs/error.log")).unwrap_or_default()
    }

    /// PIDs of the current worker processes (children of the master).
    pub fn workers(&self) -> Vec<u32> {
        self.workers_of(self.pid())
    }

    fn workers_of(&self, master: u32) -> Vec<u32> {
        let path = format!("/proc/{master}/task/{master}/children");
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// Reloads and waits until the new generation of workers has started its runtimes.
    pub fn reload(&self) {
        let before = self.error_log().matches("async_mirror: runtime started").count();
        let want = before + self.worker_processes;
        self.signal(libc::SIGHUP);
        assert!(
            wait_until(Duration::from_secs(10), || {
                self.error_log().matches("async_mirror: runtime started").count() >= want
            }),
            "reload did not start new workers"
        );
    }

    /// Graceful stop (SIGQUIT); returns the error log after checking it for crashes.
    pub fn quit(self) -> String {
        self.quit_allowing(&[])
    }

    /// As [`Nginx::quit`], tolerating the listed markers (e.g. an expected `[alert]`).
    pub fn quit_allowing(mut self, allowed: &[&str]) -> String {
        self.signal(libc::SIGQUIT);
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + patience(Duration::from_secs(20));
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                use std::os::unix::process::ExitStatusExt;
                assert!(status.signal().is_none(), "nginx master died: {status:?}\n{}", self.error_log());
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("nginx did not quit in time:\n{}", self.error_log());
            }
            thread::sleep(Duration::from_millis(10));
        }
        let log = self.error_log();
        for bad in ["exited on signal", "[alert]", "[crit]", "[emerg]", "panicked"] {
            if !allowed.contains(&bad) {
                assert!(!log.contains(bad), "error log has {bad:?}:\n{log}");
            }
        }
        if valgrind() {
            let errors = valgrind_errors(&self.prefix.join("logs"));
            assert!(
                errors.is_empty(),
                "valgrind: {} errors in the module:\n{}",
                errors.len(),
                errors.join("\n")
            );
        }
        log
    }

    /// Kills the master and its workers: a killed master leaves its workers running.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let workers = self.workers_of(c.id());
            let _ = c.kill();
            let _ = c.wait();
            for w in workers {
                // SAFETY: signalling processes this test started.
                unsafe { libc::kill(w as i32, libc::SIGKILL) };
            }
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // A failed test must not leave nginx running.
        self.kill();
    }
}

/// Errors (and definite leaks) in valgrind's reports under `dir` with a stack frame in
/// the module: nginx is C, so a frame in a `.rs` file is the module's own code or a crate
/// compiled into it. nginx's own reports are not ours to judge.
fn valgrind_errors(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("valgrind.") && name.ends_with(".log")) {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        // Reports are blocks of `==PID== ...` lines separated by an empty `==PID==` line.
        let mut block: Vec<&str> = Vec::new();
        for line in text.lines().chain(std::iter::once("")) {
            let content = line.split_once("== ").map_or("", |(_, c)| c);
            if !content.trim().is_empty() {
                block.push(content);
                continue;
            }
            let ours = block.iter().any(|l| {
                let l = l.trim_start();
                (l.starts_with("at 0x") || l.starts_with("by 0x")) && l.contains(".rs:")
            });
            if ours {
                out.push(format!("{name}:\n{}", block.join("\n")));
            }
            block.clear();
        }
    }
    out
}

#[test]
fn valgrind_reports_are_read_for_module_frames() {
    let dir = scratch_dir("vgparse");
    let report = "==7== Memcheck, a memory error detector\n==7== \n\
        ==7== 48 bytes in 1 blocks are definitely lost in loss record 1 of 2\n\
        ==7==    at 0x48407B4: malloc (vg_replace_malloc.c:381)\n\
        ==7==    by 0x1A2B3C: ngx_alloc (ngx_alloc.c:22)\n==7== \n\
        ==7== Invalid read of size 8\n\
        ==7==    at 0x5A1B2C3: ngx_http_async_mirror_module::ngx::ctx::find_ptr (ctx.rs:40)\n\
        ==7==    by 0x1A2B3C: ngx_http_core_run_phases (ngx_http_core_module.c:875)\n==7== \n";
    std::fs::write(dir.join("logs/valgrind.7.log"), report).unwrap();
    let errors = valgrind_errors(&dir.join("logs"));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("Invalid read"), "{errors:?}");
}

/// Parses `async_mirror: worker exiting, target "URL": k=v ...` lines, summed over workers.
pub fn exit_counters(log: &str) -> Counters {
    let mut out = Counters::new();
    for line in log.lines() {
        let Some(rest) = line.split("async_mirror: worker exiting, target \"").nth(1) else { continue };
        let Some((url, kvs)) = rest.split_once("\": ") else { continue };
        let entry = out.entry(url.to_string()).or_default();
        for kv in kvs.split_whitespace() {
            if let Some((k, v)) = kv.split_once('=') {
                *entry.entry(k.to_string()).or_default() += v.parse::<u64>().unwrap_or(0);
            }
        }
    }
    out
}

/// Sum of every outcome counter (everything but `attempted` and `connections_opened`).
pub fn outcome_sum(c: &BTreeMap<String, u64>) -> u64 {
    c.iter().filter(|(k, _)| *k != "attempted" && *k != "connections_opened").map(|(_, v)| v).sum()
}

// ---------------------------------------------------------------------------
// Peers
// ---------------------------------------------------------------------------

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
        Self::bound("127.0.0.1:0", Arc::new(respond))
    }

    /// A sink answering `200 ok` on `addr` (any address of 127.0.0.0/8, a chosen port).
    pub fn on(addr: &str) -> Sink {
        Self::bound(addr, Arc::new(|_| vec![(Duration::ZERO, reply(200, &[], b"ok", false))]))
    }

    fn bound(addr: &str, respond: Respond) -> Sink {
        let listener = TcpListener::bind(addr).unwrap();
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
fn read_message(r: &mut impl BufRead) -> Option<Message> {
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
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
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

// ---------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------

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

pub fn metric(m: &Metrics, name: &str, target: &str, kind: &str) -> u64 {
    m.get(&(name.to_string(), target.to_string(), kind.to_string())).copied().unwrap_or(0.0) as u64
}

pub fn copies_sum(m: &Metrics, target: &str) -> u64 {
    m.iter()
        .filter(|((n, t, _), _)| n == "nginx_async_mirror_copies_total" && t == target)
        .map(|(_, v)| *v as u64)
        .sum()
}

#[test]
fn status_sums_workers_and_survives_reload() {
    let sink = Sink::start();
    let refused = format!("http://127.0.0.1:{}", refused_port());
    let locations = format!("location / {{ async_mirror {}; async_mirror {refused}; {PROXY} }}", sink.url());
    let ng = Nginx::start("status", 2, "", &front(&locations, "async_mirror_zone mirror_stats 1m;"));
    for i in 0..200 {
        assert_eq!(get_once(ng.port, &format!("/s{i}")).unwrap().status, 200);
    }
    let attempted = "nginx_async_mirror_copies_attempted_total";
    let settled = |m: &Metrics| {
        [sink.url(), refused.clone()]
            .iter()
            .all(|t| metric(m, attempted, t, "") == 200 && copies_sum(m, t) == 200)
    };
    let mut m = scrape(ng.port);
    assert!(
        wait_until(Duration::from_secs(5), || {
            m = scrape(ng.port);
            settled(&m)
        }),
        "counters never added up: {m:?}"
    );
    assert_eq!(metric(&m, "nginx_async_mirror_copies_total", &sink.url(), "ok"), 200);
    let fails = metric(&m, "nginx_async_mirror_copies_total", &refused, "failed:connect");
    let open = metric(&m, "nginx_async_mirror_copies_total", &refused, "dropped:breaker_open");
    assert_eq!(fails + open, 200, "{m:?}");
    // 3 failures per worker open the breaker; copies already in flight (at most
    // async_mirror_max_connections per worker) may fail too.
    assert!(
        fails <= 2 * (3 + 32) && open >= 100,
        "the breaker should stop connects: {fails} failed, {open} dropped"
    );
    assert!(metric(&m, "nginx_async_mirror_connections_opened_total", &sink.url(), "") <= 64);
    assert_eq!(metric(&m, "nginx_async_mirror_duration_seconds", &sink.url(), ""), 200);

    let json = fetch(ng.port, "/status?format=json");
    assert!(json.starts_with("{\"shared\":true,"), "{json}");
    assert!(json.contains("\"attempted\":200"), "{json}");

    ng.reload();
    for i in 0..10 {
        assert_eq!(get_once(ng.port, &format!("/after{i}")).unwrap().status, 200);
    }
    assert!(
        wait_until(Duration::from_secs(5), || {
            m = scrape(ng.port);
            metric(&m, attempted, &sink.url(), "") == 210 && copies_sum(&m, &sink.url()) == 210
        }),
        "counters lost across reload: {m:?}"
    );
    ng.quit();
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

/// A backend `server {}` block for the same nginx: answers `backend` on every path.
pub fn backend_server(port: u16) -> String {
    format!(
        "server {{ listen 127.0.0.1:{port}; location / {{ return 200 \"backend\"; }} }}\n\
         upstream backend {{ server 127.0.0.1:{port} max_fails=3 fail_timeout=10s; keepalive 8; }}\n"
    )
}

/// The `http {}` body every test uses: a backend, `extra_http`, and a front server on
/// `{port}` holding `server` (its location blocks and settings) and the status page at
/// `/status`. The front speaks HTTP/2 beside HTTP/1.1 where nginx can (1.25.1 and later
/// on a cleartext port) and takes bodies up to 64 MiB.
pub fn front(server: &str, extra_http: &str) -> String {
    let http2 = if nginx_version() >= 1_025_001 { " http2 on;" } else { "" };
    format!(
        "{}\nclient_max_body_size 64m;\n{extra_http}\nserver {{ listen 127.0.0.1:{{port}};{http2}\n{server}\n\
         location = /status {{ async_mirror_status; }}\n}}\n",
        backend_server(free_port())
    )
}

/// proxy_pass settings used by every test front location.
pub const PROXY: &str =
    "proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\";";

/// A file of one JSON object per line (a log the module wrote); empty if absent.
pub fn json_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}
