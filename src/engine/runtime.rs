//! The per-worker engine: a Tokio runtime, one dispatcher per target, the backlog.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::body::{self, BodyRx, BodyTx};
use super::breaker::Admission;
use super::client::{ClientSettings, CopyOptions, Target};
use super::job::RequestHead;
use super::logq::LogQueue;
use super::outcome::{DropReason, Outcome, TargetStats, Ticket};
use super::parse::{Dest, TargetSpec};
use super::queue::{Backlog, Reservation};

/// Worker-wide settings from the http-level directives.
#[derive(Debug, Clone, Copy)]
pub struct EngineSettings {
    pub threads: usize,
    pub queue_size: usize,
    pub queue_bytes: usize,
    pub client: ClientSettings,
}

struct Job {
    head: Arc<RequestHead>,
    dest: Option<Dest>,
    body: Option<BodyRx>,
    opts: CopyOptions,
    probe: bool,
    ticket: Ticket,
    reservation: Reservation,
}

pub struct Engine {
    runtime: Option<Runtime>,
    targets: Vec<Arc<Target>>,
    senders: Vec<UnboundedSender<Job>>,
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

impl Engine {
    /// Starts the runtime; `on_thread_start` runs first on every runtime thread
    /// (the nginx layer blocks signals there).
    ///
    /// # Errors
    /// When the runtime's threads cannot be created.
    pub fn start(
        settings: EngineSettings,
        specs: Vec<TargetSpec>,
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
        let mut targets = Vec::new();
        let mut senders = Vec::new();
        for (index, spec) in specs.into_iter().enumerate() {
            let target = Arc::new(Target::new(index, spec, settings.client, log.clone()));
            let (tx, rx) = unbounded_channel();
            runtime.spawn(dispatch(target.clone(), rx, clock));
            targets.push(target);
            senders.push(tx);
        }
        let backlog = Backlog::new(settings.queue_size, settings.queue_bytes);
        Ok(Engine { runtime: Some(runtime), targets, senders, backlog, log, clock })
    }

    pub fn targets(&self) -> impl Iterator<Item = (&TargetSpec, &TargetStats)> {
        self.targets.iter().map(|t| (&t.spec, &*t.stats))
    }

    /// Live per-target gauges: copies in flight, and 1 if the breaker is open.
    pub fn gauges(&self) -> impl Iterator<Item = (i64, i64)> + '_ {
        self.targets.iter().map(|t| (t.stats.inflight.load(Ordering::Relaxed), t.breaker.is_open() as i64))
    }

    pub fn log(&self) -> &LogQueue {
        &self.log
    }

    pub fn target_is_https(&self, index: usize) -> bool {
        self.targets.get(index).is_some_and(|t| t.spec.https)
    }

    pub fn target_url(&self, index: usize) -> &str {
        self.targets.get(index).map_or("", |t| t.spec.url.as_str())
    }

    /// Opens the accounting for one copy to target `index`.
    pub fn ticket(&self, index: usize) -> Option<Ticket> {
        self.targets.get(index).map(|t| Ticket::new(t.stats.clone()))
    }

    /// Whether a new job could be queued; checked before capturing the request.
    pub fn has_room(&self) -> bool {
        self.backlog.has_room()
    }

    /// Cheap checks made before the request is captured: breaker, then backlog room.
    /// `Err` is the drop the copy ends in; `Ok(true)` marks the breaker's probe.
    pub fn admit(&self, index: usize, opts: &CopyOptions) -> Result<bool, DropReason> {
        let Some(target) = self.targets.get(index) else { return Err(DropReason::Shutdown) };
        let probe = match target.breaker.admit(self.clock.now_ms(), opts.breaker) {
            Admission::Pass => false,
            Admission::Probe => true,
            Admission::Reject => return Err(DropReason::BreakerOpen),
        };
        if !self.backlog.has_room() {
            if probe {
                // Give the probe back so the next copy can take it.
                target.breaker.release_probe();
            }
            return Err(DropReason::QueueFull);
        }
        Ok(probe)
    }

    /// Queues one copy without waiting; a full backlog ends it as `dropped{queue_full}`.
    ///
    /// # Errors
    /// The drop reason the copy was counted with.
    pub fn submit(
        &self,
        index: usize,
        head: &Arc<RequestHead>,
        dest: Option<Dest>,
        body: Option<BodyRx>,
        opts: CopyOptions,
        probe: bool,
        ticket: Ticket,
    ) -> Result<(), DropReason> {
        let (Some(target), Some(tx)) = (self.targets.get(index), self.senders.get(index)) else {
            ticket.finish(Outcome::Dropped(DropReason::Shutdown));
            return Err(DropReason::Shutdown);
        };
        let Some(reservation) = self.backlog.reserve(head.weight()) else {
            if probe {
                target.breaker.release_probe();
            }
            ticket.finish(Outcome::Dropped(DropReason::QueueFull));
            return Err(DropReason::QueueFull);
        };
        // A closed channel returns the job, whose ticket then counts `dropped{shutdown}`.
        tx.send(Job { head: head.clone(), dest, body, opts, probe, ticket, reservation })
            .map_err(|_| DropReason::Shutdown)
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
            let inflight: i64 = self.targets.iter().map(|t| t.stats.inflight.load(Ordering::Relaxed)).sum();
            if self.backlog.jobs() == 0 && inflight <= 0 {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops the runtime; whatever is still queued or in flight counts `dropped{shutdown}`.
    pub fn shutdown(&mut self, limit: Duration) {
        self.senders.clear();
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

async fn dispatch(target: Arc<Target>, mut rx: UnboundedReceiver<Job>, clock: Clock) {
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    let mut busy_until: Option<Instant> = None;
    loop {
        let job = match busy_until {
            // Polling: try_recv registers no waker, so senders do not wake this task.
            Some(until) => match rx.try_recv() {
                Ok(job) => Some(job),
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
                job = rx.recv() => job,
                _ = sweep.tick() => { target.sweep(); continue; }
            },
        };
        busy_until = Some(Instant::now() + IDLE);
        let Some(Job { head, dest, body, opts, probe, ticket, reservation }) = job else { break };
        // Waiting here keeps the job in the backlog: the connection cap is the in-flight cap.
        let Ok(permit) = target.permits.clone().acquire_owned().await else { break };
        drop(reservation);
        // The breaker may have opened while this copy waited.
        if !probe && opts.breaker.max_fails > 0 && target.breaker.still_open(clock.now_ms()) {
            ticket.finish(Outcome::Dropped(DropReason::BreakerOpen));
            continue;
        }
        target.stats.inflight.fetch_add(1, Ordering::Relaxed);
        let t = target.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let outcome = t.deliver(&head, dest.as_ref(), body, opts, move || clock.now_ms()).await;
            t.stats.observe(started.elapsed());
            t.stats.inflight.fetch_sub(1, Ordering::Relaxed);
            ticket.finish(outcome);
            drop(permit);
        });
    }
}
