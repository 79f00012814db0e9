//! The per-worker engine: a Tokio runtime, one dispatcher per target, the backlog.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::client::{ClientSettings, Target, Timeouts};
use super::job::RequestHead;
use super::logq::LogQueue;
use super::outcome::{DropReason, Outcome, TargetStats, Ticket};
use super::parse::TargetSpec;
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
    limits: Timeouts,
    ticket: Ticket,
    reservation: Reservation,
}

pub struct Engine {
    runtime: Option<Runtime>,
    targets: Vec<Arc<Target>>,
    senders: Vec<UnboundedSender<Job>>,
    backlog: Arc<Backlog>,
    log: Arc<LogQueue>,
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
        let mut targets = Vec::new();
        let mut senders = Vec::new();
        for (index, spec) in specs.into_iter().enumerate() {
            let target = Arc::new(Target::new(index, spec, settings.client, log.clone()));
            let (tx, rx) = unbounded_channel();
            runtime.spawn(dispatch(target.clone(), rx));
            targets.push(target);
            senders.push(tx);
        }
        let backlog = Backlog::new(settings.queue_size, settings.queue_bytes);
        Ok(Engine { runtime: Some(runtime), targets, senders, backlog, log })
    }

    pub fn targets(&self) -> impl Iterator<Item = (&TargetSpec, &TargetStats)> {
        self.targets.iter().map(|t| (&t.spec, &*t.stats))
    }

    pub fn log(&self) -> &LogQueue {
        &self.log
    }

    /// Opens the accounting for one copy to target `index`.
    pub fn ticket(&self, index: usize) -> Option<Ticket> {
        self.targets.get(index).map(|t| Ticket::new(t.stats.clone()))
    }

    /// Whether a new job could be queued; checked before capturing the request.
    pub fn has_room(&self) -> bool {
        self.backlog.has_room()
    }

    /// Queues one copy without waiting; a full backlog ends it as `dropped{queue_full}`.
    pub fn submit(&self, index: usize, head: &Arc<RequestHead>, limits: Timeouts, ticket: Ticket) {
        let Some(reservation) = self.backlog.reserve(head.weight()) else {
            return ticket.finish(Outcome::Dropped(DropReason::QueueFull));
        };
        let Some(tx) = self.senders.get(index) else { return ticket.finish(Outcome::Skipped) };
        // A closed channel returns the job, whose ticket then counts `dropped{shutdown}`.
        let _ = tx.send(Job { head: head.clone(), limits, ticket, reservation });
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

async fn dispatch(target: Arc<Target>, mut rx: UnboundedReceiver<Job>) {
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    loop {
        let job = tokio::select! {
            job = rx.recv() => job,
            _ = sweep.tick() => { target.sweep(); continue; }
        };
        let Some(Job { head, limits, ticket, reservation }) = job else { break };
        // Waiting here keeps the job in the backlog: the connection cap is the in-flight cap.
        let Ok(permit) = target.permits.clone().acquire_owned().await else { break };
        drop(reservation);
        target.stats.inflight.fetch_add(1, Ordering::Relaxed);
        let t = target.clone();
        tokio::spawn(async move {
            let outcome = t.deliver(&head, limits).await;
            t.stats.inflight.fetch_sub(1, Ordering::Relaxed);
            ticket.finish(outcome);
            drop(permit);
        });
    }
}
