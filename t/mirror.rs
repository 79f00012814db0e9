//! End-to-end behaviour of async_mirror with a real nginx and real peers.

use std::thread;
use std::time::{Duration, Instant};

use crate::common::*;

/// Front server on `{port}` with the given location blocks, plus a backend.

#[test]
fn get_arrives_intact_without_hop_by_hop_headers() {
    let sink = Sink::start();
    let locations = format!(
        "location / {{
            async_mirror {url};
            async_mirror {url}/shadow;
            async_mirror_set_header X-Shadow 1;
            async_mirror_set_header User-Agent mirror-agent;
            async_mirror_set_header X-Remove \"\";
            async_mirror_set_header X-Orig-Uri $uri;
            {PROXY}
        }}",
        url = sink.url()
    );
    let ng = Nginx::start("intact", 1, "", &front(&locations, ""));
    let mut c = Client::connect(ng.port);
    let r = c.request(
        "GET",
        "/path/a%20b?q=1&r=two",
        &[
            ("Host", "example.test"),
            ("X-Custom", "v1"),
            ("X-Remove", "gone"),
            ("User-Agent", "client-agent"),
            ("Connection", "keep-alive, X-Private"),
            ("X-Private", "hop"),
            ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"),
            ("Proxy-Connection", "keep-alive"),
        ],
    );
    assert_eq!((r.status, r.body.as_slice()), (200, &b"backend"[..]));
    assert!(sink.wait_for(2, Duration::from_secs(5)), "copies did not arrive");
    let mut got = sink.requests();
    got.sort_by(|a, b| a.uri.cmp(&b.uri));
    assert_eq!(got[0].uri, "/path/a%20b?q=1&r=two");
    assert_eq!(got[1].uri, "/shadow/path/a%20b?q=1&r=two");
    for copy in &got {
        assert_eq!(copy.method, "GET");
        assert_eq!(copy.header("host"), Some("example.test"));
        assert_eq!(copy.header("x-custom"), Some("v1"));
        assert_eq!(copy.header("x-shadow"), Some("1"));
        assert_eq!(copy.header("user-agent"), Some("mirror-agent"));
        assert_eq!(copy.header("x-orig-uri"), Some("/path/a b"));
        assert_eq!(copy.header("x-async-mirror"), Some("1"));
        for absent in ["x-remove", "x-private", "keep-alive", "te", "proxy-connection", "transfer-encoding"] {
            assert_eq!(copy.header(absent), None, "{absent} was forwarded");
        }
    }
    let log = ng.quit();
    let c = exit_counters(&log);
    assert_eq!(c.len(), 2);
    for counters in c.values() {
        assert_eq!((counters["attempted"], counters["ok"]), (1, 1), "{counters:?}");
    }
}

#[test]
fn one_copy_per_client_request() {
    let sink = Sink::start();
    let url = sink.url();
    let locations = format!(
        "root {{prefix}}/html;
        location /idx/ {{ async_mirror {url}; index index.html; }}
        location = /idx/index.html {{ async_mirror {url}; }}
        location /tf {{ async_mirror {url}; try_files /nonexistent @fallback; }}
        location @fallback {{ async_mirror {url}; {PROXY} }}
        location /ssi {{ async_mirror {url}; ssi on; ssi_types text/plain; default_type text/plain;
                         try_files /page.txt =404; }}
        location /inc {{ async_mirror {url}; {PROXY} }}
        location /plain {{ async_mirror {url}; {PROXY} }}"
    );
    let ng = Nginx::start("once", 1, "", &front(&locations, ""));
    std::fs::create_dir_all(ng.prefix.join("html/idx")).unwrap();
    std::fs::write(ng.prefix.join("html/idx/index.html"), "index").unwrap();
    std::fs::write(ng.prefix.join("html/page.txt"), "a<!--# include virtual=\"/inc\" -->b").unwrap();
    let mut c = Client::connect(ng.port);

    let r = c.get("/idx/");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"index"[..]), "index redirect");
    let r = c.get("/tf");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"backend"[..]), "try_files fallback");
    let r = c.get("/ssi");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"abackendb"[..]), "ssi include");
    // The loop guard: a request that is itself a copy is never copied again.
    let r = c.request("GET", "/plain", &[("X-Async-Mirror", "1")]);
    assert_eq!(r.status, 200);
    let r = c.get("/plain?last");
    assert_eq!(r.status, 200);

    assert!(sink.wait_for(4, Duration::from_secs(5)));
    let log = ng.quit();
    let mut uris: Vec<String> = sink.requests().into_iter().map(|x| x.uri).collect();
    uris.sort();
    assert_eq!(uris, ["/idx/", "/plain?last", "/ssi", "/tf"]);
    let c = &exit_counters(&log)[&url];
    assert_eq!((c["attempted"], c["ok"], c["skipped"]), (5, 4, 1), "{c:?}");
}

