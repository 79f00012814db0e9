//! One worker's link to the zone: the slots of its targets, and what it already added,
//! so each fold adds only what changed since the last. Counters are added as deltas;
//! gauges are written whole into the worker's own row, which it clears when it exits
//! (and which others clear if it was killed).

use std::sync::atomic::{AtomicU64, Ordering};

use super::claim::Claimer;
use super::layout::EndpointSlot;
use super::table::ZoneTable;
use crate::engine::compare::{EndpointCounts, Verdict};
use crate::engine::control::Override;
use crate::engine::ids::{Table, TargetId};
use crate::engine::outcome::{CounterVec, DropReason, Outcome, slot};
use crate::engine::runtime::Engine;

/// Whether a process is still running (the nginx layer asks the system).
pub type Alive = fn(u64) -> bool;

pub struct ZoneLink {
    pub table: ZoneTable<'static>,
    pid: u64,
    alive: Alive,
    /// This worker's row of gauges, if the zone had one free.
    row: Option<usize>,
    /// Each target's slot index (its API id) and the slot's epoch when this worker
    /// started: a slot whose epoch changed was freed or given to another target.
    slots: Table<TargetId, Option<(usize, u64)>>,
    last: Table<TargetId, CounterVec>,
    /// Per target, this worker's endpoints (in the order the engine lists them) in the zone.
    compare: Table<TargetId, Vec<EndpointLink>>,
    last_lines: [u64; 3],
    last_copy_lines: [u64; 2],
    folds: u64,
}

/// One of this worker's endpoints, its slot in the zone and what was already added.
struct EndpointLink {
    slot: &'static EndpointSlot,
    last: [u64; Verdict::COUNT],
    fields: Vec<(&'static [AtomicU64; 2], [u64; 2])>,
}

impl ZoneLink {
    /// Links worker `pid` to the zone: rows that dead workers left are cleared first.
    pub fn new(table: ZoneTable<'static>, engine: &Engine, pid: u64, alive: Alive) -> ZoneLink {
        clear_dead(&table, pid, None, alive);
        let row = table.rows.claim(pid);
        let slots: Table<TargetId, Option<(usize, u64)>> = engine
            .targets()
            .map(|(_, spec, _)| table.index_of(&spec.url).map(|i| (i, table.epoch(i))))
            .collect();
        ZoneLink {
            table,
            pid,
            alive,
            row,
            last: slots.map(|_| [0; slot::COUNTERS]),
            compare: slots.map(|_| Vec::new()),
            slots,
            last_lines: [0; 3],
            last_copy_lines: [0; 2],
            folds: 0,
        }
    }

    /// The API's overrides of this worker's targets, as the zone holds them now.
    pub fn overrides(&self) -> Table<TargetId, Override> {
        self.slots.map(|s| s.map_or_else(Override::default, |(i, _)| self.table.override_of(i)))
    }

    /// Target `id`'s slot, while it is still the one this worker started with.
    fn slot(&self, id: TargetId) -> Option<usize> {
        let (i, epoch) = self.slots.get(id).copied().flatten()?;
        (self.table.epoch(i) == epoch).then_some(i)
    }

    /// Adds what changed since the last fold; the last fold clears this worker's row.
    pub fn fold(&mut self, engine: &Engine, last_fold: bool) {
        for (id, _, stats) in engine.targets() {
            let Some(index) = self.slot(id) else { continue };
            let Some(last) = self.last.get_mut(id) else { continue };
            let now = stats.snapshot();
            let delta: CounterVec = std::array::from_fn(|k| now[k].wrapping_sub(last[k]));
            self.table.slot(index).add(&delta);
            *last = now;
            if let Some(row) = self.row {
                let ended: u64 = now[..Outcome::COUNT].iter().sum();
                let unended = now[slot::ATTEMPTED].saturating_sub(ended);
                self.table.rows.set(row, index, engine.gauges(id), unended);
            }
            if let Some(now) = engine.verdicts(id) {
                let who = Claimer { pid: self.pid, alive: &self.alive };
                let links = self.compare.get_mut(id).expect("a table per target");
                fold_compare(&self.table, index, links, &now, who);
            }
        }
        let lines = engine.mismatch_log().counts.snapshot();
        let delta = std::array::from_fn(|i| lines[i].wrapping_sub(self.last_lines[i]));
        let copies = engine.copy_log().counts();
        let copies_delta = std::array::from_fn(|i| copies[i].wrapping_sub(self.last_copy_lines[i]));
        self.table.add_log_lines(delta, copies_delta);
        self.last_lines = lines;
        self.last_copy_lines = copies;
        if let Some(row) = self.row {
            self.table.rows.set_queue(row, engine.queued_jobs() as i64, engine.queued_bytes() as i64);
            if last_fold {
                self.table.rows.release(row, self.pid);
                self.row = None;
            }
        }
        // Once a second, rows of workers that were killed.
        self.folds += 1;
        if self.folds % 4 == 0 {
            clear_dead(&self.table, self.pid, self.row, self.alive);
        }
    }
}

/// Clears the rows of workers that are gone; copies a killed worker started and never
/// ended count `dropped{shutdown}`, so the zone's sums still add up.
fn clear_dead(table: &ZoneTable<'static>, pid: u64, mine: Option<usize>, alive: Alive) {
    let shutdown = Outcome::Dropped(DropReason::Shutdown).slot();
    table.rows.clear_dead(pid, mine, &alive, |i, n| {
        table.slot(i).counters[shutdown].fetch_add(n, Ordering::Relaxed);
    });
}

/// Adds what changed in one target's comparison counters since the last fold.
fn fold_compare(
    table: &ZoneTable<'static>,
    index: usize,
    links: &mut Vec<EndpointLink>,
    now: &[EndpointCounts],
    who: Claimer<'_>,
) {
    for (i, e) in now.iter().enumerate() {
        if links.len() <= i {
            let slot = table.endpoint_of(index, &e.name, who);
            links.push(EndpointLink { slot, last: [0; Verdict::COUNT], fields: Vec::new() });
        }
        let link = &mut links[i];
        let ep = link.slot;
        for (k, (v, last)) in e.verdicts.iter().zip(link.last.iter_mut()).enumerate() {
            if *v != *last {
                ep.verdicts[k].fetch_add(v.wrapping_sub(*last), Ordering::Relaxed);
                *last = *v;
            }
        }
        for (j, (name, counts)) in e.fields.iter().enumerate() {
            if link.fields.len() <= j {
                link.fields.push((ep.field(name, who), [0; 2]));
            }
            let (dst, last) = &mut link.fields[j];
            for side in 0..2 {
                if counts[side] != last[side] {
                    dst[side].fetch_add(counts[side].wrapping_sub(last[side]), Ordering::Relaxed);
                    last[side] = counts[side];
                }
            }
        }
    }
}
