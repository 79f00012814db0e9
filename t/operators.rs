//! Operator traffic and secrets: the status page and the control API are never copied,
//! and credentials can be scrubbed from copies.

use std::time::Duration;

use crate::common::*;

/// With `async_mirror` at server level, the status page and the control API (with its
/// credentials and a PATCH that would change a shadow running the same configuration)
/// are not copied; the location next to them is.
#[test]
fn operator_locations_are_never_copied() {
    let sink = Sink::start();
    let server = format!(
        "async_mirror {};
         location / {{ {PROXY} }}
         location = /mirror-status {{ async_mirror_status; }}
         location /mirror-api/ {{ async_mirror_api write=on; }}",
        sink.url()
    );
    let ng = Nginx::start("operators", 1, "", &front(&server, "async_mirror_zone ops 1m;"));
    let mut c = Client::connect(ng.port);
    assert_eq!(c.request("GET", "/mirror-status", &[("Authorization", "Basic b3A6c2VjcmV0")]).status, 200);
    assert_eq!(
        c.request("GET", "/mirror-api/targets", &[("Authorization", "Basic b3A6c2VjcmV0")]).status,
        200
    );
    let patch = |body: &str| {
        format!(
            "PATCH /mirror-api/targets/0 HTTP/1.1\r\nHost: x\r\nAuthorization: Basic b3A6c2VjcmV0\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    for body in ["{\"sample\":50.0}", "{\"sample\":100}"] {
        assert_eq!(statuses(&raw_exchange(ng.port, patch(body).as_bytes(), Duration::from_secs(5))), [200]);
    }
    assert_eq!(c.get("/app").status, 200);
    assert!(sink.wait_for(1, Duration::from_secs(5)));
    let log = ng.quit();
    let uris: Vec<String> = sink.requests().into_iter().map(|r| r.uri).collect();
    assert_eq!(uris, ["/app"], "only the application's request is copied");
    let t = &exit_counters(&log)[&sink.url()];
    assert_eq!(t["attempted"], 1, "operator requests are not copies: {t:?}");
}

/// `async_mirror_scrub_header` replaces named headers' values on copies; the rest of the
/// request goes as it came, and another location without the directive is unchanged.
#[test]
fn credentials_are_scrubbed_from_copies() {
    let sink = Sink::start();
    let server = format!(
        "location / {{ async_mirror {url}; async_mirror_scrub_header Authorization Cookie X-Api-Key; {PROXY} }}
         location /plain {{ async_mirror {url}; {PROXY} }}",
        url = sink.url()
    );
    let ng = Nginx::start("scrub", 1, "", &front(&server, ""));
    let mut c = Client::connect(ng.port);
    let headers = [
        ("Authorization", "Bearer s3cret"),
        ("Cookie", "session=abc"),
        ("X-Api-Key", "k"),
        ("X-Trace", "t1"),
    ];
    assert_eq!(c.request("GET", "/scrubbed", &headers).status, 200);
    assert_eq!(c.request("GET", "/plain", &headers).status, 200);
    assert!(sink.wait_for(2, Duration::from_secs(5)));
    ng.quit();
    let got = sink.requests();
    let scrubbed = got.iter().find(|r| r.uri == "/scrubbed").unwrap();
    for name in ["authorization", "cookie", "x-api-key"] {
        assert_eq!(scrubbed.header(name), Some("[scrubbed]"), "{name}");
    }
    assert_eq!(scrubbed.header("x-trace"), Some("t1"));
    let plain = got.iter().find(|r| r.uri == "/plain").unwrap();
    assert_eq!(plain.header("authorization"), Some("Bearer s3cret"));
}
