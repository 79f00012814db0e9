//! Every copy that is attempted ends in exactly one [`Outcome`]; a [`Ticket`] makes that
//! structural: it counts the attempt when created and records `dropped{shutdown}` if it
//! is dropped without an outcome (queued or in-flight work torn down with the runtime).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::counters::TargetStats;
use super::vocabulary::{DropReason, Outcome};

/// One attempted copy to one target; see the module docs.
#[derive(Debug)]
pub struct Ticket {
    stats: Arc<TargetStats>,
    done: bool,
    /// Counted as attempted. A held copy (`async_mirror_primary_status`) is not a copy
    /// until the primary's status lets it go; discarded before that, it never was one.
    counted: bool,
}

impl Ticket {
    pub fn new(stats: Arc<TargetStats>) -> Ticket {
        stats.attempted.fetch_add(1, Ordering::Relaxed);
        Ticket { stats, done: false, counted: true }
    }

    /// A ticket counted only once [`Ticket::confirm`] or [`Ticket::finish`] is called.
    pub fn deferred(stats: Arc<TargetStats>) -> Ticket {
        Ticket { stats, done: false, counted: false }
    }

    pub fn confirm(&mut self) {
        if !std::mem::replace(&mut self.counted, true) {
            self.stats.attempted.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Ends a deferred ticket that was never confirmed, counting nothing.
    pub fn discard(mut self) {
        debug_assert!(!self.counted);
        self.done = !self.counted;
    }

    pub fn finish(mut self, o: Outcome) {
        self.confirm();
        self.done = true;
        self.stats.record(o);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.done && self.counted {
            self.stats.record(Outcome::Dropped(DropReason::Shutdown));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_ticket_ends_in_one_outcome() {
        let stats = Arc::new(TargetStats::default());
        Ticket::new(stats.clone()).finish(Outcome::Ok);
        drop(Ticket::new(stats.clone()));
        Ticket::new(stats.clone()).finish(Outcome::Skipped);
        assert_eq!(stats.attempted.load(Ordering::Relaxed), 3);
        assert_eq!(stats.finished(), 3);
        assert_eq!(stats.get(Outcome::Dropped(DropReason::Shutdown)), 1);
        assert!(stats.summary().starts_with("attempted=3 ok=1 "));
        Ticket::deferred(stats.clone()).discard();
        drop(Ticket::deferred(stats.clone()));
        assert_eq!(
            (stats.attempted(), stats.finished()),
            (3, 3),
            "held copies never confirmed are not copies"
        );
        let mut t = Ticket::deferred(stats.clone());
        t.confirm();
        t.finish(Outcome::Ok);
        Ticket::deferred(stats.clone()).finish(Outcome::Dropped(DropReason::QueueFull));
        assert_eq!((stats.attempted(), stats.finished()), (5, 5));
    }
}
