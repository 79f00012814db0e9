//! Under real faults: a mirror behind a misbehaving network, workers killed and reloaded
//! under load, a mirror restarted mid-stream. Production never waits, and every copy
//! still ends in exactly one outcome.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[(v.len() * 99 / 100).min(v.len() - 1)]
}

fn status(port: u16) -> Value {
    serde_json::from_str(&fetch(port, "/status?format=json")).unwrap()
}

/// Every copy of `target` on the status page ended, and there are `attempted` of them.
fn settled(port: u16, target: &str) -> (u64, u64) {
    let s = status(port);
    let t = s["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["target"] == target)
        .cloned()
        .unwrap_or(Value::Null);
    let ended: u64 = t["outcomes"].as_object().map_or(0, |o| o.values().map(|v| v.as_u64().unwrap()).sum());
    (t["attempted"].as_u64().unwrap_or(0), ended)
}

/// A mirror behind delay with jitter, then resets mid-request, then stalled reads, then a
/// 5 s partition (connects and reads hang), then healed: the mirrored location answers
/// like the one without a mirror throughout, every copy ends in one outcome, and copies
/// reach the mirror again after the heal without a reload.
#[test]
fn a_mirror_behind_a_bad_network_costs_production_nothing() {
    let sink = Sink::start();
    let proxy = FaultProxy::start(sink.port);
    let locations = format!(
        "location /m {{ async_mirror {}; async_mirror_timeout 1s; async_mirror_connect_timeout 300ms;
                        async_mirror_fail_timeout 1s; {PROXY} }}
         location /n {{ {PROXY} }}",
        proxy.url()
    );
    let ng = Nginx::start("faults", 2, "", &front(&locations, "async_mirror_zone faults 1m;"));
    let (mut mirrored, mut plain) = (Vec::new(), Vec::new());
    let mut c = Client::connect(ng.port);
    let mut run = |c: &mut Client, fault: Fault, how_long: Duration| {
        proxy.set(fault);
        let until = Instant::now() + how_long;
        let mut i = 0;
        while Instant::now() < until && i < 5_000 {
            let r = c.get(&format!("/m?{fault:?}{i}"));
            assert_eq!(r.status, 200);
            mirrored.push(r.elapsed);
            let r = c.get(&format!("/n?{i}"));
            assert_eq!(r.status, 200);
            plain.push(r.elapsed);
            i += 1;
            // About 200 requests a second: the faults, not the load, are under test.
            thread::sleep(Duration::from_millis(5));
        }
    };
    run(&mut c, Fault::Pass, Duration::from_secs(1));
    run(&mut c, Fault::Delay, Duration::from_secs(2));
    run(&mut c, Fault::Reset, Duration::from_secs(1));
    run(&mut c, Fault::Stall, Duration::from_secs(2));
    proxy.set(Fault::Partition);
    let accepted = proxy.accepted.load(std::sync::atomic::Ordering::Relaxed);
    run(&mut c, Fault::Partition, Duration::from_secs(5));
    // Connects hung: nothing was accepted while partitioned (the breaker stopped trying).
    assert_eq!(proxy.accepted.load(std::sync::atomic::Ordering::Relaxed), accepted);
    let before_heal = sink.count();
    proxy.set(Fault::Pass);
    // Copies flow again once the breaker's probe gets through: no reload needed.
    let healed = wait_until(Duration::from_secs(10), || {
        let r = c.get("/m?healed");
        assert_eq!(r.status, 200);
        sink.count() > before_heal + 5
    });
    assert!(healed, "copies did not flow again after the heal");
    let (pm, pn) = (p99(mirrored.clone()), p99(plain.clone()));
    assert!(
        pm <= pn * 3 + Duration::from_millis(5),
        "p99 with the faulty mirror {pm:?} against {pn:?} without a mirror ({} requests each)",
        mirrored.len()
    );
    let target = proxy.url();
    assert!(wait_until(Duration::from_secs(10), || {
        let (a, e) = settled(ng.port, &target);
        a > 0 && a == e
    }));
    let s = status(ng.port);
    let t = s["targets"].as_array().unwrap().iter().find(|t| t["target"] == target).unwrap();
    for kind in ["ok", "failed_reset", "failed_timeout"] {
        assert!(t["outcomes"][kind].as_u64().unwrap() > 0, "no {kind}: {t}");
    }
    let log = ng.quit();
    let c = &exit_counters(&log)[&target];
    assert_eq!(c["attempted"], outcome_sum(c), "{c:?}");
}

