//! Shared counters, the status page, $async_mirror_outcome, the circuit breaker,
//! graceful drain and reloads under load.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::*;

/// A reload onto a module whose zone layout differs (simulated by the test hook) gets a
/// fresh table with a notice; the old numbers are never read with the wrong layout.
#[cfg(feature = "test-hooks")]
#[test]
fn zone_of_another_layout_is_reinitialised() {
    let sink = Sink::start();
    let locations = format!("location / {{ async_mirror {}; {PROXY} }}", sink.url());
    let ng = Nginx::start("layout", 2, "", &front(&locations, "async_mirror_zone layout_stats 1m;"));
    let attempted = "nginx_async_mirror_copies_attempted_total";
    let settles_at = |n: u64| {
        wait_until(Duration::from_secs(5), || {
            let m = scrape(ng.port);
            metric(&m, attempted, &sink.url(), "") == n && copies_sum(&m, &sink.url()) == n
        })
    };
    for i in 0..20 {
        assert_eq!(get_once(ng.port, &format!("/l{i}")).unwrap().status, 200);
    }
    assert!(settles_at(20), "{:?}", scrape(ng.port));
    std::fs::write(ng.prefix.join("zone-layout"), "99").unwrap();
    let old = ng.workers();
    ng.reload();
    assert!(ng.error_log().contains("holds counters of another layout"), "{}", ng.error_log());
    // Old workers keep counting into the old table until they are gone.
    assert!(wait_until(Duration::from_secs(10), || ng.workers().iter().all(|w| !old.contains(w))));
    for i in 0..5 {
        assert_eq!(get_once(ng.port, &format!("/n{i}")).unwrap().status, 200);
    }
    assert!(settles_at(5), "counters after re-initialisation: {:?}", scrape(ng.port));
    // Same layout again: an ordinary reload keeps them.
    ng.reload();
    assert!(settles_at(5), "{:?}", scrape(ng.port));
    ng.quit();
}

#[test]
fn outcome_variable_in_access_log() {
    let sink = Sink::start();
    let locations = format!(
        "access_log {{prefix}}/logs/outcome.log outcome;
         location / {{ async_mirror {}; async_mirror http://127.0.0.1:{}; {PROXY} }}
         location /none {{ {PROXY} }}",
        sink.url(),
        refused_port()
    );
    let http = "log_format outcome '$request_uri $async_mirror_outcome'; async_mirror_max_fails 1;";
    let ng = Nginx::start("outcome", 1, "", &front(&locations, http));
    let mut c = Client::connect(ng.port);
    c.get("/first");
    // The first failure opens the refused target's breaker (max_fails 1).
    assert!(wait_until(Duration::from_secs(5), || {
        scrape(ng.port).iter().any(|((n, _, _), v)| n == "nginx_async_mirror_breaker_open" && *v > 0.0)
    }));
    c.get("/second");
    c.request("GET", "/guarded", &[("X-Async-Mirror", "1")]);
    c.get("/none");
    let log_path = ng.prefix.join("logs/outcome.log");
    ng.quit();
    let log = std::fs::read_to_string(log_path).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert!(lines.contains(&"/first queued,queued"), "{log}");
    assert!(lines.contains(&"/second queued,dropped:breaker_open"), "{log}");
    assert!(lines.contains(&"/guarded skipped,skipped"), "{log}");
    assert!(lines.contains(&"/none -"), "{log}");
}

/// A peer that accepts and immediately closes (every copy fails), counting
/// connection attempts, until `healthy` is set; then it answers 200.
struct Flaky {
    port: u16,
    attempts: Arc<AtomicUsize>,
    healthy: Arc<AtomicBool>,
}

impl Flaky {
    fn start() -> Flaky {
        let l = local_listener();
        let port = l.local_addr().unwrap().port();
        let attempts = Arc::new(AtomicUsize::new(0));
        let healthy = Arc::new(AtomicBool::new(false));
        let (a, h) = (attempts.clone(), healthy.clone());
        thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                a.fetch_add(1, Ordering::SeqCst);
                if h.load(Ordering::SeqCst) {
                    thread::spawn(move || {
                        let mut buf = [0u8; 4096];
                        let _ = std::io::Read::read(&mut s, &mut buf);
                        let _ =
                            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    });
                }
            }
        });
        Flaky { port, attempts, healthy }
    }
}

