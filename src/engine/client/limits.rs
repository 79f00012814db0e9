//! One target's connection budget, shared by its HTTP/1.1 and HTTP/2 connections: a cap
//! on how many exist at once (separate from the cap on copies in flight: an HTTP/2
//! connection carries many), a cap on connects in progress, and the wake-up for copies
//! waiting for a connection or a stream.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Notify, Semaphore, SemaphorePermit};

/// Connects in progress per target and worker, over HTTP/1.1. A black-holed target costs
/// at most this many pending connects until its breaker opens, however large the pool.
pub const CONNECTS_IN_PROGRESS: usize = 4;

/// One target's connection budget, shared by its pools: how many connections may exist
/// and be in progress, and a wake-up for copies waiting for a connection or a stream.
pub struct Limits {
    open: AtomicUsize,
    max: usize,
    connecting: Semaphore,
    /// Signalled when a connection or a stream may have become available.
    pub notify: Notify,
}

impl Limits {
    pub fn new(max: usize, connects: usize) -> Arc<Limits> {
        Arc::new(Limits {
            open: AtomicUsize::new(0),
            max,
            connecting: Semaphore::new(connects),
            notify: Notify::new(),
        })
    }

    /// A place for one more connection, if fewer than the maximum exist.
    pub fn try_slot(self: &Arc<Self>) -> Option<ConnSlot> {
        let mut n = self.open.load(Ordering::Acquire);
        loop {
            if n >= self.max {
                return None;
            }
            match self.open.compare_exchange_weak(n, n + 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Some(ConnSlot(self.clone())),
                Err(now) => n = now,
            }
        }
    }

    /// Leave to start a connect now, if fewer than the cap are in progress.
    pub fn try_connect(&self) -> Option<SemaphorePermit<'_>> {
        self.connecting.try_acquire().ok()
    }

    /// Connections open now, busy or idle, over every protocol.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

/// Where a connection goes: `None` for a target whose every copy goes to the same place,
/// else the host as evaluated and the port (URLs with variables).
pub type DestKey = Option<(String, u16)>;

/// One of the target's places for an open connection, held as long as the connection is;
/// dropping it frees the place.
pub struct ConnSlot(Arc<Limits>);

impl Drop for ConnSlot {
    /// Take a place only to connect: dropping one wakes every copy waiting for room.
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.notify.notify_waiters();
    }
}
