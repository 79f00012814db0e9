//! A copy's life after it leaves the backlog: delivery, its one outcome, its one line in
//! the copy log, and its comparison with the primary's answer. Every way a copy can end
//! after admission passes through here ([`refused`] for copies the breaker stopped as
//! they left the backlog).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::sync::OwnedSemaphorePermit;

use super::admission::MirrorCopy;
use crate::engine::capture::{Backlog, RequestHead};
use crate::engine::client::{Clock, Keep, Outgoing, Target};
use crate::engine::compare::{MismatchLog, Sinks, VerdictStats};
use crate::engine::outcome::Outcome;
use crate::engine::report::{CopyLog, Record};

/// Where finished copies leave their lines.
#[derive(Clone)]
pub struct Logs {
    pub mismatch: Arc<MismatchLog>,
    pub copies: Arc<CopyLog>,
}

/// What a flying copy's lane gives it: its target, the target's comparison counters and
/// its share of the backlog (a kept response is charged to it).
#[derive(Clone)]
pub struct Flight {
    pub target: Arc<Target>,
    pub verdicts: Arc<VerdictStats>,
    pub backlog: Arc<Backlog>,
}

/// A copy that ended as it left the backlog (already counted): its log line.
pub fn refused(copy_log: Option<(usize, Arc<RequestHead>)>, outcome: Outcome, target: &Target, logs: &Logs) {
    if let Some((l, head)) = copy_log {
        let record =
            Record::new(&target.spec.url, head.method.as_str().as_bytes(), &head.request_uri, outcome);
        logs.copies.push(l, &record);
    }
}

/// A copy that ends while still in the backlog: counted, and its log line.
pub fn ended_in_queue(copy: MirrorCopy, outcome: Outcome, target: &Target, logs: &Logs) {
    let log = copy.log.map(|l| (l, copy.head.clone()));
    copy.finish(outcome);
    refused(log, outcome, target, logs);
}

/// Sends a departed copy and ends it. The in-flight `permit` is given back as soon as the
/// outcome is counted, before the comparison waits for the primary's answer.
pub async fn fly(mut copy: MirrorCopy, lane: Flight, permit: OwnedSemaphorePermit, clock: Clock, logs: Logs) {
    let Flight { target, verdicts, backlog } = lane;
    let started = Instant::now();
    let compare = copy.compare.take();
    // A compared copy keeps the answer's body, charged to the target's share as it is read.
    let keep = compare
        .as_ref()
        .map_or_else(Keep::default, |c| Keep { max: c.settings.max_body, budget: Some(backlog.clone()) });
    let body_state = copy.body.as_ref().map(|b| b.state.clone());
    let out = Outgoing {
        head: &copy.head,
        dest: copy.dest.as_ref(),
        body: copy.body.take(),
        opts: copy.opts,
        probe: copy.is_probe(),
        keep,
    };
    // A capture target keeps the copy as records instead of sending it.
    let (outcome, resp) = match copy.record.take() {
        Some(record) => (record.deliver(out, &backlog, move || clock.now_ms()).await, None),
        None => target.deliver(out, move || clock.now_ms()).await,
    };
    let took = started.elapsed();
    target.stats.observe(took);
    target.stats.inflight.fetch_sub(1, Ordering::Relaxed);
    let (timeout, log) = (copy.opts.timeout, copy.log);
    // Only a compared or logged copy needs its request after it ended.
    let head = (compare.is_some() || log.is_some()).then(|| copy.head.clone());
    copy.finish(outcome);
    drop(permit);
    let Some(head) = head else { return };
    let mut record =
        Record::new(&target.spec.url, head.method.as_str().as_bytes(), &head.request_uri, outcome);
    record.status = resp.as_ref().map(|r| r.status);
    record.reused = resp.as_ref().map(|r| r.reused);
    record.duration = Some(took);
    record.body_bytes = Some(body_state.as_ref().map_or(0, |s| s.sent()));
    if let Some(c) = compare {
        let sinks = Sinks {
            stats: &verdicts,
            log: &logs.mismatch,
            target: &target.spec.url,
            method: &record.method,
            uri: &record.uri,
        };
        record.verdict = Some(c.settle(resp, started + timeout, sinks).await);
    }
    if let Some(l) = log {
        logs.copies.push(l, &record);
    }
}
