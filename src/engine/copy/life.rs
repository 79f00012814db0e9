//! A copy's life after it leaves the backlog: delivery, its one outcome, its one line in
//! the copy log, and its comparison with the primary's answer. Every way a copy can end
//! after admission passes through here ([`refused`] for copies the breaker stopped as
//! they left the backlog).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::sync::OwnedSemaphorePermit;

use super::admission::MirrorCopy;
use crate::engine::capture::{Backlog, Charge};
use crate::engine::client::{Clock, MirrorResponse, Outgoing, Target};
use crate::engine::compare::{Comparison, MismatchLog, Sinks, Verdict, VerdictStats};
use crate::engine::outcome::{DropReason, Outcome};
use crate::engine::report::{CopyLog, Record};

/// Where finished copies leave their lines, and the budget a kept response is charged to.
#[derive(Clone)]
pub struct Logs {
    pub mismatch: Arc<MismatchLog>,
    pub copies: Arc<CopyLog>,
    pub backlog: Arc<Backlog>,
}

/// A copy the breaker stopped as it left the backlog (already counted): its log line.
pub fn refused(
    copy_log: Option<(usize, Arc<crate::engine::capture::RequestHead>)>,
    target: &Target,
    logs: &Logs,
) {
    if let Some((l, head)) = copy_log {
        let outcome = Outcome::Dropped(DropReason::BreakerOpen);
        logs.copies.push(
            l,
            &Record::new(&target.spec.url, head.method.as_str().as_bytes(), &head.request_uri, outcome),
        );
    }
}

/// Sends a departed copy and ends it. The in-flight `permit` is given back as soon as the
/// outcome is counted, before the comparison waits for the primary's answer.
pub async fn fly(
    mut copy: MirrorCopy,
    target: Arc<Target>,
    verdicts: Arc<VerdictStats>,
    permit: OwnedSemaphorePermit,
    clock: Clock,
    logs: Logs,
) {
    let started = Instant::now();
    let compare = copy.compare.take();
    let keep = compare.as_ref().map_or(0, |c| c.settings.max_body);
    let body_state = copy.body.as_ref().map(|b| b.state.clone());
    let out = Outgoing {
        head: &copy.head,
        dest: copy.dest.as_ref(),
        body: copy.body.take(),
        opts: copy.opts,
        probe: copy.is_probe(),
    };
    let (outcome, resp) = target.deliver(out, keep, move || clock.now_ms()).await;
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
        record.verdict = Some(join(c, resp, started + timeout, &target, &verdicts, &record, &logs).await);
    }
    if let Some(l) = log {
        logs.copies.push(l, &record);
    }
}

/// Compares the mirror's answer with the primary's (and the baseline's). The kept body
/// is charged to the budget while it waits; with no room it is not compared.
async fn join(
    c: Comparison,
    mut resp: Option<MirrorResponse>,
    deadline: Instant,
    target: &Target,
    verdicts: &VerdictStats,
    record: &Record<'_>,
    logs: &Logs,
) -> Verdict {
    let mut charge = Charge::new(&logs.backlog);
    if let Some(r) = resp.as_mut() {
        if !charge.grow(r.body.len()) {
            r.body = bytes::Bytes::new();
        }
    }
    let sinks = Sinks {
        stats: verdicts,
        log: &logs.mismatch,
        target: &target.spec.url,
        method: &record.method,
        uri: &record.uri,
    };
    c.settle(resp, deadline, sinks).await
}
