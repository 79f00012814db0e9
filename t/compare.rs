//! Shadow comparison: the primary's answer against a candidate's and a baseline's,
//! with real nginx, real backends and the verdicts read from the status page.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;

/// A JSON API: the same answer for the same request (framing chosen by the path),
/// `tweak` changes the document before it is sent.
fn api(req: &Recorded, tweak: &dyn Fn(&str, &mut Value)) -> Vec<u8> {
    let path = req.uri.split('?').next().unwrap_or("").to_string();
    let mut doc = serde_json::json!({
        "path": path,
        "method": req.method,
        "body_len": req.body.len(),
        "items": [{"id": 1, "price": 5}, {"id": 2, "price": 6}],
        "timestamp": Instant::now().elapsed().as_nanos() as u64 ^ rand_u64(),
    });
    tweak(&path, &mut doc);
    let body = doc.to_string().into_bytes();
    if path.starts_with("/gz") {
        // Opaque bytes said to be gzip: compared as bytes, never decoded.
        return reply(
            200,
            &[("Content-Type", "application/json"), ("Content-Encoding", "gzip")],
            b"\x1f\x8b\x08gz",
            false,
        );
    }
    reply(200, &[("Content-Type", "application/json")], &body, path.starts_with("/chunked"))
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish()
}

fn same(_: &str, _: &mut Value) {}

fn backend(tweak: impl Fn(&str, &mut Value) + Send + Sync + 'static) -> Sink {
    Sink::answering(move |req| vec![(Duration::ZERO, api(req, &tweak))])
}

fn proxy_to(port: u16) -> String {
    format!("proxy_pass http://127.0.0.1:{port}; proxy_http_version 1.1; proxy_set_header Connection \"\";")
}

/// Verdicts and field counts of one target from the JSON status page.
#[derive(Debug, Default)]
struct Verdicts {
    /// (endpoint, verdict key) -> count.
    verdicts: BTreeMap<(String, String), u64>,
    /// (endpoint, field) -> [candidate, baseline].
    fields: BTreeMap<(String, String), [u64; 2]>,
}

impl Verdicts {
    fn read(port: u16, target: &str) -> Verdicts {
        let r = get_once(port, "/status?format=json").expect("status");
        let doc: Value = serde_json::from_slice(&r.body).expect("JSON status");
        let mut out = Verdicts::default();
        for t in doc["targets"].as_array().unwrap() {
            if t["target"] != target {
                continue;
            }
            for e in t["comparisons"].as_array().unwrap() {
                let ep = e["endpoint"].as_str().unwrap().to_string();
                for (k, v) in e["verdicts"].as_object().unwrap() {
                    *out.verdicts.entry((ep.clone(), k.clone())).or_default() += v.as_u64().unwrap();
                }
                for f in e["fields"].as_array().unwrap() {
                    let c =
                        out.fields.entry((ep.clone(), f["field"].as_str().unwrap().to_string())).or_default();
                    c[0] += f["candidate"].as_u64().unwrap();
                    c[1] += f["baseline"].as_u64().unwrap();
                }
            }
        }
        out
    }

    fn total(&self) -> u64 {
        self.verdicts.values().sum()
    }

    fn get(&self, endpoint: &str, verdict: &str) -> u64 {
        self.verdicts.get(&(endpoint.to_string(), verdict.to_string())).copied().unwrap_or(0)
    }

    /// Endpoint -> the verdicts with a non-zero count.
    fn nonzero(&self) -> BTreeMap<String, Vec<(String, u64)>> {
        let mut m: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
        for ((e, v), n) in &self.verdicts {
            if *n > 0 {
                m.entry(e.clone()).or_default().push((v.clone(), *n));
            }
        }
        m
    }
}

/// Waits until `n` comparisons of `target` are counted; returns them.
fn settled(port: u16, target: &str, n: u64) -> Verdicts {
    let mut last = Verdicts::default();
    let done = wait_until(Duration::from_secs(15), || {
        last = Verdicts::read(port, target);
        last.total() >= n
    });
    assert!(done, "expected {n} comparisons for {target}, got {last:?}\n{}", fetch(port, "/status"));
    last
}

