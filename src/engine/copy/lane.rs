//! One target's lane on the runtime: copies come off its channel in batches, wait in the
//! backlog for an in-flight place (and, over HTTP/2, for a stream), leave the backlog and
//! fly. A slow target's copies wait in its own lane.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::admission::{self, Admission, MirrorCopy};
use super::life::{self, Flight, Logs};
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
    /// `None` once the engine is shutting down.
    tx: Option<UnboundedSender<MirrorCopy>>,
}

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
        let (tx, rx) = unbounded_channel();
        let verdicts = Arc::new(VerdictStats::default());
        let lane = Flight { target: target.clone(), verdicts: verdicts.clone(), backlog: backlog.clone() };
        let run = run(lane, rx, self.clock, self.logs.clone());
        self.lanes.push(Lane { target, backlog, verdicts, tx: Some(tx) });
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

    /// Queues an admitted copy without waiting.
    ///
    /// # Errors
    /// `dropped{shutdown}` when the runtime is stopping (the copy was counted so).
    pub fn submit(&self, mut copy: MirrorCopy) -> Result<(), Outcome> {
        copy.queued_at = Instant::now();
        // A copy that cannot be queued is dropped here, which counts it `dropped{shutdown}`.
        match self.lanes.get(copy.target).and_then(|l| l.tx.as_ref()) {
            Some(tx) => tx.send(copy).map_err(|_| Outcome::Dropped(DropReason::Shutdown)),
            None => Err(Outcome::Dropped(DropReason::Shutdown)),
        }
    }

    /// A body stream for one copy to target `id`, charged to the target's share.
    pub fn body_channel(&self, id: TargetId, max: u64, length: Option<u64>) -> Option<(BodyTx, BodyRx)> {
        Some(body_channel(self.backlog(id)?.clone(), max, length))
    }

    /// Closes every lane's channel: each lane ends once its queue is empty.
    pub fn close(&mut self) {
        for lane in self.lanes.values_mut() {
            lane.tx = None;
        }
    }
}

/// While copies keep coming, the lane collects them every `BATCH` instead of being
/// woken for each one: a wake-up costs the nginx thread a system call (the runtime's
/// eventfd) and both threads a context switch, more than the copy's own hand-off. After
/// `IDLE` without copies it goes back to waiting to be woken, so an idle worker stays idle.
const BATCH: Duration = Duration::from_millis(1);
const IDLE: Duration = Duration::from_millis(100);

/// The channel end of a lane and how it is being read.
struct Intake {
    rx: UnboundedReceiver<MirrorCopy>,
    /// Polling (no waker registered, so senders do not wake the lane) until then.
    busy_until: Option<Instant>,
    sweep: tokio::time::Interval,
}

impl Intake {
    /// The next copy; `None` once the engine is shutting down and the channel is empty.
    async fn next(&mut self, target: &Target) -> Option<MirrorCopy> {
        loop {
            let copy = match self.busy_until {
                Some(until) => match self.rx.try_recv() {
                    Ok(copy) => Some(copy),
                    Err(TryRecvError::Disconnected) => None,
                    Err(TryRecvError::Empty) => {
                        if Instant::now() >= until {
                            self.busy_until = None;
                        } else {
                            tokio::select! {
                                _ = tokio::time::sleep(BATCH) => {}
                                _ = self.sweep.tick() => target.sweep(),
                            }
                        }
                        continue;
                    }
                },
                None => tokio::select! {
                    copy = self.rx.recv() => copy,
                    _ = self.sweep.tick() => { target.sweep(); continue; }
                },
            };
            self.busy_until = Some(Instant::now() + IDLE);
            return copy;
        }
    }
}

async fn run(lane: Flight, rx: UnboundedReceiver<MirrorCopy>, clock: Clock, logs: Logs) {
    let target = lane.target.clone();
    let mut intake = Intake { rx, busy_until: None, sweep: tokio::time::interval(Duration::from_secs(1)) };
    while let Some(copy) = intake.next(&target).await {
        // Waiting here keeps the copy in the backlog, at most until its timeout: a copy
        // that waited that long is never sent late.
        let left = copy.opts.timeout.saturating_sub(copy.queued_at.elapsed());
        let room = async {
            let permit = target.inflight.clone().acquire_owned().await.ok()?;
            target.wait_for_room().await;
            Some(permit)
        };
        let permit = match tokio::time::timeout(left, room).await {
            Ok(Some(permit)) => permit,
            Ok(None) => break,
            Err(_) => {
                life::ended_in_queue(copy, Outcome::Dropped(DropReason::QueueTimeout), &target, &logs);
                continue;
            }
        };
        if copy.queued_at.elapsed() >= copy.opts.timeout {
            life::ended_in_queue(copy, Outcome::Dropped(DropReason::QueueTimeout), &target, &logs);
            continue;
        }
        let log = copy.log.map(|l| (l, copy.head.clone()));
        let Some(copy) = copy.depart(clock.now_ms()) else {
            // The breaker opened while it waited.
            life::refused(log, Outcome::Dropped(DropReason::BreakerOpen), &target, &logs);
            continue;
        };
        target.stats.inflight.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(life::fly(copy, lane.clone(), permit, clock, logs.clone()));
    }
}