#[test]
fn inheritance_off_and_conditions() {
    let a = Sink::start();
    let b = Sink::start();
    let locations = format!(
        "async_mirror {a};
        location /inherit {{ {PROXY} }}
        location /replace {{ async_mirror {b}; {PROXY} }}
        location /off {{ async_mirror off; {PROXY} }}
        location /if {{ async_mirror_if $arg_m $http_x_m; {PROXY} }}",
        a = a.url(),
        b = b.url()
    );
    let ng = Nginx::start("inherit", 1, "", &front(&locations, ""));
    let mut c = Client::connect(ng.port);
    for path in ["/inherit", "/replace", "/off", "/if?m=1", "/if?m=0", "/if", "/if?m=0"] {
        assert_eq!(c.get(path).status, 200, "{path}");
    }
    assert_eq!(c.request("GET", "/if?m=yes", &[("X-M", "1")]).status, 200);
    assert!(a.wait_for(2, Duration::from_secs(5)) && b.wait_for(1, Duration::from_secs(5)));
    // Exit counters are final: no copy can still be on its way once they are written.
    let log = ng.quit();
    let counters = exit_counters(&log);
    assert_eq!(counters[&a.url()]["attempted"], 2, "{counters:?}");
    assert_eq!(counters[&b.url()]["attempted"], 1, "{counters:?}");
    let uris = |s: &Sink| s.requests().into_iter().map(|x| x.uri).collect::<Vec<_>>();
    let mut got_a = uris(&a);
    got_a.sort();
    assert_eq!(got_a, ["/if?m=yes", "/inherit"]);
    assert_eq!(uris(&b), ["/replace"]);
}

#[test]
fn slow_first_target_does_not_delay_second() {
    let slow = Sink::with_delay(Duration::from_secs(4));
    let fast = Sink::start();
    let locations =
        format!("location / {{ async_mirror {}; async_mirror {}; {PROXY} }}", slow.url(), fast.url());
    let ng = Nginx::start("slowfirst", 1, "", &front(&locations, ""));
    let mut c = Client::connect(ng.port);
    let sent = Instant::now();
    for i in 0..5 {
        let r = c.get(&format!("/r{i}"));
        assert_eq!(r.status, 200);
        assert!(r.elapsed < Duration::from_millis(1000), "main request took {:?}", r.elapsed);
    }
    assert!(fast.wait_for(5, Duration::from_secs(3)));
    let last = fast.requests().iter().map(|r| r.at).max().unwrap();
    assert!(last - sent < Duration::from_secs(2), "second target delayed by the first");
    assert!(slow.wait_for(1, Duration::from_secs(3)));
    ng.quit();
}

