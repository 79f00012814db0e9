//! The status page for people: `async_mirror_status` with `?format=html` or a browser's
//! `Accept: text/html`. One self-contained document (inline CSS and SVG, no script, no
//! external asset); every value that comes from configuration or traffic (target URLs,
//! endpoints, JSON values) is escaped.

use std::fmt::Write;

use super::snapshot::{Snapshot, TargetSnapshot};
use crate::engine::compare::{Mismatch, Verdict};
use crate::engine::outcome::{BUCKETS_MS, Outcome, slot};

pub const CONTENT_TYPE: &str = "text/html; charset=utf-8";

/// Text as HTML text or attribute value.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn pct(n: u64, d: u64) -> String {
    if d == 0 { "–".into() } else { format!("{:.1} %", n as f64 * 100.0 / d as f64) }
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1100px}\
h1{font-size:20px}h2{font-size:16px;margin:28px 0 8px;word-break:break-all}h3{font-size:14px;margin:14px 0 6px}\
table{border-collapse:collapse;margin:4px 0 10px}td,th{padding:3px 10px;border-bottom:1px solid #ddd;text-align:left}\
td.n{text-align:right;font-variant-numeric:tabular-nums}.meta{color:#666}.bad{color:#b00020}.ok{color:#1b7f3b}\
section{border-top:2px solid #eee}code{font-size:12px;background:#f5f5f5;padding:1px 3px;word-break:break-all}\
svg text{font-size:10px;fill:#555}";

/// The whole page.
pub fn html(s: &Snapshot, recent: &[Mismatch]) -> String {
    let mut o = String::from("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">");
    let _ = write!(o, "<title>nginx async_mirror</title><style>{STYLE}</style></head><body>");
    let scope = if s.shared { "summed over all workers" } else { "this worker only (no async_mirror_zone)" };
    let _ = write!(
        o,
        "<h1>nginx async_mirror</h1><p class=\"meta\" id=\"scope\">Counters {scope}. Queue: \
         <span data-metric=\"queue_jobs\">{}</span> copies waiting, <span data-metric=\"queue_bytes\">{}</span> bytes held.</p>",
        s.queue_jobs.max(0),
        s.queue_bytes.max(0)
    );
    for t in &s.targets {
        target(&mut o, t);
    }
    if !recent.is_empty() {
        o.push_str("<section><h2>Last mismatches (this worker)</h2><table id=\"mismatches\"><tr><th>time</th><th>target</th><th>endpoint</th><th>request</th><th>field: primary → mirror</th></tr>");
        for m in recent {
            let fields: Vec<String> = m
                .fields
                .iter()
                .map(|(f, a, b)| {
                    format!(
                        "<code>{}</code>: <code>{}</code> → <code>{}</code>",
                        escape(f),
                        escape(a),
                        escape(b)
                    )
                })
                .collect();
            let _ = write!(
                o,
                "<tr class=\"mismatch\"><td>{}</td><td>{}</td><td>{}</td><td>{} {}</td><td>{}</td></tr>",
                escape(&m.time),
                escape(&m.target),
                escape(&m.endpoint),
                escape(&m.method),
                // The path only: a query may carry what the page should not show.
                escape(m.uri.split('?').next().unwrap_or("")),
                fields.join("<br>")
            );
        }
        o.push_str("</table></section>");
    }
    o.push_str("</body></html>\n");
    o
}

fn target(o: &mut String, t: &TargetSnapshot) {
    let c = &t.counters;
    let finished: u64 = c[..Outcome::COUNT].iter().sum();
    let ok = c[Outcome::Ok.slot()];
    let url = escape(&t.url);
    let _ =
        write!(o, "<section class=\"target\" data-target=\"{url}\"><h2>{url}</h2><table class=\"summary\">");
    let delivered_class = if finished > 0 && ok * 100 < finished * 99 { "bad" } else { "ok" };
    let rows: [(&str, &str, String); 7] = [
        ("delivered", "delivered share (ok of ended)", pct(ok, finished)),
        ("attempted", "copies attempted", c[slot::ATTEMPTED].to_string()),
        ("ended", "copies ended", finished.to_string()),
        ("inflight", "in flight", t.inflight.max(0).to_string()),
        ("connections", "connections open", t.connections.max(0).to_string()),
        ("breaker_open", "workers with the breaker open", t.breaker_open.max(0).to_string()),
        (
            "override",
            "control API override",
            match (t.ov.paused, t.ov.sample_ppm) {
                (None, None) => "none".into(),
                (p, s) => format!(
                    "{}{}",
                    if p == Some(true) { "paused " } else { "" },
                    s.map_or(String::new(), |s| format!("sample {} %", f64::from(s) / 10_000.0))
                ),
            },
        ),
    ];
    for (key, label, value) in rows {
        let class = if key == "delivered" { delivered_class } else { "" };
        let _ =
            write!(o, "<tr><th>{label}</th><td class=\"n {class}\" data-metric=\"{key}\">{value}</td></tr>");
    }
    o.push_str("</table><h3>Outcomes</h3><table class=\"outcomes\">");
    for (i, &n) in c[..Outcome::COUNT].iter().enumerate().filter(|(_, n)| **n > 0) {
        let name = Outcome::from_slot(i).to_string();
        let _ = write!(
            o,
            "<tr data-outcome=\"{name}\"><td>{name}</td><td class=\"n\">{n}</td><td class=\"n\">{}</td></tr>",
            pct(n, finished)
        );
    }
    o.push_str("</table>");
    latency(o, t);
    comparisons(o, t);
    o.push_str("</section>");
}

/// Copies per duration bucket, as bars.
fn latency(o: &mut String, t: &TargetSnapshot) {
    let c = &t.counters;
    let count = c[slot::DURATION_COUNT];
    let mut per = Vec::with_capacity(BUCKETS_MS.len() + 1);
    let mut prev = 0;
    for i in 0..=BUCKETS_MS.len() {
        let cum = if i < BUCKETS_MS.len() { c[slot::BUCKETS + i] } else { count };
        per.push(cum.saturating_sub(prev));
        prev = cum;
    }
    let max = per.iter().copied().max().unwrap_or(0).max(1);
    let (bw, h) = (56, 90);
    let _ = write!(
        o,
        "<h3>Duration (send to last response byte)</h3><svg class=\"latency\" width=\"{}\" height=\"{}\" role=\"img\" aria-label=\"copies per duration bucket\">",
        bw * per.len(),
        h + 28
    );
    for (i, n) in per.iter().enumerate() {
        let bar = (*n as f64 / max as f64 * h as f64).round() as usize;
        let label = BUCKETS_MS.get(i).map_or("more".to_string(), |b| format!("≤{b}ms"));
        let x = i * bw;
        let _ = write!(
            o,
            "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{bar}\" fill=\"#4a78c2\" data-bucket=\"{label}\" data-count=\"{n}\"></rect>\
             <text x=\"{}\" y=\"{}\">{n}</text><text x=\"{}\" y=\"{}\">{label}</text>",
            x + 4,
            h - bar + 12,
            bw - 8,
            x + 4,
            h - bar + 10,
            x + 2,
            h + 26
        );
    }
    o.push_str("</svg>");
}

/// Verdicts per endpoint and the fields that differ most, candidate beside baseline.
fn comparisons(o: &mut String, t: &TargetSnapshot) {
    if t.compare.is_empty() {
        return;
    }
    o.push_str(
        "<h3>Comparisons</h3><table class=\"comparisons\"><tr><th>endpoint</th><th>compared</th><th>match</th>\
         <th>differ</th><th>noise</th><th>uncompared</th><th>top differing fields (candidate / baseline rate)</th></tr>",
    );
    for e in &t.compare {
        let v = |x: Verdict| e.verdicts[x.slot()];
        let (m, d, n) = (v(Verdict::Match), v(Verdict::Differ), v(Verdict::Noise));
        let compared = m + d + n;
        let uncompared: u64 = e.verdicts.iter().sum::<u64>() - compared;
        let mut fields = e.fields.clone();
        fields.sort_by(|a, b| b.1[0].cmp(&a.1[0]).then(a.0.cmp(&b.0)));
        let top: Vec<String> = fields
            .iter()
            .filter(|(_, c)| c[0] + c[1] > 0)
            .take(5)
            .map(|(f, c)| {
                format!(
                    "<span class=\"field\" data-field=\"{}\"><code>{}</code> {} / {}</span>",
                    escape(f),
                    escape(f),
                    pct(c[0], compared),
                    pct(c[1], compared)
                )
            })
            .collect();
        let _ = write!(
            o,
            "<tr class=\"endpoint\" data-endpoint=\"{ep}\"><td>{ep}</td><td class=\"n\" data-metric=\"compared\">{compared}</td>\
             <td class=\"n\" data-metric=\"match_rate\">{}</td><td class=\"n\" data-metric=\"differ\">{d}</td>\
             <td class=\"n\" data-metric=\"noise\">{n}</td><td class=\"n\" data-metric=\"uncompared\">{uncompared}</td><td>{}</td></tr>",
            pct(m, compared),
            top.join("<br>"),
            ep = escape(&e.name),
        );
    }
    o.push_str("</table>");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::compare::EndpointCounts;
    use crate::engine::control::Override;

    #[test]
    fn user_data_is_escaped_and_numbers_shown() {
        let mut counters = [0; slot::COUNTERS];
        counters[Outcome::Ok.slot()] = 9;
        counters[Outcome::Dropped(crate::engine::outcome::DropReason::QueueFull).slot()] = 1;
        counters[slot::ATTEMPTED] = 10;
        counters[slot::DURATION_COUNT] = 9;
        let snap = Snapshot {
            targets: vec![TargetSnapshot {
                url: "http://h:1/<script>x</script>".into(),
                counters,
                inflight: 0,
                breaker_open: 0,
                connections: 1,
                compare: vec![EndpointCounts {
                    name: "<img src=x onerror=alert(1)>".into(),
                    verdicts: [3, 1, 0, 0, 0, 0, 0, 0, 0, 0],
                    fields: vec![("json:$.a".into(), [1, 0])],
                }],
                ov: Override::default(),
            }],
            shared: true,
            ..Default::default()
        };
        let recent = [Mismatch {
            time: "t".into(),
            target: "x".into(),
            endpoint: "e".into(),
            method: "GET".into(),
            uri: "/'\"".into(),
            fields: vec![("json:$.a".into(), "\"<script>\"".into(), "1".into())],
        }];
        let page = html(&snap, &recent);
        assert!(!page.contains("<script>") && !page.contains("<img"), "{page}");
        assert!(page.contains("&lt;script&gt;x&lt;/script&gt;"));
        assert!(page.contains("data-metric=\"delivered\">90.0 %"));
        assert!(page.contains("data-metric=\"match_rate\">75.0 %"));
        assert!(page.contains("data-outcome=\"dropped_queue_full\""));
        assert!(page.contains("/&#39;&quot;"));
    }
}
