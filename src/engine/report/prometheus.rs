//! The status page as Prometheus text exposition (format 0.0.4), rendered from a
//! plain snapshot so the format is unit-tested without nginx.

use std::fmt::Write;

use super::snapshot::{Snapshot, TargetSnapshot};
use crate::engine::compare::{LINE_RESULTS, Side, Verdict};
use crate::engine::outcome::{BUCKETS_MS, Outcome, slot};

/// Label values escaped per the text format: backslash, double quote and newline.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One sample of a family: name suffix (`_bucket`…), extra labels (`,le="0.005"`), value.
type Sample = (&'static str, String, String);

/// Where a family's samples come from.
enum Series {
    /// One or more samples per target, labelled with the target.
    PerTarget(fn(&TargetSnapshot, &mut Vec<Sample>)),
    /// One unlabelled sample for the worker(s).
    Global(fn(&Snapshot) -> i64),
    /// Labelled samples for the worker(s).
    GlobalMany(fn(&Snapshot, &mut Vec<Sample>)),
}

struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    series: Series,
}

fn one(v: impl std::fmt::Display) -> Sample {
    ("", String::new(), v.to_string())
}

/// Every family on the page, in order. Names are prefixed with `nginx_async_mirror_`.
const FAMILIES: &[Family] = &[
    Family {
        name: "copies_total",
        kind: "counter",
        help: "Copies that ended, by target, outcome and reason.",
        series: Series::PerTarget(|t, out| {
            for i in 0..Outcome::COUNT {
                let oc = Outcome::from_slot(i);
                let reason = match oc.reason() {
                    "" => String::new(),
                    r => format!(",reason=\"{r}\""),
                };
                out.push(("", format!(",outcome=\"{}\"{reason}", oc.label()), t.counters[i].to_string()));
            }
        }),
    },
    Family {
        name: "copies_attempted_total",
        kind: "counter",
        help: "Copies attempted, by target.",
        series: Series::PerTarget(|t, out| out.push(one(t.counters[slot::ATTEMPTED]))),
    },
    Family {
        name: "connections_opened_total",
        kind: "counter",
        help: "Connections opened to a target.",
        series: Series::PerTarget(|t, out| out.push(one(t.counters[slot::CONNECTIONS]))),
    },
    Family {
        name: "inflight",
        kind: "gauge",
        help: "Copies being sent now.",
        series: Series::PerTarget(|t, out| out.push(one(t.inflight.max(0)))),
    },
    Family {
        name: "connections",
        kind: "gauge",
        help: "Connections open to a target now.",
        series: Series::PerTarget(|t, out| out.push(one(t.connections.max(0)))),
    },
    Family {
        name: "breaker_open",
        kind: "gauge",
        help: "Workers whose circuit breaker for a target is open.",
        series: Series::PerTarget(|t, out| out.push(one(t.breaker_open.max(0)))),
    },
    Family {
        name: "paused",
        kind: "gauge",
        help: "Whether the control API paused a target (1) or not (0).",
        series: Series::PerTarget(|t, out| out.push(one(u8::from(t.ov.paused == Some(true))))),
    },
    Family {
        name: "sample_override_ratio",
        kind: "gauge",
        help: "The control API's sample for a target (0 to 1), where one is set.",
        series: Series::PerTarget(|t, out| {
            if let Some(p) = t.ov.sample_ppm {
                out.push(one(f64::from(p) / 1e6));
            }
        }),
    },
    Family {
        name: "queue_jobs",
        kind: "gauge",
        help: "Copies waiting for a connection.",
        series: Series::Global(|s| s.queue_jobs.max(0)),
    },
    Family {
        name: "queue_bytes",
        kind: "gauge",
        help: "Bytes held by copies waiting for a connection or in flight.",
        series: Series::Global(|s| s.queue_bytes.max(0)),
    },
    Family {
        name: "duration_seconds",
        kind: "histogram",
        help: "Time to send a copy and read the response.",
        series: Series::PerTarget(|t, out| {
            for (i, b) in BUCKETS_MS.iter().enumerate() {
                let le = *b as f64 / 1000.0;
                out.push(("_bucket", format!(",le=\"{le}\""), t.counters[slot::BUCKETS + i].to_string()));
            }
            let count = t.counters[slot::DURATION_COUNT];
            out.push(("_bucket", ",le=\"+Inf\"".into(), count.to_string()));
            out.push(("_sum", String::new(), (t.counters[slot::DURATION_SUM_US] as f64 / 1e6).to_string()));
            out.push(("_count", String::new(), count.to_string()));
        }),
    },
    Family {
        name: "comparisons_total",
        kind: "counter",
        help: "Compared copies, by target, endpoint, verdict and reason.",
        series: Series::PerTarget(|t, out| {
            for e in &t.compare {
                for v in Verdict::ALL {
                    let reason = match v.reason() {
                        "" => String::new(),
                        r => format!(",reason=\"{r}\""),
                    };
                    let labels =
                        format!(",endpoint=\"{}\",verdict=\"{}\"{reason}", label(&e.name), v.label());
                    out.push(("", labels, e.verdicts[v.slot()].to_string()));
                }
            }
        }),
    },
    Family {
        name: "differences_total",
        kind: "counter",
        help: "Fields that differed from the primary's, by target, endpoint, field and side.",
        series: Series::PerTarget(|t, out| {
            for e in &t.compare {
                for (field, counts) in &e.fields {
                    for side in Side::ALL {
                        let labels = format!(
                            ",endpoint=\"{}\",field=\"{}\",side=\"{}\"",
                            label(&e.name),
                            label(field),
                            side.label()
                        );
                        out.push(("", labels, counts[side as usize].to_string()));
                    }
                }
            }
        }),
    },
    Family {
        name: "log_lines_total",
        kind: "counter",
        help: "async_mirror_log lines, by result (lost: queue full or write failed).",
        series: Series::GlobalMany(|s, out| {
            for (i, r) in ["written", "lost"].iter().enumerate() {
                out.push(("", format!("result=\"{r}\""), s.copy_lines[i].to_string()));
            }
        }),
    },
    Family {
        name: "compare_log_lines_total",
        kind: "counter",
        help: "Mismatch log lines, by result.",
        series: Series::GlobalMany(|s, out| {
            for (i, r) in LINE_RESULTS.iter().enumerate() {
                out.push(("", format!("result=\"{r}\""), s.log_lines[i].to_string()));
            }
        }),
    },
];

