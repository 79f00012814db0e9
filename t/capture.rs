//! Capture targets: `file:` records replayed into a recording sink by `async-mirror-replay`
//! (methods, paths, headers minus scrubbed ones and bodies identical; `--speed 200%` takes
//! half the time; `--compare` against the same backend matches), reopening after a move,
//! full and read-only files counted, and Kafka through librdkafka's mock cluster: every copy
//! one message, replayed from the topic, and a dead or black-holed broker that costs the
//! client nothing.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;

fn replay(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_async-mirror-replay")).args(args).output().expect("replayer");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "replayer failed: {text}\n{}", String::from_utf8_lossy(&out.stderr));
    text
}

/// `key=value` pairs of the summary line that starts with `label:`.
fn line_counts(summary: &str, label: &str) -> Vec<(String, u64)> {
    let line = summary.lines().find(|l| l.starts_with(label)).unwrap_or("");
    line[label.len().min(line.len())..]
        .split_whitespace()
        .filter_map(|kv| kv.split_once('=').and_then(|(k, v)| Some((k.to_string(), v.parse().ok()?))))
        .collect()
}

fn count(pairs: &[(String, u64)], key: &str) -> u64 {
    pairs.iter().find(|(k, _)| k == key).map_or(0, |(_, v)| *v)
}

/// One request of the mixed traffic: a GET with credentials, a POST, a chunked POST.
fn send(port: u16, i: usize) -> (String, String, Vec<u8>) {
    match i % 3 {
        0 => {
            let path = format!("/get/{i}?q={i}");
            let mut c = Client::connect(port);
            let r = c.request(
                "GET",
                &path,
                &[("Authorization", "Bearer s3cret"), ("Cookie", "sid=1"), ("X-Trace", &i.to_string())],
            );
            assert_eq!(r.status, 200);
            ("GET".into(), path, Vec::new())
        }
        k => {
            let path = format!("/post/{i}");
            let body = data(1000 + 997 * i);
            assert_eq!(post(port, &path, &body, k == 2).status, 200);
            ("POST".into(), path, body)
        }
    }
}

/// nginx with `server` in the front server, counters summed over workers, and every
/// worker's runtime started (the harness waits for that only for `http` targets).
fn start(name: &str, workers: usize, server: &str, extra: &str) -> Nginx {
    let ng = Nginx::start(name, workers, "", &front(server, &format!("async_mirror_zone z 1m; {extra}")));
    let up = wait_until(Duration::from_secs(10), || {
        ng.error_log().matches("async_mirror: runtime started").count() >= workers
    });
    assert!(up, "{}", ng.error_log());
    ng
}

fn ok_copies(port: u16, url: &str) -> u64 {
    metric(&scrape(port), "nginx_async_mirror_copies_total", url, "ok")
}

