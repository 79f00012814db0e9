//! `async_mirror_http_version 1.1 pipeline=N`: copies written back to back on few
//! connections arrive whole and once each, a mirror that ends connections (as nginx does at
//! `keepalive_requests`) loses none, and a slow answer ends the copies behind it as
//! timeouts, each counted.

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crate::common::*;

const COPIES: &str = "nginx_async_mirror_copies_total";

/// What the pipelining peer saw of one request.
#[derive(Clone, Debug)]
struct Seen {
    uri: String,
    body: Vec<u8>,
    conn: usize,
    /// The next request had arrived before this one was answered.
    next_waiting: bool,
}

/// An HTTP/1.1 mirror that answers in order, after `delay` for paths that start with
/// `/slow`, and ends each connection after `close_after` answers with `Connection: close`
/// (what it read past that is never processed, as nginx does).
struct PipePeer {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl PipePeer {
    fn start(delay: Duration, close_after: Option<usize>) -> PipePeer {
        let listener = local_listener();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let conns = Arc::new(AtomicUsize::new(0));
        let got = seen.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (got, id) = (got.clone(), conns.fetch_add(1, Ordering::Relaxed));
                thread::spawn(move || serve(stream, id, &got, delay, close_after));
            }
        });
        PipePeer { port, seen }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve(stream: TcpStream, id: usize, got: &Mutex<Vec<Seen>>, delay: Duration, close_after: Option<usize>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut r = BufReader::new(stream);
    let mut answered = 0;
    while let Some((line, _, body)) = read_message(&mut r) {
        let uri = line.split(' ').nth(1).unwrap_or("").to_string();
        let head = line.starts_with("HEAD ");
        if uri.starts_with("/slow") {
            thread::sleep(delay);
        } else {
            // A moment for a pipelined request behind this one to arrive.
            thread::sleep(Duration::from_millis(2));
        }
        let next_waiting = !r.buffer().is_empty() || {
            let s = r.get_ref();
            s.set_nonblocking(true).unwrap();
            let ready = s.peek(&mut [0u8; 1]).is_ok_and(|n| n > 0);
            s.set_nonblocking(false).unwrap();
            ready
        };
        got.lock().unwrap().push(Seen { uri, body, conn: id, next_waiting });
        answered += 1;
        let last = close_after.is_some_and(|n| answered >= n);
        let headers: &[(&str, &str)] = if last { &[("Connection", "close")] } else { &[] };
        let mut answer = reply(200, headers, b"mirror answer", answered % 2 == 0 && !head);
        if head {
            // The length the body would have, and no body.
            answer.truncate(answer.len() - b"mirror answer".len());
        }
        if r.get_mut().write_all(&answer).is_err() {
            return;
        }
        if last {
            // nginx's lingering close: what the client sent past this answer is read and
            // dropped, so that closing does not reset the connection under the answer.
            let s = r.get_mut();
            let _ = s.shutdown(std::net::Shutdown::Write);
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = std::io::copy(s, &mut std::io::sink());
            return;
        }
    }
}

/// A HEAD request on a connection of its own: its status.
fn head(port: u16, path: &str) -> u16 {
    let req = format!("HEAD {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    statuses(&raw_exchange(port, req.as_bytes(), Duration::from_secs(10))).first().copied().unwrap_or(0)
}

fn pipelined_front(mirror: &str, extra: &str) -> String {
    let locations = format!(
        "location / {{ async_mirror {mirror}; async_mirror_http_version 1.1 pipeline=8;
                       {extra} {PROXY} }}"
    );
    front(&locations, "async_mirror_max_connections 2; async_mirror_zone pipe 1m;")
}