pub fn prometheus(s: &Snapshot) -> String {
    let mut o = String::new();
    let mut samples = Vec::new();
    for f in FAMILIES {
        let name = format!("nginx_async_mirror_{}", f.name);
        let _ = writeln!(o, "# HELP {name} {}\n# TYPE {name} {}", f.help, f.kind);
        match f.series {
            Series::Global(value) => {
                let _ = writeln!(o, "{name} {}", value(s));
            }
            Series::GlobalMany(fill) => {
                samples.clear();
                fill(s, &mut samples);
                for (suffix, labels, value) in &samples {
                    let labels = labels.trim_start_matches(',');
                    let _ = writeln!(o, "{name}{suffix}{{{labels}}} {value}");
                }
            }
            Series::PerTarget(fill) => {
                for t in &s.targets {
                    let url = label(&t.url);
                    samples.clear();
                    fill(t, &mut samples);
                    for (suffix, labels, value) in &samples {
                        let _ = writeln!(o, "{name}{suffix}{{target=\"{url}\"{labels}}} {value}");
                    }
                }
            }
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::report::snapshot::sample;

    #[test]
    fn prometheus_text() {
        let text = prometheus(&sample());
        assert!(text.contains("# TYPE nginx_async_mirror_copies_total counter\n"));
        assert!(
            text.contains("nginx_async_mirror_copies_total{target=\"http://a\\\"b:1\",outcome=\"ok\"} 7\n")
        );
        assert!(text.contains(
            "nginx_async_mirror_copies_total{target=\"http://a\\\"b:1\",outcome=\"dropped\",reason=\"queue_full\"} 3\n"
        ));
        assert!(text.contains(
            "nginx_async_mirror_duration_seconds_bucket{target=\"http://a\\\"b:1\",le=\"0.005\"} 5\n"
        ));
        assert!(text.contains("le=\"+Inf\"} 7\n"));
        assert!(text.contains("nginx_async_mirror_duration_seconds_sum{target=\"http://a\\\"b:1\"} 0.021\n"));
        assert!(text.contains("nginx_async_mirror_queue_bytes 300\n"));
        assert!(text.ends_with('\n'));
    }
}
