//! The per-worker engine: a Tokio runtime, one lane per target, the backlog, and the
//! queues that carry lines back to the nginx thread.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::engine::capture::Backlog;
use crate::engine::client::{ClientSettings, Target};
use crate::engine::compare::{EndpointCounts, MismatchLog};
use crate::engine::config::{SinkSpec, TargetSpec};
use crate::engine::copy::{Lanes, Logs};
use crate::engine::error_log::ErrorLog;
use crate::engine::ids::{Table, TargetId};
use crate::engine::outcome::{Gauges, TargetStats};
use crate::engine::record::{Sink, start_sink};
use crate::engine::report::CopyLog;
use crate::engine::scheduler::Scheduler;

/// Worker-wide settings from the http-level directives.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    pub threads: usize,
    pub queue_size: usize,
    pub queue_bytes: usize,
    pub client: ClientSettings,
    /// Lines per second of each `async_mirror_compare_log`.
    pub compare_logs: Vec<u32>,
    /// Capture targets by URL: what they record and where.
    pub sinks: Vec<(String, SinkSpec)>,
}

pub struct Engine {
    runtime: Option<Scheduler>,
    lanes: Lanes,
    error_log: Arc<ErrorLog>,
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
        let scheduler = Scheduler::start(settings.threads.max(1), on_thread_start)?;
        let runtime = scheduler.handle();
        let error_log = Arc::new(ErrorLog::new(specs.len()));
        let logs = Logs {
            mismatch: Arc::new(MismatchLog::new(&settings.compare_logs)),
            copies: Arc::new(CopyLog::default()),
        };
        let mut lanes = Lanes::new(logs);
        // Each target gets an equal share of the worker's backlog, so one target's slowness
        // fills only its own share.
        let n = specs.len().max(1);
        let (jobs, bytes) = (settings.queue_size.div_ceil(n).max(1), settings.queue_bytes.div_ceil(n).max(1));
        for (id, spec) in specs.iter() {
            let target = Arc::new(Target::new(id, spec.clone(), &settings.client, error_log.clone()));
            if let Some(r) = target.resolver.clone() {
                let t = target.clone();
                // A changed set: idle connections to addresses that left are closed now.
                runtime.spawn(r.run(id, error_log.clone(), move || t.sweep()));
            }
            let sink = settings.sinks.iter().find(|(url, _)| *url == spec.url).map(|(_, sink)| {
                start_sink(id, sink, target.breaker.clone(), error_log.clone(), (jobs, bytes))
                    .map_err(|e| io::Error::other(format!("\"{}\": {e}", spec.url)))
            });
            let sink = sink.transpose()?.map(Arc::new);
            if let Some(s) = sink.clone() {
                // On a runtime thread: a file's writer inherits its blocked signals.
                runtime.spawn(async move { s.start() });
            }
            lanes.sinks.push(sink);
            runtime.spawn(lanes.add(target, Backlog::new(jobs, bytes)));
        }
        Ok(Engine { runtime: Some(scheduler), lanes, error_log })
    }

    /// Where copies are admitted and handed to their targets.
    pub fn lanes(&self) -> &Lanes {
        &self.lanes
    }

    pub fn targets(&self) -> impl Iterator<Item = (TargetId, &TargetSpec, &TargetStats)> {
        self.lanes.targets().map(|(id, t)| (id, &t.spec, &*t.stats))
    }

    pub fn gauges(&self, id: TargetId) -> Gauges {
        self.lanes.target(id).map_or_else(Gauges::default, |t| Gauges {
            inflight: t.stats.inflight.load(Ordering::Relaxed),
            breaker_open: i64::from(t.breaker.is_open()),
            connections: t.connections() as i64,
        })
    }

    /// The capture target at `url`, if it records to a file: nginx opened the file again.
    pub fn hand_file(&self, url: &str, file: std::fs::File) {
        let sink = self.lanes.targets().find(|(_, t)| t.spec.url == url).and_then(|(id, _)| self.sink(id));
        if let Some(s) = sink {
            s.hand(file);
        }
    }

    fn sink(&self, id: TargetId) -> Option<&Arc<Sink>> {
        self.lanes.sinks.get(id).and_then(Option::as_ref)
    }

    pub fn error_log(&self) -> &ErrorLog {
        &self.error_log
    }

    pub fn mismatch_log(&self) -> &MismatchLog {
        &self.lanes.logs.mismatch
    }

    pub fn copy_log(&self) -> &CopyLog {
        &self.lanes.logs.copies
    }

    /// Comparison counters of target `id`; `None` while a runtime thread updates them.
    pub fn verdicts(&self, id: TargetId) -> Option<Vec<EndpointCounts>> {
        self.lanes.verdicts(id)
    }

    pub fn spec(&self, id: TargetId) -> Option<&TargetSpec> {
        self.lanes.target(id).map(|t| &t.spec)
    }

    pub fn queued_bytes(&self) -> usize {
        self.lanes.queued().1
    }

    pub fn queued_jobs(&self) -> usize {
        self.lanes.queued().0
    }

    /// Waits (blocking the caller) until nothing is queued or in flight, or `limit` passes.
    pub fn drain(&self, limit: Duration) {
        self.lanes.flush();
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let inflight: i64 =
                self.lanes.targets().map(|(_, t)| t.stats.inflight.load(Ordering::Relaxed)).sum();
            if self.lanes.queued().0 == 0 && inflight <= 0 {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops the runtime; whatever is still queued or in flight counts `dropped{shutdown}`.
    pub fn shutdown(&mut self, limit: Duration) {
        self.lanes.close();
        if let Some(rt) = self.runtime.take() {
            rt.shutdown(limit);
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::capture::{HeaderEdits, RequestHead};
    use crate::engine::client::{BreakerSettings, CopyOptions};
    use crate::engine::config::parse_target;
    use crate::engine::outcome::{DropReason, FailReason, Outcome};

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
            sinks: Vec::new(),
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
            if let Ok(a) = engine.lanes().admit(id, Ok(()), OPTS, false) {
                if let Ok(copy) = a.into_copy(head.clone(), None, None) {
                    let _ = engine.lanes().submit(copy);
                }
            }
        }
        engine.lanes().flush();
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
            stats.get(Outcome::Failed(FailReason::Connect))
                + stats.get(Outcome::Dropped(DropReason::BreakerOpen)),
            30,
            "{}",
            stats.summary()
        );
    }
}
