//! A view of the zone's table: target slots keyed by URL (assigned by the master while it
//! loads a configuration, freed when a configuration no longer names them), their
//! counters and API overrides, the endpoint area comparisons claim while traffic flows,
//! and the workers' rows of gauges.

use std::sync::atomic::{AtomicU64, Ordering};

use super::claim::{Claimer, FREE, READY, find_or_claim};
use super::layout::{EndpointSlot, Header, TargetSlot};
use super::rows::WorkerRows;
use crate::engine::compare::{ENDPOINTS, EndpointCounts, OTHER};
use crate::engine::control::Override;
use crate::engine::outcome::CounterVec;
#[cfg(test)]
use crate::engine::outcome::slot;
use crate::engine::report::TargetSnapshot;

/// The table as one configuration sees it; the memory lives as long as the zone.
#[derive(Clone, Copy)]
pub struct ZoneTable<'a> {
    header: &'a Header,
    slots: &'a [TargetSlot],
    endpoints: &'a [EndpointSlot],
    pub rows: WorkerRows<'a>,
}

impl EndpointSlot {
    /// The counters of `field` (`other` past the bound).
    pub fn field(&self, field: &str, who: Claimer<'_>) -> &[AtomicU64; 2] {
        if field == OTHER {
            return &self.other_field;
        }
        let name = field.as_bytes();
        find_or_claim(
            self.fields.iter(),
            |f| &f.state,
            |f| f.name.is(name),
            |f| {
                f.name.set(name);
                true
            },
            who,
        )
        .map_or(&self.other_field, |f| &f.counts)
    }

    fn read(&self, name: &str) -> EndpointCounts {
        let mut e = EndpointCounts { name: name.to_string(), ..Default::default() };
        for (v, c) in e.verdicts.iter_mut().zip(&self.verdicts) {
            *v = c.load(Ordering::Relaxed);
        }
        for f in self.fields.iter().take_while(|f| f.state.load(Ordering::Acquire) != FREE) {
            if f.state.load(Ordering::Acquire) == READY {
                let counts = [f.counts[0].load(Ordering::Relaxed), f.counts[1].load(Ordering::Relaxed)];
                e.fields.push((String::from_utf8_lossy(&f.name.get()).into_owned(), counts));
            }
        }
        let other =
            [self.other_field[0].load(Ordering::Relaxed), self.other_field[1].load(Ordering::Relaxed)];
        if other != [0, 0] {
            e.fields.push((OTHER.to_string(), other));
        }
        e
    }

    fn is_empty(&self) -> bool {
        self.verdicts.iter().all(|v| v.load(Ordering::Relaxed) == 0)
    }

    /// Back to an unclaimed, empty slot (its target's slot was freed).
    fn reset(&self) {
        let zero = |c: &AtomicU64| c.store(0, Ordering::Relaxed);
        self.verdicts.iter().for_each(zero);
        self.other_field.iter().for_each(zero);
        for f in &self.fields {
            f.counts.iter().for_each(zero);
            f.name.set(b"");
            f.state.store(FREE, Ordering::Release);
        }
        self.name.set(b"");
    }
}

impl TargetSlot {
    pub fn add(&self, delta: &CounterVec) {
        for (c, d) in self.counters.iter().zip(delta) {
            if *d != 0 {
                c.fetch_add(*d, Ordering::Relaxed);
            }
        }
    }

    fn in_use(&self) -> bool {
        self.used.load(Ordering::Acquire) == 1
    }

    /// The slot's counters, override and `other` endpoint back to zero.
    fn reset(&self) {
        self.counters.iter().for_each(|c| c.store(0, Ordering::Relaxed));
        self.endpoint_count.store(0, Ordering::Relaxed);
        self.override_word.store(0, Ordering::Relaxed);
        self.other.reset();
    }
}

