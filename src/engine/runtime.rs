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
use super::copylog::{CopyLog, Record};
use super::difflog::DiffLog;
use super::ids::{Table, TargetId};
use super::logq::LogQueue;
use super::outcome::{DropReason, Outcome, TargetStats, Ticket};
use super::parse::TargetSpec;
use super::queue::{Backlog, Charge};
use super::shadow::Report;
use super::target::{ClientSettings, Target};
use super::verdict::EndpointCounts;

/// Worker-wide settings from the http-level directives.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    pub threads: usize,
    pub queue_size: usize,
    pub queue_bytes: usize,
    pub client: ClientSettings,
    /// Lines per second of each `async_mirror_compare_log`.
    pub compare_logs: Vec<u32>,
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
    difflog: Arc<DiffLog>,
    copylog: Arc<CopyLog>,
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
    pub connections: i64,
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
        let difflog = Arc::new(DiffLog::new(&settings.compare_logs));
        let copylog = Arc::new(CopyLog::default());
        let backlog = Backlog::new(settings.queue_size, settings.queue_bytes);
        let clock = Clock(Instant::now());
        let mut lanes = Table::default();
        for (id, spec) in specs.iter() {
            let target = Arc::new(Target::new(id, spec.clone(), &settings.client, log.clone()));
            if let Some(r) = target.resolver.clone() {
                let t = target.clone();
                // A changed set: idle connections to addresses that left are closed now.
                runtime.spawn(r.run(id, log.clone(), move || t.sweep()));
            }
            let (tx, rx) = unbounded_channel();
            let logs = Logs { diff: difflog.clone(), copies: copylog.clone() };
            runtime.spawn(dispatch(target.clone(), rx, clock, logs, backlog.clone()));
            let lane_id = lanes.push(Lane { target, tx: Some(tx) });
            debug_assert_eq!(lane_id, id);
        }
        Ok(Engine { runtime: Some(runtime), lanes, backlog, log, difflog, copylog, clock })
    }

    pub fn targets(&self) -> impl Iterator<Item = (TargetId, &TargetSpec, &TargetStats)> {
        self.lanes.iter().map(|(id, l)| (id, &l.target.spec, &*l.target.stats))
    }

    pub fn gauges(&self, id: TargetId) -> Gauges {
        self.lanes.get(id).map_or_else(Gauges::default, |l| Gauges {
            inflight: l.target.stats.inflight.load(Ordering::Relaxed),
            breaker_open: i64::from(l.target.breaker.is_open()),
            connections: l.target.connections() as i64,
        })
    }

    pub fn log(&self) -> &LogQueue {
        &self.log
    }

    pub fn difflog(&self) -> &DiffLog {
        &self.difflog
    }

    pub fn copylog(&self) -> &CopyLog {
        &self.copylog
    }

    /// Comparison counters of target `id`; `None` while a runtime thread updates them.
    pub fn verdicts(&self, id: TargetId) -> Option<Vec<EndpointCounts>> {
        self.lanes.get(id).and_then(|l| l.target.verdicts.try_snapshot())
    }

    /// The worker's byte budget, for what the nginx thread holds for comparisons.
    pub fn backlog(&self) -> &Arc<Backlog> {
        &self.backlog
    }

    pub fn spec(&self, id: TargetId) -> Option<&TargetSpec> {
        self.lanes.get(id).map(|l| &l.target.spec)
    }

    /// The one admission path for a copy to target `id`; see [`copy::admit`]. A `held`
    /// copy waits for the primary's status and is counted only once it goes.
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

/// Where a dispatcher's copies leave lines.
#[derive(Clone)]
struct Logs {
    diff: Arc<DiffLog>,
    copies: Arc<CopyLog>,
}

