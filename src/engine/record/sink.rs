//! A capture target as a worker runs it: where its records go (a file's writer, a Kafka
//! producer), and the delivery of one copy as records: the request as the client sent it,
//! then the answer the client got, with the same id. A copy is `ok` once every record it
//! has is kept; it ends within its `async_mirror_timeout` either way. Failures tell the
//! target's breaker, and the error log hears of each streak once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::BodyExt;

use super::file_writer::{FileWriter, Refusal};
use super::format::{Redaction, record_id, request_record, response_record};
#[cfg(feature = "kafka")]
use super::kafka::KafkaOutput;
use crate::engine::capture::{Backlog, BodyRx, Charge};
use crate::engine::client::{Breaker, CopyOptions, Outgoing};
use crate::engine::compare::{CompareSettings, PrimaryAnswer};
use crate::engine::config::{SinkKind, SinkSpec};
use crate::engine::error_log::ErrorLog;
use crate::engine::ids::TargetId;
use crate::engine::outcome::{DropReason, FailReason, Outcome};

/// What a location tells its capture copies: the headers they hide and the one they leave
/// out, and how the client's answer is captured for them.
#[derive(Debug, Clone, Default)]
pub struct RecordSettings {
    /// `async_mirror_scrub_header`'s list, or the credentials' headers by default.
    pub scrub: Vec<String>,
    /// The mark header, which only copies carry.
    pub mark: Option<String>,
    /// Set when a capture target of the location records answers: the primary's capture
    /// keeps the whole answer (`CompareSettings::record`).
    pub answer: Option<Arc<CompareSettings>>,
}

/// Where a target's records go.
pub enum Output {
    File(FileWriter),
    #[cfg(feature = "kafka")]
    Kafka(KafkaOutput),
}

impl Output {
    /// Keeps one record; a Kafka message's key is `key`.
    #[cfg_attr(not(feature = "kafka"), allow(unused_variables))]
    async fn keep(&self, record: Vec<u8>, key: &[u8], deadline: Instant) -> Result<(), Refusal> {
        match self {
            Output::File(f) => f.write(record, deadline).await,
            #[cfg(feature = "kafka")]
            Output::Kafka(k) => k.produce(record, key, deadline).await,
        }
    }
}

/// One capture target in one worker.
pub struct Sink {
    id: TargetId,
    breaker: Arc<Breaker>,
    log: Arc<ErrorLog>,
    /// The most answer body bytes a response record keeps; `None`: no response records.
    pub response: Option<usize>,
    pub output: Output,
    seed: u64,
    seq: AtomicU64,
    /// In a failure streak: the error log has heard of it.
    failing: AtomicBool,
}

/// What makes a copy a capture copy: its sink and what the nginx thread knew.
pub struct Recording {
    pub sink: Arc<Sink>,
    pub settings: Arc<RecordSettings>,
    /// `key=`'s value: the Kafka message key (the record id without one).
    pub key: Option<Bytes>,
    /// The client's answer, when the sink records answers.
    pub answer: Option<PrimaryAnswer>,
    /// When the request arrived.
    pub at: SystemTime,
}

fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

impl Sink {
    pub fn new(
        id: TargetId,
        breaker: Arc<Breaker>,
        log: Arc<ErrorLog>,
        response: Option<usize>,
        output: Output,
    ) -> Sink {
        let seed = unix_ns(SystemTime::now()) ^ (u64::from(std::process::id()) << 32) ^ id_bits(id);
        Sink {
            id,
            breaker,
            log,
            response,
            output,
            seed,
            seq: AtomicU64::new(0),
            failing: AtomicBool::new(false),
        }
    }

    fn refused(&self, why: Refusal, opts: CopyOptions, now_ms: &impl Fn() -> u64) -> Outcome {
        let f = match why {
            Refusal::Full => return Outcome::Dropped(DropReason::QueueFull),
            Refusal::Failed(f) => f,
        };
        let outcome = Outcome::Failed(f.reason);
        if !self.failing.swap(true, Ordering::AcqRel) {
            self.log.push(self.id, || format!("capture failed ({outcome}): {}", f.detail));
        }
        self.breaker.failure(now_ms(), opts.breaker);
        outcome
    }

    fn kept(&self) {
        self.breaker.success();
        self.failing.store(false, Ordering::Release);
    }
}