#[test]
fn a_capture_file_replays_into_a_sink_at_twice_the_speed() {
    let plain = free_port();
    let server = format!("location / {{ async_mirror file:logs/capture.gor; {PROXY} }}");
    let extra = format!("server {{ listen 127.0.0.1:{plain}; location / {{ {PROXY} }} }}");
    let ng = start("capture", 2, &server, &extra);
    let n = 21;
    let (mut sent, mut sent_at) = (Vec::new(), Vec::new());
    let started = Instant::now();
    for i in 0..n {
        // 100 ms apart: the records span two seconds.
        let due = started + Duration::from_millis(100 * i as u64);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        sent_at.push(Instant::now());
        sent.push(send(ng.port, i));
    }
    let url = "file:logs/capture.gor";
    assert!(
        wait_until(Duration::from_secs(10), || ok_copies(ng.port, url) == n as u64),
        "copies not recorded"
    );
    let path = ng.prefix.join("logs/capture.gor");
    let text = std::fs::read(&path).unwrap();
    let separator = "\n\u{1F435}\u{1F648}\u{1F649}\n".as_bytes();
    let records = text.windows(separator.len()).filter(|w| *w == separator).count();
    assert_eq!(records, 2 * n, "a request and an answer record per copy");
    let shown = String::from_utf8_lossy(&text);
    assert!(!shown.contains("s3cret") && !shown.contains("sid=1"), "credentials are scrubbed");
    assert!(shown.contains("\nHTTP/1.1 200 OK\r\n") && shown.contains("x-trace: 0\r\n"));

    let sink = Sink::start();
    let path = path.display().to_string();
    let summary = replay(&["--from", &path, "--to", &sink.url(), "--speed", "200%"]);
    assert_eq!(count(&line_counts(&summary, "outcomes:"), "ok"), n as u64, "{summary}");
    let got = sink.requests();
    assert_eq!(got.len(), n, "{summary}");
    for (method, uri, body) in &sent {
        let r = got.iter().find(|r| r.uri == *uri).unwrap_or_else(|| panic!("{uri} not replayed"));
        assert_eq!((&r.method, sha(&r.body)), (method, sha(body)), "{uri}");
        if method == "GET" {
            assert_eq!(r.header("authorization"), Some("[scrubbed]"));
            assert_eq!(r.header("cookie"), Some("[scrubbed]"));
            assert!(uri.ends_with(&format!("q={}", r.header("x-trace").unwrap())));
        }
        assert_eq!(r.header("host"), Some(if method == "GET" { "localhost" } else { "x" }));
        assert!(r.header("x-async-mirror").is_none(), "the mark header is not recorded");
    }
    // Two seconds of traffic replayed at 200%: about one second from first to last.
    let first = got.iter().map(|r| r.at).min().unwrap();
    let last = got.iter().map(|r| r.at).max().unwrap();
    let took = last - first;
    let span = sent_at.last().unwrap().duration_since(sent_at[0]);
    eprintln!("capture: {span:?} of traffic replayed at 200% in {took:?}");
    assert!(took > Duration::from_millis(800) && took < Duration::from_millis(1400), "{took:?}\n{summary}");

    // Against the same backend, every answer matches the recorded one.
    let summary = replay(&[
        "--from",
        &path,
        "--to",
        &format!("http://127.0.0.1:{plain}"),
        "--speed",
        "max",
        "--compare",
    ]);
    let verdicts = line_counts(&summary, "verdicts:");
    assert_eq!(count(&verdicts, "match"), n as u64, "{summary}");
    // Three rounds at full speed.
    let summary = replay(&["--from", &path, "--to", &sink.url(), "--speed", "max", "--repeat", "3"]);
    assert_eq!(count(&line_counts(&summary, "outcomes:"), "ok"), 3 * n as u64, "{summary}");
    ng.quit();
}

