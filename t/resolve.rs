//! `resolve=`: a target whose name moves between addresses. Names come from a `hosts`
//! file under the prefix (test builds read it instead of the system resolver), and the
//! sinks listen on different addresses of 127.0.0.0/8 with one port.

use std::time::{Duration, Instant};

use crate::common::*;

/// Two sinks on 127.0.0.2 and 127.0.0.3, same port.
fn two_sinks() -> (Sink, Sink) {
    for _ in 0..20 {
        let a = Sink::on("127.0.0.2:0");
        if let Ok(b) = std::panic::catch_unwind(|| Sink::on(&format!("127.0.0.3:{}", a.port))) {
            return (a, b);
        }
    }
    panic!("no port free on both 127.0.0.2 and 127.0.0.3");
}

fn start(name: &str, hosts: &str, port: u16, extra: &str) -> Nginx {
    let server = format!(
        "location / {{ async_mirror http://shadow.test:{port} resolve=500ms; async_mirror_max_fails 0; {PROXY} }}"
    );
    let hosts = hosts.to_string();
    Nginx::prepare(name, move |prefix| std::fs::write(prefix.join("hosts"), hosts).unwrap()).start(
        1,
        "",
        &front(&server, &format!("async_mirror_zone r 1m; {extra}")),
    )
}

fn send(c: &mut Client, n: usize) {
    for i in 0..n {
        assert_eq!(c.get(&format!("/r?i={i}")).status, 200);
    }
}

#[test]
fn copies_follow_a_name_that_moves_and_keep_going_when_lookups_fail() {
    let (a, b) = two_sinks();
    let target = format!("http://shadow.test:{}", a.port);
    let ng = start("resolve-move", "127.0.0.2 shadow.test\n", a.port, "");
    let mut c = Client::connect(ng.port);
    // The first lookup runs when the worker starts.
    assert!(wait_until(Duration::from_secs(3), || {
        send(&mut c, 1);
        a.count() > 0
    }));
    send(&mut c, 20);
    assert!(a.wait_for(21, Duration::from_secs(5)));
    assert_eq!(b.count(), 0);

    std::fs::write(ng.prefix.join("hosts"), "127.0.0.3 shadow.test\n").unwrap();
    let moved = Instant::now();
    assert!(
        wait_until(Duration::from_secs(3), || {
            send(&mut c, 1);
            b.count() > 0
        }),
        "copies follow the name"
    );
    assert!(
        moved.elapsed() < Duration::from_millis(1500),
        "within the 500 ms interval (+ a tick): {:?}",
        moved.elapsed()
    );
    let a_after = a.count();
    send(&mut c, 20);
    assert!(wait_until(Duration::from_secs(5), || b.count() >= 21));
    assert_eq!(a.count(), a_after, "nothing goes to the address that left");
    // Idle connections to the address that left are closed.
    assert!(
        wait_until(Duration::from_secs(3), || a.open_connections() == 0),
        "{} still open",
        a.open_connections()
    );

    // A failed lookup keeps the last good set.
    std::fs::write(ng.prefix.join("hosts"), "# nothing\n").unwrap();
    assert!(wait_until(Duration::from_secs(3), || ng
        .error_log()
        .contains("lookup of \"shadow.test\" failed")));
    let b_before = b.count();
    send(&mut c, 20);
    assert!(b.wait_for(b_before + 20, Duration::from_secs(5)), "copies keep flowing to the last set");
    // Every copy ended (at most the first, sent before the first lookup, failed), and
    // each that ended `ok` arrived at one sink or the other.
    let m = scrape(ng.port);
    let attempted = metric(&m, "nginx_async_mirror_copies_attempted_total", &target, "");
    assert_eq!(copies_sum(&m, &target), attempted, "none unaccounted");
    let ok = metric(&m, "nginx_async_mirror_copies_total", &target, "ok");
    assert!(ok + 1 >= attempted, "{ok} of {attempted}");
    assert_eq!((a.count() + b.count()) as u64, ok);
    ng.quit();
}

#[test]
fn two_addresses_share_the_load() {
    let (a, b) = two_sinks();
    let target = format!("http://shadow.test:{}", a.port);
    let ng = start("resolve-two", "127.0.0.2 shadow.test\n127.0.0.3 shadow.test\n", a.port, "");
    let mut c = Client::connect(ng.port);
    let mut sent = 0;
    assert!(wait_until(Duration::from_secs(3), || {
        send(&mut c, 1);
        sent += 1;
        a.count() + b.count() > 0
    }));
    send(&mut c, 200);
    // Copies sent before the first lookup answered failed; every other one arrived.
    assert!(wait_until(Duration::from_secs(5), || copies_sum(&scrape(ng.port), &target) == sent + 200));
    let ok = metric(&scrape(ng.port), "nginx_async_mirror_copies_total", &target, "ok");
    assert!(wait_until(Duration::from_secs(5), || (a.count() + b.count()) as u64 == ok));
    assert!(ok >= 200, "{ok}");
    assert!(a.count() >= 80 && b.count() >= 80, "round-robin: {} and {}", a.count(), b.count());
    ng.quit();
}

#[test]
fn a_name_that_never_resolves_fails_its_copies_with_a_log_line() {
    let (a, _b) = two_sinks();
    let target = format!("http://shadow.test:{}", a.port);
    let ng = start("resolve-never", "127.0.0.2 other.test\n", a.port, "");
    let mut c = Client::connect(ng.port);
    send(&mut c, 10);
    assert!(wait_until(Duration::from_secs(5), || copies_sum(&scrape(ng.port), &target) == 10));
    assert_eq!(metric(&scrape(ng.port), "nginx_async_mirror_copies_total", &target, "failed:connect"), 10);
    // At most one line per second per target: the lookup's failure, naming the host.
    assert!(wait_until(Duration::from_secs(3), || ng
        .error_log()
        .contains("lookup of \"shadow.test\" failed")));
    assert_eq!(a.count(), 0);
    ng.quit();
}
