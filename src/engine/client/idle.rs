//! HTTP/1.1 connections to one target: idle ones kept for `async_mirror_keepalive_timeout`,
//! newest first, within the target's [`Limits`]. Generic over the connection so that
//! the rules are unit-tested with a fake one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::limits::{ConnSlot, DestKey, Limits};

/// What the pool needs to know about a connection.
pub trait Connection: Send + 'static {
    /// Closed by the peer, or broken: never handed out again.
    fn is_closed(&self) -> bool;
    /// Can take a request now.
    fn is_ready(&self) -> bool;
}

/// A connection together with its place in the pool.
pub struct Pooled<C> {
    pub conn: C,
    pub key: DestKey,
    _slot: ConnSlot,
}

struct Idle<C> {
    conn: Pooled<C>,
    since: Instant,
}

pub struct IdlePool<C> {
    idle: Mutex<Vec<Idle<C>>>,
    limits: Arc<Limits>,
    keepalive: Duration,
    /// Recent exchange time, for how long a copy waits before another connection opens.
    exchange: ExchangeTime,
}

/// How long exchanges on a target's connections take lately (a moving average).
///
/// A copy that finds every connection busy waits for one to come back before it opens
/// another. With N busy connections one comes back every exchange time / N, so a copy
/// that has waited a whole exchange time means the connections cannot keep up, and only
/// then does another open (Little's law: connections = rate × exchange time). A fast
/// mirror is served by a few busy connections, a 20 ms one by as many as it needs.
#[derive(Default)]
pub struct ExchangeTime(AtomicU64);

impl ExchangeTime {
    /// The least wait. A runtime thread that shares busy cores can be off the CPU for a
    /// scheduler time slice (several milliseconds); a shorter wait would take that for
    /// connections that cannot keep up, and open one for every copy that arrived meanwhile.
    pub const MIN: Duration = Duration::from_millis(5);
    /// The most: a slow or stuck mirror never makes copies wait longer than this for a
    /// connection that would be free to open.
    pub const MAX: Duration = Duration::from_millis(50);
    /// The wait of a target that pools per address (its addresses' exchanges are not
    /// averaged apart).
    pub const MIN_SHARED: Duration = Duration::from_millis(1);

    /// One exchange's time joins the average (weight 1/8).
    pub fn record(&self, took: Duration) {
        let sample = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let old = self.0.load(Ordering::Relaxed);
        let new = if old == 0 { sample } else { old - old / 8 + sample / 8 };
        self.0.store(new.max(1), Ordering::Relaxed);
    }

    /// How long a copy waits for a busy connection before it opens another.
    pub fn grow_after(&self) -> Duration {
        Duration::from_micros(self.0.load(Ordering::Relaxed)).clamp(Self::MIN, Self::MAX)
    }
}

/// What a copy gets from the pool.
pub enum Checkout<C> {
    /// An idle connection to the copy's destination.
    Idle(Pooled<C>),
    /// No idle one, but room to open one: connect, then [`IdlePool::attach`].
    Room(ConnSlot),
    /// As many connections as allowed exist and none is idle.
    Full,
}

impl<C: Connection> IdlePool<C> {
    pub fn new(limits: Arc<Limits>, keepalive: Duration) -> IdlePool<C> {
        IdlePool { idle: Mutex::new(Vec::new()), limits, keepalive, exchange: ExchangeTime::default() }
    }

    /// Recent exchange time on this pool's connections.
    pub fn exchange_time(&self) -> &ExchangeTime {
        &self.exchange
    }

    /// An idle connection to `key`, or (when `may_open`) room for a new one. At the cap,
    /// an idle connection to another destination is closed to make room. Expired and
    /// closed connections are pruned by [`IdlePool::sweep`], not on every checkout.
    pub fn checkout(&self, key: &DestKey, may_open: bool) -> Checkout<C> {
        let Ok(mut idle) = self.idle.lock() else { return Checkout::Full };
        // Newest first: it is the least likely to have been closed by the peer.
        if let Some(i) = idle.iter().rposition(|i| i.conn.key == *key && i.conn.conn.is_ready()) {
            return Checkout::Idle(idle.swap_remove(i).conn);
        }
        if !may_open {
            return Checkout::Full;
        }
        if let Some(slot) = self.limits.try_slot() {
            return Checkout::Room(slot);
        }
        if !idle.is_empty() {
            drop(idle.remove(0));
            if let Some(slot) = self.limits.try_slot() {
                return Checkout::Room(slot);
            }
        }
        Checkout::Full
    }

