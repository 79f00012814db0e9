//! Bad configuration fails `nginx -t` with a clear message and the file:line.

use std::process::Command;

use crate::common::*;

/// Runs `nginx -t` with `body` inside `http {}` (`main` at top level); returns (success, output).
fn nginx_t(main: &str, body: &str) -> (bool, String, String) {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("conf-{}", free_port()));
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    let path = dir.join("nginx.conf");
    let conf =
        format!("load_module {};\n{main}\nevents {{ }}\nhttp {{\n{body}\n}}\n", module_path().display());
    std::fs::write(&path, conf).unwrap();
    let out = Command::new(nginx_binary())
        .arg("-t")
        .arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(&path)
        .arg("-e")
        .arg(dir.join("logs/error.log"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.success(), text, path.display().to_string())
}

fn assert_rejected(body: &str, expected: &str) {
    let (ok, out, path) = nginx_t("", body);
    assert!(!ok, "accepted: {body}\n{out}");
    assert!(out.contains(expected), "for {body}: expected {expected:?} in\n{out}");
    // nginx appends the location of the offending directive (line 5 or later: inside http {}).
    assert!(out.contains(&format!(" in {path}:")), "no file:line for {body}:\n{out}");
    assert!(!out.contains("signal"), "crashed on {body}:\n{out}");
}

#[test]
fn valid_configuration_passes() {
    let (ok, out, _) = nginx_t(
        "",
        "async_mirror_max_connections 16; async_mirror_keepalive_timeout 30s;
         async_mirror_queue_size 1024; async_mirror_queue_bytes 8m; async_mirror_threads 2;
         async_mirror_drain_timeout 0; async_mirror_timeout 2s; async_mirror_connect_timeout 500ms;
         server { listen 127.0.0.1:1; async_mirror http://127.0.0.1:2;
           location / { async_mirror http://localhost:3/prefix; async_mirror http://[::1]:4;
             async_mirror_set_header X-Shadow $host; async_mirror_if $arg_x;
             async_mirror_mark_header X-Copy; }
           location /off { async_mirror off; async_mirror_mark_header off; async_mirror_scrub_header off; }
           location /capture { async_mirror file:logs/c.gor sample=50% key=$arg_u rate=10/s rotate=1m response=1k;
             async_mirror http://127.0.0.1:8; }
           location /vars { async_mirror http://$arg_h:7/v$uri hosts=a.internal:7,b.internal:7;
             async_mirror_scrub_header Authorization Cookie X-Api-Key; }
           location /cmp { async_mirror http://127.0.0.1:5; async_mirror http://127.0.0.1:6 baseline;
             async_mirror_compare on; async_mirror_compare_headers Content-Type ETag;
             async_mirror_compare_ignore_json $.a $.b[3].c '$[\"x y\"]'; async_mirror_compare_max_body 1m;
             async_mirror_compare_key $uri; async_mirror_compare_log logs/c.log rate=5/s;
             async_mirror_primary_status 2xx 404; } }",
    );
    assert!(ok, "{out}");
}

/// Every case of `t/conf_corpus.txt` fails `nginx -t` with its message and a file:line.
#[test]
fn corpus_of_bad_directives_fails_cleanly() {
    let corpus = include_str!("conf_corpus.txt");
    let mut n = 0;
    for line in corpus.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let (body, expected) = line.rsplit_once(" => ").expect("case => expected");
        assert_rejected(body, expected);
        n += 1;
    }
    assert!(n >= 40, "corpus has only {n} cases");
}

#[test]
fn directive_outside_http_is_rejected() {
    let (ok, out, _) = nginx_t("async_mirror http://127.0.0.1:1;", "");
    assert!(!ok);
    assert!(out.contains("directive is not allowed here"), "{out}");
}

/// A client certificate without its key, or with another certificate's key, fails
/// `nginx -t` (checked when the location's https targets get their TLS settings).
#[test]
fn client_certificate_pairs_are_checked() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("mtls-{}", free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let a = rcgen::generate_simple_self_signed(vec!["a".into()]).unwrap();
    let b = rcgen::generate_simple_self_signed(vec!["b".into()]).unwrap();
    std::fs::write(dir.join("a.pem"), a.cert.pem()).unwrap();
    std::fs::write(dir.join("b.key"), b.key_pair.serialize_pem()).unwrap();
    let d = dir.display();
    assert_rejected(
        &format!(
            "server {{ location / {{ async_mirror https://127.0.0.1:1; async_mirror_ssl_certificate {d}/a.pem; }} }}"
        ),
        "async_mirror: no async_mirror_ssl_certificate_key for",
    );
    assert_rejected(
        &format!(
            "server {{ location / {{ async_mirror https://127.0.0.1:1; async_mirror_ssl_certificate {d}/a.pem;
               async_mirror_ssl_certificate_key {d}/b.key; }} }}"
        ),
        "do not go together",
    );
}
