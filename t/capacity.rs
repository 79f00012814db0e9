//! Capacity: the HTTP/1.1 pool grows to `async_mirror_max_connections` and shrinks,
//! connects in progress stay capped, a copy waiting for a busy connection is never sent
//! late, and HTTP/2 multiplexes copies (h2c, several
//! connections at the server's stream limit, GOAWAY, refused streams, ALPN fallback,
//! bodies, gRPC).

use std::time::{Duration, Instant};

use crate::common::*;

const H2: &str = "async_mirror_http_version 2;";

fn gauge(port: u16, name: &str, target: &str) -> u64 {
    metric(&scrape(port), name, target, "")
}

/// Sends `n` GETs on one keepalive connection; every main request must be answered.
fn burst(port: u16, prefix: &str, n: usize) {
    let mut c = Client::connect(port);
    for i in 0..n {
        assert_eq!(c.get(&format!("/{prefix}{i}")).status, 200);
    }
}

fn settled(ng: &Nginx, target: &str, n: u64) -> bool {
    wait_until(Duration::from_secs(15), || {
        let m = scrape(ng.port);
        metric(&m, "nginx_async_mirror_copies_attempted_total", target, "") == n
            && copies_sum(&m, target) == n
    })
}

#[test]
fn pool_grows_to_max_connections_and_shrinks_when_idle() {
    let sink = Sink::with_delay(Duration::from_millis(400));
    let url = sink.url();
    let locations = format!("location / {{ async_mirror {url}; {PROXY} }}");
    let http = "async_mirror_max_connections 8; async_mirror_keepalive_timeout 1s;";
    let ng = Nginx::start("grow", 1, "", &front(&locations, http));
    burst(ng.port, "g", 40);
    let mut peak = 0;
    assert!(
        wait_until(Duration::from_secs(10), || {
            peak = peak.max(gauge(ng.port, "nginx_async_mirror_connections", &url));
            sink.count() == 40
        }),
        "only {} copies",
        sink.count()
    );
    assert_eq!(sink.connections(), 8, "the pool grows to max_connections and no further");
    assert_eq!(peak, 8, "the connections gauge shows the pool");
    assert!(settled(&ng, &url, 40));
    // Idle connections close after the keepalive timeout (swept every second).
    assert!(
        wait_until(Duration::from_secs(5), || gauge(ng.port, "nginx_async_mirror_connections", &url) == 0)
    );
    let log = ng.quit();
    let t = &exit_counters(&log)[&url];
    assert_eq!((t["ok"], t["connections_opened"]), (40, 8), "{t:?}");
}

/// Sockets of this machine in SYN-SENT towards `port` (from /proc/net/tcp).
fn syn_sent_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[3] == "02" && f[2].rsplit(':').next() == Some(&format!("{port:04X}"))
        })
        .count()
}

#[test]
fn connects_in_progress_stay_capped_against_a_black_hole() {
    let hole = BlackHole::start();
    let url = hole.url();
    // No breaker, so the cap alone bounds the pending connects.
    let locations = format!(
        "location / {{ async_mirror {url}; async_mirror_max_fails 0; async_mirror_connect_timeout 2s;
           async_mirror_timeout 3s; {PROXY} }}"
    );
    let ng = Nginx::start("connectcap", 1, "", &front(&locations, ""));
    let started = Instant::now();
    burst(ng.port, "h", 100);
    assert!(started.elapsed() < Duration::from_secs(2), "main requests wait for nothing");
    let mut peak = 0;
    let deadline = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < deadline {
        peak = peak.max(syn_sent_to(hole.port));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!((1..=4).contains(&peak), "{peak} connects in progress (cap 4)");
    assert!(settled(&ng, &url, 100), "{:?}", scrape(ng.port));
    let log = ng.quit();
    let t = &exit_counters(&log)[&url];
    assert_eq!(t["failed_connect"] + t["failed_timeout"], 100, "{t:?}");
    assert!(t["failed_connect"] <= 12, "connects happen four at a time: {t:?}");
}