#[test]
fn identical_answers_match_for_every_method_and_framing() {
    let (primary, candidate) = (backend(same), backend(same));
    let server = format!(
        "location / {{
            async_mirror {cand};
            async_mirror_compare on;
            async_mirror_compare_ignore_json $.timestamp;
            async_mirror_compare_log {{prefix}}/logs/compare.log;
            {proxy}
        }}",
        cand = candidate.url(),
        proxy = proxy_to(primary.port)
    );
    let ng = Nginx::start("cmp-same", 2, "", &front(&server, "async_mirror_zone cmp 1m;"));
    let mut c = Client::connect(ng.port);
    for i in 0..10 {
        for path in ["/cl/a", "/chunked/b", "/gz/c"] {
            let r = c.get(&format!("{path}?i={i}"));
            assert_eq!(r.status, 200);
        }
        let r = post(ng.port, "/cl/post", &data(10_000 + i), i % 2 == 0);
        assert_eq!(r.status, 200);
    }
    let v = settled(ng.port, &candidate.url(), 40);
    assert_eq!(v.get("/", "match"), 40, "{v:?}");
    assert!(v.fields.values().all(|c| *c == [0, 0]), "{v:?}");
    thread_sleep_for_fold();
    assert!(json_lines(&ng.prefix.join("logs/compare.log")).is_empty());
    ng.quit();
}

/// The report timer writes log lines every 250 ms; lines are polled for elsewhere, this
/// only gives a line that should not exist the chance to appear.
fn thread_sleep_for_fold() {
    std::thread::sleep(Duration::from_millis(600));
}

