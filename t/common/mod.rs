//! Integration-test harness: the nginx built with this module, started in a
//! temporary prefix (`mod.rs`), real peers (`peers.rs`: a recording sink, a refused
//! port, a listener that never accepts, a slow responder; `h2peer.rs`: HTTP/2), and a
//! tiny HTTP/1.1 client with readers for the status page (`client.rs`).

mod client;
mod faults;
mod h2peer;
mod peers;
pub use client::*;
pub use faults::{Fault, FaultProxy};
pub use h2peer::{H2Options, H2Peer};
pub use peers::*;

use std::collections::BTreeMap;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

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

/// A free port on 127.0.0.1 (bound then released), never one this test process handed out
/// before: the kernel may give a released port again at once, and a front and its backend
/// on the same port make nginx answer from the wrong server.
pub fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if claim(port) {
            return port;
        }
    }
}

/// A listener on 127.0.0.1, on a port this test process never handed out before: a port
/// given to an nginx or as a refused port must not become a peer's (a refused target
/// would then hang on another test's black hole, and its connects count there).
pub fn local_listener() -> TcpListener {
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        if claim(listener.local_addr().unwrap().port()) {
            return listener;
        }
    }
}

/// Records `port` as handed out; false if it already was.
fn claim(port: u16) -> bool {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let new = !given.contains(&port);
    if new {
        given.push(port);
    }
    new
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

/// Writes the configuration nginx runs with: the module, the harness's settings, `main`
/// at top level and `http_body` in `http {}` (`{port}` and `{prefix}` replaced).
fn write_conf(prefix: &Path, port: u16, workers: usize, main: &str, http_body: &str) {
    let body = http_body.replace("{port}", &port.to_string()).replace("{prefix}", prefix.to_str().unwrap());
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
}

impl Prepared {
    pub fn start(self, workers: usize, main: &str, http_body: &str) -> Nginx {
        let prefix = self.prefix;
        let port = free_port();
        write_conf(&prefix, port, workers, main, http_body);
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

    /// Replaces the configuration's `http {}` body (same port, workers and top level) for
    /// the next [`Nginx::reload`].
    pub fn rewrite(&self, http_body: &str) {
        write_conf(&self.prefix, self.port, self.worker_processes, "", http_body);
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