impl<'a> ZoneTable<'a> {
    pub fn new(
        header: &'a Header,
        slots: &'a [TargetSlot],
        endpoints: &'a [EndpointSlot],
        rows: WorkerRows<'a>,
    ) -> Self {
        ZoneTable { header, slots, endpoints, rows }
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    fn used(&self) -> impl Iterator<Item = (usize, &'a TargetSlot)> {
        self.slots.iter().enumerate().filter(|(_, s)| s.in_use())
    }

    /// The endpoint `name` of target slot `i`: claimed on first use, the target's `other`
    /// past [`ENDPOINTS`] named endpoints or when the area is full.
    pub fn endpoint_of(&self, i: usize, name: &str, who: Claimer<'_>) -> &'a EndpointSlot {
        let slot = &self.slots[i];
        if name == OTHER {
            return &slot.other;
        }
        let name = name.as_bytes();
        find_or_claim(
            self.endpoints.iter(),
            |e| &e.state,
            |e| e.target.load(Ordering::Acquire) == i as u64 && e.name.is(name),
            |e| {
                if slot.endpoint_count.fetch_add(1, Ordering::AcqRel) >= ENDPOINTS as u64 {
                    slot.endpoint_count.fetch_sub(1, Ordering::AcqRel);
                    return false;
                }
                e.target.store(i as u64, Ordering::Release);
                e.name.set(name);
                true
            },
            who,
        )
        .unwrap_or(&slot.other)
    }

    /// Comparison counters of target slot `i`, by endpoint.
    fn read_compare(&self, i: usize) -> Vec<EndpointCounts> {
        let mut out = Vec::new();
        for e in self.endpoints {
            match e.state.load(Ordering::Acquire) {
                READY if e.target.load(Ordering::Acquire) == i as u64 => {
                    out.push(e.read(&String::from_utf8_lossy(&e.name.get())));
                }
                _ => {}
            }
        }
        let other = &self.slots[i].other;
        if !other.is_empty() {
            out.push(other.read(OTHER));
        }
        out
    }

    /// The API's override of target slot `i`.
    pub fn override_of(&self, i: usize) -> Override {
        let Some(s) = self.slots.get(i).filter(|s| s.in_use()) else { return Override::default() };
        Override::from_word(s.override_word.load(Ordering::Acquire))
    }

    /// Changes target slot `i`'s override in one step (a compare-and-swap, so that two
    /// workers changing it at once both count); each worker applies it on its next tick.
    pub fn update_override(&self, i: usize, change: &dyn Fn(Override) -> Override) -> Option<Override> {
        let s = self.slots.get(i).filter(|s| s.in_use())?;
        let mut now = s.override_word.load(Ordering::Acquire);
        loop {
            let next = change(Override::from_word(now));
            match s.override_word.compare_exchange_weak(
                now,
                next.to_word(),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(next),
                Err(seen) => now = seen,
            }
        }
    }

    /// Index of the slot of `url`, if the master assigned one.
    pub fn index_of(&self, url: &str) -> Option<usize> {
        self.used().find(|(_, s)| s.url.is(url.as_bytes())).map(|(i, _)| i)
    }

    pub fn slot(&self, i: usize) -> &'a TargetSlot {
        &self.slots[i]
    }

    pub fn log_lines(&self) -> [u64; 3] {
        self.header.log_lines.each_ref().map(|c| c.load(Ordering::Relaxed))
    }

    pub fn copy_lines(&self) -> [u64; 2] {
        self.header.copy_lines.each_ref().map(|c| c.load(Ordering::Relaxed))
    }

    pub fn add_log_lines(&self, delta: [u64; 3], copies: [u64; 2]) {
        let counters =
            self.header.copy_lines.iter().zip(copies).chain(self.header.log_lines.iter().zip(delta));
        for (c, d) in counters {
            if d != 0 {
                c.fetch_add(d, Ordering::Relaxed);
            }
        }
    }

    /// Every assigned slot, in slot order (a target's index is its API id).
    pub fn read(&self) -> Vec<TargetSnapshot> {
        self.used()
            .map(|(i, s)| {
                let g = self.rows.gauges(i);
                TargetSnapshot {
                    url: String::from_utf8_lossy(&s.url.get()).into_owned(),
                    counters: std::array::from_fn(|k| s.counters[k].load(Ordering::Relaxed)),
                    inflight: g.inflight,
                    breaker_open: g.breaker_open,
                    connections: g.connections,
                    compare: self.read_compare(i),
                    ov: self.override_of(i),
                }
            })
            .collect()
    }

    /// Frees the slots of targets `keep` no longer names, with their endpoints and
    /// gauges, so a new configuration finds room (master only, while loading one).
    /// Workers of the previous configuration see the slot's epoch change and stop adding
    /// to it.
    pub fn reclaim(&self, keep: &[&str]) -> usize {
        let mut freed = 0;
        for (i, s) in self.used() {
            if keep.iter().any(|u| s.url.is(u.as_bytes())) {
                continue;
            }
            s.used.store(0, Ordering::Release);
            s.epoch.fetch_add(1, Ordering::AcqRel);
            s.reset();
            for e in self.endpoints.iter().filter(|e| e.target.load(Ordering::Acquire) == i as u64) {
                if e.state.load(Ordering::Acquire) == READY {
                    e.reset();
                    e.target.store(0, Ordering::Relaxed);
                    e.state.store(FREE, Ordering::Release);
                }
            }
            self.rows.forget(i);
            freed += 1;
        }
        freed
    }

    /// Assigns a slot to `url` (master only, while loading configuration: single
    /// threaded, and no worker reads an unused slot).
    pub fn assign(&self, url: &str) -> bool {
        if self.index_of(url).is_some() {
            return true;
        }
        let Some(s) = self.slots.iter().find(|s| !s.in_use()) else { return false };
        s.reset();
        s.url.set(url.as_bytes());
        s.epoch.fetch_add(1, Ordering::AcqRel);
        s.used.store(1, Ordering::Release);
        true
    }

    /// The epoch of target slot `i`: it changes when the slot is freed or assigned.
    pub fn epoch(&self, i: usize) -> u64 {
        self.slots[i].epoch.load(Ordering::Acquire)
    }
}

/// Counters of one target of a zone table, for tests.
#[cfg(test)]
pub fn counters_of(table: &ZoneTable<'_>, url: &str) -> CounterVec {
    table.read().into_iter().find(|t| t.url == url).map_or([0; slot::COUNTERS], |t| t.counters)
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::engine::zone::layout::{LAYOUT, row_len};
    use std::sync::atomic::AtomicI64;

    /// A table in ordinary memory, for tests.
    pub struct Owned {
        pub header: Header,
        pub slots: Vec<TargetSlot>,
        pub endpoints: Vec<EndpointSlot>,
        pub rows: Vec<AtomicI64>,
    }

    impl Owned {
        pub fn new(capacity: usize, endpoints: usize) -> Owned {
            let header = Header::default();
            header.init(LAYOUT, (capacity, endpoints, 4));
            Owned {
                header,
                slots: (0..capacity).map(|_| TargetSlot::default()).collect(),
                endpoints: (0..endpoints).map(|_| EndpointSlot::default()).collect(),
                rows: (0..4 * row_len(capacity)).map(|_| AtomicI64::new(0)).collect(),
            }
        }

        pub fn table(&self) -> ZoneTable<'_> {
            ZoneTable::new(
                &self.header,
                &self.slots,
                &self.endpoints,
                WorkerRows::new(&self.rows, self.slots.len()),
            )
        }
    }

