//! `async_mirror_api`: pausing and re-sampling targets without a reload, through the zone.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;

/// One API call on a fresh connection: the status and the JSON body.
fn call(port: u16, method: &str, path: &str, body: &str) -> (u16, Value) {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let raw = raw_exchange(port, req.as_bytes(), Duration::from_secs(5));
    let status = statuses(&raw).first().copied().unwrap_or(0);
    let text = String::from_utf8_lossy(&raw);
    let json = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(json).unwrap_or(Value::Null))
}

fn front_with_api(sink: &Sink, write: &str) -> String {
    front(
        &format!(
            "location / {{ async_mirror {url}; access_log {{prefix}}/logs/o.log o; {PROXY} }}
             location /sampled/ {{ async_mirror {url}/s sample=50%; {PROXY} }}
             location /mirror-api/ {{ async_mirror off; async_mirror_api{write}; }}",
            url = sink.url()
        ),
        "async_mirror_zone api 1m; log_format o '$async_mirror_outcome';",
    )
}

/// Sends `n` requests over keepalive connections. Right after a reload an old worker
/// may still accept a connection and then close it when idle: such a request is sent
/// again on a new connection (nginx answered nothing on it, so nothing was copied).
fn traffic(port: u16, path: &str, n: usize) {
    let mut c = Client::connect(port);
    for i in 0..n {
        let uri = format!("{path}?i={i}");
        let r = c.try_request("GET", &uri, &[]).unwrap_or_else(|| {
            c = Client::connect(port);
            c.request("GET", &uri, &[])
        });
        assert_eq!(r.status, 200);
    }
}

