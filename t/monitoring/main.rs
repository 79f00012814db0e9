//! The module as a monitoring stack meets it: Debian's Prometheus scraping a running nginx
//! (with the alert rules loaded, the README's expressions and every dashboard query run
//! through its API), `promtool check metrics` on the exposition, and the HTML status page
//! rendered by headless Chromium. Needs `prometheus` and `chromium` (`make test-monitoring`
//! installs them); not part of `cargo test`'s default set.

#[allow(dead_code)]
#[path = "../common/mod.rs"]
mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use common::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// A child process stopped (SIGTERM, then waited for) when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

fn out_dir(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("monitoring").join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A candidate whose price differs for ids ending in 7, beside the primary's JSON.
fn json_peer(differ: bool) -> Sink {
    Sink::answering(move |req| {
        let id = req.uri.rsplit('=').next().unwrap_or("").to_string();
        let price = if differ && id.ends_with('7') { 11 } else { 10 };
        let body = format!("{{\"id\":\"{id}\",\"price\":{price},\"note\":\"<script>alert(1)</script>\"}}");
        vec![(Duration::ZERO, reply(200, &[("Content-Type", "application/json")], body.as_bytes(), false))]
    })
}

fn front_conf(sink: &Sink, candidate: &Sink, primary: &Sink, evil: &str) -> String {
    front(
        &format!(
            "location /ok {{ async_mirror {ok}; {PROXY} }}
             location /dead {{ async_mirror http://127.0.0.1:{dead}; {PROXY} }}
             location /api/ {{ async_mirror {cand}; async_mirror_compare on;
                async_mirror_compare_key $http_x_endpoint;
                proxy_pass http://127.0.0.1:{primary}; }}
             location /evil {{ async_mirror \"{evil}\"; {PROXY} }}",
            ok = sink.url(),
            dead = refused_port(),
            cand = candidate.url(),
            primary = primary.port,
        ),
        "async_mirror_zone m 1m;",
    )
}

fn traffic(port: u16, ids: std::ops::Range<usize>, endpoint: &str) {
    let mut c = Client::connect(port);
    for i in ids {
        assert_eq!(c.get(&format!("/ok?i={i}")).status, 200);
        assert_eq!(c.get(&format!("/dead?i={i}")).status, 200);
        let r = c.request("GET", &format!("/api/item?id={i}"), &[("X-Endpoint", endpoint)]);
        assert_eq!(r.status, 200);
    }
}

/// The status page's JSON once every worker has folded its counters (two reads agree).
fn settled_json(port: u16) -> Value {
    let read = || serde_json::from_str::<Value>(&fetch(port, "/status?format=json")).unwrap();
    let mut last = read();
    assert!(wait_until(Duration::from_secs(5), || {
        std::thread::sleep(Duration::from_millis(300));
        let now = read();
        std::mem::replace(&mut last, now.clone()) == now
    }));
    last
}

struct Prometheus {
    port: u16,
    _proc: Proc,
}

impl Prometheus {
    fn start(dir: &Path, scrape_port: u16) -> Prometheus {
        let port = free_port();
        let config = format!(
            "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\n\
             rule_files: [\"{ROOT}/nginx-conf/prometheus/alerts.yml\"]\n\
             scrape_configs:\n  - job_name: nginx-async-mirror\n    metrics_path: /status\n    \
             static_configs: [{{ targets: [\"127.0.0.1:{scrape_port}\"] }}]\n"
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("Debian's prometheus (apt-get install prometheus)");
        let p = Prometheus { port, _proc: Proc(child) };
        let ready = wait_until(Duration::from_secs(30), || {
            get_once(port, "/-/ready").is_some_and(|r| r.status == 200)
        });
        assert!(
            ready,
            "prometheus did not start: {}",
            std::fs::read_to_string(dir.join("prometheus.log")).unwrap()
        );
        p
    }

    fn api(&self, path: &str) -> Value {
        let r = get_once(self.port, path).expect("prometheus answers");
        serde_json::from_slice(&r.body).unwrap_or(Value::Null)
    }

    /// An instant query; `Err` with Prometheus's error.
    fn query(&self, promql: &str) -> Result<Vec<Value>, String> {
        let v = self.api(&format!("/api/v1/query?query={}", encode(promql)));
        match v["status"].as_str() {
            Some("success") => Ok(v["data"]["result"].as_array().cloned().unwrap_or_default()),
            _ => Err(format!("{promql}: {v}")),
        }
    }

    /// The value of the series of `query` whose label `label` is `value` (`""`: the only one).
    fn value(&self, promql: &str, label: &str, value: &str) -> Option<f64> {
        let rows = self.query(promql).ok()?;
        let row = if label.is_empty() {
            rows.first()?
        } else {
            rows.iter().find(|s| s["metric"][label] == value)?
        };
        row["value"][1].as_str()?.parse().ok()
    }
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn prometheus_ingests_the_page_and_the_readme_and_dashboard_queries_work() {
    let dir = out_dir("prometheus");
    let (sink, candidate, primary) = (Sink::start(), json_peer(true), json_peer(false));
    let ng = Nginx::start(
        "monitoring-prom",
        2,
        "",
        &front_conf(&sink, &candidate, &primary, "http://127.0.0.1:1/x"),
    );
    let prom = Prometheus::start(&dir, ng.port);
    // The first scrape sees every series at zero, so the rates below cover all the traffic.
    assert!(wait_until(Duration::from_secs(10), || prom
        .query("nginx_async_mirror_copies_attempted_total")
        .is_ok_and(|r| r.len() >= 4)));
    // Traffic paced over a few scrapes: series that appear with the first comparison
    // (an endpoint's verdicts) need later samples for rate() to see their increase.
    for batch in 0..5 {
        traffic(ng.port, batch * 20..(batch + 1) * 20, "/api");
        let total = |p: &Prometheus| p.value("sum(nginx_async_mirror_copies_attempted_total)", "", "");
        let want = (batch + 1) as f64 * 60.0;
        assert!(wait_until(Duration::from_secs(10), || total(&prom).is_some_and(|v| v >= want)), "scraped");
    }
    let status = settled_json(ng.port);
    let attempted_all: f64 =
        status["targets"].as_array().unwrap().iter().map(|t| t["attempted"].as_f64().unwrap()).sum();
    let scraped = wait_until(Duration::from_secs(10), || {
        prom.value("sum(nginx_async_mirror_copies_attempted_total)", "", "") == Some(attempted_all)
    });
    assert!(scraped, "Prometheus has the final counters");

    // Labels as ingested.
    let dropped =
        prom.query("nginx_async_mirror_copies_total{outcome=\"dropped\",reason=\"breaker_open\"}").unwrap();
    assert!(
        dropped
            .iter()
            .any(|s| s["metric"]["target"].as_str().is_some_and(|t| t.starts_with("http://127.0.0.1:"))
                && s["value"][1].as_str() != Some("0"))
    );
    let verdicts =
        prom.query("nginx_async_mirror_comparisons_total{verdict=\"differ\",endpoint=\"/api\"}").unwrap();
    assert_eq!(verdicts.len(), 1, "{verdicts:?}");

    // The README's expressions return what the status page says.
    let share = prom.query("sum(rate(nginx_async_mirror_copies_total{outcome=\"ok\"}[5m])) / sum(rate(nginx_async_mirror_copies_attempted_total[5m]))").unwrap();
    let (ok, attempted) = status["targets"].as_array().unwrap().iter().fold((0.0, 0.0), |(o, a), t| {
        (o + t["outcomes"]["ok"].as_f64().unwrap(), a + t["attempted"].as_f64().unwrap())
    });
    let got: f64 = share[0]["value"][1].as_str().unwrap().parse().unwrap();
    assert!((got - ok / attempted).abs() < 0.01, "delivered share {got} vs {}", ok / attempted);
    let by_reason =
        "sum by (target, reason) (rate(nginx_async_mirror_copies_total{outcome=\"dropped\"}[5m]))";
    let rows = prom.query(by_reason).unwrap();
    let breaker: Vec<_> = rows
        .iter()
        .filter(|r| r["metric"]["reason"] == "breaker_open" && r["value"][1].as_str() != Some("0"))
        .collect();
    assert_eq!(breaker.len(), 1, "only the refused target drops for its breaker: {rows:?}");
    let diff_rate = "sum by (target, endpoint) (rate(nginx_async_mirror_comparisons_total{verdict=\"differ\"}[5m])) / sum by (target, endpoint) (rate(nginx_async_mirror_comparisons_total{verdict=~\"match|differ|noise\"}[5m]))";
    let rate = prom.value(diff_rate, "endpoint", "/api").expect("difference rate");
    assert!((rate - 0.1).abs() < 0.02, "ids ending in 7 differ: {rate}");

    // The alert rules load and evaluate in a real Prometheus.
    let rules = prom.api("/api/v1/rules");
    let loaded: Vec<&Value> = rules["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    assert_eq!(loaded.len(), 4, "{rules}");
    assert!(
        wait_until(Duration::from_secs(5), || {
            prom.api("/api/v1/rules")["data"]["groups"][0]["rules"]
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r["health"] == "ok")
        }),
        "{}",
        prom.api("/api/v1/rules")
    );

    // Every query of the Grafana dashboard runs.
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{ROOT}/nginx-conf/grafana/dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut n = 0;
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap().replace("$__rate_interval", "1m").replace("$target", ".*");
            let r = prom.query(&expr).unwrap_or_else(|e| panic!("panel {}: {e}", p["title"]));
            assert!(!r.is_empty(), "panel {}: no data for {expr}", p["title"]);
            n += 1;
        }
    }
    assert!(n >= 12, "{n} queries");
    let values = prom.query("label_values(nginx_async_mirror_copies_attempted_total, target)");
    assert!(values.is_err(), "label_values is Grafana's, not PromQL");

    // promtool on the exposition.
    let text = fetch(ng.port, "/status");
    let mut tool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    tool.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = tool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ng.quit();
}

/// Headless Chromium, as a person would open the page.
fn chromium(args: &[&str], url: &str) -> String {
    let out = Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars"])
        .args(args)
        .arg(url)
        .output()
        .expect("Debian's chromium (apt-get install chromium)");
    assert!(out.status.success(), "chromium: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The text of the element after `marker` (up to the next tag).
fn text_after<'a>(dom: &'a str, marker: &str) -> &'a str {
    let at = dom.find(marker).unwrap_or_else(|| panic!("{marker} not in the page"));
    let rest = &dom[at + marker.len()..];
    let start = rest.find('>').unwrap() + 1;
    let end = rest[start..].find('<').unwrap() + start;
    &rest[start..end]
}

#[test]
fn the_html_page_renders_in_chromium_with_the_json_numbers_and_user_data_as_text() {
    let dir = out_dir("chromium");
    let (sink, candidate, primary) = (Sink::start(), json_peer(true), json_peer(false));
    // The operator's URL may hold only what a request target can (`<` cannot), but `&` and
    // `'` are markup too; the client's data (the endpoint label) may hold anything.
    let evil = "http://127.0.0.1:1/a&amp='pwned'";
    // One worker: the page's last mismatches are the serving worker's.
    let ng = Nginx::start("monitoring-html", 1, "", &front_conf(&sink, &candidate, &primary, evil));
    traffic(ng.port, 0..30, "<script>document.title=\"pwned\"</script>");
    let mut c = Client::connect(ng.port);
    assert_eq!(c.get("/evil").status, 200);
    let status = settled_json(ng.port);
    let url = format!("http://127.0.0.1:{}/status?format=html", ng.port);
    let dom = chromium(&["--dump-dom"], &url);
    std::fs::write(dir.join("status-page.html"), &dom).unwrap();
    assert!(
        dom.contains("<title>nginx async_mirror</title>"),
        "no script ran: {}",
        &dom[..dom.len().min(300)]
    );
    assert!(!dom.contains("<script"), "user data never becomes markup");
    assert!(dom.contains("/a&amp;amp='pwned'"), "the evil URL is shown as text");
    assert!(
        dom.contains("&lt;script&gt;document.title=\"pwned\"&lt;/script&gt;"),
        "the client's endpoint label is shown as text"
    );
    // Every target's numbers are the JSON status's.
    for t in status["targets"].as_array().unwrap() {
        let url = t["target"].as_str().unwrap();
        let section = format!("data-target=\"{}\"", page_escape(url));
        let at = dom.find(&section).unwrap_or_else(|| panic!("no section for {url}"));
        let part = &dom[at..];
        assert_eq!(text_after(part, "data-metric=\"attempted\""), t["attempted"].to_string(), "{url}");
        let ended: u64 = t["outcomes"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
        let ok = t["outcomes"]["ok"].as_u64().unwrap();
        let share =
            if ended == 0 { "–".to_string() } else { format!("{:.1} %", ok as f64 * 100.0 / ended as f64) };
        assert_eq!(text_after(part, "data-metric=\"delivered\""), share, "{url}");
        for cmp in t["comparisons"].as_array().unwrap() {
            let v = &cmp["verdicts"];
            let compared = ["match", "differ", "noise"].iter().map(|k| v[*k].as_u64().unwrap()).sum::<u64>();
            let ep = format!("data-endpoint=\"{}\"", page_escape(cmp["endpoint"].as_str().unwrap()));
            let row = &part[part.find(&ep).expect("endpoint row")..];
            assert_eq!(text_after(row, "data-metric=\"compared\""), compared.to_string());
            assert_eq!(text_after(row, "data-metric=\"differ\""), v["differ"].to_string());
        }
    }
    assert!(dom.contains("class=\"mismatch\""), "the last mismatches are listed");
    let shot = dir.join("status-page.png");
    chromium(&[&format!("--screenshot={}", shot.display()), "--window-size=1280,2200"], &url);
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{} bytes", png.len());
    // Browsers get the page without ?format=; Prometheus and curl keep the exposition.
    let mut c = Client::connect(ng.port);
    let r = c.request("GET", "/status", &[("Accept", "text/html,application/xhtml+xml,*/*;q=0.8")]);
    assert!(String::from_utf8_lossy(&r.body).starts_with("<!doctype html>"));
    let r = c.request("GET", "/status", &[("Accept", "text/plain;version=0.0.4;q=0.4,*/*;q=0.1")]);
    assert!(String::from_utf8_lossy(&r.body).starts_with("# HELP"));
    ng.quit();
}

/// As the page escapes attribute values (Chromium's serialiser writes them back so).
fn page_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('"', "&quot;").replace('<', "&lt;").replace('>', "&gt;")
}
