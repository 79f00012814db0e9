//! Verdicts of comparisons and their per-target counters, by endpoint and field.
//!
//! Endpoints (`async_mirror_compare_key`) and fields (JSON paths) come from
//! traffic, so both are bounded: past [`ENDPOINTS`] named endpoints per target
//! the rest count under `other`, past [`FIELDS`] named fields per endpoint
//! likewise. The shared zone keeps the same bounds.

use std::sync::Mutex;

use super::fields::{BodySkip, Compared};

/// Why a copy was not compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uncompared {
    /// The mirror did not answer (failed, dropped, timed out).
    NotDelivered,
    /// The primary response was aborted or never completed.
    PrimaryIncomplete,
    BodyTooLarge,
    FileBody,
    Encoding,
    /// The primary's response did not complete within `async_mirror_timeout`.
    Timeout,
    /// A conditional or range request (`If-None-Match`, `Range`, ...) whose two answers
    /// took different turns (one a 304 or 206, the other not): the client's status is set
    /// after this module sees the primary, so the answers are not comparable.
    Conditional,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Match,
    Differ,
    /// Every field that differs also differs between the primary and the baseline.
    Noise,
    Uncompared(Uncompared),
}

impl Verdict {
    pub const ALL: [Verdict; 10] = [
        Verdict::Match,
        Verdict::Differ,
        Verdict::Noise,
        Verdict::Uncompared(Uncompared::NotDelivered),
        Verdict::Uncompared(Uncompared::PrimaryIncomplete),
        Verdict::Uncompared(Uncompared::BodyTooLarge),
        Verdict::Uncompared(Uncompared::FileBody),
        Verdict::Uncompared(Uncompared::Encoding),
        Verdict::Uncompared(Uncompared::Timeout),
        Verdict::Uncompared(Uncompared::Conditional),
    ];
    pub const COUNT: usize = Self::ALL.len();

    pub fn slot(self) -> usize {
        Self::ALL.iter().position(|v| *v == self).unwrap_or(0)
    }

    pub fn label(self) -> &'static str {
        match self {
            Verdict::Match => "match",
            Verdict::Differ => "differ",
            Verdict::Noise => "noise",
            Verdict::Uncompared(_) => "uncompared",
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Verdict::Uncompared(u) => match u {
                Uncompared::NotDelivered => "not_delivered",
                Uncompared::PrimaryIncomplete => "primary_incomplete",
                Uncompared::BodyTooLarge => "body_too_large",
                Uncompared::FileBody => "file_body",
                Uncompared::Encoding => "encoding",
                Uncompared::Timeout => "timeout",
                Uncompared::Conditional => "conditional",
            },
            _ => "",
        }
    }

    /// `match`, `uncompared_timeout`: the key in JSON and log lines.
    pub fn key(self) -> String {
        match self.reason() {
            "" => self.label().to_string(),
            r => format!("uncompared_{r}"),
        }
    }

    /// The verdict of a candidate, given which fields differ for the baseline on the
    /// same request (empty without a baseline).
    pub fn of(candidate: &Compared, baseline: Option<&Compared>) -> Verdict {
        if candidate.diffs.is_empty() {
            return match candidate.body_skipped {
                None => Verdict::Match,
                Some(BodySkip::TooLarge) => Verdict::Uncompared(Uncompared::BodyTooLarge),
                Some(BodySkip::File) => Verdict::Uncompared(Uncompared::FileBody),
                Some(BodySkip::Encoding) => Verdict::Uncompared(Uncompared::Encoding),
            };
        }
        match baseline {
            Some(b) if candidate.diffs.iter().all(|d| b.differs(&d.field)) => Verdict::Noise,
            _ => Verdict::Differ,
        }
    }
}

/// Named endpoints per target, and named fields per endpoint, before `other`.
pub const ENDPOINTS: usize = 31;
pub const FIELDS: usize = 15;
/// Longest endpoint or field name kept (longer ones are cut).
pub const NAME_MAX: usize = 64;
pub const OTHER: &str = "other";

/// Which answer differed from the primary's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Candidate = 0,
    Baseline = 1,
}

impl Side {
    pub const ALL: [Side; 2] = [Side::Candidate, Side::Baseline];

    pub fn label(self) -> &'static str {
        match self {
            Side::Candidate => "candidate",
            Side::Baseline => "baseline",
        }
    }
}

/// One endpoint's counters; fields in order of first appearance, `other` last if used.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointCounts {
    pub name: String,
    pub verdicts: [u64; Verdict::COUNT],
    pub fields: Vec<(String, [u64; 2])>,
}

/// A name cut to [`NAME_MAX`] bytes at a character boundary.
pub fn bounded_name(s: &str) -> &str {
    let mut end = s.len().min(NAME_MAX);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl EndpointCounts {
    pub fn new(name: &str) -> EndpointCounts {
        EndpointCounts { name: bounded_name(name).to_string(), ..Default::default() }
    }

    /// Index of `field`, adding it (or `other` when full).
    fn field(&mut self, field: &str) -> usize {
        let field = bounded_name(field);
        if let Some(i) = self.fields.iter().position(|(n, _)| n == field) {
            return i;
        }
        let named = self.fields.iter().filter(|(n, _)| n != OTHER).count();
        let name = if named < FIELDS { field } else { OTHER };
        if let Some(i) = self.fields.iter().position(|(n, _)| n == name) {
            return i;
        }
        self.fields.push((name.to_string(), [0; 2]));
        self.fields.len() - 1
    }

    pub fn count_field(&mut self, field: &str, side: Side) {
        let i = self.field(field);
        self.fields[i].1[side as usize] += 1;
    }
}

/// One target's comparison counters in one worker (runtime threads write, the nginx
/// thread reads with `try_lock` only).
#[derive(Debug, Default)]
pub struct VerdictStats {
    endpoints: Mutex<Vec<EndpointCounts>>,
}

/// What one finished comparison adds.
pub struct Tally<'a> {
    pub endpoint: &'a str,
    pub verdict: Verdict,
    pub candidate: Option<&'a Compared>,
    pub baseline: Option<&'a Compared>,
}