#[test]
fn h2c_multiplexes_copies_over_one_connection() {
    let peer = H2Peer::start(H2Options { delay: Duration::from_millis(300), ..Default::default() });
    let url = peer.url();
    let locations = format!("location / {{ async_mirror {url}; {H2} {PROXY} }}");
    let ng = Nginx::start("h2c", 1, "", &front(&locations, ""));
    burst(ng.port, "m", 60);
    assert!(wait_until(Duration::from_secs(10), || peer.count() == 60), "only {} copies", peer.count());
    assert_eq!(peer.connections(), 1, "one HTTP/2 connection carries them all");
    assert!(peer.max_open_streams() >= 10, "{} streams at once", peer.max_open_streams());
    let got = peer.requests();
    assert!(got.iter().all(|r| r.method == "GET" && r.uri.starts_with("/m")), "{got:?}");
    assert!(got.iter().all(|r| r.header("x-async-mirror") == Some("1")));
    assert!(settled(&ng, &url, 60));
    let log = ng.quit();
    let t = &exit_counters(&log)[&url];
    assert_eq!((t["ok"], t["connections_opened"]), (60, 1), "{t:?}");
}

#[test]
fn a_full_connection_makes_room_for_another() {
    let peer = H2Peer::start(H2Options {
        max_streams: Some(2),
        delay: Duration::from_millis(300),
        ..Default::default()
    });
    let url = peer.url();
    let locations = format!("location / {{ async_mirror {url}; {H2} {PROXY} }}");
    let ng = Nginx::start("h2limit", 1, "", &front(&locations, "async_mirror_max_connections 4;"));
    burst(ng.port, "s", 24);
    assert!(wait_until(Duration::from_secs(15), || peer.count() == 24), "only {} copies", peer.count());
    assert!(peer.max_open_streams() <= 2, "the server's limit is kept: {}", peer.max_open_streams());
    assert!((2..=4).contains(&peer.connections()), "{} connections", peer.connections());
    assert!(settled(&ng, &url, 24));
    let t = &exit_counters(&ng.quit())[&url];
    assert_eq!(t["ok"], 24, "{t:?}");
}

#[test]
fn goaway_and_refused_streams_lose_nothing() {
    let peer =
        H2Peer::start(H2Options { goaway_after: Some(7), refuse_every: Some(5), ..Default::default() });
    let url = peer.url();
    let locations = format!("location / {{ async_mirror {url}; {H2} async_mirror_max_fails 0; {PROXY} }}");
    let ng = Nginx::start("goaway", 1, "", &front(&locations, ""));
    burst(ng.port, "r", 80);
    assert!(settled(&ng, &url, 80), "{:?}", scrape(ng.port));
    let log = ng.quit();
    let t = &exit_counters(&log)[&url];
    assert_eq!(outcome_sum(t), 80, "every copy ends in exactly one outcome: {t:?}");
    assert_eq!(t["ok"] + t["failed_reset"], 80, "{t:?}");
    assert_eq!(t["ok"] as usize, peer.count(), "ok means the peer processed it");
    assert!(peer.refused() > 0 && peer.connections() > 1, "the peer refused and went away");
    // A refused stream is sent again once: most copies still arrive.
    assert!(t["ok"] >= 60, "{t:?}");
}

#[test]
fn an_http1_server_behind_http_version_2_fails_clearly() {
    let sink = Sink::start();
    let url = sink.url();
    let locations = format!("location / {{ async_mirror {url}; {H2} {PROXY} }}");
    let ng = Nginx::start("noh2", 1, "", &front(&locations, ""));
    burst(ng.port, "x", 10);
    assert!(settled(&ng, &url, 10));
    let log = ng.quit();
    let t = &exit_counters(&log)[&url];
    assert_eq!(t["failed_connect"] + t["dropped_breaker_open"], 10, "{t:?}");
    assert!(log.contains("does not speak HTTP/2"), "{log}");
}

#[test]
fn bodies_arrive_byte_exact_over_http2() {
    let peer = H2Peer::start(H2Options::default());
    let url = peer.url();
    let locations = format!("location / {{ async_mirror {url}; {H2} {PROXY} }}");
    let ng = Nginx::start("h2bodies", 1, "", &front(&locations, ""));
    let data = data(300_000);
    assert_eq!(post(ng.port, "/cl", &data, false).status, 200);
    assert_eq!(post(ng.port, "/chunked", &data[..123_457], true).status, 200);
    assert!(wait_until(Duration::from_secs(10), || peer.count() == 2));
    let got = peer.requests();
    let cl = got.iter().find(|r| r.uri == "/cl").unwrap();
    let ch = got.iter().find(|r| r.uri == "/chunked").unwrap();
    assert_eq!((cl.body.len(), sha(&cl.body)), (data.len(), sha(&data)));
    assert_eq!((ch.body.len(), sha(&ch.body)), (123_457, sha(&data[..123_457])));
    assert_eq!(cl.header("content-length"), Some("300000"));
    let t = &exit_counters(&ng.quit())[&url];
    assert_eq!(t["ok"], 2, "{t:?}");
}