#[test]
fn pause_and_resume_reach_every_worker_within_a_second() {
    let sink = Sink::start();
    let ng = Nginx::start("api-pause", 2, "", &front_with_api(&sink, " write=on"));
    let (status, list) = call(ng.port, "GET", "/mirror-api/targets", "");
    assert_eq!(status, 200, "{list}");
    let targets = list["targets"].as_array().unwrap();
    let t = targets.iter().find(|t| t["url"] == sink.url()).expect("target listed");
    assert_eq!(t["sample"]["configured"][0], 100.0);
    assert_eq!(t["paused"], false);
    let id = t["id"].as_u64().unwrap();
    traffic(ng.port, "/", 20);
    assert!(sink.wait_for(20, Duration::from_secs(5)));

    let (status, after) = call(ng.port, "PATCH", &format!("/mirror-api/targets/{id}"), r#"{"paused":true}"#);
    assert_eq!((status, &after["paused"]), (200, &Value::Bool(true)), "{after}");
    let paused_at = Instant::now();
    // Every worker reads the zone every 250 ms: after a second none copies any more.
    std::thread::sleep(Duration::from_secs(1).saturating_sub(paused_at.elapsed()));
    let before = sink.count();
    traffic(ng.port, "/", 50);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(sink.count(), before, "no copies while paused");
    let log = std::fs::read_to_string(ng.prefix.join("logs/o.log")).unwrap();
    assert_eq!(log.lines().rev().take(50).filter(|l| *l == "paused").count(), 50);
    let status_page = fetch(ng.port, "/status");
    assert!(status_page.contains(&format!("nginx_async_mirror_paused{{target=\"{}\"}} 1", sink.url())));

    let (status, _) = call(ng.port, "PATCH", &format!("/mirror-api/targets/{id}"), r#"{"paused":false}"#);
    assert_eq!(status, 200);
    std::thread::sleep(Duration::from_secs(1));
    traffic(ng.port, "/", 30);
    assert!(sink.wait_for(before + 30, Duration::from_secs(5)), "copies resume on every worker");
    let m = scrape(ng.port);
    assert_eq!(
        metric(&m, "nginx_async_mirror_copies_attempted_total", &sink.url(), ""),
        50,
        "paused copies are not copies"
    );
    ng.quit();
}

/// Copies attempted for `target` over all workers, once every worker has folded its
/// counters into the zone (two reads 300 ms apart agree; workers fold every 250 ms).
fn attempted(port: u16, target: &str) -> u64 {
    let read = || metric(&scrape(port), "nginx_async_mirror_copies_attempted_total", target, "");
    let mut last = read();
    let steady = wait_until(Duration::from_secs(5), || {
        std::thread::sleep(Duration::from_millis(300));
        let now = read();
        std::mem::replace(&mut last, now) == now
    });
    assert!(steady, "counters kept changing");
    last
}

#[test]
fn a_sample_override_changes_the_fraction_and_survives_a_reload() {
    let sink = Sink::start();
    let ng = Nginx::start("api-sample", 2, "", &front_with_api(&sink, " write=on"));
    let target = format!("{}/s", sink.url());
    let (_, list) = call(ng.port, "GET", "/mirror-api/targets", "");
    let id = list["targets"].as_array().unwrap().iter().find(|t| t["url"] == target).unwrap()["id"]
        .as_u64()
        .unwrap();
    let (status, t) = call(ng.port, "PATCH", &format!("/mirror-api/targets/{id}"), r#"{"sample":10}"#);
    assert_eq!((status, t["sample"]["effective"][0].as_f64()), (200, Some(10.0)), "{t}");
    assert_eq!(t["sample"]["configured"][0], 50.0);
    std::thread::sleep(Duration::from_secs(1));
    let n = 3000;
    traffic(ng.port, "/sampled/", n);
    let copies = attempted(ng.port, &target);
    // p = 0.1 of 3000: 300 ± 5σ (σ ≈ 16.4), far from the configured 50 % (1500).
    assert!((218..=382).contains(&copies), "{copies} copies of {n} at 10 %");
    assert!(
        fetch(ng.port, "/status")
            .contains(&format!("nginx_async_mirror_sample_override_ratio{{target=\"{target}\"}} 0.1"))
    );

    ng.reload();
    let (_, list) = call(ng.port, "GET", &format!("/mirror-api/targets/{id}"), "");
    assert_eq!(list["override"]["sample"], 10.0, "the override lives in the zone: {list}");
    let before = copies;
    traffic(ng.port, "/sampled/", n);
    let after = attempted(ng.port, &target) - before;
    assert!((218..=382).contains(&after), "{after} copies of {n} after the reload");

    let (status, t) = call(ng.port, "DELETE", &format!("/mirror-api/targets/{id}/override"), "");
    assert_eq!((status, t["sample"]["effective"][0].as_f64()), (200, Some(50.0)), "{t}");
    ng.quit();
}

#[test]
fn bad_requests_get_a_json_error_and_read_only_refuses_changes() {
    let sink = Sink::start();
    let ng = Nginx::start("api-bad", 1, "", &front_with_api(&sink, " write=on"));
    let cases: &[(&str, &str, &str, u16)] = &[
        ("PATCH", "/mirror-api/targets/0", "", 400),
        ("PATCH", "/mirror-api/targets/0", "{", 400),
        ("PATCH", "/mirror-api/targets/0", "null", 400),
        ("PATCH", "/mirror-api/targets/0", "[1]", 400),
        ("PATCH", "/mirror-api/targets/0", "{}", 400),
        ("PATCH", "/mirror-api/targets/0", r#"{"paused":1}"#, 400),
        ("PATCH", "/mirror-api/targets/0", r#"{"sample":150}"#, 400),
        ("PATCH", "/mirror-api/targets/0", r#"{"sample":-3}"#, 400),
        ("PATCH", "/mirror-api/targets/0", r#"{"sample":"10"}"#, 400),
        ("PATCH", "/mirror-api/targets/0", r#"{"weight":3}"#, 400),
        ("PATCH", "/mirror-api/targets/0", "\u{0}\u{1}binary", 400),
        ("PATCH", "/mirror-api/targets/77", r#"{"paused":true}"#, 404),
        ("PATCH", "/mirror-api/targets/abc", r#"{"paused":true}"#, 404),
        ("GET", "/mirror-api/", "", 404),
        ("GET", "/mirror-api/targets/0/override/x", "", 404),
        ("GET", "/mirror-api/nothing", "", 404),
        ("POST", "/mirror-api/targets", "{}", 405),
        ("PUT", "/mirror-api/targets/0", r#"{"paused":true}"#, 405),
        ("DELETE", "/mirror-api/targets/0", "", 405),
        ("GET", "/mirror-api/targets/0/override", "", 405),
    ];
    for (method, path, body, want) in cases {
        let (status, json) = call(ng.port, method, path, body);
        assert_eq!(status, *want, "{method} {path} {body:?}: {json}");
        assert!(json["error"].is_string(), "{method} {path}: a JSON error, got {json}");
    }
    let big = format!("{{\"paused\":true,\"pad\":\"{}\"}}", "x".repeat(20_000));
    assert_eq!(call(ng.port, "PATCH", "/mirror-api/targets/0", &big).0, 413);
    let (_, t) = call(ng.port, "GET", "/mirror-api/targets/0", "");
    assert_eq!(t["override"]["paused"], Value::Null, "nothing changed: {t}");
    ng.quit();

    let ng = Nginx::start("api-ro", 1, "", &front_with_api(&sink, ""));
    assert_eq!(call(ng.port, "GET", "/mirror-api/targets", "").0, 200);
    let (status, json) = call(ng.port, "PATCH", "/mirror-api/targets/0", r#"{"paused":true}"#);
    assert_eq!(status, 403, "{json}");
    assert_eq!(call(ng.port, "DELETE", "/mirror-api/targets/0/override", "").0, 403);
    ng.quit();
}
