//! The status page as one JSON document (`?format=json`).

use std::fmt::Write;

use super::snapshot::Snapshot;
use crate::engine::compare::Verdict;
use crate::engine::outcome::{Outcome, slot};

fn json_str(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 2);
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

pub fn json(s: &Snapshot) -> String {
    let mut o = String::from("{");
    let _ = write!(
        o,
        "\"shared\":{},\"queue_jobs\":{},\"queue_bytes\":{},\"targets\":[",
        s.shared,
        s.queue_jobs.max(0),
        s.queue_bytes.max(0)
    );
    for (n, t) in s.targets.iter().enumerate() {
        if n > 0 {
            o.push(',');
        }
        let _ = write!(
            o,
            "{{\"target\":{},\"attempted\":{},\"connections_opened\":{},\"connections\":{},\"inflight\":{},\"breaker_open\":{},\"outcomes\":{{",
            json_str(&t.url),
            t.counters[slot::ATTEMPTED],
            t.counters[slot::CONNECTIONS],
            t.connections.max(0),
            t.inflight.max(0),
            t.breaker_open.max(0)
        );
        for i in 0..Outcome::COUNT {
            let _ =
                write!(o, "{}\"{}\":{}", if i > 0 { "," } else { "" }, Outcome::from_slot(i), t.counters[i]);
        }
        let count = t.counters[slot::DURATION_COUNT];
        let mean_ms =
            if count > 0 { t.counters[slot::DURATION_SUM_US] as f64 / count as f64 / 1000.0 } else { 0.0 };
        let _ =
            write!(o, "}},\"duration_count\":{count},\"duration_mean_ms\":{mean_ms:.3},\"comparisons\":[");
        for (k, e) in t.compare.iter().enumerate() {
            let _ = write!(
                o,
                "{}{{\"endpoint\":{},\"verdicts\":{{",
                if k > 0 { "," } else { "" },
                json_str(&e.name)
            );
            for (i, v) in Verdict::ALL.iter().enumerate() {
                let _ = write!(o, "{}\"{}\":{}", if i > 0 { "," } else { "" }, v.key(), e.verdicts[i]);
            }
            o.push_str("},\"fields\":[");
            for (i, (f, c)) in e.fields.iter().enumerate() {
                let _ = write!(
                    o,
                    "{}{{\"field\":{},\"candidate\":{},\"baseline\":{}}}",
                    if i > 0 { "," } else { "" },
                    json_str(f),
                    c[0],
                    c[1]
                );
            }
            o.push_str("]}");
        }
        o.push_str("]}");
    }
    let _ = writeln!(
        o,
        "],\"compare_log_lines\":{{\"written\":{},\"suppressed\":{},\"failed\":{}}},\"log_lines\":{{\"written\":{},\"lost\":{}}}}}",
        s.log_lines[0], s.log_lines[1], s.log_lines[2], s.copy_lines[0], s.copy_lines[1]
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::report::snapshot::sample;

    #[test]
    fn json_document() {
        let j = json(&sample());
        assert!(j.starts_with("{\"shared\":true,\"queue_jobs\":2,\"queue_bytes\":300,\"targets\":[{\"target\":\"http://a\\\"b:1\""));
        assert!(j.contains("\"ok\":7"));
        assert!(j.contains("\"dropped_queue_full\":3"));
        assert!(j.contains("\"duration_mean_ms\":3.000"));
    }
}
