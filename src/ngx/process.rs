//! Worker lifecycle: the engine starts in each worker (never in the master or
//! cache processes) and stops, after a bounded drain, when the worker exits.
//! A timer on the nginx thread carries runtime error reports into the error log.

use std::cell::RefCell;
use std::time::Duration;

use ngx::ffi::{
    NGX_LOG_ALERT, NGX_LOG_NOTICE, NGX_LOG_WARN, NGX_OK, NGX_PROCESS_SINGLE, NGX_PROCESS_WORKER,
    ngx_add_timer, ngx_cycle, ngx_cycle_t, ngx_del_timer, ngx_event_t, ngx_int_t, ngx_log_t, ngx_process,
};
use ngx::http::HttpModuleMainConf;
use ngx::ngx_log_error;

use super::module::Module;
use super::zone::{Slot, Zone};
use crate::engine::Engine;
use crate::engine::outcome::{CounterVec, slot};
use crate::engine::sample::{Rng, TokenBucket};
use crate::engine::status::{Snapshot, TargetSnapshot};

/// How long runtime threads get to stop once draining is over.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);
/// Counters reach the shared zone this often; error reports go out every fourth tick (1 s).
const TICK_MS: usize = 250;
const REPORT_EVERY: u32 = 4;

/// Per-worker sampling state, used only on the nginx thread.
pub struct Selection {
    pub rng: Rng,
    pub buckets: Vec<TokenBucket>,
}

struct Worker {
    engine: Engine,
    select: Selection,
    drain_timeout: Duration,
    shared: Option<Shared>,
    ticks: u32,
}

/// This worker's link to the shared zone: its targets' slots and what it already added.
struct Shared {
    zone: Zone,
    slots: Vec<*const Slot>,
    last: Vec<CounterVec>,
    last_gauges: Vec<(i64, i64)>,
    last_queue: (i64, i64),
}

impl Shared {
    fn new(zone: Zone, engine: &Engine) -> Shared {
        let slots: Vec<*const Slot> = engine
            .targets()
            .map(|(t, _)| zone.find(&t.url).map_or(std::ptr::null(), std::ptr::from_ref))
            .collect();
        let n = slots.len();
        Shared {
            zone,
            slots,
            last: vec![[0; slot::COUNTERS]; n],
            last_gauges: vec![(0, 0); n],
            last_queue: (0, 0),
        }
    }

    /// Adds what changed since the last fold; `last_fold` withdraws this worker's gauges.
    fn fold(&mut self, engine: &Engine, last_fold: bool) {
        let gauges: Vec<(i64, i64)> = engine.gauges().collect();
        for (i, (_, stats)) in engine.targets().enumerate() {
            // SAFETY: slots point into the zone, mapped for the life of this configuration.
            let Some(slot) = (unsafe { self.slots[i].as_ref() }) else { continue };
            let now = stats.snapshot();
            let mut delta = [0; slot::COUNTERS];
            for k in 0..slot::COUNTERS {
                delta[k] = now[k].wrapping_sub(self.last[i][k]);
            }
            slot.add(&delta);
            self.last[i] = now;
            let g = if last_fold { (0, 0) } else { gauges[i] };
            slot.add_gauges(g.0 - self.last_gauges[i].0, g.1 - self.last_gauges[i].1);
            self.last_gauges[i] = g;
        }
        let q = if last_fold { (0, 0) } else { (engine.queued_jobs() as i64, engine.queued_bytes() as i64) };
        self.zone.add_queue(q.0 - self.last_queue.0, q.1 - self.last_queue.1);
        self.last_queue = q;
    }
}

thread_local! {
    // Touched only on the nginx thread: request handlers, the timer, the process hooks.
    static WORKER: RefCell<Option<Worker>> = const { RefCell::new(None) };
}

static mut REPORT_TIMER: ngx_event_t = unsafe { std::mem::zeroed() };

/// Runs `f` with this worker's engine and sampling state, if a runtime is running.
pub fn with_engine(f: impl FnOnce(&Engine, &mut Selection)) {
    WORKER.with_borrow_mut(|w| {
        if let Some(w) = w {
            f(&w.engine, &mut w.select);
        }
    });
}

fn cycle_log() -> *mut ngx_log_t {
    // SAFETY: ngx_cycle is valid in any process once configuration is loaded.
    unsafe { (*ngx_cycle).log }
}

fn log(level: u32, msg: &str) {
    let log = cycle_log();
    ngx_log_error!(level, log, "{msg}");
}

pub fn log_alert(msg: &str) {
    log(NGX_LOG_ALERT, msg);
}

