//! The zone over time: slots of targets no configuration names any more are reclaimed,
//! a killed worker's gauges do not stay, and changes from two workers at once both apply.

use std::thread;
use std::time::Duration;

use serde_json::Value;

use crate::common::*;

fn status(port: u16) -> Value {
    serde_json::from_str(&fetch(port, "/status?format=json")).unwrap()
}

/// Twenty reloads into a 64k zone, each naming a new target URL: every reload works,
/// the page lists only the targets configured now, and a target that stays keeps its
/// counters.
#[test]
fn reloads_naming_new_targets_reclaim_the_zone() {
    let sink = Sink::start();
    let conf = |n: usize| {
        front(
            &format!(
                "location / {{ async_mirror {}; async_mirror {}/gen{n}; {PROXY} }}",
                sink.url(),
                sink.url()
            ),
            "async_mirror_zone reclaim 64k;",
        )
    };
    let ng = Nginx::start("reclaim", 1, "", &conf(0));
    let mut c = Client::connect(ng.port);
    assert_eq!(c.get("/first").status, 200);
    for n in 1..=20 {
        ng.rewrite(&conf(n));
        ng.reload();
        let mut c = Client::connect(ng.port);
        assert_eq!(c.get(&format!("/r{n}")).status, 200, "reload {n}");
    }
    let log = ng.error_log();
    assert!(!log.contains("zone is too small"), "{log}");
    // The last generation's old worker adds its counts when it exits.
    let attempted = |s: &Value| {
        let all = s["targets"].as_array().cloned().unwrap_or_default();
        all.iter().find(|t| t["target"] == sink.url()).map_or(0, |t| t["attempted"].as_u64().unwrap_or(0))
    };
    let mut s = status(ng.port);
    assert!(
        wait_until(Duration::from_secs(5), || {
            s = status(ng.port);
            attempted(&s) == 21
        }),
        "the target that stays keeps its counters across reloads: {s}"
    );
    let urls: Vec<&str> =
        s["targets"].as_array().unwrap().iter().map(|t| t["target"].as_str().unwrap()).collect();
    assert_eq!(urls.len(), 2, "{urls:?}");
    assert!(urls.contains(&sink.url().as_str()) && urls.contains(&format!("{}/gen20", sink.url()).as_str()));
    ng.quit();
}

/// A worker killed with copies in flight leaves nothing behind in the zone's gauges once
/// its replacement starts.
#[test]
fn a_killed_workers_gauges_are_cleared() {
    let slow = Sink::with_delay(Duration::from_secs(3));
    let locations =
        format!("location / {{ async_mirror {}; async_mirror_timeout 10s; {PROXY} }}", slow.url());
    let ng = Nginx::start("killed", 2, "", &front(&locations, "async_mirror_zone killed 1m;"));
    // Copies in flight on both workers (new connections spread over them).
    for i in 0..8 {
        assert_eq!(get_once(ng.port, &format!("/k{i}")).unwrap().status, 200);
    }
    let inflight = |s: &Value| s["targets"][0]["inflight"].as_i64().unwrap_or(-1);
    // Every worker's copies are in the zone before one of them is killed.
    assert!(wait_until(Duration::from_secs(2), || inflight(&status(ng.port)) == 8));
    // The worker to kill holds copies in flight: the kernel may have handed every client
    // connection to one worker.
    let victim = ng.workers().into_iter().max_by_key(|&w| connections_to(w, slow.port)).expect("a worker");
    assert!(connections_to(victim, slow.port) > 0, "no worker holds a connection to the mirror");
    // SAFETY: killing a worker of the nginx this test started.
    unsafe { libc::kill(victim as i32, libc::SIGKILL) };
    assert!(wait_until(Duration::from_secs(5), || ng.workers().len() == 2 && !ng.workers().contains(&victim)));
    // The survivor's copies end after 3 s; the dead worker's must not linger.
    let mut s = status(ng.port);
    assert!(
        wait_until(Duration::from_secs(8), || {
            s = status(ng.port);
            // Idle connections the survivor keeps are open, as the mirror sees them.
            let open = slow.open_connections() as i64;
            inflight(&s) == 0
                && s["targets"][0]["connections"].as_i64() == Some(open)
                && s["queue_bytes"] == 0
        }),
        "gauges left by the killed worker: {s}"
    );
    // The copies the killed worker never ended count as dropped with it: sums add up.
    let t = &s["targets"][0];
    let ended: u64 = t["outcomes"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(t["attempted"].as_u64(), Some(ended), "{t}");
    assert!(t["outcomes"]["dropped_shutdown"].as_u64().unwrap() >= 1, "{t}");
    let log = ng.quit_allowing(&["exited on signal", "[alert]"]);
    let alerts: Vec<&str> = log.lines().filter(|l| l.contains("[alert]")).collect();
    assert!(alerts.len() == 1 && alerts[0].contains("exited on signal 9"), "only the kill: {alerts:?}");
}

/// How many of `pid`'s sockets are TCP connections to 127.0.0.1:`port` (/proc/net/tcp's
/// remote address, matched by inode with the process's descriptors).
fn connections_to(pid: u32, port: u16) -> usize {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| l.to_str()?.strip_prefix("socket:[")?.strip_suffix(']').map(str::to_owned))
        .collect();
    let remote = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() > 9 && f[2] == remote && inodes.iter().any(|i| i == f[9]))
        .count()
}

/// Two workers change one target's override at once, one pausing, one re-sampling: both
/// changes hold.
#[test]
fn concurrent_changes_on_two_workers_both_apply() {
    let sink = Sink::start();
    let locations = format!(
        "location / {{ async_mirror {}; {PROXY} }} location /api/ {{ async_mirror_api write=on; }}",
        sink.url()
    );
    let ng = Nginx::start("concurrent", 2, "", &front(&locations, "async_mirror_zone conc 1m;"));
    let patch = |body: &'static str| {
        let port = ng.port;
        move || {
            for _ in 0..100 {
                let req = format!(
                    "PATCH /api/targets/0 HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                assert_eq!(statuses(&raw_exchange(port, req.as_bytes(), Duration::from_secs(5))), [200]);
            }
        }
    };
    let a = thread::spawn(patch("{\"paused\":true}"));
    let b = thread::spawn(patch("{\"sample\":25}"));
    a.join().unwrap();
    b.join().unwrap();
    let t: Value = serde_json::from_str(&fetch(ng.port, "/api/targets/0")).unwrap();
    assert_eq!(
        (t["paused"].clone(), t["override"]["sample"].clone()),
        (Value::Bool(true), Value::from(25.0)),
        "{t}"
    );
    ng.quit();
}