/// Client threads that keep sending GETs and uploads until told to stop; every request
/// must be answered 200. A request nginx never answered (its connection was closed, or
/// its worker killed) is sent again on a new connection, as a client would, up to three
/// times: a worker a reload retires closes connections it accepted but has read nothing
/// from yet, and fifty reloads in a row retire many.
fn load(port: u16, stop: Arc<AtomicBool>, done: Arc<AtomicUsize>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let body = data(50_000);
        let mut c = Client::connect(port);
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) && i < 100_000 {
            if i % 5 == 0 {
                let path = format!("/up{i}");
                let mut r = post(port, &path, &body, i % 10 == 0);
                for _ in 0..3 {
                    if r.status != 0 {
                        break;
                    }
                    r = post(port, &path, &body, i % 10 == 0);
                }
                assert_eq!(r.status, 200, "{path}");
            } else {
                let uri = format!("/g{i}");
                let mut r = c.try_request("GET", &uri, &[]);
                for _ in 0..3 {
                    if r.is_some() {
                        break;
                    }
                    c = Client::connect(port);
                    r = c.try_request("GET", &uri, &[]);
                }
                let r = r.expect("a main request was answered");
                assert_eq!(r.status, 200);
            }
            done.fetch_add(1, Ordering::Relaxed);
            i += 1;
        }
    })
}

/// Fifty reloads in a row under load with uploads in flight, a worker killed, and the
/// mirror restarted mid-stream: no main request is lost, nothing alerts but the kill, and
/// every copy of every worker that exited ends in one outcome.
#[test]
fn reloads_under_load_and_a_restarted_mirror_lose_nothing() {
    let sink = Sink::start();
    let port = sink.port;
    // The backend lives outside the nginx being reloaded fifty times.
    let backend = Sink::answering(|_| vec![(Duration::ZERO, reply(200, &[], b"backend", false))]);
    let locations = format!(
        "location / {{ async_mirror {}; async_mirror_fail_timeout 1s; proxy_pass {}; }}",
        sink.url(),
        backend.url()
    );
    let ng = Nginx::start("chaos", 2, "", &front(&locations, ""));
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..3).map(|_| load(ng.port, stop.clone(), done.clone())).collect();
    for n in 0..50 {
        ng.reload();
        if n == 25 {
            // A worker of the current generation (the old ones have finished exiting).
            assert!(wait_until(Duration::from_secs(10), || ng.workers().len() == 2));
            let victim = ng.workers()[0];
            // SAFETY: killing a worker of the nginx this test started.
            unsafe { libc::kill(victim as i32, libc::SIGKILL) };
            assert!(wait_until(Duration::from_secs(5), || ng.workers().len() == 2
                && !ng.workers().contains(&victim)));
        }
    }
    // The mirror goes away mid-stream, then comes back on the same port.
    drop(sink);
    let back =
        wait_until(Duration::from_secs(5), || std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());
    assert!(back, "the mirror's port stayed taken");
    let restarted = Sink::on(&format!("127.0.0.1:{port}"));
    let before = done.load(Ordering::Relaxed);
    assert!(
        wait_until(Duration::from_secs(10), || restarted.count() > 20),
        "copies did not reach the restarted mirror"
    );
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("a main request was lost");
    }
    assert!(done.load(Ordering::Relaxed) > before);
    let log = ng.quit_allowing(&["exited on signal", "[alert]"]);
    let alerts: Vec<&str> = log.lines().filter(|l| l.contains("[alert]")).collect();
    assert!(alerts.len() == 1 && alerts[0].contains("exited on signal 9"), "only the kill: {alerts:?}");
    let c = &exit_counters(&log)[&format!("http://127.0.0.1:{port}")];
    assert_eq!(c["attempted"], outcome_sum(c), "{c:?}");
    // 102 workers over 51 generations and the killed one's replacement, less the killed one.
    assert_eq!(
        log.matches("async_mirror: worker exiting").count(),
        2 * 51,
        "every other worker exited cleanly"
    );
}
