//! `async_mirror_log`: one JSON line per finished copy, matching the counters.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::common::*;

/// (target, "outcome[:reason]") -> count, from the lines.
fn tally(lines: &[Value]) -> BTreeMap<(String, String), u64> {
    let mut m = BTreeMap::new();
    for l in lines {
        let kind = match l["reason"].as_str() {
            Some(r) => format!("{}:{r}", l["outcome"].as_str().unwrap()),
            None => l["outcome"].as_str().unwrap().to_string(),
        };
        *m.entry((l["target"].as_str().unwrap().to_string(), kind)).or_default() += 1;
    }
    m
}

#[test]
fn lines_match_the_counters_one_to_one() {
    let sink = Sink::start();
    let slow = Sink::with_delay(Duration::from_secs(2));
    let hole = BlackHole::start();
    let refused = format!("http://127.0.0.1:{}", refused_port());
    let server = format!(
        "async_mirror_log {{prefix}}/logs/copies.log;
         location /ok {{ async_mirror {ok}; {PROXY} }}
         location /refused {{ async_mirror {refused}; async_mirror_max_fails 0; {PROXY} }}
         location /timeout {{ async_mirror {slow}; async_mirror_timeout 300ms; async_mirror_max_fails 0; {PROXY} }}
         location /full {{ async_mirror {hole}; async_mirror_max_fails 0; {PROXY} }}
         location /quiet {{ async_mirror {ok}/q; async_mirror_log off; {PROXY} }}",
        ok = sink.url(),
        slow = slow.url(),
        hole = hole.url()
    );
    let http = "async_mirror_queue_size 8; async_mirror_max_connections 2; async_mirror_zone l 1m;";
    let ng = Nginx::start("copylog", 1, "", &front(&server, http));
    let mut c = Client::connect(ng.port);
    // One kind of target at a time, each finished before the next, so that the small
    // queue fills only with the black hole's copies.
    let mut phase = |path: &str, n: usize, target: &str| {
        for i in 0..n {
            assert_eq!(c.get(&format!("{path}?i={i}")).status, 200);
        }
        let done = wait_until(Duration::from_secs(10), || copies_sum(&scrape(ng.port), target) == n as u64);
        assert!(done, "{path}: copies did not finish");
    };
    phase("/ok", 20, &sink.url());
    phase("/quiet", 5, &format!("{}/q", sink.url()));
    phase("/refused", 5, &refused);
    // One at a time: a copy queued behind two that wait for the slow mirror would end
    // `dropped{queue_timeout}` instead (never sent late).
    for i in 1..=5u64 {
        assert_eq!(c.get(&format!("/timeout?i={i}")).status, 200);
        let done = wait_until(Duration::from_secs(5), || copies_sum(&scrape(ng.port), &slow.url()) == i);
        assert!(done, "/timeout: copy {i} did not finish");
    }
    let mut c = Client::connect(ng.port);
    for i in 0..20 {
        assert_eq!(c.get(&format!("/full?i={i}")).status, 200);
    }
    let path = ng.prefix.join("logs/copies.log");
    // The black hole's queued copies end after their 1 s connect timeouts, two at a time.
    let want = 20 + 5 + 5 + 20;
    assert!(
        wait_until(Duration::from_secs(10), || json_lines(&path).len() == want),
        "{} lines",
        json_lines(&path).len()
    );
    let got = json_lines(&path);
    let t = tally(&got);
    let m = scrape(ng.port);
    for url in [sink.url(), refused.clone(), slow.url(), hole.url()] {
        let from_counters: BTreeMap<String, u64> = m
            .iter()
            .filter(|((n, target, _), v)| {
                n == "nginx_async_mirror_copies_total" && *target == url && **v > 0.0
            })
            .map(|((_, _, kind), v)| (kind.clone(), *v as u64))
            .collect();
        let from_lines: BTreeMap<String, u64> =
            t.iter().filter(|((u, _), _)| *u == url).map(|((_, k), n)| (k.clone(), *n)).collect();
        assert_eq!(from_lines, from_counters, "{url}");
    }
    // A mixed run: every kind of ending is there (the small queue also drops some of the
    // sink's copies), and each is logged exactly as often as it is counted.
    for kind in ["ok", "failed:connect", "failed:timeout", "dropped:queue_full"] {
        assert!(t.keys().any(|(_, k)| k == kind), "no {kind} in {t:?}");
    }
    assert_eq!(t.iter().filter(|((u, _), _)| *u == sink.url()).map(|(_, n)| n).sum::<u64>(), 20);
    assert_eq!(t[&(slow.url(), "failed:timeout".to_string())], 5);
    let ok = got.iter().find(|l| l["outcome"] == "ok").unwrap();
    assert_eq!((ok["status"].as_u64(), ok["method"].as_str()), (Some(200), Some("GET")));
    assert!(ok["uri"].as_str().unwrap().starts_with("/ok?i="));
    assert!(ok["duration_ms"].as_f64().unwrap() >= 0.0 && ok["reused"].is_boolean());
    assert!(got.iter().filter(|l| l["outcome"] == "ok").any(|l| l["reused"] == true), "keepalive shows");
    assert!(got.iter().all(|l| !l["uri"].as_str().unwrap().starts_with("/quiet")), "async_mirror_log off");
    let full = got.iter().find(|l| l["reason"] == "queue_full").unwrap();
    assert!(full["status"].is_null() && full["duration_ms"].is_null());

    // Rotation: after a move and `nginx -s reopen`, lines go to the new file.
    let moved = ng.prefix.join("logs/copies.log.1");
    std::fs::rename(&path, &moved).unwrap();
    ng.signal(libc::SIGUSR1);
    assert!(wait_until(Duration::from_secs(5), || path.exists()));
    let mut c = Client::connect(ng.port);
    assert_eq!(c.get("/ok?after=reopen").status, 200);
    assert!(wait_until(Duration::from_secs(5), || json_lines(&path).len() == 1));
    assert_eq!(json_lines(&moved).len(), want);
    assert!(fetch(ng.port, "/status").contains("nginx_async_mirror_log_lines_total{result=\"written\"} 51"));
    ng.quit();
}