#[test]
fn each_kind_of_difference_is_named_once_with_both_values() {
    let primary = backend(same);
    let candidate = Sink::answering(|req| {
        let path = req.uri.clone();
        let body = api(req, &|p: &str, doc: &mut Value| {
            if p == "/j" {
                doc["items"][1]["price"] = 7.into();
                doc["items"][0]["id"] = 99.into(); // ignored
            }
        });
        let answer = match path.as_str() {
            "/s" => String::from_utf8(body).unwrap().replacen("200 X", "500 X", 1).into_bytes(),
            "/h" => String::from_utf8(body).unwrap().replacen("\r\n", "\r\nX-Version: 2\r\n", 1).into_bytes(),
            "/t" => reply(200, &[("Content-Type", "text/plain")], b"candidate text", false),
            _ => body,
        };
        vec![(Duration::ZERO, answer)]
    });
    let text_primary = Sink::answering(|_| {
        vec![(
            Duration::ZERO,
            reply(200, &[("Content-Type", "text/plain"), ("X-Version", "1")], b"primary text", false),
        )]
    });
    let server = format!(
        "async_mirror_compare on;
         async_mirror_compare_headers Content-Type X-Version;
         async_mirror_compare_ignore_json $.timestamp $.items[*].id;
         async_mirror_compare_key $uri;
         async_mirror_compare_log {{prefix}}/logs/compare.log rate=100/s;
         location / {{ async_mirror {cand}; {proxy} }}
         location /t {{ async_mirror {cand}; {text} }}",
        cand = candidate.url(),
        proxy = proxy_to(primary.port),
        text = proxy_to(text_primary.port)
    );
    let ng = Nginx::start("cmp-diff", 1, "", &front(&server, ""));
    for path in ["/s", "/h", "/j", "/t", "/same"] {
        assert_eq!(get_once(ng.port, path).unwrap().status, 200);
    }
    let v = settled(ng.port, &candidate.url(), 5);
    let expect = [
        ("/s", vec!["status"]),
        ("/h", vec!["header:x-version"]),
        ("/j", vec!["json:$.items[*].price"]),
        ("/t", vec!["body", "header:x-version"]),
    ];
    for (ep, fields) in &expect {
        assert_eq!(v.get(ep, "differ"), 1, "{ep}: {v:?}");
        let got: Vec<&str> =
            v.fields.iter().filter(|((e, _), c)| e == ep && c[0] > 0).map(|((_, f), _)| f.as_str()).collect();
        let mut want = fields.clone();
        want.sort();
        assert_eq!(got, want, "{ep}");
    }
    assert_eq!(v.get("/same", "match"), 1, "{v:?}");
    let path = ng.prefix.join("logs/compare.log");
    assert!(wait_until(Duration::from_secs(5), || json_lines(&path).len() >= 4));
    thread_sleep_for_fold();
    let lines = json_lines(&path);
    assert_eq!(lines.len(), 4, "one line per non-matching copy: {lines:?}");
    let by_uri = |u: &str| lines.iter().find(|l| l["uri"] == u).unwrap_or_else(|| panic!("no line for {u}"));
    let s = by_uri("/s");
    assert_eq!((s["status"]["primary"].as_u64(), s["status"]["mirror"].as_u64()), (Some(200), Some(500)));
    assert_eq!(s["fields"][0]["field"], "status");
    assert_eq!((s["method"].as_str(), s["verdict"].as_str()), (Some("GET"), Some("differ")));
    assert_eq!(s["target"], candidate.url());
    let h = by_uri("/h");
    assert_eq!(
        (h["fields"][0]["primary"].as_str(), h["fields"][0]["mirror"].as_str()),
        (Some("(none)"), Some("2"))
    );
    let j = by_uri("/j");
    assert_eq!(j["fields"][0]["field"], "json:$.items[*].price");
    assert_eq!(
        (j["fields"][0]["primary"].as_str(), j["fields"][0]["mirror"].as_str()),
        (Some("6"), Some("7"))
    );
    let t = by_uri("/t");
    let digests = &t["body_digest"];
    assert!(digests["primary"].as_str().unwrap().starts_with("fnv1a64:"));
    assert_ne!(digests["primary"], digests["mirror"]);
    assert!(t["time"].as_str().unwrap().ends_with('Z'));
    // Rotation: after a move and `nginx -s reopen`, lines go to the new file.
    let moved = ng.prefix.join("logs/compare.log.1");
    std::fs::rename(&path, &moved).unwrap();
    ng.signal(libc::SIGUSR1);
    assert!(wait_until(Duration::from_secs(5), || path.exists()), "reopen created the file");
    assert_eq!(get_once(ng.port, "/s").unwrap().status, 200);
    assert!(wait_until(Duration::from_secs(5), || json_lines(&path).len() == 1));
    assert_eq!(json_lines(&moved).len(), 4);
    ng.quit();
}

#[test]
fn a_difference_the_baseline_shares_is_noise() {
    // The candidate and the baseline both put a random request id in; only the
    // candidate gets the price wrong on /wrong.
    let primary = backend(same);
    let random_id = |doc: &mut Value| doc["request_id"] = rand_u64().into();
    let baseline = backend(move |_, doc| random_id(doc));
    let candidate = backend(move |p, doc| {
        random_id(doc);
        if p == "/wrong" {
            doc["items"][0]["price"] = 50.into();
        }
    });
    let server = format!(
        "location / {{
            async_mirror {cand};
            async_mirror {base} baseline;
            async_mirror_compare on;
            async_mirror_compare_ignore_json $.timestamp;
            async_mirror_compare_key $uri;
            {proxy}
        }}",
        cand = candidate.url(),
        base = baseline.url(),
        proxy = proxy_to(primary.port)
    );
    let ng = Nginx::start("cmp-noise", 1, "", &front(&server, ""));
    let mut c = Client::connect(ng.port);
    for _ in 0..10 {
        assert_eq!(c.get("/ok").status, 200);
        assert_eq!(c.get("/wrong").status, 200);
    }
    let v = settled(ng.port, &candidate.url(), 20);
    assert_eq!(v.nonzero()["/ok"], vec![("noise".to_string(), 10)], "{v:?}");
    assert_eq!(v.nonzero()["/wrong"], vec![("differ".to_string(), 10)], "{v:?}");
    let field = |e: &str, f: &str| v.fields.get(&(e.to_string(), f.to_string())).copied().unwrap_or_default();
    assert_eq!(field("/wrong", "json:$.items[*].price"), [10, 0], "candidate only");
    assert_eq!(field("/ok", "json:$.request_id"), [10, 10], "both sides, side by side");
    let b = settled(ng.port, &baseline.url(), 20);
    assert_eq!(b.get("/ok", "differ") + b.get("/wrong", "differ"), 20, "{b:?}");
    assert_eq!(b.fields[&("/ok".to_string(), "json:$.request_id".to_string())], [0, 10]);
    ng.quit();
}