/// Main requests through one keepalive connection while the mirror misbehaves:
/// each must be answered by the backend long before the mirror could answer.
fn main_requests_unaffected(name: &str, mirror_url: &str) -> Counters {
    let locations = format!(
        "location / {{ async_mirror {mirror_url}; async_mirror_timeout 5s; {PROXY} }}
         location /plain {{ {PROXY} }}"
    );
    let ng = Nginx::start(name, 1, "", &front(&locations, ""));
    let mut c = Client::connect(ng.port);
    let mut worst = Duration::ZERO;
    for i in 0..30 {
        let r = c.get(&format!("/m{i}"));
        assert_eq!((r.status, r.body.as_slice()), (200, &b"backend"[..]), "request {i}");
        worst = worst.max(r.elapsed);
    }
    // The next request on the same keepalive connection, where a blocking mirror stalls.
    let r = c.get("/plain");
    assert_eq!(r.status, 200);
    worst = worst.max(r.elapsed);
    // The mirror answers after 3 s at the earliest (slow) or never: 1 s is "long before".
    assert!(worst < Duration::from_millis(1000), "{name}: slowest main request {worst:?}");
    let log = ng.quit();
    let counters = exit_counters(&log);
    let t = &counters[mirror_url];
    assert_eq!(t["attempted"], 30);
    assert_eq!(outcome_sum(t), 30, "{t:?}");
    counters
}

#[test]
fn refused_mirror_does_not_delay_main_requests() {
    let url = format!("http://127.0.0.1:{}", refused_port());
    let c = main_requests_unaffected("refused", &url);
    let t = &c[&url];
    // The breaker (max_fails 3) stops connecting after the third refusal.
    assert_eq!(t["failed_connect"] + t["dropped_breaker_open"], 30, "{t:?}");
    // All 30 copies may be in flight before the third refusal opens the breaker
    // (t/observability.rs tests the breaker itself): here, every copy is accounted for.
    assert!(t["failed_connect"] >= 3, "{t:?}");
}

#[test]
fn black_holed_mirror_does_not_delay_main_requests() {
    let hole = BlackHole::start();
    let c = main_requests_unaffected("blackhole", &hole.url());
    let t = &c[&hole.url()];
    // Connects hang until async_mirror_connect_timeout (1s), or the worker exits first.
    assert_eq!(t["ok"], 0);
    assert_eq!(t["failed_connect"] + t["dropped_shutdown"] + t["dropped_breaker_open"], 30, "{t:?}");
}

#[test]
fn slow_mirror_does_not_delay_main_requests() {
    let slow = Sink::with_delay(Duration::from_secs(3));
    let c = main_requests_unaffected("slow", &slow.url());
    let t = &c[&slow.url()];
    assert!(t["connections_opened"] <= 32, "{t:?}");
}

#[test]
fn keepalive_pool_bounds_connections() {
    let sink = Sink::start();
    let locations = format!("location / {{ async_mirror {}; {PROXY} }}", sink.url());
    let ng = Nginx::start("keepalive", 2, "", &front(&locations, "async_mirror_max_connections 2;"));
    let mut c = Client::connect(ng.port);
    for i in 0..500 {
        assert_eq!(c.get(&format!("/k{i}")).status, 200);
    }
    assert!(sink.wait_for(500, Duration::from_secs(10)), "only {} copies", sink.count());
    let conns = sink.connections();
    assert!(conns <= 2 * 2, "{conns} connections for 500 copies (max 2 per worker × 2 workers)");
    assert_eq!(distinct(sink.requests().iter().map(|r| r.conn)), conns, "every connection carried copies");
    let log = ng.quit();
    let t = &exit_counters(&log)[&sink.url()];
    assert_eq!((t["attempted"], t["ok"]), (500, 500), "{t:?}");
    assert!(t["connections_opened"] <= 4, "{t:?}");
}

#[test]
fn queue_overflow_is_counted_not_buffered() {
    let hole = BlackHole::start();
    let locations = format!("location / {{ async_mirror {}; {PROXY} }}", hole.url());
    let http = "async_mirror_queue_size 16; async_mirror_max_connections 2; async_mirror_drain_timeout 0;";
    let ng = Nginx::start("overflow", 1, "", &front(&locations, http));
    let worker = ng.workers()[0];
    let mut c = Client::connect(ng.port);
    for i in 0..100 {
        assert_eq!(c.get(&format!("/warm{i}")).status, 200);
    }
    let rss_before = rss_kib(worker);
    for i in 0..2000 {
        assert_eq!(c.get(&format!("/q{i}")).status, 200);
    }
    let rss_after = rss_kib(worker);
    assert!(rss_after < rss_before + 8 * 1024, "worker RSS grew from {rss_before} to {rss_after} KiB");
    let log = ng.quit();
    let t = &exit_counters(&log)[&hole.url()];
    assert_eq!(t["attempted"], 2100);
    assert_eq!(outcome_sum(t), 2100, "{t:?}");
    assert!(t["dropped_queue_full"] >= 2000 - 18, "{t:?}");
    assert!(t["connections_opened"] == 0, "{t:?}");
}

