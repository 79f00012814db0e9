//! The per-worker engine: a Tokio runtime, one dispatcher per target, the backlog.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::body::{self, BodyRx, BodyTx};
use super::copy::{self, Admission, Copy, CopyOptions};
use super::ids::{Table, TargetId};
use super::logq::LogQueue;
use super::outcome::{DropReason, Outcome, TargetStats, Ticket};
use super::parse::TargetSpec;
use super::queue::Backlog;
use super::target::{ClientSettings, Target};

/// Worker-wide settings from the http-level directives.
#[derive(Debug, Clone, Copy)]
pub struct EngineSettings {
    pub threads: usize,
    pub queue_size: usize,
    pub queue_bytes: usize,
    pub client: ClientSettings,
}

/// A target and the channel to its dispatcher.
struct Lane {
    target: Arc<Target>,
    /// `None` once the engine is shutting down.
    tx: Option<UnboundedSender<Copy>>,
}

pub struct Engine {
    runtime: Option<Runtime>,
    lanes: Table<TargetId, Lane>,
    backlog: Arc<Backlog>,
    log: Arc<LogQueue>,
    clock: Clock,
}

/// Milliseconds since the engine started; the breaker's time base.
#[derive(Debug, Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn now_ms(self) -> u64 {
        self.0.elapsed().as_millis() as u64
    }
}

/// Live gauges of one target in one worker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gauges {
    pub inflight: i64,
    pub breaker_open: i64,
}

