//! The live path: a healthy mirror gets its copies whatever clients and neighbours do:
//! slow uploads, a slow neighbour target, decoded paths in templates, conditional
//! requests when comparing, and the memory a compared answer holds.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use crate::common::*;

const COPIES: &str = "nginx_async_mirror_copies_total";

/// A POST whose body pauses for `pause` halfway (the client's slowness, not the mirror's).
fn slow_post(port: u16, path: &str, body: &[u8], pause: Duration) -> u16 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    let (a, b) = body.split_at(body.len() / 2);
    s.write_all(a).unwrap();
    thread::sleep(pause);
    s.write_all(b).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    statuses(&out).first().copied().unwrap_or(0)
}

/// Three clients upload slowly, with bodies past the buffer size (streamed) and within it
/// (sent once complete): none of it is the mirror's fault, so the breaker stays closed
/// and every later copy goes.
#[test]
fn slow_uploads_never_open_a_healthy_mirrors_breaker() {
    let sink = Sink::start();
    let locations = format!(
        "location / {{ async_mirror {}; async_mirror_timeout 500ms; async_mirror_max_fails 3;
                       async_mirror_body_buffer_size 4k; {PROXY} }}",
        sink.url()
    );
    let ng = Nginx::start("slowupload", 1, "", &front(&locations, "async_mirror_zone live 1m;"));
    let pause = Duration::from_millis(900);
    let small = data(1000);
    let started = Instant::now();
    let small_handles: Vec<_> = (0..3)
        .map(|i| {
            let (port, body) = (ng.port, small.clone());
            thread::spawn(move || slow_post(port, &format!("/small{i}"), &body, pause))
        })
        .collect();
    for i in 0..3 {
        assert_eq!(slow_post(ng.port, &format!("/big{i}"), &data(20_000), pause), 200);
    }
    for h in small_handles {
        assert_eq!(h.join().unwrap(), 200);
    }
    let mut c = Client::connect(ng.port);
    for i in 0..20 {
        assert_eq!(c.get(&format!("/after{i}")).status, 200);
    }
    let url = sink.url();
    let m = scrape_when(ng.port, Duration::from_secs(5), "every copy ended", |m| copies_sum(m, &url) == 26);
    assert_eq!(metric(&m, COPIES, &url, "dropped:breaker_open"), 0, "{m:?}");
    assert_eq!(
        metric(&m, COPIES, &url, "failed:body_slow"),
        3,
        "streamed bodies that waited on the client: {m:?}"
    );
    assert_eq!(metric(&m, COPIES, &url, "failed:timeout"), 0, "{m:?}");
    assert_eq!(metric(&m, COPIES, &url, "ok"), 23, "{m:?}");
    let got = sink.requests();
    for i in 0..3 {
        // A body within the buffer size went once complete: whole, after the pause.
        let copy = got.iter().find(|r| r.uri == format!("/small{i}")).expect("small copy");
        assert_eq!(sha(&copy.body), sha(&small));
        assert!(copy.at.duration_since(started) >= pause, "sent before the body was complete");
    }
    assert!(got.iter().all(|r| !r.uri.starts_with("/big")), "no truncated body reached the mirror");
    ng.quit();
}

/// A target that takes 3 s beside a fast one, with one connection and a small backlog:
/// the slow one fills its own share of the backlog, the fast one gets every copy, and a
/// copy that waited past its timeout is dropped, never sent late.
#[test]
fn a_slow_target_never_starves_its_neighbour() {
    let slow = Sink::with_delay(Duration::from_secs(3));
    let fast = Sink::start();
    let locations = format!(
        "location / {{ async_mirror {}; async_mirror {}; async_mirror_timeout 1s; {PROXY} }}",
        slow.url(),
        fast.url()
    );
    let http = "async_mirror_queue_size 8; async_mirror_max_connections 1; async_mirror_zone live 1m;";
    let ng = Nginx::start("neighbour", 1, "", &front(&locations, http));
    let mut c = Client::connect(ng.port);
    let mut sent = Vec::new();
    for i in 0..20 {
        sent.push(Instant::now());
        assert_eq!(c.get(&format!("/n?i={i}")).status, 200);
        // Paced by the fast target itself: only the slow one's backlog fills.
        assert!(
            fast.wait_for(i + 1, Duration::from_secs(2)),
            "the fast target got {} of {}",
            fast.count(),
            i + 1
        );
    }
    let m = scrape_when(ng.port, Duration::from_secs(10), "every copy ended", |m| {
        copies_sum(m, &slow.url()) == 20 && copies_sum(m, &fast.url()) == 20
    });
    assert_eq!(metric(&m, COPIES, &fast.url(), "ok"), 20, "{m:?}");
    assert!(metric(&m, COPIES, &slow.url(), "dropped:queue_full") > 0, "{m:?}");
    assert!(metric(&m, COPIES, &slow.url(), "dropped:queue_timeout") > 0, "{m:?}");
    // Whatever the slow target received left the backlog within its timeout.
    for r in slow.requests() {
        let i: usize = r.uri.split("i=").nth(1).unwrap().parse().unwrap();
        let waited = r.at.duration_since(sent[i]);
        assert!(waited < Duration::from_millis(1300), "copy {i} sent {waited:?} after its request");
    }
    ng.quit();
}