#[test]
fn reload_and_quit_under_traffic() {
    let sink = Sink::start();
    let locations = format!("location / {{ async_mirror {}; {PROXY} }}", sink.url());
    let ng = Nginx::start("reload", 2, "", &front(&locations, ""));
    let port = ng.port;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..3)
        .map(|t| {
            let stop = stop.clone();
            thread::spawn(move || {
                let (mut ok, mut n) = (0u64, 0u64);
                let deadline = Instant::now() + Duration::from_secs(30);
                while !stop.load(std::sync::atomic::Ordering::Relaxed)
                    && Instant::now() < deadline
                    && n < 20_000
                {
                    n += 1;
                    match get_once(port, &format!("/c{t}-{n}")) {
                        Some(r) if r.status == 200 && r.body == b"backend" => ok += 1,
                        other => panic!("request {n} not answered: {other:?}"),
                    }
                }
                (ok, n)
            })
        })
        .collect();
    wait_until(Duration::from_secs(5), || sink.count() > 50);
    ng.reload();
    wait_until(Duration::from_secs(5), || sink.count() > 150);
    ng.reload();
    wait_until(Duration::from_secs(5), || sink.count() > 250);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for c in clients {
        let (ok, n) = c.join().expect("client thread");
        assert_eq!(ok, n);
        total += ok;
    }
    let log = ng.quit();
    let t = &exit_counters(&log)[&sink.url()];
    assert_eq!(t["attempted"], total, "{t:?}");
    assert_eq!(outcome_sum(t), total, "{t:?}");
    assert_eq!(log.matches("async_mirror: worker exiting").count(), 6, "3 generations × 2 workers");
}

#[test]
fn variables_in_url_are_evaluated_per_request() {
    let sink = Sink::start();
    let port = sink.port;
    let locations = format!(
        "location /port {{ async_mirror http://127.0.0.1:$arg_p hosts=127.0.0.1:{port}; {PROXY} }}
         location /name {{ async_mirror http://$arg_h:{port}/pre hosts=localhost:{port}; {PROXY} }}
         location /path {{ async_mirror http://127.0.0.1:{port}/v$uri; {PROXY} }}"
    );
    let ng = Nginx::start("urlvars", 1, "", &front(&locations, ""));
    let mut c = Client::connect(ng.port);
    for path in [
        format!("/port?p={port}"),
        "/port".to_string(),
        "/port?p=notaport".to_string(),
        "/name?h=localhost".to_string(),
        "/name?h=".to_string(),
        // A client choosing where its copy goes: only the operator's hosts= are used.
        "/name?h=127.0.0.2".to_string(),
        format!("/port?p={}", port + 1),
        "/path/x?q=1".to_string(),
    ] {
        assert_eq!(c.get(&path).status, 200, "{path}");
    }
    assert!(sink.wait_for(3, Duration::from_secs(5)));
    let log = ng.quit();
    let mut uris: Vec<String> = sink.requests().into_iter().map(|r| r.uri).collect();
    uris.sort();
    assert_eq!(
        uris,
        [format!("/port?p={port}"), "/pre/name?h=localhost".to_string(), "/v/path/x".to_string()]
    );
    let c = exit_counters(&log);
    let t = &c["http://127.0.0.1:$arg_p"];
    assert_eq!((t["attempted"], t["ok"], t["skipped"]), (4, 1, 3), "{t:?}");
    let t = &c[&format!("http://$arg_h:{port}/pre")];
    assert_eq!((t["attempted"], t["ok"], t["skipped"]), (3, 1, 2), "{t:?}");
}