/// A gRPC-shaped call: the client speaks HTTP/2 to nginx, the main request goes to
/// `grpc_pass`, the copy reaches an HTTP/2 mirror with `te: trailers` and the body intact.
#[test]
fn grpc_calls_are_copied_over_http2() {
    if nginx_version() < 1_025_001 {
        return; // HTTP/2 beside HTTP/1.1 on one cleartext port needs nginx 1.25.1
    }
    let trailers = vec![("grpc-status", "0")];
    let backend = H2Peer::start(H2Options { trailers: trailers.clone(), ..Default::default() });
    let mirror = H2Peer::start(H2Options { trailers, ..Default::default() });
    let url = mirror.url();
    let locations = format!(
        "location /pkg.Svc/ {{ async_mirror {url}; {H2} grpc_pass grpc://127.0.0.1:{}; }}",
        backend.port
    );
    let ng = Nginx::start("grpc", 1, "", &front(&locations, ""));
    let message = b"\x00\x00\x00\x00\x05hello";
    let dir = std::env::temp_dir().join(format!("grpc-{}", ng.port));
    std::fs::write(&dir, message).unwrap();
    let out = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code} %{http_version}", "--http2-prior-knowledge"])
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers", "--data-binary"])
        .arg(format!("@{}", dir.display()))
        .arg(format!("http://127.0.0.1:{}/pkg.Svc/Call", ng.port))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200 2");
    assert!(wait_until(Duration::from_secs(5), || mirror.count() == 1));
    let r = &mirror.requests()[0];
    assert_eq!((r.method.as_str(), r.uri.as_str(), &r.body[..]), ("POST", "/pkg.Svc/Call", &message[..]));
    assert_eq!(r.header("content-type"), Some("application/grpc"));
    assert_eq!(r.header("te"), Some("trailers"));
    assert_eq!(backend.count(), 1);
    let t = &exit_counters(&ng.quit())[&url];
    assert_eq!(t["ok"], 1, "grpc-status travels in trailers; the copy counts by HTTP status: {t:?}");
}

/// Over HTTP/1.1 a copy that finds the connection busy waits about as long as exchanges
/// with the target take (here the most, 50 ms) before another opens, but never past its
/// own `async_mirror_timeout`: a copy with 30 ms ends `failed{timeout}` unsent, never sent
/// late on a new connection.
#[test]
fn a_copy_waiting_for_a_connection_is_never_sent_late() {
    // The fourth copy keeps the connection busy for 3 s, long past the short copy's wait.
    let sink = Sink::answering(|r| {
        let ms = if r.uri.starts_with("/long-busy") { 3000 } else { 300 };
        vec![(Duration::from_millis(ms), reply(200, &[], b"ok", false))]
    });
    let url = sink.url();
    let locations = format!(
        "location /long {{ async_mirror {url}; async_mirror_timeout 5s; {PROXY} }}
         location /short {{ async_mirror {url}; async_mirror_timeout 30ms; {PROXY} }}"
    );
    let ng = Nginx::start("late", 1, "", &front(&locations, ""));
    let mut c = Client::connect(ng.port);
    // Three exchanges of 300 ms, one after another, on one connection.
    for i in 0..3 {
        assert_eq!(c.get(&format!("/long{i}")).status, 200);
        assert!(settled(&ng, &url, i + 1));
    }
    // The connection is busy with a fourth when the short copy comes.
    assert_eq!(c.get("/long-busy").status, 200);
    assert!(sink.wait_for(4, Duration::from_secs(5)));
    assert_eq!(c.get("/short").status, 200);
    assert!(settled(&ng, &url, 5));
    let uris: Vec<String> = sink.requests().iter().map(|r| r.uri.clone()).collect();
    assert!(!uris.iter().any(|u| u.starts_with("/short")), "sent after its time ran out: {uris:?}");
    let log = ng.quit();
    let t = &exit_counters(&log)[&url];
    assert_eq!((t["ok"], t["failed_timeout"], t["connections_opened"]), (4, 1, 1), "{t:?}");
}
