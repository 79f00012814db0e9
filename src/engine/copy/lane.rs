//! The targets' lanes as the nginx thread sees them: admission into a target's share of
//! the backlog, and the hand-off of copies in batches to each target's inbox (the lane's
//! own loop on the runtime is in `departure.rs`).

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Instant;

use super::admission::{self, Admission, MirrorCopy};
use super::departure;
use super::inbox::Inbox;
use super::life::{Flight, Logs};
use crate::engine::capture::{Backlog, BodyRx, BodyTx, body_channel};
use crate::engine::client::{Clock, CopyOptions, Target};
use crate::engine::compare::{EndpointCounts, VerdictStats};
use crate::engine::ids::{Table, TargetId};
use crate::engine::outcome::{DropReason, Outcome, Ticket};
use crate::engine::record::Sink;

/// A target, its share of the backlog and the channel to its lane.
struct Lane {
    target: Arc<Target>,
    /// This target's share of the worker's backlog (jobs and bytes): a slow target's
    /// copies wait in it and overflow it without taking another target's room.
    backlog: Arc<Backlog>,
    /// Comparison verdicts of its copies, by endpoint and field.
    verdicts: Arc<VerdictStats>,
    inbox: Arc<Inbox>,
    /// Copies handed over at the next flush (the nginx thread's only).
    pending: RefCell<Vec<MirrorCopy>>,
}

/// Pending copies past which a flush is not worth waiting for.
pub const FLUSH_AT: usize = 64;

/// Every target's lane in one worker and the breaker's clock: what the nginx thread
/// admits copies into and hands them to.
pub struct Lanes {
    lanes: Table<TargetId, Lane>,
    pub clock: Clock,
    pub logs: Logs,
    /// Capture targets' sinks (`None` for HTTP mirrors), pushed in the targets' order.
    pub sinks: Table<TargetId, Option<Arc<Sink>>>,
}

impl Lanes {
    pub fn new(logs: Logs) -> Lanes {
        Lanes { lanes: Table::default(), clock: Clock::start(), logs, sinks: Table::default() }
    }

    /// Adds a target's lane with its share of the backlog; its loop is what the caller
    /// must spawn on the runtime.
    pub fn add(
        &mut self,
        target: Arc<Target>,
        backlog: Arc<Backlog>,
    ) -> impl Future<Output = ()> + Send + 'static {
        let inbox = Arc::new(Inbox::default());
        let verdicts = Arc::new(VerdictStats::default());
        let lane = Flight { target: target.clone(), verdicts: verdicts.clone(), backlog: backlog.clone() };
        let run = departure::run(lane, inbox.clone(), self.clock, self.logs.clone());
        self.lanes.push(Lane { target, backlog, verdicts, inbox, pending: RefCell::default() });
        run
    }

    /// Target `id`'s share of the backlog.
    pub fn backlog(&self, id: TargetId) -> Option<&Arc<Backlog>> {
        self.lanes.get(id).map(|l| &l.backlog)
    }

    /// Copies waiting and bytes held, over every target.
    pub fn queued(&self) -> (usize, usize) {
        self.lanes.values().fold((0, 0), |(j, b), l| (j + l.backlog.jobs(), b + l.backlog.bytes()))
    }

    pub fn targets(&self) -> impl Iterator<Item = (TargetId, &Arc<Target>)> {
        self.lanes.iter().map(|(id, l)| (id, &l.target))
    }

    pub fn target(&self, id: TargetId) -> Option<&Arc<Target>> {
        self.lanes.get(id).map(|l| &l.target)
    }

    /// Comparison counters of target `id`; `None` while a runtime thread updates them.
    pub fn verdicts(&self, id: TargetId) -> Option<Vec<EndpointCounts>> {
        self.lanes.get(id).and_then(|l| l.verdicts.try_snapshot())
    }

    /// The one admission path for a copy to target `id`; see [`admission::admit`]. A
    /// `held` copy waits for the primary's status and is counted only once it goes.
    ///
    /// # Errors
    /// The outcome of a copy that does not go, already counted.
    pub fn admit(
        &self,
        id: TargetId,
        early: Result<(), Outcome>,
        opts: CopyOptions,
        held: bool,
    ) -> Result<Admission, Outcome> {
        let Some(lane) = self.lanes.get(id) else { return Err(Outcome::Dropped(DropReason::Shutdown)) };
        let stats = lane.target.stats.clone();
        let ticket = if held { Ticket::deferred(stats) } else { Ticket::new(stats) };
        admission::admit(id, ticket, &lane.target.breaker, &lane.backlog, early, opts, self.clock.now_ms())
    }

    /// Queues an admitted copy without waiting; it is handed to its lane at the next
    /// [`Lanes::flush`] (the nginx layer schedules one: see [`Lanes::pending`]).
    ///
    /// # Errors
    /// `dropped{shutdown}` when the runtime is stopping (the copy was counted so).
    pub fn submit(&self, mut copy: MirrorCopy) -> Result<(), Outcome> {
        copy.queued_at = Instant::now();
        match self.lanes.get(copy.target).filter(|l| !l.inbox.is_closed()) {
            Some(lane) => {
                lane.pending.borrow_mut().push(copy);
                Ok(())
            }
            // Dropped here, which counts it `dropped{shutdown}`.
            None => Err(Outcome::Dropped(DropReason::Shutdown)),
        }
    }

    /// Copies waiting for the next flush.
    pub fn pending(&self) -> usize {
        self.lanes.values().map(|l| l.pending.borrow().len()).sum()
    }

    /// Hands every pending copy to its lane, waking each lane that got some once.
    pub fn flush(&self) {
        for lane in self.lanes.values() {
            let mut pending = lane.pending.borrow_mut();
            if !pending.is_empty() {
                lane.inbox.deliver(&mut pending);
            }
        }
    }

    /// A body stream for one copy to target `id`, charged to the target's share.
    pub fn body_channel(&self, id: TargetId, max: u64, length: Option<u64>) -> Option<(BodyTx, BodyRx)> {
        Some(body_channel(self.backlog(id)?.clone(), max, length))
    }

    /// Hands over what is pending and closes every inbox: each lane ends once it has
    /// sent what it holds.
    pub fn close(&mut self) {
        self.flush();
        for lane in self.lanes.values() {
            lane.inbox.close();
        }
    }
}
