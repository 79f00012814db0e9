//! A copy's life after it leaves the backlog: delivery, its one outcome, its one line in
//! the copy log, and its comparison with the primary's answer. Every way a copy can end
//! after admission passes through here ([`refused`] for copies the breaker stopped as
//! they left the backlog).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::admission::MirrorCopy;
use crate::engine::capture::{Backlog, RequestHead};
use crate::engine::client::{Clock, Keep, Landing, MirrorResponse, Outgoing, Target};
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

/// Sends a departed copy and ends it. Its room in flight is given back as soon as the
/// outcome is counted, before the comparison waits for the primary's answer.
pub async fn fly(mut copy: MirrorCopy, lane: Flight, clock: Clock, logs: Logs) {
    let started = Instant::now();
    let keep = keep_for(&copy, &lane);
    let body_state = copy.body.as_ref().map(|b| b.state.clone());
    let record = copy.record.take();
    let probe = copy.is_probe();
    let out = Outgoing {
        head: &mut copy.head,
        dest: copy.dest.as_ref(),
        body: copy.body.take(),
        opts: copy.opts,
        probe,
        keep,
        departed: started,
    };
    // A capture target keeps the copy as records instead of sending it. What only some
    // copies need (recording, comparing) is boxed: every copy's future stays small, and
    // the lane moves it whole when it starts flying.
    let (outcome, resp) = match record {
        Some(record) => (Box::pin(record.deliver(out, &lane.backlog, move || clock.now_ms())).await, None),
        None => lane.target.deliver(out, move || clock.now_ms()).await,
    };
    let body_bytes = body_state.as_ref().map_or(0, |s| s.sent());
    if let Some(join) = landed(copy, outcome, resp, started, body_bytes, lane, logs) {
        Box::pin(join).await;
    }
}

/// A compared copy keeps the answer's body, charged to the target's share as it is read.
pub fn keep_for(copy: &MirrorCopy, lane: &Flight) -> Keep {
    copy.compare
        .as_ref()
        .map_or_else(Keep::default, |c| Keep { max: c.settings.max_body, budget: Some(lane.backlog.clone()) })
}

/// A delivered copy: its time and outcome counted, its room given back, its log line.
/// A compared copy returns its comparison, which waits for the primary's answer (the
/// line is written once it has a verdict).
pub fn landed(
    mut copy: MirrorCopy,
    outcome: Outcome,
    resp: Option<MirrorResponse>,
    started: Instant,
    body_bytes: u64,
    lane: Flight,
    logs: Logs,
) -> Option<impl Future<Output = ()> + Send + 'static> {
    let Flight { target, verdicts, .. } = lane;
    let took = started.elapsed();
    target.stats.observe(took);
    target.gave_room();
    let compare = copy.compare.take();
    let (timeout, log) = (copy.opts.timeout, copy.log);
    // Only a compared or logged copy needs its request after it ended.
    let head = (compare.is_some() || log.is_some()).then(|| copy.head.clone());
    copy.finish(outcome);
    let head = head?;
    let fill = move |record: &mut Record<'_>| {
        record.status = resp.as_ref().map(|r| r.status);
        record.reused = resp.as_ref().map(|r| r.reused);
        record.duration = Some(took);
        record.body_bytes = Some(body_bytes);
        resp
    };
    let Some(c) = compare else {
        let mut record =
            Record::new(&target.spec.url, head.method.as_str().as_bytes(), &head.request_uri, outcome);
        fill(&mut record);
        if let Some(l) = log {
            logs.copies.push(l, &record);
        }
        return None;
    };
    Some(async move {
        let mut record =
            Record::new(&target.spec.url, head.method.as_str().as_bytes(), &head.request_uri, outcome);
        let resp = fill(&mut record);
        let sinks = Sinks {
            stats: &verdicts,
            log: &logs.mismatch,
            target: &target.spec.url,
            method: &record.method,
            uri: &record.uri,
        };
        record.verdict = Some(c.settle(resp, started + timeout, sinks).await);
        if let Some(l) = log {
            logs.copies.push(l, &record);
        }
    })
}

/// Where pipelined copies of a lane end (see `client::Pipeline`).
pub struct LaneLanding {
    pub lane: Flight,
    pub logs: Logs,
}

impl Landing<MirrorCopy> for LaneLanding {
    fn land(&self, copy: MirrorCopy, outcome: Outcome, resp: Option<MirrorResponse>, took: Duration) {
        let started = Instant::now() - took;
        let body_bytes = copy.body.as_ref().map_or(0, |b| b.state.sent());
        if let Some(join) =
            landed(copy, outcome, resp, started, body_bytes, self.lane.clone(), self.logs.clone())
        {
            tokio::spawn(join);
        }
    }
}
