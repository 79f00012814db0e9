//! One target's lane on the runtime: copies come from its inbox in batches, wait in the
//! target's share of the backlog for room (a connection over HTTP/1.1, a stream over
//! HTTP/2), leave it and fly, all within this one task: copies that leave together, and
//! answers that arrive together, are handled in one wake-up. A copy that waited past its
//! timeout is dropped, never sent late.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;

use super::admission::MirrorCopy;
use super::inbox::Inbox;
use super::life::{self, Flight, Logs};
use crate::engine::client::Clock;
use crate::engine::outcome::{DropReason, Outcome};

pub async fn run(lane: Flight, inbox: Arc<Inbox>, clock: Clock, logs: Logs) {
    let target = lane.target.clone();
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
                    flying.push(life::fly(copy, lane.clone(), clock, logs.clone()));
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
            Some(()) = flying.next(), if !flying.is_empty() => {}
            () = target.room_freed(), if !waiting.is_empty() => {}
            () = tokio::time::sleep_until(expiry.unwrap_or_else(std::time::Instant::now).into()), if expiry.is_some() => {}
            _ = sweep.tick() => target.sweep(),
        }
    }
}
