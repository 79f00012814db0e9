//! What the status page, the JSON document and the HTML page show: a plain snapshot of
//! every target's counters and gauges, summed over workers by the zone or merged here
//! from one worker's targets.

use crate::engine::compare::{EndpointCounts, merge_into};
use crate::engine::control::Override;
use crate::engine::outcome::CounterVec;

#[derive(Debug, Clone, PartialEq)]
pub struct TargetSnapshot {
    pub url: String,
    pub counters: CounterVec,
    pub inflight: i64,
    /// Number of workers whose breaker for this target is open.
    pub breaker_open: i64,
    /// Connections open to the target now, over all workers.
    pub connections: i64,
    /// Comparison verdicts and differing fields, by endpoint.
    pub compare: Vec<EndpointCounts>,
    /// `async_mirror_api` override (zone only).
    pub ov: Override,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub targets: Vec<TargetSnapshot>,
    pub queue_jobs: i64,
    pub queue_bytes: i64,
    /// Whether these are sums over all workers (a zone is configured) or one worker's.
    pub shared: bool,
    /// Mismatch log lines: written, suppressed, failed.
    pub log_lines: [u64; 3],
    /// `async_mirror_log` lines: written, lost.
    pub copy_lines: [u64; 2],
}

/// One worker's targets as one row per URL: an https URL used under several TLS
/// settings is several targets of the engine but one series on the page.
pub fn merge_by_url(rows: impl IntoIterator<Item = TargetSnapshot>) -> Vec<TargetSnapshot> {
    let mut out: Vec<TargetSnapshot> = Vec::new();
    for row in rows {
        match out.iter_mut().find(|t| t.url == row.url) {
            Some(t) => {
                merge_into(&mut t.compare, &row.compare);
                t.counters.iter_mut().zip(row.counters).for_each(|(a, b)| *a += b);
                t.inflight += row.inflight;
                t.breaker_open = t.breaker_open.max(row.breaker_open);
                t.connections += row.connections;
            }
            None => out.push(row),
        }
    }
    out
}

/// A snapshot with one target of every kind of counter, for the formats' tests.
#[cfg(test)]
pub fn sample() -> Snapshot {
    use crate::engine::outcome::{BUCKETS_MS, DropReason, Outcome, slot};
    let mut counters = [0; slot::COUNTERS];
    counters[Outcome::Ok.slot()] = 7;
    counters[Outcome::Dropped(DropReason::QueueFull).slot()] = 3;
    counters[slot::ATTEMPTED] = 10;
    counters[slot::CONNECTIONS] = 2;
    for i in 0..=BUCKETS_MS.len() {
        counters[slot::BUCKETS + i] = if i < 2 { 5 } else { 7 };
    }
    counters[slot::DURATION_SUM_US] = 21_000;
    counters[slot::DURATION_COUNT] = 7;
    Snapshot {
        targets: vec![TargetSnapshot {
            url: "http://a\"b:1".into(),
            counters,
            inflight: 1,
            breaker_open: 0,
            connections: 2,
            compare: vec![EndpointCounts {
                name: "/api".into(),
                verdicts: [5, 1, 0, 0, 0, 0, 0, 0, 1, 0],
                fields: vec![("json:$.a\"".into(), [1, 0])],
            }],
            ov: Override::default(),
        }],
        queue_jobs: 2,
        queue_bytes: 300,
        shared: true,
        log_lines: [1, 2, 0],
        copy_lines: [0, 0],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_of_one_url_are_one_series() {
        let a = sample().targets.remove(0);
        let mut b = a.clone();
        b.breaker_open = 1;
        let mut c = a.clone();
        c.url = "http://other:1".into();
        let merged = merge_by_url([a.clone(), b, c]);
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0].counters[0], 2 * a.counters[0]);
        assert_eq!((merged[0].inflight, merged[0].breaker_open, merged[0].connections), (2, 1, 4));
        assert_eq!(merged[0].compare[0].verdicts[0], 10, "comparison counters add up too");
    }
}
