//! One row per running worker for what it holds now (gauges: copies in flight, breaker
//! open, connections, and its backlog), written whole by its worker and summed by
//! readers. A worker that exits clears its row; a worker that was killed cannot, so its
//! replacement (and every worker, once a second) clears rows whose process is gone.

use std::sync::atomic::{AtomicI64, Ordering};

use super::layout::{CELLS, row_len};
use crate::engine::outcome::Gauges;

#[derive(Clone, Copy)]
pub struct WorkerRows<'a> {
    cells: &'a [AtomicI64],
    capacity: usize,
}

/// Cell offsets within a row.
const PID: usize = 0;
const QUEUE_JOBS: usize = 1;
const QUEUE_BYTES: usize = 2;

impl<'a> WorkerRows<'a> {
    /// `cells` holds whole rows for a table of `capacity` target slots.
    pub fn new(cells: &'a [AtomicI64], capacity: usize) -> Self {
        WorkerRows { cells, capacity }
    }

    fn rows(&self) -> impl Iterator<Item = &'a [AtomicI64]> {
        self.cells.chunks_exact(row_len(self.capacity))
    }

    fn row(&self, r: usize) -> Option<&'a [AtomicI64]> {
        self.rows().nth(r)
    }

    fn live(&self) -> impl Iterator<Item = &'a [AtomicI64]> {
        self.rows().filter(|row| row[PID].load(Ordering::Acquire) != 0)
    }

    fn clear(row: &[AtomicI64], pid: i64) {
        if row[PID].load(Ordering::Acquire) != pid {
            return;
        }
        for c in &row[PID + 1..] {
            c.store(0, Ordering::Relaxed);
        }
        let _ = row[PID].compare_exchange(pid, 0, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Clears the rows of processes that are gone, and any row but `mine` with `me`'s pid
    /// (a process that died before this one took its pid); how many. `lost(i, n)` hears of
    /// the `n` copies to target slot `i` such a worker had started and never ended.
    pub fn clear_dead(
        &self,
        me: u64,
        mine: Option<usize>,
        alive: &dyn Fn(u64) -> bool,
        lost: impl Fn(usize, u64),
    ) -> usize {
        let mut cleared = 0;
        for (r, row) in self.rows().enumerate() {
            let pid = row[PID].load(Ordering::Acquire);
            if pid == 0 || Some(r) == mine || (pid as u64 != me && alive(pid as u64)) {
                continue;
            }
            for i in 0..self.capacity {
                let n = row[3 + CELLS * i + 3].load(Ordering::Relaxed);
                if n > 0 {
                    lost(i, n as u64);
                }
            }
            Self::clear(row, pid);
            cleared += 1;
        }
        cleared
    }

    /// A free row for process `me`, if one is left.
    pub fn claim(&self, me: u64) -> Option<usize> {
        self.rows().position(|row| {
            row[PID].compare_exchange(0, me as i64, Ordering::AcqRel, Ordering::Acquire).is_ok()
        })
    }

    /// The exiting worker's row is emptied and freed.
    pub fn release(&self, r: usize, me: u64) {
        if let Some(row) = self.row(r) {
            Self::clear(row, me as i64);
        }
    }

    /// Target slot `i`'s gauges in row `r`, as they are now, and the copies counted as
    /// attempted but not yet as ended in the zone.
    pub fn set(&self, r: usize, i: usize, g: Gauges, unended: u64) {
        if let Some(row) = self.row(r).filter(|_| i < self.capacity) {
            let at = 3 + CELLS * i;
            row[at].store(g.inflight, Ordering::Relaxed);
            row[at + 1].store(g.breaker_open, Ordering::Relaxed);
            row[at + 2].store(g.connections, Ordering::Relaxed);
            row[at + 3].store(unended as i64, Ordering::Relaxed);
        }
    }

    pub fn set_queue(&self, r: usize, jobs: i64, bytes: i64) {
        if let Some(row) = self.row(r) {
            row[QUEUE_JOBS].store(jobs, Ordering::Relaxed);
            row[QUEUE_BYTES].store(bytes, Ordering::Relaxed);
        }
    }

    /// Target slot `i`'s gauges summed over the running workers.
    pub fn gauges(&self, i: usize) -> Gauges {
        let at = 3 + CELLS * i;
        self.live().fold(Gauges::default(), |g, row| Gauges {
            inflight: g.inflight + row[at].load(Ordering::Relaxed),
            breaker_open: g.breaker_open + row[at + 1].load(Ordering::Relaxed),
            connections: g.connections + row[at + 2].load(Ordering::Relaxed),
        })
    }

    /// Clears target slot `i`'s gauges in every row (the master freed the slot).
    pub fn forget(&self, i: usize) {
        for row in self.rows() {
            for c in &row[3 + CELLS * i..3 + CELLS * (i + 1)] {
                c.store(0, Ordering::Relaxed);
            }
        }
    }

    /// The running workers' backlogs: jobs, bytes.
    pub fn queue(&self) -> (i64, i64) {
        self.live().fold((0, 0), |(j, b), row| {
            (j + row[QUEUE_JOBS].load(Ordering::Relaxed), b + row[QUEUE_BYTES].load(Ordering::Relaxed))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_workers_row_is_cleared_and_the_rest_summed() {
        let cells: Vec<AtomicI64> = (0..row_len(2) * 3).map(|_| AtomicI64::new(0)).collect();
        let rows = WorkerRows::new(&cells, 2);
        let (a, b) = (rows.claim(100).unwrap(), rows.claim(200).unwrap());
        let g = Gauges { inflight: 3, breaker_open: 1, connections: 2 };
        rows.set(a, 1, g, 3);
        rows.set(b, 1, g, 0);
        rows.set_queue(a, 5, 500);
        assert_eq!(rows.gauges(1), Gauges { inflight: 6, breaker_open: 2, connections: 4 });
        assert_eq!(rows.gauges(0), Gauges::default());
        // Worker 100 was killed; its replacement got pid 300.
        let lost = std::cell::Cell::new((0, 0));
        assert_eq!(rows.clear_dead(300, None, &|pid| pid != 100, |i, n| lost.set((i, n))), 1);
        assert_eq!(lost.get(), (1, 3), "the dead worker's copies that never ended");
        assert_eq!(rows.gauges(1), g);
        assert_eq!(rows.queue(), (0, 0));
        assert_eq!(rows.claim(300), Some(a), "the freed row is taken again");
        // A dead worker whose pid the new one now has is cleared too.
        let c = rows.claim(400).unwrap();
        rows.set(c, 0, g, 0);
        assert_eq!(rows.clear_dead(400, Some(a), &|_| true, |_, _| {}), 1, "not its own row, the stale one");
        assert_eq!(rows.gauges(0), Gauges::default());
        rows.release(b, 200);
        assert_eq!(rows.gauges(1), Gauges::default());
        assert!(rows.claim(1).is_some() && rows.claim(2).is_some() && rows.claim(3).is_none(), "three rows");
    }
}