/// A capture target's sink, its queue bounded by `jobs` and `bytes` (the target's share of
/// the backlog); a file's writer starts with [`Sink::start`].
///
/// # Errors
/// A `kafka://` target in a build without the `kafka` feature.
pub fn start_sink(
    id: TargetId,
    spec: &SinkSpec,
    breaker: Arc<Breaker>,
    log: Arc<ErrorLog>,
    (jobs, bytes): (usize, usize),
) -> Result<Sink, String> {
    let output = match &spec.kind {
        SinkKind::File { path, rotate } => Output::File(FileWriter::new(path.into(), *rotate)),
        #[cfg(feature = "kafka")]
        SinkKind::Kafka { brokers, topic } => Output::Kafka(KafkaOutput::new(brokers, topic, jobs, bytes)),
        #[cfg(not(feature = "kafka"))]
        SinkKind::Kafka { .. } => {
            let _ = (jobs, bytes);
            return Err("kafka:// targets need the module built with the kafka feature".into());
        }
    };
    Ok(Sink::new(id, breaker, log, spec.response, output))
}

impl Sink {
    /// Starts what runs beside the copies (a file's writer thread); on a runtime thread.
    #[cfg_attr(not(feature = "kafka"), allow(irrefutable_let_patterns))]
    pub fn start(&self) {
        if let Output::File(w) = &self.output {
            if let Err(e) = w.start() {
                self.log.push(self.id, || format!("capture writer not started: {e}"));
            }
        }
    }

    /// A file target's file, newly opened by nginx (at start, on `nginx -s reopen`).
    #[cfg_attr(not(feature = "kafka"), allow(irrefutable_let_patterns))]
    pub fn hand(&self, file: std::fs::File) {
        if let Output::File(w) = &self.output {
            w.hand(file);
        }
    }
}

fn id_bits(id: TargetId) -> u64 {
    use crate::engine::ids::Id;
    (id.index() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// The client's body, whole: as much as nginx read within the copy's time.
async fn whole_body(body: Option<BodyRx>, deadline: Instant) -> Result<Bytes, Outcome> {
    let Some(rx) = body else { return Ok(Bytes::new()) };
    let state = rx.state.clone();
    match tokio::time::timeout_at(deadline.into(), rx.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(_)) => Err(state.aborted().map_or(Outcome::Failed(FailReason::BodyAborted), |a| a.outcome())),
        Err(_) => Err(Outcome::Failed(FailReason::BodySlow)),
    }
}

impl Recording {
    /// Records one departed copy; its outcome.
    pub async fn deliver(
        self,
        out: Outgoing<'_>,
        backlog: &Arc<Backlog>,
        now_ms: impl Fn() -> u64,
    ) -> Outcome {
        let Recording { sink, settings, key, answer, at } = self;
        let opts = out.opts;
        let deadline = Instant::now() + opts.timeout;
        let body = match whole_body(out.body, deadline).await {
            Ok(b) => b,
            Err(outcome) => return outcome,
        };
        let id = record_id(sink.seed, sink.seq.fetch_add(1, Ordering::Relaxed));
        let redaction = Redaction { scrub: &settings.scrub, leave_out: settings.mark.as_deref() };
        let at_ns = unix_ns(at);
        // A body that could forge records is not a copy this target can carry.
        let Some(request) = request_record(&id, at_ns, out.head, &body, &redaction) else {
            return Outcome::Skipped;
        };
        drop(body);
        let key = key.unwrap_or_else(|| Bytes::from(id.clone().into_bytes()));
        let mut charge = Charge::new(backlog);
        if !charge.grow(request.len()) {
            return sink.refused(Refusal::Full, opts, &now_ms);
        }
        if let Err(why) = sink.output.keep(request, &key, deadline).await {
            return sink.refused(why, opts, &now_ms);
        }
        drop(charge);
        let (Some(limit), Some(answer)) = (sink.response, answer) else {
            sink.kept();
            return Outcome::Ok;
        };
        // The answer's record, when the client got one in time.
        let Some(primary) = answer.get(deadline).await else {
            sink.kept();
            return Outcome::Ok;
        };
        let Some(raw) = primary.raw.as_ref() else {
            sink.kept();
            return Outcome::Ok;
        };
        let resp_ns = unix_ns(raw.at);
        let body = &raw.body[..raw.body.len().min(limit)];
        let record = response_record(
            &id,
            resp_ns,
            resp_ns.saturating_sub(at_ns),
            raw.status,
            &raw.headers,
            body,
            &redaction,
        );
        drop(primary);
        let Some(record) = record else {
            sink.kept();
            return Outcome::Ok;
        };
        let mut charge = Charge::new(backlog);
        if !charge.grow(record.len()) {
            return sink.refused(Refusal::Full, opts, &now_ms);
        }
        match sink.output.keep(record, &key, deadline).await {
            Ok(()) => {
                sink.kept();
                Outcome::Ok
            }
            Err(why) => sink.refused(why, opts, &now_ms),
        }
    }
}
