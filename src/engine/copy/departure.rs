//! One target's lane on the runtime: copies come from its inbox in batches, wait in the
//! target's share of the backlog for room (a connection over HTTP/1.1, a stream over
//! HTTP/2), leave it and fly, all within this one task: copies that leave together, and
//! answers that arrive together, are handled in one wake-up. A copy that waited past its
//! timeout is dropped, never sent late.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};

use super::admission::MirrorCopy;
use super::inbox::Inbox;
use super::life::{self, Flight, LaneLanding, Logs};
use crate::engine::client::{Clock, Keep, Landing, Piped, Pipeline};
use crate::engine::outcome::{DropReason, Outcome};

pub async fn run(lane: Flight, inbox: Arc<Inbox>, clock: Clock, logs: Logs) {
    let target = lane.target.clone();
    // `pipeline=N`: copies go to the target's pipelined connections instead of flying here.
    let pipeline = target.spec.pipeline.map(|depth| {
        let landing: Arc<dyn Landing<MirrorCopy>> =
            Arc::new(LaneLanding { lane: lane.clone(), logs: logs.clone() });
        (Pipeline::new(depth), landing)
    });
    let mut waiting: VecDeque<MirrorCopy> = VecDeque::new();
    let mut flying = FuturesUnordered::new();
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    loop {
        waiting.extend(inbox.take());
        // Leave the backlog in order while there is room; expired copies end here.
        while let Some(copy) = waiting.front() {
            if copy.queued_at.elapsed() >= copy.opts.timeout {
                let copy = waiting.pop_front().expect("a front");
                life::ended_in_queue(copy, Outcome::Dropped(DropReason::QueueTimeout), &target, &logs);
                continue;
            }
            if !target.has_room() {
                break;
            }
            let copy = waiting.pop_front().expect("a front");
            let log = copy.log.map(|l| (l, copy.head.clone()));
            match copy.depart(clock.now_ms()) {
                Some(copy) => {
                    target.took_room();
                    let mut copy = copy;
                    if let Some((pipe, landing)) = &pipeline {
                        if let Some((bytes, keep)) = pipelined(&mut copy, &lane) {
                            let (head_only, opts) = (copy.head.method == http::Method::HEAD, copy.opts);
                            let departed = Instant::now();
                            let job =
                                Piped { item: copy, bytes, head_only, keep, opts, resent: false, departed };
                            pipe.push(job, &target, landing, clock);
                            continue;
                        }
                    }
                    // Boxed here, so the set moves a pointer rather than the whole future.
                    flying.push(Box::pin(life::fly(copy, lane.clone(), clock, logs.clone())));
                }
                // The breaker opened while it waited.
                None => life::refused(log, Outcome::Dropped(DropReason::BreakerOpen), &target, &logs),
            }
        }
        if inbox.is_closed() && waiting.is_empty() && flying.is_empty() {
            return;
        }
        // The first waiting copy's deadline: it is dropped then if still waiting.
        let expiry = waiting.front().map(|c| c.queued_at + c.opts.timeout);
        tokio::select! {
            () = inbox.wait() => {}
            Some(()) = flying.next(), if !flying.is_empty() => {
                // Every copy that ended in this wake-up, before the loop looks at the backlog again.
                while let Some(Some(())) = flying.next().now_or_never() {}
            }
            () = target.room_freed(), if !waiting.is_empty() => {}
            () = tokio::time::sleep_until(expiry.unwrap_or_else(std::time::Instant::now).into()), if expiry.is_some() => {}
            _ = sweep.tick() => target.sweep(),
        }
    }
}

/// A copy as a pipelined connection writes it, or `None` when it cannot be pipelined (its
/// body is still arriving); it then flies as any copy. A request that makes no target
/// flies too, and ends `skipped` there.
fn pipelined(copy: &mut MirrorCopy, lane: &Flight) -> Option<(Bytes, Keep)> {
    let dest = lane.target.spec.dest.as_ref()?;
    let body = match copy.body.as_mut() {
        None => None,
        Some(rx) => Some(rx.take_complete()?),
    };
    let mut bytes = Vec::with_capacity(copy.head.weight() + body.as_ref().map_or(0, Bytes::len));
    copy.head.write_h1(dest, body.as_deref(), &mut bytes).then(|| (bytes.into(), life::keep_for(copy, lane)))
}
