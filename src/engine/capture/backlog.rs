//! Per-worker backlog admission: a job count and a byte budget, both atomics.
//!
//! The nginx thread takes a job slot before it captures anything, so a drop
//! under overload costs two atomic operations and no allocation.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Debug)]
pub struct Backlog {
    jobs: AtomicUsize,
    bytes: AtomicUsize,
    max_jobs: usize,
    max_bytes: usize,
}

/// Room held in the backlog: a job slot until the copy leaves the queue, its bytes
/// until it ends.
#[derive(Debug)]
pub struct Reservation {
    backlog: Arc<Backlog>,
    bytes: usize,
    queued: bool,
}

impl Backlog {
    pub fn new(max_jobs: usize, max_bytes: usize) -> Arc<Backlog> {
        Arc::new(Backlog { jobs: AtomicUsize::new(0), bytes: AtomicUsize::new(0), max_jobs, max_bytes })
    }

    /// Takes one job slot and `bytes` of the budget, or nothing.
    pub fn reserve(self: &Arc<Self>, bytes: usize) -> Option<Reservation> {
        if self.jobs.fetch_add(1, Ordering::AcqRel) >= self.max_jobs {
            self.jobs.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let before = self.bytes.fetch_add(bytes, Ordering::AcqRel);
        if before.saturating_add(bytes) > self.max_bytes {
            self.bytes.fetch_sub(bytes, Ordering::AcqRel);
            self.jobs.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Reservation { backlog: self.clone(), bytes, queued: true })
    }

    /// Charges streamed body bytes to the same budget; `false` (nothing taken) when over.
    pub fn take_bytes(&self, bytes: usize) -> bool {
        let before = self.bytes.fetch_add(bytes, Ordering::AcqRel);
        if before.saturating_add(bytes) > self.max_bytes {
            self.bytes.fetch_sub(bytes, Ordering::AcqRel);
            return false;
        }
        true
    }

    pub fn give_bytes(&self, bytes: usize) {
        self.bytes.fetch_sub(bytes, Ordering::AcqRel);
    }

    pub fn jobs(&self) -> usize {
        self.jobs.load(Ordering::Relaxed)
    }

    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }
}

impl Reservation {
    /// Charges `bytes` more to this place; `false` (nothing taken) when over budget.
    pub fn grow(&mut self, bytes: usize) -> bool {
        if !self.backlog.take_bytes(bytes) {
            return false;
        }
        self.bytes += bytes;
        true
    }

    /// The copy left the queue: its job slot is free, its bytes stay charged.
    pub fn leave_queue(&mut self) {
        if std::mem::take(&mut self.queued) {
            self.backlog.jobs.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Bytes held outside a copy's own place (a response kept for comparison), given back on drop.
#[derive(Debug)]
pub struct Charge {
    backlog: Arc<Backlog>,
    bytes: usize,
}

impl Charge {
    pub fn new(backlog: &Arc<Backlog>) -> Charge {
        Charge { backlog: backlog.clone(), bytes: 0 }
    }

    pub fn backlog(&self) -> Arc<Backlog> {
        self.backlog.clone()
    }

    /// `false` (nothing taken) when the budget has no room.
    pub fn grow(&mut self, bytes: usize) -> bool {
        if !self.backlog.take_bytes(bytes) {
            return false;
        }
        self.bytes += bytes;
        true
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.backlog.give_bytes(self.bytes);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.backlog.bytes.fetch_sub(self.bytes, Ordering::AcqRel);
        self.leave_queue();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_jobs_and_bytes() {
        let b = Backlog::new(2, 100);
        let r1 = b.reserve(40).unwrap();
        let r2 = b.reserve(40).unwrap();
        assert!(b.reserve(1).is_none(), "job limit");
        drop(r1);
        assert!(b.reserve(70).is_none(), "byte limit");
        assert_eq!((b.jobs(), b.bytes()), (1, 40));
        let r3 = b.reserve(60).unwrap();
        drop((r2, r3));
        assert_eq!((b.jobs(), b.bytes()), (0, 0));
        let mut r4 = b.reserve(0).unwrap();
        assert!(r4.grow(100) && !r4.grow(1));
        drop(r4);
        assert_eq!((b.jobs(), b.bytes()), (0, 0));
    }
}
