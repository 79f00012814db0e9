//! Hostile and malformed requests: nginx answers exactly as it would without the
//! module, and every copy is either faithful or counted `skipped`.

use std::io::Write;
use std::net::TcpStream;
use std::thread;
use std::time::Duration;

use crate::common::*;

#[test]
fn hostile_requests_are_answered_as_without_the_module() {
    let sink = Sink::start();
    let backend = free_port();
    let plain = free_port();
    let http = format!(
        "{}
        server {{ listen 127.0.0.1:{{port}}; async_mirror {url}; location / {{ {PROXY} }} }}
        server {{ listen 127.0.0.1:{plain}; location / {{ {PROXY} }} }}",
        backend_server(backend),
        url = sink.url()
    );
    let ng = Nginx::start("hostile", 1, "", &http);
    let big = format!("GET /big HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(10_000));
    let many: String = (0..200).map(|i| format!("X-H{i}: value-{i}\r\n")).collect();
    let many = format!("GET /many HTTP/1.1\r\nHost: x\r\n{many}Connection: close\r\n\r\n");
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "l".repeat(6000));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("oversized header", big.into_bytes()),
        ("many headers", many.into_bytes()),
        ("long uri", long_uri.into_bytes()),
        ("invalid method", b"G@T / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("absolute-form", b"GET http://example.com/abs?x=1 HTTP/1.1\r\nHost: other\r\nConnection: close\r\n\r\n".to_vec()),
        ("encoded path", b"GET /a%2Fb%20c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec()),
        ("encoded nul", b"GET /a%00b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec()),
        ("non-utf8 path", b"GET /caf\xe9 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec()),
        ("control byte in value", b"GET /ctl HTTP/1.1\r\nHost: x\r\nX-Ctl: a\x01b\r\nConnection: close\r\n\r\n".to_vec()),
        ("obs-text in value", b"GET /obs HTTP/1.1\r\nHost: x\r\nX-Obs: caf\xe9\r\nConnection: close\r\n\r\n".to_vec()),
        ("nul in value", b"GET /nul HTTP/1.1\r\nHost: x\r\nX-Nul: a\x00b\r\n\r\n".to_vec()),
        ("bare LF", b"GET /lf HTTP/1.1\nHost: x\nConnection: close\n\n".to_vec()),
        ("http/1.0 no host", b"GET /old HTTP/1.0\r\n\r\n".to_vec()),
        ("http/0.9", b"GET /nine\r\n".to_vec()),
        ("bad version", b"GET / HTTP/9.9\r\nHost: x\r\n\r\n".to_vec()),
        ("no host 1.1", b"GET /nohost HTTP/1.1\r\n\r\n".to_vec()),
        ("double host", b"GET /dh HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_vec()),
        ("upgrade", b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade, close\r\n\r\n".to_vec()),
        ("underscore header", b"GET /us HTTP/1.1\r\nHost: x\r\nX_Under: 1\r\nConnection: close\r\n\r\n".to_vec()),
        ("pipelined", b"GET /p1 HTTP/1.1\r\nHost: x\r\n\r\nGET /p2 HTTP/1.1\r\nHost: x\r\n\r\nGET /p3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec()),
        ("options star", b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec()),
        ("custom method", b"PURGE /purge HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec()),
        ("garbage", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec()),
    ];
    let mut expected_requests = 0;
    for (name, bytes) in &cases {
        let mirrored = statuses(&raw_exchange(ng.port, bytes, Duration::from_secs(5)));
        let without = statuses(&raw_exchange(plain, bytes, Duration::from_secs(5)));
        assert_eq!(mirrored, without, "{name}: answered differently with the module");
        expected_requests += mirrored.iter().filter(|s| **s < 400 || **s == 404).count();
    }

    // A slow-body client: the request is answered once its body has arrived.
    let mut s = TcpStream::connect(("127.0.0.1", ng.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nConnection: close\r\n\r\nhello")
        .unwrap();
    thread::sleep(Duration::from_millis(300));
    s.write_all(b"world").unwrap();
    let mut out = Vec::new();
    let _ = std::io::Read::read_to_end(&mut s, &mut out);
    drop(s); // nginx lingers on a closed-by-server connection until the client closes too
    assert_eq!(statuses(&out), vec![200]);

    let log = ng.quit();
    let counters = exit_counters(&log);
    let t = &counters[&sink.url()];
    assert_eq!(t["attempted"], outcome_sum(t), "{t:?}");
    assert!(t["attempted"] as usize >= expected_requests, "{t:?} for {expected_requests} answered requests");
    let got = sink.requests();
    let find = |uri: &str| got.iter().find(|r| r.uri == uri);
    let many = find("/many").expect("many-headers copy");
    assert_eq!(many.header("x-h199"), Some("value-199"));
    assert!(find(&format!("/{}", "l".repeat(6000))).is_some(), "long URI copy");
    // nginx routed the absolute-form request on the request line's authority, not on its
    // Host header: so does the copy.
    assert_eq!(find("/abs?x=1").expect("absolute-form copy").header("host"), Some("example.com"));
    assert!(find("/a%2Fb%20c").is_some());
    assert_eq!(
        find("/old").expect("HTTP/1.0 copy").header("host"),
        Some(format!("127.0.0.1:{}", sink.port).as_str())
    );
    for uri in ["/p1", "/p2", "/p3", "/purge"] {
        assert!(find(uri).is_some(), "{uri} not copied");
    }
    assert!(find("/ws").is_none() && find("/ctl").is_none());
    assert_eq!(find("/slow").expect("slow-body copy").body, b"helloworld");
    assert!(t["skipped"] >= 2, "upgrade and control-byte requests are skipped: {t:?}");
    // Whatever reached the sink is exactly what nginx accepted: no hop-by-hop headers.
    for r in &got {
        assert!(r.header("connection").is_none_or(|v| v.eq_ignore_ascii_case("keep-alive")), "{r:?}");
        assert!(r.header("upgrade").is_none());
    }
}
