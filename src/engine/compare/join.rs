//! The join of one request's answers: the primary's (captured on the nginx thread),
//! a baseline's and a candidate's (read on the runtime), then the verdict.
//!
//! The nginx thread publishes the primary's answer through a one-shot latch and
//! never waits; a copy's task waits for it after its own exchange, within the
//! copy's `async_mirror_timeout`. The copy's outcome is counted and its in-flight
//! place given back before that wait, so comparison costs no mirror capacity.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;

use super::fields::{Answer, Body, CompareSettings, Compared, compare};
use super::json_diff::VALUE_MAX;
use super::latch::{Latch, Setter, latch};
use super::mismatch_log::{Mismatch, MismatchLog, iso8601};
use super::raw_answer::{RawAnswer, RawCapture};
use super::verdict::{Tally, Uncompared, Verdict, VerdictStats};
use crate::engine::capture::Charge;
use crate::engine::client::MirrorResponse;

/// The primary's answer and the bytes it holds in the worker's budget.
#[derive(Debug)]
pub struct Primary {
    pub answer: Answer,
    /// Holds the answer's bytes charged to the budget until the last copy is compared.
    pub _charge: Option<Charge>,
    /// The whole answer, for captures' response records.
    pub raw: Option<RawAnswer>,
}

/// What a baseline copy publishes: its answer, or `None` when it did not answer.
pub type BaselineState = Option<Arc<Answer>>;

/// The nginx thread's end: dropped without [`PrimaryTx::send`] (the response was
/// aborted or never completed) tells the copies the primary is incomplete.
pub struct PrimaryTx(Setter<Arc<Primary>>);

impl PrimaryTx {
    pub fn send(self, primary: Primary) {
        self.0.set(Arc::new(primary));
    }
}

/// The primary's answer as the nginx thread's filters see it go by: the head from the
/// header filter, then body bytes up to the limit from the body filter. Nothing here
/// waits; the client's response passes on unchanged.
pub struct PrimaryCapture {
    tx: Option<PrimaryTx>,
    settings: Arc<CompareSettings>,
    /// The answer without its body, once the header filter ran.
    head: Option<Answer>,
    body: bytes::BytesMut,
    skipped: Option<Body>,
    charge: Charge,
    /// The whole answer, when captures record it (`CompareSettings::record`).
    raw: Option<RawCapture>,
}

impl PrimaryCapture {
    pub fn new(tx: PrimaryTx, settings: Arc<CompareSettings>, charge: Charge) -> PrimaryCapture {
        let raw = settings.record.map(|max| RawCapture::new(max, Charge::new(&charge.backlog())));
        PrimaryCapture {
            tx: Some(tx),
            settings,
            head: None,
            body: bytes::BytesMut::new(),
            skipped: None,
            charge,
            raw,
        }
    }

    /// Whether captures want the whole answer: its status and every header, for
    /// [`PrimaryCapture::raw_head`].
    pub fn wants_raw(&self) -> bool {
        self.raw.is_some()
    }

    /// The status and every header of the answer (`Name: value\r\n` lines), for captures.
    pub fn raw_head(&mut self, status: u16, headers: Vec<u8>) {
        if let Some(raw) = self.raw.as_mut() {
            raw.head(status, headers);
        }
    }

    pub fn settings(&self) -> &CompareSettings {
        &self.settings
    }

    /// Whether body bytes are still wanted.
    pub fn collecting(&self) -> bool {
        self.tx.is_some() && self.skipped.is_none()
    }

    /// The response header: the status and the listed headers, in settings order.
    pub fn head(
        &mut self,
        status: u16,
        headers: Vec<Option<Vec<u8>>>,
        content_type: Option<Vec<u8>>,
        content_encoding: Option<Vec<u8>>,
    ) {
        let body = Body::Complete(bytes::Bytes::new());
        self.head = Some(Answer { status, headers, content_type, content_encoding, body });
    }

    /// In-memory body bytes; past the limit (or the worker's byte budget) the body is not compared.
    pub fn data(&mut self, chunk: &[u8]) {
        if let Some(raw) = self.raw.as_mut() {
            raw.data(chunk);
        }
        if !self.collecting() {
            return;
        }
        if self.body.len() + chunk.len() > self.settings.max_body || !self.charge.grow(chunk.len()) {
            self.too_large();
            return;
        }
        self.body.extend_from_slice(chunk);
    }

    fn too_large(&mut self) {
        self.skipped = Some(Body::TooLarge);
        self.release();
    }

    fn release(&mut self) {
        self.body = bytes::BytesMut::new();
        let spare = Charge::new(&self.charge.backlog());
        drop(std::mem::replace(&mut self.charge, spare));
    }

    /// Body data in a file buffer, which the nginx thread never reads.
    pub fn file(&mut self) {
        if let Some(raw) = self.raw.as_mut() {
            raw.cut();
        }
        if self.collecting() {
            self.skipped = Some(Body::File);
            self.release();
        }
    }

    /// The response is complete: publishes it (without a head, it stays incomplete).
    pub fn finish(&mut self) {
        let (Some(tx), Some(mut answer)) = (self.tx.take(), self.head.take()) else { return };
        answer.body = match self.skipped.take() {
            Some(b) => b,
            None => Body::Complete(std::mem::take(&mut self.body).freeze()),
        };
        let charge = Charge::new(&self.charge.backlog());
        let charge = Some(std::mem::replace(&mut self.charge, charge));
        let raw = self.raw.take().and_then(RawCapture::finish);
        tx.send(Primary { answer, _charge: charge, raw });
    }

    /// The response ended badly (the client went away): copies see it as incomplete.
    pub fn abort(&mut self) {
        self.tx = None;
        self.raw = None;
        self.release();
    }
}

