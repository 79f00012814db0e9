//! Request bodies: teed as nginx reads them, byte-exact, bounded, never truncated silently.

use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::thread;
use std::time::Duration;

use crate::common::*;

#[test]
fn bodies_arrive_byte_exact() {
    let sink = Sink::start();
    // Unbuffered uploads stream to a backend that reads the whole body: nginx's test
    // backend would answer early, and nginx then discards the rest of the body.
    let reader = Sink::start();
    let locations = format!(
        "location / {{ async_mirror {}; async_mirror_body_max_size 32m; {PROXY} }}
         location /unbuffered {{ async_mirror {url}; proxy_request_buffering off; proxy_http_version 1.1;
                                 proxy_pass {reader}; }}
         location /infile {{ async_mirror {url}; client_body_in_file_only clean; {PROXY} }}",
        sink.url(),
        url = sink.url(),
        reader = reader.url()
    );
    let ng = Nginx::start("bodies", 1, "", &front(&locations, ""));
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("/empty", vec![], false),
        ("/ten", b"0123456789".to_vec(), false),
        ("/chunked", data(100_000), true),
        ("/one-mib", data(1 << 20), false),
        ("/twenty-mib", data(20 << 20), false),
        ("/unbuffered", data(300_000), false),
        ("/unbuffered?chunked", data(300_000), true),
        ("/infile", data(200_000), false),
    ];
    for (path, body, chunked) in &cases {
        let r = post(ng.port, path, body, *chunked);
        assert_eq!(r.status, 200, "{path}");
    }
    let arrived = sink.wait_for(cases.len(), Duration::from_secs(20));
    let uris: Vec<String> = sink.requests().into_iter().map(|r| r.uri).collect();
    assert!(arrived, "copies: {uris:?}");
    let got = sink.requests();
    for (path, body, chunked) in &cases {
        let copy = got.iter().find(|r| r.uri == *path).unwrap_or_else(|| panic!("no copy of {path}"));
        assert_eq!(copy.method, "POST");
        assert_eq!(copy.body.len(), body.len(), "{path}");
        assert_eq!(sha(&copy.body), sha(body), "{path}: body differs");
        if *chunked {
            assert_eq!(copy.header("transfer-encoding"), Some("chunked"), "{path}");
        } else {
            assert_eq!(copy.header("content-length"), Some(body.len().to_string().as_str()), "{path}");
        }
    }
    let log = ng.quit();
    let t = &exit_counters(&log)[&sink.url()];
    assert_eq!((t["attempted"], t["ok"]), (cases.len() as u64, cases.len() as u64), "{t:?}");
}

#[test]
fn http2_bodies_are_copied() {
    if nginx_version() < 1_025_001 {
        eprintln!("nginx {} serves HTTP/2 beside HTTP/1.1 only with TLS: not tested here", nginx_version());
        return;
    }
    let sink = Sink::start();
    let locations = format!("location / {{ async_mirror {}; {PROXY} }}", sink.url());
    let ng = Nginx::start("h2body", 1, "", &front(&locations, ""));
    let body = data(150_000);
    let file = ng.prefix.join("h2body.bin");
    std::fs::write(&file, &body).unwrap();
    for (path, extra) in [("/h2-length", vec![]), ("/h2-chunked", vec!["-H", "Transfer-Encoding: chunked"])] {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code} %{http_version}", "--http2-prior-knowledge"])
            .args(&extra)
            .arg("--data-binary")
            .arg(format!("@{}", file.display()))
            .arg(format!("http://127.0.0.1:{}{path}", ng.port))
            .output()
            .expect("curl");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "200 2", "{path}");
    }
    assert!(sink.wait_for(2, Duration::from_secs(10)));
    for copy in sink.requests() {
        assert_eq!(sha(&copy.body), sha(&body), "{}", copy.uri);
    }
    ng.quit();
}