#[test]
fn a_body_over_the_limit_leaves_status_and_headers_compared() {
    let primary = backend(|_, doc| doc["pad"] = "x".repeat(4000).into());
    let candidate = Sink::answering(|req| {
        let body = api(req, &|_: &str, doc: &mut Value| doc["pad"] = "y".repeat(4000).into());
        let body = match req.uri.as_str() {
            "/hdr" => {
                String::from_utf8(body).unwrap().replacen("application/json", "text/json", 1).into_bytes()
            }
            _ => body,
        };
        vec![(Duration::ZERO, body)]
    });
    let server = format!(
        "location / {{
            async_mirror {cand};
            async_mirror_compare on;
            async_mirror_compare_max_body 1k;
            async_mirror_compare_key $uri;
            {proxy}
        }}",
        cand = candidate.url(),
        proxy = proxy_to(primary.port)
    );
    let ng = Nginx::start("cmp-large", 1, "", &front(&server, ""));
    assert!(get_once(ng.port, "/same").unwrap().body.len() > 4000);
    get_once(ng.port, "/hdr").unwrap();
    let v = settled(ng.port, &candidate.url(), 2);
    assert_eq!(v.get("/same", "uncompared_body_too_large"), 1, "{v:?}");
    assert_eq!(v.get("/hdr", "differ"), 1, "{v:?}");
    assert_eq!(v.fields.keys().map(|(_, f)| f.as_str()).collect::<Vec<_>>(), ["header:content-type"]);
    ng.quit();
}

