//! A view of the zone's table: target slots keyed by URL (assigned by the master while it
//! loads a configuration), their counters, gauges and API overrides, and the endpoint
//! area comparisons claim while traffic flows.

use std::sync::atomic::{AtomicU64, Ordering};

use super::claim::{FREE, READY, find_or_claim};
use super::layout::{EndpointSlot, Header, TargetSlot};
use crate::engine::compare::{ENDPOINTS, EndpointCounts, OTHER};
use crate::engine::control::Override;
#[cfg(test)]
use crate::engine::outcome::slot;
use crate::engine::outcome::{CounterVec, Gauges};
use crate::engine::report::TargetSnapshot;

/// The table as one configuration sees it; the memory lives as long as the zone.
#[derive(Clone, Copy)]
pub struct ZoneTable<'a> {
    header: &'a Header,
    slots: &'a [TargetSlot],
    endpoints: &'a [EndpointSlot],
}

impl EndpointSlot {
    /// The counters of `field` (`other` past the bound).
    pub fn field(&self, field: &str) -> &[AtomicU64; 2] {
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
}

impl TargetSlot {
    pub fn add(&self, delta: &CounterVec) {
        for (c, d) in self.counters.iter().zip(delta) {
            if *d != 0 {
                c.fetch_add(*d, Ordering::Relaxed);
            }
        }
    }

    /// Adds the change of one worker's gauges.
    pub fn add_gauges(&self, now: Gauges, before: Gauges) {
        self.inflight.fetch_add(now.inflight - before.inflight, Ordering::Relaxed);
        self.breaker_open.fetch_add(now.breaker_open - before.breaker_open, Ordering::Relaxed);
        self.connections.fetch_add(now.connections - before.connections, Ordering::Relaxed);
    }

    fn in_use(&self) -> bool {
        self.used.load(Ordering::Acquire) == 1
    }
}

impl<'a> ZoneTable<'a> {
    pub fn new(header: &'a Header, slots: &'a [TargetSlot], endpoints: &'a [EndpointSlot]) -> Self {
        ZoneTable { header, slots, endpoints }
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    fn used(&self) -> impl Iterator<Item = (usize, &'a TargetSlot)> {
        self.slots.iter().enumerate().take_while(|(_, s)| s.in_use())
    }

    /// The endpoint `name` of target slot `i`: claimed on first use, the target's `other`
    /// past [`ENDPOINTS`] named endpoints or when the area is full.
    pub fn endpoint_of(&self, i: usize, name: &str) -> &'a EndpointSlot {
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
        )
        .unwrap_or(&slot.other)
    }

    /// Comparison counters of target slot `i`, by endpoint.
    fn read_compare(&self, i: usize) -> Vec<EndpointCounts> {
        let mut out = Vec::new();
        for e in self.endpoints {
            match e.state.load(Ordering::Acquire) {
                FREE => break,
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
        Override {
            paused: match s.override_paused.load(Ordering::Acquire) {
                1 => Some(true),
                2 => Some(false),
                _ => None,
            },
            sample_ppm: match s.override_sample.load(Ordering::Acquire) {
                0 => None,
                v => Some((v - 1) as u32),
            },
        }
    }

    /// Sets target slot `i`'s override; each worker applies it on its next tick.
    pub fn set_override(&self, i: usize, ov: Override) -> bool {
        let Some(s) = self.slots.get(i).filter(|s| s.in_use()) else { return false };
        let paused = match ov.paused {
            None => 0,
            Some(true) => 1,
            Some(false) => 2,
        };
        s.override_paused.store(paused, Ordering::Release);
        s.override_sample.store(ov.sample_ppm.map_or(0, |p| u64::from(p) + 1), Ordering::Release);
        true
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
            .map(|(i, s)| TargetSnapshot {
                url: String::from_utf8_lossy(&s.url.get()).into_owned(),
                counters: std::array::from_fn(|k| s.counters[k].load(Ordering::Relaxed)),
                inflight: s.inflight.load(Ordering::Relaxed),
                breaker_open: s.breaker_open.load(Ordering::Relaxed),
                connections: s.connections.load(Ordering::Relaxed),
                compare: self.read_compare(i),
                ov: self.override_of(i),
            })
            .collect()
    }

    pub fn queue(&self) -> (i64, i64) {
        (self.header.queue_jobs.load(Ordering::Relaxed), self.header.queue_bytes.load(Ordering::Relaxed))
    }

    pub fn add_queue(&self, jobs: i64, bytes: i64) {
        self.header.queue_jobs.fetch_add(jobs, Ordering::Relaxed);
        self.header.queue_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Assigns a slot to `url` (master only, while loading configuration: single
    /// threaded, and no worker reads an unused slot).
    pub fn assign(&self, url: &str) -> bool {
        for s in self.slots {
            if !s.in_use() {
                s.url.set(url.as_bytes());
                s.used.store(1, Ordering::Release);
                return true;
            }
            if s.url.is(url.as_bytes()) {
                return true;
            }
        }
        false
    }
}

/// Counters of one target of a zone table, for tests.
#[cfg(test)]
pub fn counters_of(table: &ZoneTable<'_>, url: &str) -> CounterVec {
    table.read().into_iter().find(|t| t.url == url).map_or([0; slot::COUNTERS], |t| t.counters)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::zone::layout::LAYOUT;

    pub struct Owned {
        pub header: Header,
        pub slots: Vec<TargetSlot>,
        pub endpoints: Vec<EndpointSlot>,
    }

    impl Owned {
        pub fn new(capacity: usize, endpoints: usize) -> Owned {
            let header = Header::default();
            header.init(LAYOUT, capacity, endpoints);
            Owned {
                header,
                slots: (0..capacity).map(|_| TargetSlot::default()).collect(),
                endpoints: (0..endpoints).map(|_| EndpointSlot::default()).collect(),
            }
        }

        pub fn table(&self) -> ZoneTable<'_> {
            ZoneTable::new(&self.header, &self.slots, &self.endpoints)
        }
    }

    #[test]
    fn slots_are_assigned_once_per_url_and_keep_overrides() {
        let z = Owned::new(2, 4);
        let t = z.table();
        assert!(t.assign("http://a:1") && t.assign("http://b:1") && t.assign("http://a:1"));
        assert!(!t.assign("http://c:1"), "full");
        assert_eq!((t.index_of("http://b:1"), t.index_of("http://c:1")), (Some(1), None));
        let ov = Override { paused: Some(true), sample_ppm: Some(100) };
        assert!(t.set_override(1, ov) && !t.set_override(5, ov));
        assert_eq!(t.read()[1].ov, ov);
        t.slot(0).add(&{
            let mut d = [0; slot::COUNTERS];
            d[slot::ATTEMPTED] = 3;
            d
        });
        assert_eq!(counters_of(&t, "http://a:1")[slot::ATTEMPTED], 3);
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
                        let ep = t.endpoint_of(n % 2, &format!("/e{}", (n + w) % 40));
                        ep.verdicts[0].fetch_add(1, Ordering::Relaxed);
                        ep.field("status")[0].fetch_add(1, Ordering::Relaxed);
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