    pub const ME: Claimer<'static> = Claimer { pid: 1, alive: &|_| true };

    #[test]
    fn slots_are_assigned_once_per_url_and_keep_overrides() {
        let z = Owned::new(2, 4);
        let t = z.table();
        assert!(t.assign("http://a:1") && t.assign("http://b:1") && t.assign("http://a:1"));
        assert!(!t.assign("http://c:1"), "full");
        assert_eq!((t.index_of("http://b:1"), t.index_of("http://c:1")), (Some(1), None));
        let ov = Override { paused: Some(true), sample_ppm: Some(100) };
        assert_eq!(t.update_override(1, &|_| ov), Some(ov));
        assert_eq!(t.update_override(5, &|_| ov), None);
        assert_eq!(t.read()[1].ov, ov);
        t.slot(0).add(&{
            let mut d = [0; slot::COUNTERS];
            d[slot::ATTEMPTED] = 3;
            d
        });
        assert_eq!(counters_of(&t, "http://a:1")[slot::ATTEMPTED], 3);
    }

    #[test]
    fn targets_no_configuration_names_are_freed_and_their_room_reused() {
        let z = Owned::new(2, 8);
        let t = z.table();
        t.assign("http://a:1");
        t.assign("http://b:1");
        let ep = t.endpoint_of(0, "/x", ME);
        ep.verdicts[0].fetch_add(5, Ordering::Relaxed);
        t.slot(1).counters[0].fetch_add(7, Ordering::Relaxed);
        let epoch = t.epoch(0);
        // A reload names b and c: a's slot and endpoints are freed, b keeps its counts.
        assert_eq!(t.reclaim(&["http://b:1", "http://c:1"]), 1);
        assert!(t.assign("http://b:1") && t.assign("http://c:1"));
        assert_ne!(t.epoch(0), epoch, "old workers see the slot change hands");
        let urls: Vec<String> = t.read().into_iter().map(|s| s.url).collect();
        assert_eq!(urls, ["http://c:1", "http://b:1"]);
        assert_eq!(counters_of(&t, "http://b:1")[0], 7);
        assert_eq!(counters_of(&t, "http://c:1"), [0; slot::COUNTERS]);
        assert!(t.read_compare(0).is_empty(), "a's endpoints went with it");
        for n in 0..20 {
            // Twenty reloads, each naming a new URL: room is never exhausted.
            t.reclaim(&["http://b:1"]);
            assert!(t.assign(&format!("http://new{n}:1")), "reload {n}");
        }
    }

    #[test]
    fn endpoints_are_bounded_per_target_and_raced_safely() {
        let z = Owned::new(2, 40);
        let t = z.table();
        t.assign("http://a:1");
        t.assign("http://b:1");
        std::thread::scope(|scope| {
            for w in 0..4 {
                scope.spawn(move || {
                    for n in 0..50 {
                        let ep = t.endpoint_of(n % 2, &format!("/e{}", (n + w) % 40), ME);
                        ep.verdicts[0].fetch_add(1, Ordering::Relaxed);
                        ep.field("status", ME)[0].fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
        let named = |i: usize| t.read_compare(i).iter().filter(|e| e.name != OTHER).count();
        assert!(named(0) <= ENDPOINTS && named(1) <= ENDPOINTS);
        let total: u64 = (0..2).flat_map(|i| t.read_compare(i)).map(|e| e.verdicts[0]).sum();
        assert_eq!(total, 200, "every count lands in a named endpoint or in other");
        let names: Vec<String> = t.read_compare(0).into_iter().map(|e| e.name).collect();
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(names.len(), unique.len(), "no endpoint claimed twice: {names:?}");
    }
}
