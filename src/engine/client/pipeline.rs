//! HTTP/1.1 pipelining, for mirrors known to support it
//! (`async_mirror_http_version 1.1 pipeline=N`): up to N copies written back to back on one
//! connection, as many as are waiting in one write, and their answers read in order in one
//! task per connection. hyper does not pipeline, so these connections are driven here;
//! answers are parsed with `httparse`, as hyper parses them.
//!
//! What pipelining means for a copy: answers come in the order the copies were sent, so a
//! slow answer holds the ones behind it. When the first copy's time runs out the
//! connection is closed and every copy it carried ends `failed{timeout}`. When a mirror
//! announces the end of a connection (`Connection: close` on an answer, as nginx does at
//! `keepalive_requests`), it has not processed the copies behind that answer: they go
//! again on another connection. When it closes a connection unannounced, the copies it
//! had not answered go once more; a second time, they end `failed{reset}`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

use super::breaker::Clock;
use super::connect::{self, Stream};
use super::limits::ConnSlot;
use super::response::{Keep, MirrorResponse};
use super::target::{CopyOptions, Target};
use super::wire::Reader;
use crate::engine::outcome::{FailReason, Failure, Outcome};

/// How long a copy waits for a busy pipelined connection before another is opened.
const GROW_AFTER: Duration = Duration::from_millis(1);

/// A copy as a pipelined connection carries it.
pub struct Piped<T> {
    pub item: T,
    /// The whole request: head and body.
    pub bytes: Bytes,
    /// A HEAD request: its answer has no body.
    pub head_only: bool,
    pub keep: Keep,
    pub opts: CopyOptions,
    /// Sent once already on a connection the mirror closed before answering it.
    pub resent: bool,
    /// When it left the backlog: its `async_mirror_timeout` runs from here, as for a copy
    /// that waits for a connection of its own.
    pub departed: Instant,
}

/// Where pipelined copies end: the lane that sent them.
pub trait Landing<T>: Send + Sync + 'static {
    /// `took` runs from the copy's departure to its outcome.
    fn land(&self, item: T, outcome: Outcome, resp: Option<MirrorResponse>, took: Duration);
}

/// One target's pipelined connections and the copies waiting for one.
pub struct Pipeline<T> {
    pub depth: usize,
    queue: Mutex<VecDeque<(Piped<T>, Instant)>>,
    notify: Notify,
    drivers: AtomicUsize,
}

impl<T: Send + 'static> Pipeline<T> {
    pub fn new(depth: usize) -> Arc<Pipeline<T>> {
        Arc::new(Pipeline {
            depth,
            queue: Mutex::default(),
            notify: Notify::new(),
            drivers: AtomicUsize::new(0),
        })
    }

    /// Queues a copy for the next connection with room, starting one if none runs.
    pub fn push(
        self: &Arc<Self>,
        job: Piped<T>,
        target: &Arc<Target>,
        landing: &Arc<dyn Landing<T>>,
        clock: Clock,
    ) {
        if let Ok(mut q) = self.queue.lock() {
            q.push_back((job, Instant::now()));
        }
        self.notify.notify_one();
        if self.drivers.load(Ordering::Acquire) == 0 {
            self.start(target, landing, clock);
        }
    }

    /// Another connection, if the target's limits allow one.
    fn start(self: &Arc<Self>, target: &Arc<Target>, landing: &Arc<dyn Landing<T>>, clock: Clock) -> bool {
        let Some(slot) = target.limits.try_slot() else { return false };
        self.drivers.fetch_add(1, Ordering::AcqRel);
        tokio::spawn(drive(self.clone(), target.clone(), landing.clone(), clock, slot));
        true
    }

    fn take(&self) -> Option<Piped<T>> {
        self.queue.lock().ok()?.pop_front().map(|(j, _)| j)
    }

    fn requeue(&self, jobs: impl DoubleEndedIterator<Item = Piped<T>>) {
        if let Ok(mut q) = self.queue.lock() {
            for job in jobs.rev() {
                q.push_front((job, Instant::now()));
            }
        }
        self.notify.notify_one();
    }

    /// Whether the oldest waiting copy has waited long enough for another connection.
    fn waited(&self) -> bool {
        self.queue
            .lock()
            .ok()
            .and_then(|q| q.front().map(|(_, at)| at.elapsed() >= GROW_AFTER))
            .unwrap_or(false)
    }

    fn is_empty(&self) -> bool {
        self.queue.lock().map_or(true, |q| q.is_empty())
    }

    fn drain(&self) -> Vec<Piped<T>> {
        self.queue.lock().map(|mut q| q.drain(..).map(|(j, _)| j).collect()).unwrap_or_default()
    }
}