/// Runtime threads must not take signals meant for the nginx worker.
fn block_signals() {
    // SAFETY: plain libc calls on a local, fully initialised signal set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

pub unsafe extern "C" fn init_process(cycle: *mut ngx_cycle_t) -> ngx_int_t {
    let result = std::panic::catch_unwind(|| {
        // SAFETY: set by nginx before init_process; read-only here.
        let process = unsafe { ngx_process } as u32;
        if process != NGX_PROCESS_WORKER && process != NGX_PROCESS_SINGLE {
            return;
        }
        // SAFETY: nginx passes the new, valid cycle.
        let Some(mc) = Module::main_conf(unsafe { &*cycle }) else { return };
        if mc.targets.is_empty() {
            return;
        }
        let settings = mc.engine_settings();
        match Engine::start(settings, mc.targets.clone(), block_signals) {
            Ok(engine) => {
                log(
                    NGX_LOG_NOTICE,
                    &format!(
                        "async_mirror: runtime started: targets={} threads={} queue_size={} \
                         queue_bytes={} max_connections={}",
                        mc.targets.len(),
                        settings.threads,
                        settings.queue_size,
                        settings.queue_bytes,
                        settings.client.max_connections,
                    ),
                );
                // SAFETY: the zone was initialised by the master before workers started.
                let zone = mc.zone.and_then(|z| unsafe { Zone::from_shm(z.as_ptr()) });
                let shared = zone.map(|z| Shared::new(z, &engine));
                let seed = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64)
                    ^ u64::from(std::process::id());
                let select = Selection {
                    rng: Rng::seeded(seed),
                    buckets: mc.rates.iter().map(|&r| TokenBucket::new(r)).collect(),
                };
                WORKER.set(Some(Worker {
                    engine,
                    select,
                    drain_timeout: mc.drain_timeout(),
                    shared,
                    ticks: 0,
                }));
                start_report_timer();
            }
            // Production traffic goes on unmirrored rather than losing the worker.
            Err(e) => log_alert(&format!("async_mirror: runtime not started, mirroring disabled: {e}")),
        }
    });
    if result.is_err() {
        log_alert("async_mirror: panic in init_process, mirroring disabled");
    }
    NGX_OK as ngx_int_t
}

pub unsafe extern "C" fn exit_process(_cycle: *mut ngx_cycle_t) {
    let result = std::panic::catch_unwind(|| {
        let Some(mut w) = WORKER.take() else { return };
        // SAFETY: the timer event is only used on this thread.
        unsafe {
            let ev = &raw mut REPORT_TIMER;
            if (*ev).timer_set() != 0 {
                ngx_del_timer(ev);
            }
        }
        // nginx unloads this module right after exit_process, so both steps are bounded.
        w.engine.drain(w.drain_timeout);
        w.engine.shutdown(SHUTDOWN_GRACE);
        write_reports(&w.engine);
        if let Some(shared) = w.shared.as_mut() {
            shared.fold(&w.engine, true);
        }
        for (spec, stats) in w.engine.targets() {
            log(
                NGX_LOG_NOTICE,
                &format!("async_mirror: worker exiting, target \"{}\": {}", spec.url, stats.summary()),
            );
        }
    });
    if result.is_err() {
        log_alert("async_mirror: panic in exit_process");
    }
}

fn start_report_timer() {
    // SAFETY: the static event is only used on the nginx thread; zeroed is a valid idle event.
    unsafe {
        let ev = &raw mut REPORT_TIMER;
        (*ev).handler = Some(report_timer_handler);
        (*ev).log = cycle_log();
        (*ev).data = std::ptr::null_mut();
        // A pending report timer must not keep a gracefully exiting worker alive.
        (*ev).set_cancelable(1);
        ngx_add_timer(ev, TICK_MS as _);
    }
}

unsafe extern "C" fn report_timer_handler(ev: *mut ngx_event_t) {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        WORKER.with_borrow_mut(|w| {
            let Some(w) = w else { return };
            if let Some(shared) = w.shared.as_mut() {
                shared.fold(&w.engine, false);
            }
            w.ticks = w.ticks.wrapping_add(1);
            if w.ticks % REPORT_EVERY == 0 {
                write_reports(&w.engine);
            }
        })
    }));
    if result.is_err() {
        log_alert("async_mirror: panic in report timer");
    }
    // SAFETY: ev is our static timer event, called on the nginx thread.
    unsafe { ngx_add_timer(ev, TICK_MS as _) };
}

/// Error reports from the runtime, at most one line per target per interval.
fn write_reports(engine: &Engine) {
    let urls: Vec<&str> = engine.targets().map(|(s, _)| s.url.as_str()).collect();
    for r in engine.log().take() {
        let url = urls.get(r.target).copied().unwrap_or("?");
        let more = match r.suppressed {
            0 => String::new(),
            n => format!(", {n} similar errors suppressed"),
        };
        log(NGX_LOG_WARN, &format!("async_mirror: {} while mirroring to \"{url}\"{more}", r.message));
    }
}

/// What the status page shows: the zone's sums if there is one (after adding this
/// worker's latest changes), otherwise this worker's own counters.
pub fn snapshot() -> Snapshot {
    WORKER.with_borrow_mut(|w| {
        let Some(w) = w else { return Snapshot::default() };
        if let Some(shared) = w.shared.as_mut() {
            shared.fold(&w.engine, false);
            let (queue_jobs, queue_bytes) = shared.zone.queue();
            let targets = shared
                .zone
                .read()
                .into_iter()
                .map(|(url, counters, inflight, breaker_open)| TargetSnapshot {
                    url,
                    counters,
                    inflight,
                    breaker_open,
                })
                .collect();
            return Snapshot { targets, queue_jobs, queue_bytes, shared: true };
        }
        // One series per URL: an https URL used under several TLS settings is several targets.
        let mut targets: Vec<TargetSnapshot> = Vec::new();
        for ((spec, stats), (inflight, open)) in w.engine.targets().zip(w.engine.gauges()) {
            let counters = stats.snapshot();
            match targets.iter_mut().find(|t| t.url == spec.url) {
                Some(t) => {
                    t.counters.iter_mut().zip(counters).for_each(|(a, b)| *a += b);
                    t.inflight += inflight;
                    t.breaker_open = t.breaker_open.max(open);
                }
                None => targets.push(TargetSnapshot {
                    url: spec.url.clone(),
                    counters,
                    inflight,
                    breaker_open: open,
                }),
            }
        }
        Snapshot {
            targets,
            queue_jobs: w.engine.queued_jobs() as i64,
            queue_bytes: w.engine.queued_bytes() as i64,
            shared: false,
        }
    })
}