    /// A new connection takes the place reserved for it.
    pub fn attach(conn: C, key: DestKey, slot: ConnSlot) -> Pooled<C> {
        Pooled { conn, key, _slot: slot }
    }

    /// A connection that finished its exchange cleanly goes back to the idle list.
    pub fn checkin(&self, conn: Pooled<C>) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(Idle { conn, since: Instant::now() });
        }
        self.limits.notify.notify_one();
    }

    /// Closes idle connections past the keepalive timeout, closed by the peer, or whose
    /// destination `keep` no longer wants.
    pub fn sweep(&self, keep: impl Fn(&DestKey) -> bool) {
        if let Ok(mut idle) = self.idle.lock() {
            self.prune(&mut idle);
            idle.retain(|i| keep(&i.conn.key));
        }
    }

    /// One clock read for the whole list.
    fn prune(&self, idle: &mut Vec<Idle<C>>) {
        let (ttl, now) = (self.keepalive, Instant::now());
        idle.retain(|i| now.saturating_duration_since(i.since) < ttl && !i.conn.conn.is_closed());
    }

    #[cfg(test)]
    pub fn idle(&self) -> usize {
        self.idle.lock().map_or(0, |i| i.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::client::limits::CONNECTS_IN_PROGRESS;
    use std::sync::atomic::AtomicBool;
    use std::sync::atomic::Ordering;

    struct Fake(Arc<AtomicBool>);
    impl Connection for Fake {
        fn is_closed(&self) -> bool {
            self.0.load(Ordering::Relaxed)
        }
        fn is_ready(&self) -> bool {
            !self.is_closed()
        }
    }

    fn key(h: &str) -> DestKey {
        Some((h.to_string(), 80))
    }

    fn open(pool: &IdlePool<Fake>, k: &DestKey) -> (Pooled<Fake>, Arc<AtomicBool>) {
        let Checkout::Room(slot) = pool.checkout(k, true) else { panic!("no room") };
        let closed = Arc::new(AtomicBool::new(false));
        (IdlePool::attach(Fake(closed.clone()), k.clone(), slot), closed)
    }

    #[test]
    fn a_copy_waits_about_one_exchange_before_another_connection_opens() {
        let t = ExchangeTime::default();
        assert_eq!(t.grow_after(), ExchangeTime::MIN, "nothing measured yet");
        t.record(Duration::from_micros(200));
        assert_eq!(t.grow_after(), ExchangeTime::MIN, "a fast mirror: the least wait");
        for _ in 0..64 {
            t.record(Duration::from_millis(20));
        }
        let w = t.grow_after();
        assert!(w > Duration::from_millis(19) && w <= Duration::from_millis(20), "{w:?}");
        for _ in 0..64 {
            t.record(Duration::from_secs(5));
        }
        assert_eq!(t.grow_after(), ExchangeTime::MAX, "a stuck mirror: the most");
    }

    #[test]
    fn cap_reuse_eviction_and_expiry() {
        let limits = Limits::new(2, CONNECTS_IN_PROGRESS);
        let pool: IdlePool<Fake> = IdlePool::new(limits.clone(), Duration::from_millis(50));
        let (a, _) = open(&pool, &key("a"));
        let (b, b_closed) = open(&pool, &key("b"));
        assert!(matches!(pool.checkout(&key("a"), true), Checkout::Full), "the cap counts busy connections");
        pool.checkin(a);
        assert!(matches!(pool.checkout(&key("a"), true), Checkout::Idle(_)), "reused");
        assert_eq!(limits.open(), 1, "the checked-out connection was dropped by the test");
        pool.checkin(b);
        b_closed.store(true, Ordering::Relaxed);
        assert!(
            matches!(pool.checkout(&key("b"), true), Checkout::Room(_)),
            "a closed one is never handed out"
        );
        let (c, _) = open(&pool, &key("c"));
        let (d, _) = open(&pool, &key("d"));
        pool.checkin(c);
        assert_eq!(limits.open(), 2);
        match pool.checkout(&key("e"), true) {
            Checkout::Room(_) => {}
            _ => panic!("an idle connection elsewhere makes room"),
        }
        pool.checkin(d);
        std::thread::sleep(Duration::from_millis(60));
        pool.sweep(|_| true);
        assert_eq!((pool.idle(), limits.open()), (0, 0), "expired connections close");
    }
}