/// How a connection ended while it carried copies.
enum Broken {
    /// The copies it carried cannot be answered: they end with this failure.
    Failed(Failure),
    /// The mirror announced its end with an answer: the rest were not processed.
    Closed,
}

/// One pipelined connection: connects, writes waiting copies in batches, reads answers in
/// order, and ends when idle past the keepalive timeout.
async fn drive<T: Send + 'static>(
    pipe: Arc<Pipeline<T>>,
    target: Arc<Target>,
    landing: Arc<dyn Landing<T>>,
    clock: Clock,
    slot: ConnSlot,
) {
    let idle_limit = target.keepalive;
    let end = |flying: &mut VecDeque<Piped<T>>, outcome: Outcome| {
        for job in flying.drain(..) {
            landing.land(job.item, outcome, None, job.departed.elapsed());
        }
    };
    'connection: loop {
        // A connection only for copies that wait.
        if pipe.is_empty() && tokio::time::timeout(idle_limit, pipe.notify.notified()).await.is_err() {
            break;
        }
        let Some(dest) = target.spec.dest.as_ref() else { break };
        let limit = pipe.queue.lock().ok().and_then(|q| q.front().map(|(j, _)| j.opts.connect_timeout));
        let Some(limit) = limit else { continue };
        // `resolve=`: one of the name's current addresses, as for any copy.
        let at = match &target.resolver {
            None => Ok(None),
            Some(r) => r
                .pick()
                .map(Some)
                .ok_or_else(|| Failure::new(FailReason::Connect, format!("\"{}\" has not resolved", r.host))),
        };
        let connected = match at {
            Ok(at) => Box::pin(connect::connect(dest, at, target.spec.tls.as_ref(), limit)).await,
            Err(f) => Err(f),
        };
        let stream = match connected {
            Ok((s, _)) => s,
            Err(f) => {
                // The target cannot be reached now: every waiting copy fails as its own
                // connect would.
                let mut failed: VecDeque<Piped<T>> = pipe.drain().into();
                let breaker = failed.front().map(|j| j.opts.breaker);
                target.record_failure(&f, breaker, clock.now_ms());
                end(&mut failed, Outcome::Failed(f.reason));
                if target.breaker_open(clock.now_ms()) {
                    break;
                }
                continue;
            }
        };
        target.stats.connections_opened.fetch_add(1, Ordering::Relaxed);
        let mut conn = Conn {
            stream,
            reader: Reader::default(),
            rbuf: BytesMut::with_capacity(16 << 10),
            wbuf: Vec::new(),
            answered: 0,
        };
        let mut flying: VecDeque<Piped<T>> = VecDeque::new();
        let mut idle_since = Instant::now();
        loop {
            // As many waiting copies as the depth allows, in one write.
            while flying.len() < pipe.depth {
                let Some(job) = pipe.take() else { break };
                // Its time ran out while it waited for a connection: never sent late, and
                // never the reason the copies behind it are cut off.
                if job.departed.elapsed() >= job.opts.timeout {
                    landing.land(
                        job.item,
                        Outcome::Failed(FailReason::Timeout),
                        None,
                        job.departed.elapsed(),
                    );
                    continue;
                }
                conn.wbuf.extend_from_slice(&job.bytes);
                flying.push_back(job);
            }
            if flying.len() == pipe.depth && pipe.waited() {
                pipe.start(&target, &landing, clock);
            }
            if !conn.wbuf.is_empty() {
                if let Err(e) = conn.stream.write_all(&conn.wbuf).await {
                    let f = Failure::new(FailReason::Reset, format!("write to the mirror failed: {e}"));
                    target.record_failure(&f, flying.front().map(|j| j.opts.breaker), clock.now_ms());
                    end(&mut flying, Outcome::Failed(FailReason::Reset));
                    continue 'connection;
                }
                conn.wbuf.clear();
            }
            if flying.is_empty() {
                let left = idle_limit.saturating_sub(idle_since.elapsed());
                tokio::select! {
                    () = pipe.notify.notified() => continue,
                    () = tokio::time::sleep(left) => break 'connection,
                    // The mirror closed the idle connection (or sent what nothing asked
                    // for): a new one for the next copies.
                    _ = conn.stream.read_buf(&mut conn.rbuf) => continue 'connection,
                }
            }
            let (deadline, breaker) = (flying[0].departed + flying[0].opts.timeout, flying[0].opts.breaker);
            let read = tokio::select! {
                n = conn.stream.read_buf(&mut conn.rbuf) => n,
                () = tokio::time::sleep_until(deadline.into()) => {
                    // A slow answer holds the ones behind it: they end with it.
                    let f = Failure::new(FailReason::Timeout, "mirror timed out (pipelined)");
                    target.record_failure(&f, Some(breaker), clock.now_ms());
                    end(&mut flying, Outcome::Failed(FailReason::Timeout));
                    continue 'connection;
                }
                () = pipe.notify.notified(), if flying.len() < pipe.depth => continue,
            };
            let eof = matches!(read, Ok(0));
            if let Err(e) = read {
                let f = Failure::new(FailReason::Reset, format!("read from the mirror failed: {e}"));
                target.record_failure(&f, Some(breaker), clock.now_ms());
                end(&mut flying, Outcome::Failed(FailReason::Reset));
                continue 'connection;
            }
            match conn.answers(&mut flying, eof, &target, &*landing) {
                Ok(()) if eof => {
                    // Ended between answers: what it did not answer goes again once.
                    resend_or_end(&pipe, &mut flying, &target, &*landing, clock);
                    continue 'connection;
                }
                Ok(()) => {}
                Err(Broken::Closed) => {
                    // Announced: none of the rest was processed.
                    pipe.requeue(flying.drain(..));
                    continue 'connection;
                }
                Err(Broken::Failed(f)) => {
                    target.record_failure(&f, flying.front().map(|j| j.opts.breaker), clock.now_ms());
                    end(&mut flying, Outcome::Failed(f.reason));
                    continue 'connection;
                }
            }
            if flying.is_empty() {
                idle_since = Instant::now();
            }
        }
    }
    pipe.drivers.fetch_sub(1, Ordering::AcqRel);
    drop(slot);
    // Copies that arrived as this connection ended get another one.
    if !pipe.is_empty() && pipe.drivers.load(Ordering::Acquire) == 0 {
        pipe.start(&target, &landing, clock);
    }
}