#[test]
fn body_off_and_too_large() {
    let sink = Sink::start();
    let locations = format!(
        "location /off {{ async_mirror {url}; async_mirror_body off; {PROXY} }}
         location /small {{ async_mirror {url}; async_mirror_body_max_size 1k; {PROXY} }}",
        url = sink.url()
    );
    let ng = Nginx::start("bodyoff", 1, "", &front(&locations, ""));
    assert_eq!(post(ng.port, "/off", &data(5000), false).status, 200);
    assert_eq!(post(ng.port, "/off?chunked", &data(5000), true).status, 200);
    assert_eq!(post(ng.port, "/small", &data(5000), false).status, 200);
    assert_eq!(post(ng.port, "/small?chunked", &data(5000), true).status, 200);
    assert_eq!(post(ng.port, "/small?fits", &data(1000), true).status, 200);
    assert!(sink.wait_for(3, Duration::from_secs(5)));
    let log = ng.quit();
    let got = sink.requests();
    for uri in ["/off", "/off?chunked"] {
        let c = got.iter().find(|r| r.uri == uri).expect(uri);
        assert_eq!(c.header("content-length"), Some("0"), "{uri}");
        assert_eq!(c.header("transfer-encoding"), None, "{uri}");
        assert!(c.body.is_empty());
    }
    assert!(got.iter().any(|r| r.uri == "/small?fits" && r.body.len() == 1000));
    assert!(
        !got.iter().any(|r| r.uri == "/small" || r.uri == "/small?chunked"),
        "oversized bodies were sent"
    );
    let t = &exit_counters(&log)[&sink.url()];
    assert_eq!(t["dropped_body_too_large"], 2, "{t:?}");
    assert_eq!(outcome_sum(t), 5, "{t:?}");
}

#[test]
fn aborted_and_discarded_bodies_are_counted_not_sent() {
    let sink = Sink::start();
    let locations = format!(
        "root {{prefix}}/html;
         location /up {{ async_mirror {url}; {PROXY} }}
         location /static {{ async_mirror {url}; }}
         location /ret {{ async_mirror {url}; return 200 ok; }}",
        url = sink.url()
    );
    let ng = Nginx::start("abort", 1, "", &front(&locations, "client_body_timeout 2s;"));
    std::fs::write(ng.prefix.join("html/static"), "static file").unwrap();
    // A client that goes away in the middle of its upload.
    {
        let mut s = TcpStream::connect(("127.0.0.1", ng.port)).unwrap();
        s.write_all(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n").unwrap();
        s.write_all(&data(100_000)).unwrap();
        thread::sleep(Duration::from_millis(300));
    }
    // A body nginx discards (static file) and a location that answers before PRECONTENT.
    let mut c = Client::connect(ng.port);
    let mut s = TcpStream::connect(("127.0.0.1", ng.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /static HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
        .unwrap();
    let mut out = Vec::new();
    let _ = std::io::Read::read_to_end(&mut s, &mut out);
    drop(s); // nginx lingers on a closed-by-server connection until the client closes too
    assert_eq!(statuses(&out), vec![200]);
    assert_eq!(c.request("GET", "/ret", &[]).status, 200);
    drop(c);
    let log = ng.quit();
    let t = &exit_counters(&log)[&sink.url()];
    assert_eq!(t["attempted"], 2, "{t:?}");
    assert_eq!(t["failed_body_aborted"], 2, "{t:?}");
    assert!(sink.requests().is_empty(), "an incomplete body reached the mirror as a request");
}

#[test]
fn upload_burst_with_slow_mirror_stays_within_budget() {
    let slow = Sink::with_delay(Duration::from_secs(2));
    let locations = format!("location / {{ async_mirror {}; {PROXY} }}", slow.url());
    let http = "async_mirror_queue_bytes 8m; async_mirror_max_connections 4; async_mirror_zone z 64k;";
    let ng = Nginx::start("burst", 1, "", &front(&locations, http));
    let port = ng.port;
    let body = std::sync::Arc::new(data(1 << 20));
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (peak, done) = (peak.clone(), done.clone());
        thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let text = fetch(port, "/status");
                if let Some(v) = text.lines().find_map(|l| l.strip_prefix("nginx_async_mirror_queue_bytes "))
                {
                    peak.fetch_max(v.trim().parse().unwrap_or(0), std::sync::atomic::Ordering::Relaxed);
                }
                thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let uploads: Vec<_> = (0..50)
        .map(|i| {
            let body = body.clone();
            thread::spawn(move || post(port, &format!("/u{i}"), &body, false).status)
        })
        .collect();
    for u in uploads {
        assert_eq!(u.join().unwrap(), 200);
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    watcher.join().unwrap();
    let log = ng.quit();
    let t = &exit_counters(&log)[&slow.url()];
    assert_eq!(t["attempted"], 50);
    assert_eq!(outcome_sum(t), 50, "{t:?}");
    assert!(t["dropped_queue_full"] > 0, "expected budget drops: {t:?}");
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    assert!(peak <= 8 << 20, "queue held {peak} bytes, over the 8 MiB budget");
    // Whatever reached the mirror is complete.
    for r in slow.requests() {
        assert_eq!(r.body.len(), 1 << 20, "{}", r.uri);
    }
}