/// A template's path made of decoded variables reaches the mirror as the path it means,
/// percent-encoded where a request target cannot hold the bytes; never `/`.
#[test]
fn template_paths_are_encoded_not_cut() {
    let sink = Sink::start();
    let locations =
        format!("location / {{ async_mirror http://127.0.0.1:{}/shadow$uri; {PROXY} }}", sink.port);
    let ng = Nginx::start("template", 1, "", &front(&locations, ""));
    let mut c = Client::connect(ng.port);
    for (method, path) in
        [("DELETE", "/a%3Cb%3E"), ("GET", "/x%23y"), ("GET", "/sp%20ace"), ("GET", "/%7Bj%7D")]
    {
        assert_eq!(c.request(method, path, &[]).status, 200, "{path}");
    }
    assert!(sink.wait_for(4, Duration::from_secs(5)));
    let mut got: Vec<(String, String)> = sink.requests().into_iter().map(|r| (r.method, r.uri)).collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("DELETE".to_string(), "/shadow/a%3Cb%3E".to_string()),
            ("GET".to_string(), "/shadow/%7Bj%7D".to_string()),
            ("GET".to_string(), "/shadow/sp%20ace".to_string()),
            ("GET".to_string(), "/shadow/x%23y".to_string()),
        ]
    );
    ng.quit();
}

/// Range and conditional requests: nginx turns the primary's 200 into 206 or 304 after
/// this module sees it; a byte-identical candidate never counts as `differ` for that.
#[test]
fn range_and_conditional_requests_never_compare_as_differ() {
    let candidate_port = free_port();
    let ng = Nginx::prepare("conditional", |prefix| {
        std::fs::write(prefix.join("html/file.txt"), data(4000)).unwrap();
    })
    .start(
        1,
        "",
        &front(
            &format!(
                "location /file.txt {{ async_mirror http://127.0.0.1:{candidate_port}; async_mirror_compare on;
                                       async_mirror_compare_key static; }}"
            ),
            &format!("async_mirror_zone live 1m; server {{ listen 127.0.0.1:{candidate_port}; location / {{ }} }}"),
        ),
    );
    let mut c = Client::connect(ng.port);
    let first = c.get("/file.txt");
    assert_eq!(first.status, 200);
    let etag = first.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case("etag")).unwrap().1.clone();
    assert_eq!(c.get("/file.txt").status, 200);
    assert_eq!(c.request("GET", "/file.txt", &[("Range", "bytes=0-99")]).status, 206);
    assert_eq!(c.request("GET", "/file.txt", &[("If-None-Match", &etag)]).status, 304);
    let verdicts = || {
        let j: serde_json::Value = serde_json::from_str(&fetch(ng.port, "/status?format=json")).unwrap();
        j["targets"][0]["comparisons"][0]["verdicts"].clone()
    };
    let mut v = verdicts();
    assert!(wait_until(Duration::from_secs(5), || {
        v = verdicts();
        v.as_object().is_some_and(|o| o.values().filter_map(|n| n.as_u64()).sum::<u64>() == 4)
    }));
    // A static file's body goes by in file buffers: status and headers are compared.
    assert_eq!((v["uncompared_file_body"].as_u64(), v["differ"].as_u64()), (Some(2), Some(0)), "{v}");
    // The range and the revalidation are never compared. On nginx 1.30 and later one of
    // them counts `uncompared{primary_incomplete}` instead (the capture of the primary saw
    // no end of its answer); either way, never `differ`.
    let conditional = v["uncompared_conditional"].as_u64().unwrap_or(0);
    let incomplete = v["uncompared_primary_incomplete"].as_u64().unwrap_or(0);
    assert!(conditional >= 1 && conditional + incomplete == 2, "{v}");
    ng.quit();
}

/// A compared answer's body is charged to the target's share as it is read: twenty large
/// answers at once over a small budget are not kept (and say so), and the worker's
/// memory does not grow by their size.
#[test]
fn kept_answers_are_charged_as_they_arrive() {
    let big = data(4 << 20);
    let body = big.clone();
    let candidate = Sink::answering(move |_| {
        vec![(Duration::ZERO, reply(200, &[("Content-Type", "text/plain")], &body, false))]
    });
    let locations = format!(
        "location / {{ async_mirror {}; async_mirror_compare on; async_mirror_compare_max_body 8m;
                       async_mirror_compare_key big; {PROXY} }}",
        candidate.url()
    );
    let http = "async_mirror_queue_bytes 2m; async_mirror_zone live 1m;";
    let ng = Nginx::start("charged", 1, "", &front(&locations, http));
    let worker = ng.workers()[0];
    let before = rss_kib(worker);
    let handles: Vec<_> = (0..20)
        .map(|i| {
            let port = ng.port;
            thread::spawn(move || get_once(port, &format!("/big{i}")).map(|r| r.status))
        })
        .collect();
    let mut peak = before;
    for h in handles {
        assert_eq!(h.join().unwrap(), Some(200));
        peak = peak.max(rss_kib(worker));
    }
    let verdicts = || {
        let j: serde_json::Value = serde_json::from_str(&fetch(ng.port, "/status?format=json")).unwrap();
        j["targets"][0]["comparisons"][0]["verdicts"].clone()
    };
    let mut v = verdicts();
    assert!(wait_until(Duration::from_secs(10), || {
        peak = peak.max(rss_kib(worker));
        v = verdicts();
        v.as_object().is_some_and(|o| o.values().filter_map(|n| n.as_u64()).sum::<u64>() == 20)
    }));
    assert_eq!(v["differ"].as_u64(), Some(0), "{v}");
    assert!(v["uncompared_body_too_large"].as_u64().unwrap_or(0) >= 18, "{v}");
    assert!(peak - before < 40 << 10, "RSS grew by {} KiB for 20 answers of 4 MiB", peak - before);
    ng.quit();
}
