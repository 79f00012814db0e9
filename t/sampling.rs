//! Selecting what is copied: random and key-consistent sampling, rate caps, conditions.

use std::time::{Duration, Instant};

use crate::common::*;

#[test]
fn random_sampling_fraction() {
    let sink = Sink::start();
    let locations = format!("location / {{ async_mirror {} sample=25%; {PROXY} }}", sink.url());
    let ng = Nginx::start("sample", 1, "", &front(&locations, ""));
    let mut c = Client::connect(ng.port);
    for i in 0..10_000 {
        assert_eq!(c.get(&format!("/s{i}")).status, 200);
    }
    let log = ng.quit();
    let t = &exit_counters(&log)[&sink.url()];
    // Binomial(10000, 0.25): sd ≈ 43; accept ±5 sd.
    assert!((2_284..=2_716).contains(&t["attempted"]), "{t:?}");
    assert_eq!(t["ok"], t["attempted"], "{t:?}");
}

#[test]
fn key_sampling_is_consistent_per_key() {
    let sink = Sink::start();
    let locations = format!(
        "access_log {{prefix}}/logs/sample.log sample;
         location / {{ async_mirror {} sample=30% key=$http_x_user; {PROXY} }}",
        sink.url()
    );
    let ng = Nginx::start(
        "keysample",
        2,
        "",
        &front(&locations, "log_format sample '$http_x_user $async_mirror_outcome';"),
    );
    let mut c = Client::connect(ng.port);
    for round in 0..10 {
        for user in 0..1000 {
            let u = format!("user-{user}");
            assert_eq!(c.request("GET", &format!("/k{round}"), &[("X-User", &u)]).status, 200);
        }
    }
    let log_path = ng.prefix.join("logs/sample.log");
    let log = ng.quit();
    let t = &exit_counters(&log)[&sink.url()];
    let mut per_user = std::collections::HashMap::<String, (u32, u32)>::new();
    for line in std::fs::read_to_string(log_path).unwrap().lines() {
        let (user, outcome) = line.split_once(' ').unwrap();
        let e = per_user.entry(user.to_string()).or_default();
        if outcome == "queued" {
            e.0 += 1
        } else {
            assert_eq!(outcome, "sampled_out");
            e.1 += 1
        }
    }
    assert_eq!(per_user.len(), 1000);
    // Every user is always in or always out.
    assert!(per_user.values().all(|&(q, s)| q == 0 || s == 0), "a key changed sides");
    let users_in = per_user.values().filter(|(q, _)| *q > 0).count() as u64;
    // Binomial(1000, 0.3): sd ≈ 14.5; accept ±5 sd.
    assert!((228..=372).contains(&users_in), "{users_in} users of 1000");
    assert_eq!(t["attempted"], users_in * 10, "{t:?}");
}

#[test]
fn rate_caps_copies_per_second() {
    let sink = Sink::start();
    let locations = format!("location / {{ async_mirror {} rate=20/s; {PROXY} }}", sink.url());
    let ng = Nginx::start("rate", 1, "", &front(&locations, ""));
    let mut c = Client::connect(ng.port);
    let start = Instant::now();
    for i in 0..600 {
        assert_eq!(c.get(&format!("/r{i}")).status, 200);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let log = ng.quit();
    let t = &exit_counters(&log)[&sink.url()];
    assert_eq!(t["attempted"], 600);
    assert_eq!(outcome_sum(t), 600, "{t:?}");
    let allowed = 20.0 + 20.0 * elapsed + 1.0;
    assert!((t["ok"] as f64) <= allowed, "{} copies in {elapsed:.2}s at 20/s: {t:?}", t["ok"]);
    assert!(t["ok"] >= 20, "{t:?}");
    assert_eq!(t["dropped_rate_limited"], 600 - t["ok"], "{t:?}");
}

#[test]
fn conditions_combine_with_sampling() {
    let sink = Sink::start();
    let locations =
        format!("location / {{ async_mirror {} sample=50%; async_mirror_if $arg_m; {PROXY} }}", sink.url());
    let ng = Nginx::start("ifsample", 1, "", &front(&locations, ""));
    let mut c = Client::connect(ng.port);
    for i in 0..2000 {
        let path = if i % 2 == 0 { format!("/x{i}?m=1") } else { format!("/x{i}") };
        assert_eq!(c.get(&path).status, 200);
    }
    assert!(sink.wait_for(300, Duration::from_secs(5)));
    let log = ng.quit();
    let t = &exit_counters(&log)[&sink.url()];
    // 1000 eligible requests at 50 %: sd ≈ 16; accept ±5 sd.
    assert!((420..=580).contains(&t["attempted"]), "{t:?}");
    assert!(sink.requests().iter().all(|r| r.uri.ends_with("?m=1")));
}