#[test]
fn if_filters_which_copies_are_logged() {
    let sink = Sink::start();
    let server = format!(
        "location / {{ async_mirror {url}; async_mirror_log {{prefix}}/logs/copies.log if=$arg_log; {PROXY} }}",
        url = sink.url()
    );
    let ng = Nginx::start("copylog-if", 1, "", &front(&server, ""));
    let mut c = Client::connect(ng.port);
    for i in 0..10 {
        let q = if i % 2 == 0 { "log=1" } else { "log=0" };
        assert_eq!(c.get(&format!("/p{i}?{q}")).status, 200);
    }
    assert!(sink.wait_for(10, Duration::from_secs(5)));
    let path = ng.prefix.join("logs/copies.log");
    assert!(wait_until(Duration::from_secs(5), || json_lines(&path).len() == 5));
    assert!(json_lines(&path).iter().all(|l| l["uri"].as_str().unwrap().ends_with("log=1")));
    ng.quit();
}

/// A log file that cannot be written (a full disk: `/dev/full`) loses its lines, counted,
/// and nothing else: every copy still goes.
#[test]
fn a_full_disk_loses_lines_counted_and_nothing_else() {
    let sink = Sink::start();
    let server = format!("async_mirror_log /dev/full; location / {{ async_mirror {}; {PROXY} }}", sink.url());
    let ng = Nginx::start("fulldisk", 1, "", &front(&server, "async_mirror_zone full 1m;"));
    let mut c = Client::connect(ng.port);
    for i in 0..30 {
        assert_eq!(c.get(&format!("/f{i}")).status, 200);
    }
    assert!(sink.wait_for(30, Duration::from_secs(5)));
    let lost = || {
        let j: serde_json::Value = serde_json::from_str(&fetch(ng.port, "/status?format=json")).unwrap();
        (j["log_lines"]["lost"].as_u64(), j["log_lines"]["written"].as_u64())
    };
    assert!(wait_until(Duration::from_secs(5), || lost() == (Some(30), Some(0))), "{:?}", lost());
    ng.quit();
}