pub fn primary_channel() -> (PrimaryTx, Latch<Arc<Primary>>) {
    let (tx, rx) = latch();
    (PrimaryTx(tx), rx)
}

pub enum Role {
    /// Compared with the primary; a difference the baseline shares is noise.
    Candidate(Option<Latch<BaselineState>>),
    /// Runs production's version: publishes its answer for the candidates.
    Baseline(Setter<BaselineState>),
}

/// What a copy needs to be compared.
pub struct Comparison {
    pub settings: Arc<CompareSettings>,
    pub endpoint: String,
    /// The request was conditional or a range request.
    pub conditional: bool,
    pub primary: Latch<Arc<Primary>>,
    pub role: Role,
}

/// Where verdicts go and what the log line names.
pub struct Sinks<'a> {
    pub stats: &'a VerdictStats,
    pub log: &'a MismatchLog,
    pub target: &'a str,
    pub method: &'a str,
    pub uri: &'a str,
}

/// Statuses a conditional or range request can take that depend on more than the answer
/// itself: one side took that turn and the other did not.
fn turned_apart(a: u16, b: u16) -> bool {
    let conditional = |s| matches!(s, 206 | 304 | 412 | 416);
    a != b && (conditional(a) || conditional(b))
}

enum Wait<T> {
    Got(T),
    Incomplete,
    Timeout,
}

async fn primary(rx: &Latch<Arc<Primary>>, deadline: Instant) -> Wait<Arc<Primary>> {
    match tokio::time::timeout_at(deadline.into(), rx.get()).await {
        Ok(Some(p)) => Wait::Got(p),
        Ok(None) => Wait::Incomplete,
        Err(_) => Wait::Timeout,
    }
}

async fn baseline(rx: &Latch<BaselineState>, deadline: Instant) -> Option<Arc<Answer>> {
    tokio::time::timeout_at(deadline.into(), rx.get()).await.ok().flatten().flatten()
}

impl Comparison {
    /// Waits for what this copy is compared with, then counts (and logs) the verdict.
    pub async fn settle(
        mut self,
        resp: Option<MirrorResponse>,
        deadline: Instant,
        sinks: Sinks<'_>,
    ) -> Verdict {
        // `resp` (with its kept body's charge) lives until the comparison is done.
        let mine = resp.as_ref().map(|r| Arc::new(Answer::from_mirror(r, &self.settings)));
        let role = std::mem::replace(&mut self.role, Role::Candidate(None));
        let role = match role {
            Role::Baseline(tx) => {
                tx.set(mine.clone());
                None
            }
            Role::Candidate(rx) => Some(rx),
        };
        let count = |verdict| {
            sinks.stats.add(&Tally { endpoint: &self.endpoint, verdict, candidate: None, baseline: None });
            verdict
        };
        let Some(mine) = mine else { return count(Verdict::Uncompared(Uncompared::NotDelivered)) };
        let primary = match primary(&self.primary, deadline).await {
            Wait::Got(p) => p,
            Wait::Incomplete => return count(Verdict::Uncompared(Uncompared::PrimaryIncomplete)),
            Wait::Timeout => return count(Verdict::Uncompared(Uncompared::Timeout)),
        };
        let ours = compare(&primary.answer, &mine, &self.settings);
        if self.conditional && turned_apart(primary.answer.status, mine.status) {
            return count(Verdict::Uncompared(Uncompared::Conditional));
        }
        let base = match &role {
            // A baseline's differences are the noise floor: counted on its own row.
            None => {
                let verdict = Verdict::of(&ours, None);
                let endpoint = &self.endpoint;
                sinks.stats.add(&Tally { endpoint, verdict, candidate: None, baseline: Some(&ours) });
                return verdict;
            }
            Some(Some(rx)) => {
                baseline(rx, deadline).await.map(|b| compare(&primary.answer, &b, &self.settings))
            }
            Some(None) => None,
        };
        let verdict = Verdict::of(&ours, base.as_ref());
        let endpoint = &self.endpoint;
        sinks.stats.add(&Tally { endpoint, verdict, candidate: Some(&ours), baseline: base.as_ref() });
        // Only what is actionable is logged: noise would spend the line rate on itself.
        if verdict == Verdict::Differ {
            self.log(&sinks, &primary.answer, &mine, &ours, base.as_ref());
        }
        verdict
    }

    fn log(
        &self,
        sinks: &Sinks<'_>,
        primary: &Answer,
        mine: &Answer,
        ours: &Compared,
        base: Option<&Compared>,
    ) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        sinks.log.remember(Mismatch {
            time: iso8601(now),
            target: sinks.target.to_string(),
            endpoint: self.endpoint.clone(),
            method: sinks.method.to_string(),
            uri: sinks.uri.chars().take(VALUE_MAX).collect(),
            fields: ours
                .diffs
                .iter()
                .map(|d| (d.field.clone(), d.primary.clone(), d.other.clone()))
                .collect(),
        });
        let Some(log) = self.settings.log else { return };
        sinks.log.push(log, || {
            let fields: Vec<_> = ours
                .diffs
                .iter()
                .map(|d| {
                    let mut f = json!({"field": d.field, "primary": d.primary, "mirror": d.other});
                    if let Some(b) = base {
                        f["baseline_differs"] = b.differs(&d.field).into();
                    }
                    f
                })
                .collect();
            let line = json!({
                "time": iso8601(now),
                "target": sinks.target,
                "endpoint": self.endpoint,
                "method": sinks.method,
                "uri": sinks.uri,
                "verdict": "differ",
                "status": {"primary": primary.status, "mirror": mine.status},
                "fields": fields,
                "body_digest": {"primary": primary.digest(), "mirror": mine.digest()},
            });
            line.to_string()
        });
    }
}
