//! One worker's link to the zone: the slots of its targets, and what it already added,
//! so each fold adds only what changed since the last (counters as deltas, gauges as the
//! change of this worker's share, withdrawn when the worker exits).

use std::sync::atomic::{AtomicU64, Ordering};

use super::layout::{EndpointSlot, TargetSlot};
use super::table::ZoneTable;
use crate::engine::compare::{EndpointCounts, Verdict};
use crate::engine::control::Override;
use crate::engine::ids::{Table, TargetId};
use crate::engine::outcome::{CounterVec, Gauges, slot};
use crate::engine::runtime::Engine;

pub struct ZoneLink {
    pub table: ZoneTable<'static>,
    /// Each target's slot index (its API id), if the master assigned one.
    indexes: Table<TargetId, Option<usize>>,
    last: Table<TargetId, CounterVec>,
    last_gauges: Table<TargetId, Gauges>,
    last_queue: (i64, i64),
    /// Per target, this worker's endpoints (in the order the engine lists them) in the zone.
    compare: Table<TargetId, Vec<EndpointLink>>,
    last_lines: [u64; 3],
    last_copy_lines: [u64; 2],
}

/// One of this worker's endpoints, its slot in the zone and what was already added.
struct EndpointLink {
    slot: &'static EndpointSlot,
    last: [u64; Verdict::COUNT],
    fields: Vec<(&'static [AtomicU64; 2], [u64; 2])>,
}

impl ZoneLink {
    pub fn new(table: ZoneTable<'static>, engine: &Engine) -> ZoneLink {
        let indexes: Table<TargetId, Option<usize>> =
            engine.targets().map(|(_, spec, _)| table.index_of(&spec.url)).collect();
        ZoneLink {
            table,
            last: indexes.map(|_| [0; slot::COUNTERS]),
            last_gauges: indexes.map(|_| Gauges::default()),
            compare: indexes.map(|_| Vec::new()),
            indexes,
            last_queue: (0, 0),
            last_lines: [0; 3],
            last_copy_lines: [0; 2],
        }
    }

    /// The API's overrides of this worker's targets, as the zone holds them now.
    pub fn overrides(&self) -> Table<TargetId, Override> {
        self.indexes.map(|i| i.map_or_else(Override::default, |i| self.table.override_of(i)))
    }

    fn slot(&self, id: TargetId) -> Option<(usize, &'static TargetSlot)> {
        self.indexes.get(id).copied().flatten().map(|i| (i, self.table.slot(i)))
    }

    /// Adds what changed since the last fold; `last_fold` withdraws this worker's gauges.
    pub fn fold(&mut self, engine: &Engine, last_fold: bool) {
        for (id, _, stats) in engine.targets() {
            let Some((index, slot)) = self.slot(id) else { continue };
            let (Some(last), Some(last_g)) = (self.last.get_mut(id), self.last_gauges.get_mut(id)) else {
                continue;
            };
            let now = stats.snapshot();
            let delta: CounterVec = std::array::from_fn(|k| now[k].wrapping_sub(last[k]));
            slot.add(&delta);
            *last = now;
            let g = if last_fold { Gauges::default() } else { engine.gauges(id) };
            slot.add_gauges(g, *last_g);
            *last_g = g;
            if let (Some(links), Some(now)) = (self.compare.get_mut(id), engine.verdicts(id)) {
                fold_compare(&self.table, index, links, &now);
            }
        }
        let lines = engine.mismatch_log().counts.snapshot();
        let delta = std::array::from_fn(|i| lines[i].wrapping_sub(self.last_lines[i]));
        let copies = engine.copy_log().counts();
        let copies_delta = std::array::from_fn(|i| copies[i].wrapping_sub(self.last_copy_lines[i]));
        self.table.add_log_lines(delta, copies_delta);
        self.last_lines = lines;
        self.last_copy_lines = copies;
        let q = if last_fold { (0, 0) } else { (engine.queued_jobs() as i64, engine.queued_bytes() as i64) };
        self.table.add_queue(q.0 - self.last_queue.0, q.1 - self.last_queue.1);
        self.last_queue = q;
    }
}

/// Adds what changed in one target's comparison counters since the last fold.
fn fold_compare(
    table: &ZoneTable<'static>,
    index: usize,
    links: &mut Vec<EndpointLink>,
    now: &[EndpointCounts],
) {
    for (i, e) in now.iter().enumerate() {
        if links.len() <= i {
            let slot = table.endpoint_of(index, &e.name);
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
                link.fields.push((ep.field(name), [0; 2]));
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