async fn dispatch(
    target: Arc<Target>,
    mut rx: UnboundedReceiver<Copy>,
    clock: Clock,
    logs: Logs,
    backlog: Arc<Backlog>,
) {
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
        target.wait_for_room().await;
        let log = copy.log.map(|l| (l, copy.head.clone()));
        let Some(mut copy) = copy.depart(clock.now_ms()) else {
            // The breaker opened while it waited.
            if let Some((l, head)) = log {
                let uri = String::from_utf8_lossy(&head.request_uri);
                let outcome = Outcome::Dropped(DropReason::BreakerOpen);
                logs.copies.push(l, &Record::new(&target.spec.url, head.method.as_str(), &uri, outcome));
            }
            continue;
        };
        target.stats.inflight.fetch_add(1, Ordering::Relaxed);
        let t = target.clone();
        let logs = logs.clone();
        let backlog = backlog.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let keep = copy.compare.as_ref().map_or(0, |c| c.settings.max_body);
            let body_state = copy.body.as_ref().map(|b| b.state.clone());
            let (outcome, resp) = t.deliver(&mut copy, keep, move || clock.now_ms()).await;
            let took = started.elapsed();
            t.stats.observe(took);
            t.stats.inflight.fetch_sub(1, Ordering::Relaxed);
            let compare = copy.compare.take();
            let timeout = copy.opts.timeout;
            let log = copy.log;
            let body_bytes = body_state.as_ref().map_or(0, |s| s.sent());
            // Only a compared or logged copy needs its request after it ended.
            let head = (compare.is_some() || log.is_some()).then(|| copy.head.clone());
            copy.finish(outcome);
            drop(permit);
            let Some(head) = head else { return };
            let uri = String::from_utf8_lossy(&head.request_uri);
            let mut record = Record::new(&t.spec.url, head.method.as_str(), &uri, outcome);
            record.status = resp.as_ref().map(|r| r.status);
            record.reused = resp.as_ref().map(|r| r.reused);
            record.duration = Some(took);
            record.body_bytes = Some(body_bytes);
            if let Some(job) = compare {
                let report = Report {
                    stats: &t.verdicts,
                    log: &logs.diff,
                    target: &t.spec.url,
                    method: head.method.as_str(),
                    uri: &uri,
                };
                // The kept body is charged while it waits; with no room it is not compared.
                let mut resp = resp;
                let mut charge = Charge::new(&backlog);
                if let Some(r) = resp.as_mut() {
                    if !charge.grow(r.body.len()) {
                        r.body = bytes::Bytes::new();
                    }
                }
                record.verdict = Some(job.settle(resp, started + timeout, report).await);
                drop(charge);
            }
            if let Some(l) = log {
                logs.copies.push(l, &record);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::breaker::BreakerSettings;
    use crate::engine::job::{HeaderEdits, RequestHead};
    use crate::engine::parse::parse_target;

    fn settings(max_connections: usize) -> EngineSettings {
        EngineSettings {
            threads: 1,
            queue_size: 1000,
            queue_bytes: 8 << 20,
            client: ClientSettings {
                keepalive_timeout: Duration::from_secs(60),
                max_connections,
                hosts_file: None,
            },
            compare_logs: Vec::new(),
        }
    }

    const OPTS: CopyOptions = CopyOptions {
        connect_timeout: Duration::from_secs(1),
        timeout: Duration::from_secs(2),
        breaker: BreakerSettings { max_fails: 3, fail_timeout: Duration::from_secs(10) },
    };

    fn submit_all(engine: &Engine, id: TargetId, n: usize) {
        let none = Vec::<(&[u8], &[u8])>::new();
        let head =
            Arc::new(RequestHead::capture(b"GET", b"/", none.into_iter(), &HeaderEdits::default()).unwrap());
        for _ in 0..n {
            if let Ok(a) = engine.admit(id, Ok(()), OPTS, false) {
                if let Ok(copy) = a.into_copy(head.clone(), None, None) {
                    let _ = engine.submit(copy);
                }
            }
        }
    }

    fn settled(engine: &Engine, id: TargetId, n: u64, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let (_, _, stats) = engine.targets().find(|(t, _, _)| *t == id).unwrap();
            if stats.finished() == n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// A keepalive HTTP/1.1 peer answering `200 ok` to every request; counts connections.
    fn sink() -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let conns = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c = conns.clone();
        std::thread::spawn(move || {
            for s in listener.incoming().flatten() {
                c.fetch_add(1, Ordering::Relaxed);
                std::thread::spawn(move || {
                    let mut w = s.try_clone().unwrap();
                    let mut r = BufReader::new(s);
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n"
                            && w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        (port, conns)
    }

    /// An engine with one target, `http://127.0.0.1:PORT`.
    fn engine_for(port: u16, max_connections: usize) -> (Engine, TargetId) {
        let mut specs = Table::default();
        let id = specs.push(parse_target(&format!("http://127.0.0.1:{port}")).unwrap());
        (Engine::start(settings(max_connections), &specs, || {}).unwrap(), id)
    }

    #[test]
    fn a_live_target_gets_every_copy_over_few_connections() {
        let (port, conns) = sink();
        let (engine, id) = engine_for(port, 8);
        submit_all(&engine, id, 300);
        let ok = settled(&engine, id, 300, Duration::from_secs(10));
        let (_, _, stats) = engine.targets().next().unwrap();
        assert!(ok, "{}", stats.summary());
        assert_eq!(stats.get(Outcome::Ok), 300, "{}", stats.summary());
        assert!(conns.load(Ordering::Relaxed) <= 8);
    }

    #[test]
    fn a_refused_target_ends_every_copy() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let (engine, id) = engine_for(port, 128);
        submit_all(&engine, id, 30);
        let ok = settled(&engine, id, 30, Duration::from_secs(5));
        let (_, _, stats) = engine.targets().next().unwrap();
        assert!(ok, "{}", stats.summary());
        assert_eq!(
            stats.get(Outcome::Failed(super::super::outcome::FailReason::Connect))
                + stats.get(Outcome::Dropped(DropReason::BreakerOpen)),
            30,
            "{}",
            stats.summary()
        );
    }
}