#[test]
fn a_moved_capture_file_is_reopened() {
    let server = format!("location / {{ async_mirror file:logs/c.gor response=off; {PROXY} }}");
    let ng = start("capture-reopen", 1, &server, "");
    let mut c = Client::connect(ng.port);
    for i in 0..5 {
        assert_eq!(c.get(&format!("/before/{i}")).status, 200);
    }
    let url = "file:logs/c.gor";
    assert!(wait_until(Duration::from_secs(5), || ok_copies(ng.port, url) == 5));
    let path = ng.prefix.join("logs/c.gor");
    let moved = ng.prefix.join("logs/c.gor.1");
    std::fs::rename(&path, &moved).unwrap();
    ng.signal(libc::SIGUSR1);
    assert!(wait_until(Duration::from_secs(5), || path.exists()));
    // The timer hands the writer nginx's new file within a tick: copies made before that
    // still go to the moved file, none is lost, and the later ones go to the new file.
    let mut sent = 0;
    let moved_on = wait_until(Duration::from_secs(5), || {
        assert_eq!(c.get(&format!("/after/{sent}")).status, 200);
        sent += 1;
        let new = std::fs::read_to_string(&path).unwrap_or_default();
        new.contains("GET /after/")
    });
    assert!(moved_on, "no copy reached the reopened file");
    assert!(wait_until(Duration::from_secs(5), || ok_copies(ng.port, url) == 5 + sent as u64));
    let old = String::from_utf8(std::fs::read(&moved).unwrap()).unwrap();
    let new = String::from_utf8(std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(old.matches("GET /before/").count(), 5);
    assert_eq!(old.matches("GET /after/").count() + new.matches("GET /after/").count(), sent);
    assert_eq!(new.matches("/before/").count(), 0);
    assert!(!new.contains("\n2 "), "response=off: no answer records");
    ng.quit();
}

/// The error log's lines about the capture target.
fn capture_errors(ng: &Nginx) -> usize {
    ng.error_log().lines().filter(|l| l.contains("capture failed (failed_write)")).count()
}

#[test]
fn a_full_disk_ends_copies_counted_with_one_error_line() {
    let server = format!(
        "location / {{ async_mirror file:/dev/full; async_mirror_max_fails 0; {PROXY} }}
         location /plain {{ {PROXY} }}"
    );
    let ng = start("capture-full", 1, &server, "");
    let mut c = Client::connect(ng.port);
    for i in 0..20 {
        assert_eq!(c.get(&format!("/f{i}")).status, 200);
    }
    assert_eq!(c.get("/plain").status, 200);
    let failed =
        || metric(&scrape(ng.port), "nginx_async_mirror_copies_total", "file:/dev/full", "failed:write");
    assert!(wait_until(Duration::from_secs(5), || failed() == 20), "{}", fetch(ng.port, "/status"));
    assert!(wait_until(Duration::from_secs(3), || capture_errors(&ng) == 1), "{}", ng.error_log());
    // A window of more failures: the error log reports each second, and says nothing more.
    for i in 20..40 {
        assert_eq!(c.get(&format!("/f{i}")).status, 200);
    }
    assert!(wait_until(Duration::from_secs(5), || failed() == 40));
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(capture_errors(&ng), 1, "one line per failure streak:\n{}", ng.error_log());
    ng.quit();
}

#[test]
fn a_read_only_file_fails_copies_until_it_is_writable_again() {
    let server = format!("location / {{ async_mirror file:logs/ro.gor; async_mirror_max_fails 0; {PROXY} }}");
    let ng = start("capture-ro", 1, &server, "");
    let path = ng.prefix.join("logs/ro.gor");
    let chattr = |flag: &str| Command::new("chattr").arg(flag).arg(&path).status().is_ok_and(|s| s.success());
    if !chattr("+i") {
        eprintln!("skipped: chattr +i is not available here");
        ng.quit();
        return;
    }
    let mut c = Client::connect(ng.port);
    for i in 0..10 {
        assert_eq!(c.get(&format!("/ro{i}")).status, 200);
    }
    let url = "file:logs/ro.gor";
    let failed = || metric(&scrape(ng.port), "nginx_async_mirror_copies_total", url, "failed:write");
    let ok = wait_until(Duration::from_secs(5), || failed() == 10);
    assert!(chattr("-i"));
    assert!(ok, "{}", fetch(ng.port, "/status"));
    for i in 0..5 {
        assert_eq!(c.get(&format!("/rw{i}")).status, 200);
    }
    assert!(wait_until(Duration::from_secs(5), || ok_copies(ng.port, url) == 5));
    assert!(wait_until(Duration::from_secs(3), || capture_errors(&ng) == 1), "{}", ng.error_log());
    let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
    assert_eq!((text.matches("GET /rw").count(), text.matches("GET /ro").count()), (5, 0));
    ng.quit();
}

/// A capture target is a target like any other: its copies are logged by
/// `async_mirror_log`, counted on the status page, and paused by the control API.
#[test]
fn a_capture_target_is_logged_counted_and_paused_like_any_target() {
    let server = "async_mirror_log {prefix}/logs/copies.log;
         location / { async_mirror file:logs/p.gor response=off; access_log {prefix}/logs/o.log o; PROXY }
         location /mirror-api/ { async_mirror off; async_mirror_api write=on; }"
        .replace("PROXY", PROXY);
    let ng = start("capture-api", 1, &server, "log_format o '$async_mirror_outcome';");
    let url = "file:logs/p.gor";
    let mut c = Client::connect(ng.port);
    for i in 0..5 {
        assert_eq!(c.get(&format!("/p{i}")).status, 200);
    }
    assert!(wait_until(Duration::from_secs(5), || ok_copies(ng.port, url) == 5));
    let lines = || json_lines(&ng.prefix.join("logs/copies.log"));
    assert!(wait_until(Duration::from_secs(5), || lines().len() == 5));
    assert!(lines().iter().all(|l| l["target"] == url && l["outcome"] == "ok" && l["status"].is_null()));
    // Pause it through the API: every copy from then on is `paused`, and nothing is written.
    let api = |method: &str, path: &str, body: &str| {
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let raw = raw_exchange(ng.port, req.as_bytes(), Duration::from_secs(5));
        let text = String::from_utf8_lossy(&raw).into_owned();
        let json: serde_json::Value =
            serde_json::from_str(text.split_once("\r\n\r\n").map_or("", |(_, b)| b))
                .unwrap_or(serde_json::Value::Null);
        (statuses(&raw).first().copied().unwrap_or(0), json)
    };
    let (status, list) = api("GET", "/mirror-api/targets", "");
    assert_eq!(status, 200, "{list}");
    let id =
        list["targets"].as_array().unwrap().iter().find(|t| t["url"] == url).expect("listed")["id"].clone();
    let (status, _) = api("PATCH", &format!("/mirror-api/targets/{id}"), r#"{"paused":true}"#);
    assert_eq!(status, 200);
    let outcomes = || std::fs::read_to_string(ng.prefix.join("logs/o.log")).unwrap_or_default();
    let mut i = 0;
    let paused = wait_until(Duration::from_secs(5), || {
        i += 1;
        assert_eq!(c.get(&format!("/q{i}")).status, 200);
        outcomes().lines().last() == Some("paused")
    });
    assert!(paused, "{}", outcomes());
    let written =
        || std::fs::read_to_string(ng.prefix.join("logs/p.gor")).unwrap().matches("HTTP/1.1\r\n").count();
    let before = written();
    for j in 0..5 {
        assert_eq!(c.get(&format!("/r{j}")).status, 200);
    }
    assert_eq!(outcomes().lines().rev().take(5).filter(|l| *l == "paused").count(), 5);
    assert!(wait_until(Duration::from_secs(3), || ok_copies(ng.port, url) == before as u64));
    assert_eq!(written(), before, "nothing recorded while paused");
    assert!(fetch(ng.port, "/status").contains(&format!("nginx_async_mirror_paused{{target=\"{url}\"}} 1")));
    ng.quit();
}

#[cfg(feature = "kafka")]
mod kafka {
    use super::*;
    use rdkafka::mocking::MockCluster;

    #[test]
    fn every_copy_is_one_message_and_the_replayer_reads_them_back() {
        let cluster = MockCluster::new(1).unwrap();
        let url = format!("kafka://{}/copies", cluster.bootstrap_servers());
        let server = format!("location / {{ async_mirror {url} key=$arg_user; {PROXY} }}");
        let ng = start("capture-kafka", 2, &server, "");
        let n = 30;
        for i in 0..n {
            send(ng.port, i);
        }
        assert!(
            wait_until(Duration::from_secs(15), || ok_copies(ng.port, &url) == n as u64),
            "{}",
            fetch(ng.port, "/status")
        );
        let sink = Sink::start();
        let summary = replay(&["--from", &url, "--to", &sink.url(), "--speed", "max", "--idle", "3s"]);
        assert!(
            summary.contains(&format!("read: {} records, {n} requests, {n} answers, 0 malformed", 2 * n)),
            "{summary}"
        );
        assert_eq!(sink.count(), n, "{summary}");
        assert!(sink.requests().iter().any(|r| r.uri.starts_with("/post/") && r.body.len() > 1000));
        ng.quit();
    }

    /// A broker that refuses connections, or whose port never accepts, costs the client
    /// nothing (beside a location without copies) and ends every copy in an outcome.
    fn dead_broker_costs_nothing(name: &str, broker: &str) {
        let url = format!("kafka://{broker}/copies");
        let server = format!(
            "location / {{ async_mirror {url}; async_mirror_timeout 1s; {PROXY} }}
             location /plain {{ {PROXY} }}"
        );
        let ng = start(name, 1, &server, "");
        let mut c = Client::connect(ng.port);
        let mut time = |prefix: &str| {
            let started = Instant::now();
            for i in 0..40 {
                let r = c.get(&format!("{prefix}/{i}"));
                assert_eq!((r.status, r.body.as_slice()), (200, &b"backend"[..]));
            }
            started.elapsed()
        };
        let plain = time("/plain");
        let mirrored = time("/m");
        let plain2 = time("/plain");
        assert!(
            mirrored < plain.max(plain2) * 3 + Duration::from_millis(100),
            "{name}: 40 mirrored requests took {mirrored:?}, unmirrored {plain:?} and {plain2:?}"
        );
        let ended = || {
            let m = scrape(ng.port);
            let attempted = metric(&m, "nginx_async_mirror_copies_attempted_total", &url, "");
            (attempted, copies_sum(&m, &url))
        };
        assert!(wait_until(Duration::from_secs(10), || ended() == (40, 40)), "{:?}", ended());
        let m = scrape(ng.port);
        assert_eq!(metric(&m, "nginx_async_mirror_copies_total", &url, "ok"), 0);
        ng.quit();
    }

    #[test]
    fn a_refused_broker_costs_the_client_nothing() {
        dead_broker_costs_nothing("kafka-refused", &format!("127.0.0.1:{}", refused_port()));
    }

    #[test]
    fn a_black_holed_broker_costs_the_client_nothing() {
        let hole = BlackHole::start();
        dead_broker_costs_nothing("kafka-hole", &format!("127.0.0.1:{}", hole.port));
    }
}