/// Four clients at once: GETs, HEADs and POSTs with bodies up to 3 KB. Every copy arrives
/// once, whole, on at most two connections, and most went while an earlier copy on their
/// connection was unanswered.
#[test]
fn pipelined_copies_arrive_whole_and_once() {
    let peer = PipePeer::start(Duration::ZERO, None);
    let ng = Nginx::start("pipeline", 1, "", &pipelined_front(&peer.url(), "async_mirror_timeout 2s;"));
    at_once(ng.port, 4, |port, c| {
        let mut client = Client::connect(port);
        for i in 0..50 {
            let path = format!("/c{c}/{i}");
            let status = match i % 3 {
                0 => client.get(&path).status,
                1 => head(port, &path),
                _ => post(port, &path, &data(i * 61), i % 4 == 0).status,
            };
            assert_eq!(status, 200, "{path}");
        }
    });
    let url = peer.url();
    assert!(wait_until(Duration::from_secs(10), || metric(&scrape(ng.port), COPIES, &url, "ok") == 200));
    let seen = peer.seen();
    assert_eq!(seen.len(), 200);
    assert_eq!(distinct(seen.iter().map(|s| s.uri.clone())), 200, "each copy once");
    for s in &seen {
        let i: usize = s.uri.rsplit('/').next().unwrap().parse().unwrap();
        let want = if i % 3 == 2 { data(i * 61) } else { Vec::new() };
        assert_eq!(sha(&s.body), sha(&want), "{}", s.uri);
    }
    assert!(distinct(seen.iter().map(|s| s.conn)) <= 2, "max_connections 2");
    let behind = seen.iter().filter(|s| s.next_waiting).count();
    assert!(behind >= 20, "copies were pipelined: {behind} of 200 had the next one waiting");
    assert_eq!(copies_sum(&scrape(ng.port), &url), 200, "nothing but ok");
    ng.quit();
}

/// `clients` clients of the front at `port` at once, each `client(port, its number)`;
/// returns when all are done (a client's failed assertion fails the test).
fn at_once(port: u16, clients: usize, client: fn(u16, usize)) {
    let handles: Vec<_> = (0..clients).map(|c| thread::spawn(move || client(port, c))).collect();
    for h in handles {
        h.join().unwrap();
    }
}

/// The mirror ends every connection after three answers, with copies still in the pipe:
/// those go again on the next connection, and every copy is processed exactly once.
#[test]
fn a_mirror_ending_connections_loses_no_pipelined_copy() {
    let peer = PipePeer::start(Duration::ZERO, Some(3));
    let ng = Nginx::start("pipeclose", 1, "", &pipelined_front(&peer.url(), "async_mirror_timeout 2s;"));
    at_once(ng.port, 3, |port, c| {
        let mut client = Client::connect(port);
        for i in 0..30 {
            assert_eq!(client.get(&format!("/e{c}/{i}")).status, 200);
        }
    });
    let url = peer.url();
    let m = scrape_when(ng.port, Duration::from_secs(10), "every copy ended", |m| copies_sum(m, &url) == 90);
    assert_eq!(metric(&m, COPIES, &url, "ok"), 90, "{m:?}");
    let seen = peer.seen();
    assert_eq!(seen.len(), 90, "processed once each");
    assert_eq!(distinct(seen.iter().map(|s| s.uri.clone())), 90);
    assert!(distinct(seen.iter().map(|s| s.conn)) >= 30, "three answers per connection");
    ng.quit();
}

/// A slow answer holds the copies behind it: they end `failed{timeout}` with it, each
/// counted, and the copies after them go on a new connection. A mirror that resets
/// pipelined connections fails its copies as `failed{reset}`, and the breaker hears it.
#[test]
fn a_slow_or_broken_pipeline_ends_every_copy_it_carried() {
    let peer = PipePeer::start(Duration::from_millis(1500), None);
    let proxy = FaultProxy::start(peer.port);
    let ng = Nginx::start(
        "pipeslow",
        1,
        "",
        &pipelined_front(&proxy.url(), "async_mirror_timeout 300ms; async_mirror_max_fails 0;"),
    );
    let url = proxy.url();
    let handles: Vec<_> = (0..6)
        .map(|i| {
            let port = ng.port;
            thread::spawn(move || get_once(port, &format!("/slow{i}")).map(|r| r.status))
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), Some(200), "the client never waits for the mirror");
    }
    let m = scrape_when(ng.port, Duration::from_secs(5), "every copy ended", |m| copies_sum(m, &url) == 6);
    assert_eq!(metric(&m, COPIES, &url, "failed:timeout"), 6, "{m:?}");
    let mut c = Client::connect(ng.port);
    for i in 0..10 {
        assert_eq!(c.get(&format!("/fast{i}")).status, 200);
    }
    assert!(wait_until(Duration::from_secs(5), || metric(&scrape(ng.port), COPIES, &url, "ok") == 10));
    proxy.set(Fault::Reset);
    for i in 0..10 {
        assert_eq!(c.get(&format!("/reset{i}")).status, 200);
    }
    assert!(wait_until(Duration::from_secs(5), || copies_sum(&scrape(ng.port), &url) == 26));
    let m = scrape(ng.port);
    let reset = metric(&m, COPIES, &url, "failed:reset");
    assert_eq!(reset, 10, "{m:?}");
    assert!(wait_until(Duration::from_secs(5), || ng.error_log().contains("mirror timed out (pipelined)")));
    ng.quit();
}