#[test]
fn breaker_stops_attempts_and_recovers() {
    let flaky = Flaky::start();
    let url = format!("http://127.0.0.1:{}", flaky.port);
    let locations = format!("location / {{ async_mirror {url}; {PROXY} }}");
    let http = "async_mirror_max_fails 3; async_mirror_fail_timeout 1s; async_mirror_zone z 64k;";
    let ng = Nginx::start("breaker", 1, "", &front(&locations, http));
    let mut c = Client::connect(ng.port);
    for i in 0..100 {
        assert_eq!(c.get(&format!("/b{i}")).status, 200);
        thread::sleep(Duration::from_millis(2));
    }
    let attempts = flaky.attempts.load(Ordering::SeqCst);
    assert!((3..=6).contains(&attempts), "{attempts} connection attempts while the breaker should be open");
    let m = scrape(ng.port);
    assert!(metric(&m, "nginx_async_mirror_copies_total", &url, "dropped:breaker_open") >= 90, "{m:?}");
    assert_eq!(metric(&m, "nginx_async_mirror_breaker_open", &url, ""), 1);

    // The target recovers; after fail_timeout one probe succeeds and copies flow again.
    flaky.healthy.store(true, Ordering::SeqCst);
    let start = Instant::now();
    assert!(
        wait_until(Duration::from_secs(5), || {
            c.get("/probe");
            let m = scrape(ng.port);
            metric(&m, "nginx_async_mirror_copies_total", &url, "ok") >= 5
        }),
        "target never used again"
    );
    assert!(start.elapsed() >= Duration::from_millis(500), "breaker closed before fail_timeout");
    assert_eq!(metric(&scrape(ng.port), "nginx_async_mirror_breaker_open", &url, ""), 0);
    ng.quit();
}

#[test]
fn drain_finishes_copies_within_drain_timeout() {
    let slow = Sink::with_delay(Duration::from_millis(800));
    let locations = format!("location / {{ async_mirror {}; {PROXY} }}", slow.url());
    let ng = Nginx::start("drain", 1, "", &front(&locations, "async_mirror_drain_timeout 5s;"));
    for i in 0..10 {
        assert_eq!(get_once(ng.port, &format!("/d{i}")).unwrap().status, 200);
    }
    let log = ng.quit();
    let t = &exit_counters(&log)[&slow.url()];
    assert_eq!((t["attempted"], t["ok"], t["dropped_shutdown"]), (10, 10, 0), "{t:?}");
}

#[test]
fn exit_is_not_delayed_beyond_drain_timeout() {
    let hole = BlackHole::start();
    let slow = Sink::with_delay(Duration::from_secs(20));
    let locations = format!(
        "location / {{ async_mirror {}; async_mirror {}; async_mirror_connect_timeout 30s;
         async_mirror_timeout 30s; {PROXY} }}",
        hole.url(),
        slow.url()
    );
    let ng = Nginx::start("nodelay", 1, "", &front(&locations, "async_mirror_drain_timeout 1s;"));
    for i in 0..20 {
        assert_eq!(get_once(ng.port, &format!("/n{i}")).unwrap().status, 200);
    }
    assert!(slow.wait_for(1, Duration::from_secs(5)));
    let started = Instant::now();
    let log = ng.quit();
    assert!(started.elapsed() < Duration::from_secs(4), "quit took {:?}", started.elapsed());
    let c = exit_counters(&log);
    for t in [hole.url(), slow.url()] {
        assert_eq!(c[&t]["attempted"], 20);
        assert_eq!(outcome_sum(&c[&t]), 20, "{:?}", c[&t]);
        assert_eq!(c[&t]["dropped_shutdown"], 20, "{:?}", c[&t]);
    }
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn five_reloads_under_load_lose_nothing() {
    let sink = Sink::start();
    let locations = format!("location / {{ async_mirror {}; {PROXY} }}", sink.url());
    let ng = Nginx::start("reload5", 2, "", &front(&locations, "async_mirror_zone z 64k;"));
    // Warm the pools the same way the traffic below leaves them, then count descriptors.
    let warm: Vec<_> = (0..3)
        .map(|t| {
            let port = ng.port;
            thread::spawn(move || {
                for n in 0..100 {
                    assert_eq!(get_once(port, &format!("/w{t}-{n}")).map(|r| r.status), Some(200));
                }
            })
        })
        .collect();
    warm.into_iter().for_each(|w| w.join().expect("warm-up"));
    thread::sleep(Duration::from_millis(300)); // let copies of the warm-up settle (not a sync point)
    let fds_before: usize = ng.workers().iter().map(|p| fd_count(*p)).sum();
    let master_fds = fd_count(ng.pid());
    let port = ng.port;
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..3)
        .map(|t| {
            let stop = stop.clone();
            thread::spawn(move || {
                let mut n = 0u64;
                let deadline = Instant::now() + Duration::from_secs(60);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    n += 1;
                    let r = get_once(port, &format!("/l{t}-{n}"));
                    assert!(matches!(&r, Some(r) if r.status == 200), "request {n} not answered: {r:?}");
                }
                n
            })
        })
        .collect();
    for _ in 0..5 {
        let before = sink.count();
        ng.reload();
        wait_until(Duration::from_secs(5), || sink.count() > before + 50);
    }
    stop.store(true, Ordering::Relaxed);
    let total: u64 = clients.into_iter().map(|c| c.join().expect("client")).sum::<u64>() + 300;
    // Let the old generations finish exiting before counting descriptors.
    assert!(wait_until(Duration::from_secs(10), || ng.workers().len() == 2));
    thread::sleep(Duration::from_millis(300));
    let fds_after: usize = ng.workers().iter().map(|p| fd_count(*p)).sum();
    assert!(fds_after <= fds_before + 6, "worker fds {fds_before} -> {fds_after}");
    assert!(fd_count(ng.pid()) <= master_fds + 2, "master fds grew");
    let m = scrape(ng.port);
    let log = ng.quit();
    let t = &exit_counters(&log)[&sink.url()];
    assert_eq!(t["attempted"], total, "{t:?}");
    assert_eq!(outcome_sum(t), total, "{t:?}");
    assert!(metric(&m, "nginx_async_mirror_copies_attempted_total", &sink.url(), "") <= total);
    assert_eq!(log.matches("async_mirror: worker exiting").count(), 12, "6 generations × 2 workers");
}

