//! https:// targets: rustls client, SNI, verification settings, keepalive.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crate::common::*;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// An HTTPS sink with a self-signed certificate for `localhost` made for this test:
/// the common sink's HTTP/1.1 over TLS, plus the SNI each connection sent.
struct TlsSink {
    port: u16,
    cert_pem: String,
    got: Arc<Mutex<Vec<Recorded>>>,
    snis: Arc<Mutex<Vec<Option<String>>>>,
    conns: Arc<AtomicUsize>,
}

impl TlsSink {
    fn start() -> TlsSink {
        Self::start_with(None)
    }

    /// With `client_ca`, the sink requires a client certificate signed by that CA.
    fn start_with(client_ca: Option<CertificateDer<'static>>) -> TlsSink {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let cert_pem = cert.cert.pem();
        let der = CertificateDer::from(cert.cert.der().to_vec());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                roots.add(ca).unwrap();
                let verifier =
                    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = builder.with_single_cert(vec![der], key).unwrap();
        let config = Arc::new(config);
        let listener = local_listener();
        let port = listener.local_addr().unwrap().port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let snis = Arc::new(Mutex::new(Vec::new()));
        let conns = Arc::new(AtomicUsize::new(0));
        let (g, n, c) = (got.clone(), snis.clone(), conns.clone());
        thread::spawn(move || {
            for tcp in listener.incoming() {
                let Ok(tcp) = tcp else { continue };
                let id = c.fetch_add(1, Ordering::SeqCst);
                let (g, n, config) = (g.clone(), n.clone(), config.clone());
                thread::spawn(move || {
                    let _ = tcp.set_read_timeout(Some(Duration::from_secs(30)));
                    let mut tls =
                        rustls::StreamOwned::new(rustls::ServerConnection::new(config).unwrap(), tcp);
                    while tls.conn.is_handshaking() {
                        if tls.conn.complete_io(&mut tls.sock).is_err() {
                            return;
                        }
                    }
                    n.lock().unwrap().push(tls.conn.server_name().map(str::to_string));
                    serve_stream(
                        tls,
                        id,
                        g,
                        &|_| vec![(Duration::ZERO, reply(200, &[], b"ok", false))],
                        Arc::default(),
                    );
                });
            }
        });
        TlsSink { port, cert_pem, got, snis, conns }
    }
}