impl VerdictStats {
    pub fn add(&self, t: &Tally<'_>) {
        let Ok(mut eps) = self.endpoints.lock() else { return };
        let name = bounded_name(t.endpoint);
        let i = match eps.iter().position(|e| e.name == name) {
            Some(i) => i,
            None => {
                let named = eps.iter().filter(|e| e.name != OTHER).count();
                let name = if named < ENDPOINTS { name } else { OTHER };
                match eps.iter().position(|e| e.name == name) {
                    Some(i) => i,
                    None => {
                        eps.push(EndpointCounts::new(name));
                        eps.len() - 1
                    }
                }
            }
        };
        let e = &mut eps[i];
        e.verdicts[t.verdict.slot()] += 1;
        for (side, c) in [(Side::Candidate, t.candidate), (Side::Baseline, t.baseline)] {
            for d in c.map(|c| c.diffs.as_slice()).unwrap_or(&[]) {
                e.count_field(&d.field, side);
            }
        }
    }

    /// Cumulative counters; `None` when a runtime thread holds the lock right now.
    pub fn try_snapshot(&self) -> Option<Vec<EndpointCounts>> {
        self.endpoints.try_lock().ok().map(|e| e.clone())
    }
}

/// Adds `b` into `a`, endpoint by endpoint and field by field (one URL over several targets).
pub fn merge_into(a: &mut Vec<EndpointCounts>, b: &[EndpointCounts]) {
    for e in b {
        let i = match a.iter().position(|x| x.name == e.name) {
            Some(i) => i,
            None => {
                a.push(EndpointCounts::new(&e.name));
                a.len() - 1
            }
        };
        let x = &mut a[i];
        x.verdicts.iter_mut().zip(e.verdicts).for_each(|(p, q)| *p += q);
        for (f, c) in &e.fields {
            let j = x.field(f);
            x.fields[j].1[0] += c[0];
            x.fields[j].1[1] += c[1];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::compare::json_diff::Diff;

    fn diffs(fields: &[&str]) -> Compared {
        Compared {
            diffs: fields
                .iter()
                .map(|f| Diff { field: f.to_string(), primary: String::new(), other: String::new() })
                .collect(),
            body_skipped: None,
        }
    }

    #[test]
    fn noise_only_where_the_baseline_differs_too() {
        let none = diffs(&[]);
        assert_eq!(Verdict::of(&none, None), Verdict::Match);
        let c = diffs(&["json:$.t", "status"]);
        assert_eq!(Verdict::of(&c, None), Verdict::Differ);
        assert_eq!(Verdict::of(&c, Some(&diffs(&["json:$.t"]))), Verdict::Differ);
        assert_eq!(Verdict::of(&c, Some(&diffs(&["status", "json:$.t", "body"]))), Verdict::Noise);
        let skipped = Compared { diffs: vec![], body_skipped: Some(BodySkip::TooLarge) };
        assert_eq!(Verdict::of(&skipped, None), Verdict::Uncompared(Uncompared::BodyTooLarge));
        for v in Verdict::ALL {
            assert_eq!(Verdict::ALL[v.slot()], v);
        }
        assert_eq!(Verdict::Uncompared(Uncompared::Timeout).key(), "uncompared_timeout");
    }

    #[test]
    fn endpoints_and_fields_are_bounded() {
        let s = VerdictStats::default();
        let c = diffs(&["a"]);
        for i in 0..1000 {
            let e = format!("/e{i}");
            s.add(&Tally { endpoint: &e, verdict: Verdict::Differ, candidate: Some(&c), baseline: None });
        }
        let many: Vec<String> = (0..100).map(|i| format!("json:$.f{i}")).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        let wide = diffs(&refs);
        s.add(&Tally {
            endpoint: "/e0",
            verdict: Verdict::Differ,
            candidate: Some(&wide),
            baseline: Some(&c),
        });
        let snap = s.try_snapshot().unwrap();
        assert_eq!(snap.len(), ENDPOINTS + 1);
        assert_eq!(snap.last().unwrap().name, OTHER);
        assert_eq!(snap.last().unwrap().verdicts[Verdict::Differ.slot()], 1000 - ENDPOINTS as u64);
        let e0 = &snap[0];
        assert_eq!(e0.fields.len(), FIELDS + 1);
        assert_eq!(e0.fields[0], ("a".to_string(), [1, 1]));
        assert_eq!(e0.fields.last().unwrap().0, OTHER);
        let mut merged = snap.clone();
        merge_into(&mut merged, &snap);
        assert_eq!(merged[0].fields[0].1, [2, 2]);
        assert_eq!(merged.len(), snap.len());
    }
}