#[cfg(feature = "test-hooks")]
#[test]
fn panic_in_handler_is_contained() {
    let sink = Sink::start();
    let locations = format!("location / {{ async_mirror {}; {PROXY} }}", sink.url());
    let ng = Nginx::start("panic", 1, "", &front(&locations, ""));
    let worker = ng.workers()[0];
    let mut c = Client::connect(ng.port);
    let r = c.request("GET", "/boom", &[("X-Async-Mirror-Test-Panic", "1")]);
    assert_eq!((r.status, r.body.as_slice()), (200, &b"backend"[..]));
    // Same worker, same connection: nothing was lost.
    assert_eq!(c.get("/after").status, 200);
    assert_eq!(ng.workers(), vec![worker]);
    assert!(sink.wait_for(1, Duration::from_secs(5)));
    let log = ng.quit_allowing(&["[alert]", "panicked"]);
    assert!(log.contains("async_mirror: panic in request handler"), "{log}");
}

/// The zone sums both workers' counters, and keeps them across a reload.
#[test]
fn status_sums_workers_and_survives_reload() {
    let sink = Sink::start();
    let refused = format!("http://127.0.0.1:{}", refused_port());
    let locations = format!("location / {{ async_mirror {}; async_mirror {refused}; {PROXY} }}", sink.url());
    let ng = Nginx::start("status", 2, "", &front(&locations, "async_mirror_zone mirror_stats 1m;"));
    for i in 0..200 {
        assert_eq!(get_once(ng.port, &format!("/s{i}")).unwrap().status, 200);
    }
    let attempted = "nginx_async_mirror_copies_attempted_total";
    let settled = |m: &Metrics| {
        [sink.url(), refused.clone()]
            .iter()
            .all(|t| metric(m, attempted, t, "") == 200 && copies_sum(m, t) == 200)
    };
    let m = scrape_when(ng.port, Duration::from_secs(5), "counters never added up", settled);
    assert_eq!(metric(&m, "nginx_async_mirror_copies_total", &sink.url(), "ok"), 200);
    let fails = metric(&m, "nginx_async_mirror_copies_total", &refused, "failed:connect");
    let open = metric(&m, "nginx_async_mirror_copies_total", &refused, "dropped:breaker_open");
    assert_eq!(fails + open, 200, "{m:?}");
    // 3 failures per worker open the breaker; copies already in flight (at most
    // async_mirror_max_connections per worker) may fail too.
    assert!(
        fails <= 2 * (3 + 32) && open >= 100,
        "the breaker should stop connects: {fails} failed, {open} dropped"
    );
    assert!(metric(&m, "nginx_async_mirror_connections_opened_total", &sink.url(), "") <= 64);
    assert_eq!(metric(&m, "nginx_async_mirror_duration_seconds", &sink.url(), ""), 200);

    let json = fetch(ng.port, "/status?format=json");
    assert!(json.starts_with("{\"shared\":true,"), "{json}");
    assert!(json.contains("\"attempted\":200"), "{json}");

    ng.reload();
    for i in 0..10 {
        assert_eq!(get_once(ng.port, &format!("/after{i}")).unwrap().status, 200);
    }
    scrape_when(ng.port, Duration::from_secs(5), "counters lost across reload", |m| {
        metric(m, attempted, &sink.url(), "") == 210 && copies_sum(m, &sink.url()) == 210
    });
    ng.quit();
}