#[test]
fn a_client_that_leaves_mid_response_leaves_the_copy_uncompared() {
    // The primary sends half its body, then stalls; the client reads the start and leaves.
    let primary = Sink::answering(|_| {
        let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 200000\r\n\r\n";
        vec![
            (Duration::ZERO, [head.as_bytes(), &[b' '; 100_000]].concat()),
            (Duration::from_secs(3), vec![b' '; 100_000]),
        ]
    });
    let candidate = backend(same);
    let server = format!(
        "location / {{ async_mirror {cand}; async_mirror_compare on; {proxy} }}",
        cand = candidate.url(),
        proxy = proxy_to(primary.port)
    );
    let ng = Nginx::start("cmp-abort", 1, "", &front(&server, ""));
    let mut s = TcpStream::connect(("127.0.0.1", ng.port)).unwrap();
    s.write_all(b"GET /leave HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut buf = [0; 4096];
    assert!(s.read(&mut buf).unwrap() > 0);
    drop(s);
    let v = settled(ng.port, &candidate.url(), 1);
    assert_eq!(v.get("/", "uncompared_primary_incomplete"), 1, "{v:?}");
    ng.quit();
}

#[test]
fn a_slow_candidate_never_delays_the_client() {
    let primary = backend(same);
    let slow = Sink::with_delay(Duration::from_secs(2));
    let server = format!(
        "location / {{ async_mirror {cand}; async_mirror_compare on; {proxy} }}",
        cand = slow.url(),
        proxy = proxy_to(primary.port)
    );
    let ng = Nginx::start("cmp-slow", 1, "", &front(&server, ""));
    let direct = get_once(primary.port, "/chunked/x").unwrap();
    let r = get_once(ng.port, "/chunked/x").unwrap();
    assert!(r.elapsed < Duration::from_secs(1), "client waited {:?}", r.elapsed);
    let strip = |b: &[u8]| {
        let v: Value = serde_json::from_slice(b).unwrap();
        (v["path"].clone(), v["items"].clone(), v["method"].clone())
    };
    assert_eq!(strip(&r.body), strip(&direct.body), "the client's body is the backend's");
    let v = settled(ng.port, &slow.url(), 1);
    assert_eq!(v.get("/", "differ"), 1, "the slow candidate answered \"ok\": {v:?}");
    ng.quit();
}

#[test]
fn primary_status_sends_copies_only_for_matching_statuses() {
    let primary = Sink::answering(|req| {
        let status = if req.uri.starts_with("/missing") { 404 } else { 200 };
        vec![(Duration::ZERO, reply(status, &[], b"primary", false))]
    });
    let sink = Sink::start();
    let server = format!(
        "location / {{
            async_mirror {url};
            async_mirror_primary_status 2xx 301;
            access_log {{prefix}}/logs/outcome.log outcome;
            {proxy}
        }}",
        url = sink.url(),
        proxy = proxy_to(primary.port)
    );
    let extra = "log_format outcome '$uri $async_mirror_outcome';";
    let ng = Nginx::start("cmp-status", 1, "", &front(&server, extra));
    // GETs, and POSTs with a 1000-byte body.
    let call = |path: &str, i: usize| match i % 2 {
        0 => get_once(ng.port, path).unwrap().status,
        _ => post(ng.port, path, &data(1000), false).status,
    };
    for i in 0..5 {
        assert_eq!(call("/missing", i), 404);
        assert_eq!(call("/found", i), 200);
    }
    assert!(sink.wait_for(5, Duration::from_secs(5)));
    let m = scrape(ng.port);
    assert_eq!(metric(&m, "nginx_async_mirror_copies_attempted_total", &sink.url(), ""), 5);
    assert_eq!(metric(&m, "nginx_async_mirror_copies_total", &sink.url(), "ok"), 5);
    assert!(sink.requests().iter().all(|r| r.uri == "/found"));
    let posted: Vec<_> = sink.requests().into_iter().filter(|r| r.method == "POST").collect();
    assert!(posted.iter().all(|r| r.body == data(1000)), "held copies keep their bodies");
    let log = std::fs::read_to_string(ng.prefix.join("logs/outcome.log")).unwrap();
    assert_eq!(log.matches("/missing primary_status\n").count(), 5, "{log}");
    assert_eq!(log.matches("/found queued\n").count(), 5, "{log}");
    ng.quit();
}

#[test]
fn counters_survive_a_reload_and_endpoints_stay_bounded() {
    let (primary, candidate) = (backend(same), backend(same));
    let server = format!(
        "location / {{
            async_mirror {cand};
            async_mirror_compare on;
            async_mirror_compare_ignore_json $.timestamp;
            async_mirror_compare_key $arg_k;
            {proxy}
        }}",
        cand = candidate.url(),
        proxy = proxy_to(primary.port)
    );
    let ng = Nginx::start("cmp-reload", 2, "", &front(&server, "async_mirror_zone cmp 1m;"));
    let mut c = Client::connect(ng.port);
    for k in 0..1000 {
        assert_eq!(c.get(&format!("/a?k=key{k}")).status, 200);
    }
    let v = settled(ng.port, &candidate.url(), 1000);
    let endpoints = v.nonzero();
    assert!(endpoints.len() <= 32, "{} endpoints", endpoints.len());
    assert!(endpoints.contains_key("other"));
    assert_eq!(v.verdicts.iter().filter(|((_, k), _)| k == "match").map(|(_, n)| n).sum::<u64>(), 1000);
    drop(c);
    ng.reload();
    let mut c = Client::connect(ng.port);
    for k in 0..10 {
        assert_eq!(c.get(&format!("/a?k=key{k}")).status, 200);
    }
    let v = settled(ng.port, &candidate.url(), 1010);
    assert_eq!(v.total(), 1010, "{v:?}");
    assert!(v.nonzero().len() <= 32);
    ng.quit();
}