#[test]
fn https_target_with_trusted_certificate_and_keepalive() {
    let sink = TlsSink::start();
    let url = format!("https://localhost:{}", sink.port);
    let locations = format!(
        "location / {{ async_mirror {url}/tls; async_mirror_ssl_trusted_certificate {{prefix}}/ca.pem; {PROXY} }}"
    );
    let body = front(&locations, "async_mirror_max_connections 2;");
    // The certificate must exist before nginx reads the configuration.
    let prefix_marker =
        Nginx::prepare("tls", |prefix| std::fs::write(prefix.join("ca.pem"), &sink.cert_pem).unwrap());
    let ng = prefix_marker.start(1, "", &body);
    let mut c = Client::connect(ng.port);
    for i in 0..50 {
        assert_eq!(c.get(&format!("/t{i}")).status, 200);
    }
    let mut s = std::net::TcpStream::connect(("127.0.0.1", ng.port)).unwrap();
    s.write_all(b"POST /tls-body HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
        .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    drop(s); // nginx lingers on a closed-by-server connection until the client closes too
    assert_eq!(statuses(&out), vec![200]);
    assert!(wait_until(Duration::from_secs(5), || sink.got.lock().unwrap().len() == 51));
    let got = sink.got.lock().unwrap().clone();
    let snis = sink.snis.lock().unwrap().clone();
    assert!(
        !snis.is_empty() && snis.iter().all(|s| s.as_deref() == Some("localhost")),
        "SNI from the URL host"
    );
    assert!(got.iter().any(|r| r.method == "GET" && r.uri == "/tls/t7"));
    assert!(got.iter().any(|r| r.method == "POST" && r.uri == "/tls/tls-body" && r.body == b"hello"));
    let conns = sink.conns.load(Ordering::SeqCst);
    assert!(conns <= 2, "{conns} TLS connections for 51 copies (keepalive, max 2)");
    let log = ng.quit();
    let t = &exit_counters(&log)[&format!("{url}/tls")];
    assert_eq!((t["attempted"], t["ok"]), (51, 51), "{t:?}");
}

#[test]
fn verification_fails_without_trust_and_can_be_turned_off() {
    let sink = TlsSink::start();
    let url = format!("https://localhost:{}", sink.port);
    let locations = format!(
        "location /verify {{ async_mirror {url}; async_mirror_max_fails 0; {PROXY} }}
         location /noverify {{ async_mirror {url}; async_mirror_ssl_verify off; {PROXY} }}"
    );
    let ng = Nginx::start("tlsverify", 1, "", &front(&locations, ""));
    let mut c = Client::connect(ng.port);
    for i in 0..3 {
        assert_eq!(c.get(&format!("/verify{i}")).status, 200);
        assert_eq!(c.get(&format!("/noverify{i}")).status, 200);
    }
    assert!(wait_until(Duration::from_secs(5), || sink.got.lock().unwrap().len() == 3));
    let log = ng.quit();
    let got = sink.got.lock().unwrap().clone();
    assert!(got.iter().all(|r| r.uri.starts_with("/noverify")), "{got:?}");
    let t = &exit_counters(&log)[&url];
    assert_eq!((t["attempted"], t["ok"], t["failed_connect"]), (6, 3, 3), "{t:?}");
    assert!(log.contains("TLS handshake"), "the failure is logged");
}

/// `async_mirror_http_version 2` offers h2 and http/1.1 in ALPN; a server that chooses
/// neither h2 gets its copies over HTTP/1.1.
#[test]
fn alpn_falls_back_to_http1() {
    let sink = TlsSink::start();
    let url = format!("https://localhost:{}", sink.port);
    let locations = format!(
        "location / {{ async_mirror {url}; async_mirror_http_version 2; async_mirror_ssl_verify off; {PROXY} }}"
    );
    let ng = Nginx::start("alpn", 1, "", &front(&locations, ""));
    let mut c = Client::connect(ng.port);
    for i in 0..20 {
        assert_eq!(c.get(&format!("/a{i}")).status, 200);
    }
    assert!(wait_until(Duration::from_secs(5), || sink.got.lock().unwrap().len() == 20));
    assert!(wait_until(Duration::from_secs(3), || ng.error_log().contains("did not choose h2")));
    let log = ng.quit();
    let t = &exit_counters(&log)[&url];
    assert_eq!(t["ok"], 20, "{t:?}");
    let got = sink.got.lock().unwrap().clone();
    assert!(got.iter().all(|r| r.header("host").is_some() && r.uri.starts_with("/a")), "{got:?}");
}

/// A mirror that requires a client certificate (mutual TLS): copies arrive with
/// `async_mirror_ssl_certificate`/`_key`; without them each counts `failed{connect}` and
/// the error log says the handshake was refused.
#[test]
fn client_certificate_for_a_mirror_that_requires_one() {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let client_key = rcgen::KeyPair::generate().unwrap();
    let client = rcgen::CertificateParams::new(vec!["mirror-client".to_string()])
        .unwrap()
        .signed_by(&client_key, &ca, &ca_key)
        .unwrap();
    let sink = TlsSink::start_with(Some(CertificateDer::from(ca.der().to_vec())));
    let url = format!("https://localhost:{}", sink.port);
    let locations = format!(
        "location /mtls {{ async_mirror {url}; async_mirror_ssl_verify off;
             async_mirror_ssl_certificate client.pem; async_mirror_ssl_certificate_key client.key; {PROXY} }}
         location /plain {{ async_mirror {url}/plain; async_mirror_ssl_verify off; async_mirror_max_fails 0; {PROXY} }}"
    );
    let prepared = Nginx::prepare("mtls", |prefix| {
        std::fs::write(prefix.join("client.pem"), client.pem()).unwrap();
        std::fs::write(prefix.join("client.key"), client_key.serialize_pem()).unwrap();
    });
    let ng = prepared.start(1, "", &front(&locations, ""));
    let mut c = Client::connect(ng.port);
    for i in 0..5 {
        assert_eq!(c.get(&format!("/mtls{i}")).status, 200);
        assert_eq!(c.get(&format!("/plain{i}")).status, 200);
    }
    assert!(wait_until(Duration::from_secs(5), || sink.got.lock().unwrap().len() == 5));
    assert!(wait_until(Duration::from_secs(5), || ng
        .error_log()
        .contains("TLS handshake refused by the mirror")));
    let log = ng.quit();
    assert!(sink.got.lock().unwrap().iter().all(|r| r.uri.starts_with("/mtls")));
    let counters = exit_counters(&log);
    assert_eq!((counters[&url]["attempted"], counters[&url]["ok"]), (5, 5));
    let plain = &counters[&format!("{url}/plain")];
    assert_eq!((plain["attempted"], plain["failed_connect"]), (5, 5), "{plain:?}");
    assert!(log.contains("requires a client certificate"), "{log}");
}