impl Engine {
    /// Starts the runtime; `on_thread_start` runs first on every runtime thread
    /// (the nginx layer blocks signals there).
    ///
    /// # Errors
    /// When the runtime's threads cannot be created.
    pub fn start(
        settings: EngineSettings,
        specs: &Table<TargetId, TargetSpec>,
        on_thread_start: impl Fn() + Send + Sync + 'static,
    ) -> io::Result<Engine> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(settings.threads.max(1))
            .max_blocking_threads(1)
            .thread_name("async-mirror")
            .on_thread_start(on_thread_start)
            .enable_io()
            .enable_time()
            .build()?;
        let log = Arc::new(LogQueue::new(specs.len()));
        let clock = Clock(Instant::now());
        let mut lanes = Table::default();
        for (id, spec) in specs.iter() {
            let target = Arc::new(Target::new(id, spec.clone(), settings.client, log.clone()));
            let (tx, rx) = unbounded_channel();
            runtime.spawn(dispatch(target.clone(), rx, clock));
            let lane_id = lanes.push(Lane { target, tx: Some(tx) });
            debug_assert_eq!(lane_id, id);
        }
        let backlog = Backlog::new(settings.queue_size, settings.queue_bytes);
        Ok(Engine { runtime: Some(runtime), lanes, backlog, log, clock })
    }

    pub fn targets(&self) -> impl Iterator<Item = (TargetId, &TargetSpec, &TargetStats)> {
        self.lanes.iter().map(|(id, l)| (id, &l.target.spec, &*l.target.stats))
    }

    pub fn gauges(&self, id: TargetId) -> Gauges {
        self.lanes.get(id).map_or_else(Gauges::default, |l| Gauges {
            inflight: l.target.stats.inflight.load(Ordering::Relaxed),
            breaker_open: i64::from(l.target.breaker.is_open()),
        })
    }

    pub fn log(&self) -> &LogQueue {
        &self.log
    }

    pub fn spec(&self, id: TargetId) -> Option<&TargetSpec> {
        self.lanes.get(id).map(|l| &l.target.spec)
    }

    /// The one admission path for a copy to target `id`; see [`copy::admit`].
    ///
    /// # Errors
    /// The outcome of a copy that does not go, already counted.
    pub fn admit(
        &self,
        id: TargetId,
        early: Result<(), Outcome>,
        opts: CopyOptions,
    ) -> Result<Admission, Outcome> {
        let Some(lane) = self.lanes.get(id) else { return Err(Outcome::Dropped(DropReason::Shutdown)) };
        let ticket = Ticket::new(lane.target.stats.clone());
        copy::admit(id, ticket, &lane.target.breaker, &self.backlog, early, opts, self.clock.now_ms())
    }

    /// Queues an admitted copy without waiting.
    ///
    /// # Errors
    /// `dropped{shutdown}` when the runtime is stopping (the copy was counted so).
    pub fn submit(&self, copy: Copy) -> Result<(), Outcome> {
        // A copy that cannot be queued is dropped here, which counts it `dropped{shutdown}`.
        match self.lanes.get(copy.target).and_then(|l| l.tx.as_ref()) {
            Some(tx) => tx.send(copy).map_err(|_| Outcome::Dropped(DropReason::Shutdown)),
            None => Err(Outcome::Dropped(DropReason::Shutdown)),
        }
    }

    /// A body stream for one copy, charged to this worker's byte budget.
    pub fn body_channel(&self, max: u64, length: Option<u64>) -> (BodyTx, BodyRx) {
        body::channel(self.backlog.clone(), max, length)
    }

    pub fn queued_bytes(&self) -> usize {
        self.backlog.bytes()
    }

    pub fn queued_jobs(&self) -> usize {
        self.backlog.jobs()
    }

    /// Waits (blocking the caller) until nothing is queued or in flight, or `limit` passes.
    pub fn drain(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let inflight: i64 =
                self.lanes.values().map(|l| l.target.stats.inflight.load(Ordering::Relaxed)).sum();
            if self.backlog.jobs() == 0 && inflight <= 0 {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops the runtime; whatever is still queued or in flight counts `dropped{shutdown}`.
    pub fn shutdown(&mut self, limit: Duration) {
        // Closing the channels lets each dispatcher end once its queue is empty.
        for lane in self.lanes.values_mut() {
            lane.tx = None;
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(limit);
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown(Duration::from_millis(100));
    }
}

/// While copies keep coming, the dispatcher collects them every `BATCH` instead of being
/// woken for each one: a wake-up costs the nginx thread a system call (the runtime's
/// eventfd) and both threads a context switch, more than the copy's own hand-off. After
/// `IDLE` without copies it goes back to waiting to be woken, so an idle worker stays idle.
const BATCH: Duration = Duration::from_millis(1);
const IDLE: Duration = Duration::from_millis(100);

async fn dispatch(target: Arc<Target>, mut rx: UnboundedReceiver<Copy>, clock: Clock) {
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    let mut busy_until: Option<Instant> = None;
    loop {
        let copy = match busy_until {
            // Polling: try_recv registers no waker, so senders do not wake this task.
            Some(until) => match rx.try_recv() {
                Ok(copy) => Some(copy),
                Err(TryRecvError::Disconnected) => None,
                Err(TryRecvError::Empty) => {
                    if Instant::now() >= until {
                        busy_until = None;
                    } else {
                        tokio::select! {
                            _ = tokio::time::sleep(BATCH) => {}
                            _ = sweep.tick() => target.sweep(),
                        }
                    }
                    continue;
                }
            },
            None => tokio::select! {
                copy = rx.recv() => copy,
                _ = sweep.tick() => { target.sweep(); continue; }
            },
        };
        busy_until = Some(Instant::now() + IDLE);
        let Some(copy) = copy else { break };
        // Waiting here keeps the copy in the backlog.
        let Ok(permit) = target.inflight.clone().acquire_owned().await else { break };
        let Some(mut copy) = copy.depart(clock.now_ms()) else { continue };
        target.stats.inflight.fetch_add(1, Ordering::Relaxed);
        let t = target.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let outcome = t.deliver(&mut copy, move || clock.now_ms()).await;
            t.stats.observe(started.elapsed());
            t.stats.inflight.fetch_sub(1, Ordering::Relaxed);
            copy.finish(outcome);
            drop(permit);
        });
    }
}