/// Copies a connection closed unannounced did not answer go once more; a second time,
/// they fail.
fn resend_or_end<T: Send + 'static>(
    pipe: &Arc<Pipeline<T>>,
    flying: &mut VecDeque<Piped<T>>,
    target: &Target,
    landing: &dyn Landing<T>,
    clock: Clock,
) {
    let (again, done): (Vec<Piped<T>>, Vec<Piped<T>>) = flying.drain(..).partition(|j| !j.resent);
    for job in done {
        let fail = Failure::new(FailReason::Reset, "connection closed by mirror");
        target.record_failure(&fail, Some(job.opts.breaker), clock.now_ms());
        landing.land(job.item, Outcome::Failed(FailReason::Reset), None, job.departed.elapsed());
    }
    pipe.requeue(again.into_iter().map(|mut job| {
        job.resent = true;
        job
    }));
}

struct Conn {
    stream: Stream,
    reader: Reader,
    rbuf: BytesMut,
    wbuf: Vec<u8>,
    /// Answers read so far: the first one's connection was not reused.
    answered: u64,
}

impl Conn {
    /// Ends every copy whose answer is complete in the read buffer, in order.
    fn answers<T: Send + 'static>(
        &mut self,
        flying: &mut VecDeque<Piped<T>>,
        eof: bool,
        target: &Target,
        landing: &dyn Landing<T>,
    ) -> Result<(), Broken> {
        while let Some(front) = flying.front() {
            let keep = front.keep.max;
            let answered = self
                .reader
                .next(&mut self.rbuf, front.head_only, keep, keep > 0, eof)
                .map_err(|m| Broken::Failed(Failure::new(FailReason::Reset, m.0)))?;
            let Some(a) = answered else { return Ok(()) };
            let job = flying.pop_front().expect("a front");
            target.breaker.success();
            self.answered += 1;
            let mut resp = MirrorResponse {
                status: a.status,
                headers: a.headers,
                body: a.body,
                body_len: a.body_len,
                reused: self.answered > 1,
                _charge: None,
            };
            // The kept body is charged to the budget (or not kept, and not compared).
            if let Some(budget) = job.keep.budget.as_ref().filter(|_| !resp.body.is_empty()) {
                let mut charge = crate::engine::capture::Charge::new(budget);
                if charge.grow(resp.body.len()) {
                    resp._charge = Some(charge);
                } else {
                    resp.body = Bytes::new();
                }
            }
            landing.land(job.item, resp.outcome(), Some(resp), job.departed.elapsed());
            if a.close {
                return Err(Broken::Closed);
            }
        }
        Ok(())
    }
}
