//! The runtime's threads. With one thread (`async_mirror_threads 1`, the default) Tokio's
//! current-thread scheduler runs on a thread of its own: a copy's wake-ups then skip the
//! work-stealing machinery a single worker has no use for. With more, the multi-thread
//! scheduler shares the copies between them.

use std::io;
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::runtime::{Builder, Handle, Runtime};
use tokio::sync::oneshot;

const THREAD_NAME: &str = "async-mirror";

/// How long past the tasks' time a stopping worker waits for the runtime's thread.
const STUCK_GRACE: Duration = Duration::from_millis(200);

pub enum Scheduler {
    Shared(Runtime),
    /// The thread that drives a current-thread runtime until told to stop (with how long
    /// it then gives the tasks left), or until `stop` is dropped; it says on `done` when
    /// the runtime is gone.
    Own {
        handle: Handle,
        stop: oneshot::Sender<Duration>,
        done: mpsc::Receiver<()>,
        thread: JoinHandle<()>,
    },
}

impl Scheduler {
    /// `on_thread_start` runs first on every thread the runtime starts.
    ///
    /// # Errors
    /// When the runtime or its thread cannot be created.
    pub fn start(
        threads: usize,
        on_thread_start: impl Fn() + Send + Sync + 'static,
    ) -> io::Result<Scheduler> {
        let on_start = Arc::new(on_thread_start);
        let hook = {
            let f = on_start.clone();
            move || f()
        };
        let shared = threads > 1;
        let mut builder = if shared {
            let mut b = Builder::new_multi_thread();
            b.worker_threads(threads);
            b
        } else {
            Builder::new_current_thread()
        };
        let rt = builder
            .max_blocking_threads(1)
            .thread_name(THREAD_NAME)
            .on_thread_start(hook)
            .enable_io()
            .enable_time()
            .build()?;
        if shared {
            return Ok(Scheduler::Shared(rt));
        }
        let handle = rt.handle().clone();
        let (stop, stopped) = oneshot::channel::<Duration>();
        let (gone, done) = mpsc::channel();
        let thread = std::thread::Builder::new().name(THREAD_NAME.into()).spawn(move || {
            on_start();
            let limit = rt.block_on(async { stopped.await.unwrap_or(Duration::ZERO) });
            rt.shutdown_timeout(limit);
            let _ = gone.send(());
        })?;
        Ok(Scheduler::Own { handle, stop, done, thread })
    }

    pub fn handle(&self) -> &Handle {
        match self {
            Scheduler::Shared(rt) => rt.handle(),
            Scheduler::Own { handle, .. } => handle,
        }
    }

    /// Stops the runtime, giving its tasks up to `limit` to end; the caller waits for that,
    /// and a little more for a thread stuck in a task, which is then left behind.
    pub fn shutdown(self, limit: Duration) {
        match self {
            Scheduler::Shared(rt) => rt.shutdown_timeout(limit),
            Scheduler::Own { stop, done, thread, .. } => {
                let _ = stop.send(limit);
                // Disconnected: the thread ended without saying so (a panic); it is gone too.
                if done.recv_timeout(limit + STUCK_GRACE) != Err(mpsc::RecvTimeoutError::Timeout) {
                    let _ = thread.join();
                }
            }
        }
    }
}
