//! `async_mirror_zone`: counters summed over all workers in shared memory.
//!
//! nginx lays every shared zone out as a slab pool (its master even reads the
//! pool's mutex when a worker dies), so the table is one slab allocation whose
//! address is kept in the pool's `data` field.
//!
//! The zone is a flat table of per-target slots keyed by URL. Slots are
//! assigned only in the master while it loads a configuration (single
//! threaded), so workers never allocate or lock: they add deltas to atomics.
//! nginx hands the same memory to the new configuration on reload when name
//! and size are unchanged, so counters survive reloads. The header records the
//! table's layout: a zone left by another layout (a reload onto a module built
//! with other counters) gets a fresh table, announced with a `notice`, and is
//! never read with the wrong layout. The old table stays allocated for the
//! old generation of workers still writing into it.

use std::cell::UnsafeCell;
use std::ffi::c_void;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use ngx::ffi::{
    NGX_ERROR, NGX_LOG_EMERG, NGX_LOG_NOTICE, NGX_OK, ngx_int_t, ngx_shm_zone_t, ngx_slab_alloc,
    ngx_slab_pool_t,
};
use ngx::ngx_log_error;

use super::conf::MainConf;
use crate::engine::Engine;
use crate::engine::api::Override;
use crate::engine::ids::{Table, TargetId};
use crate::engine::outcome::{CounterVec, slot};
use crate::engine::runtime::Gauges;
use crate::engine::status::TargetSnapshot;
use crate::engine::verdict::{ENDPOINTS, EndpointCounts, FIELDS, NAME_MAX, OTHER, Verdict};

const MAGIC: u64 = 0x6173_796e_636d_6972; // "asyncmir"
pub const URL_MAX: usize = 512;

/// The table's layout: bump the low bits whenever `Header` or `Slot` change. The high
/// bits ("LAYT") make it distinct from the slot count the first layout kept here.
const LAYOUT: u64 = 0x4c41_5954_0000_0005;

#[repr(C)]
struct Header {
    magic: AtomicU64,
    layout: AtomicU64,
    slot_size: AtomicU64,
    slots: AtomicU64,
    queue_jobs: AtomicI64,
    queue_bytes: AtomicI64,
    /// Slots of the endpoint area that follows the target slots.
    endpoints: AtomicU64,
    log_lines: [AtomicU64; 3],
    /// `async_mirror_log` lines: written, lost.
    copy_lines: [AtomicU64; 2],
}

/// What a zone's memory holds.
enum Found {
    Ours(Zone),
    /// A table of another layout: its layout word.
    Other(u64),
    Nothing,
}

#[repr(C)]
pub struct Slot {
    used: AtomicU64,
    url_len: AtomicU64,
    url: [u8; URL_MAX],
    counters: [AtomicU64; slot::COUNTERS],
    inflight: AtomicI64,
    breaker_open: AtomicI64,
    connections: AtomicI64,
    /// Named endpoints claimed for this target in the endpoint area.
    endpoint_count: AtomicU64,
    /// `async_mirror_api` overrides: 0 unset, 1 paused, 2 running.
    override_paused: AtomicU64,
    /// 0 unset, else the sample in ppm plus one.
    override_sample: AtomicU64,
    /// Endpoints past the bound (or past the area's room).
    other: EndpointSlot,
}

/// Claim states of endpoint and field slots. Workers claim them while traffic flows
/// (names come from requests), first fit in order: a slot being claimed is waited for,
/// so two workers never claim one name twice.
const FREE: u64 = 0;
const CLAIMING: u64 = 1;
const READY: u64 = 2;

#[repr(C)]
struct Name {
    len: AtomicU64,
    bytes: UnsafeCell<[u8; NAME_MAX]>,
}

impl Name {
    fn get(&self) -> &[u8] {
        let len = (self.len.load(Ordering::Acquire) as usize).min(NAME_MAX);
        // SAFETY: written once by the claiming worker before the slot became READY.
        unsafe { &(&*self.bytes.get())[..len] }
    }

    /// # Safety
    /// The caller holds the slot in CLAIMING.
    unsafe fn set(&self, name: &[u8]) {
        let len = name.len().min(NAME_MAX);
        // SAFETY: per the contract nobody else reads or writes the bytes now.
        unsafe { (&mut (*self.bytes.get()))[..len].copy_from_slice(&name[..len]) };
        self.len.store(len as u64, Ordering::Release);
    }
}

#[repr(C)]
struct FieldSlot {
    state: AtomicU64,
    name: Name,
    counts: [AtomicU64; 2],
}

#[repr(C)]
pub struct EndpointSlot {
    state: AtomicU64,
    /// Index of the target slot this endpoint belongs to.
    target: AtomicU64,
    name: Name,
    verdicts: [AtomicU64; Verdict::COUNT],
    fields: [FieldSlot; FIELDS],
    other_field: [AtomicU64; 2],
}

/// Waits, bounded, for a slot another worker is claiming (a worker that died mid-claim
/// leaves it CLAIMING: it is then skipped).
fn settled(state: &AtomicU64) -> u64 {
    for _ in 0..100_000 {
        let s = state.load(Ordering::Acquire);
        if s != CLAIMING {
            return s;
        }
        std::hint::spin_loop();
    }
    CLAIMING
}

/// The first slot that `matches`, or a free one claimed with `init` (a false `init`
/// gives the slot back). `None` when neither is found.
fn find_or_claim<'a, T>(
    slots: impl Iterator<Item = &'a T>,
    state: impl Fn(&T) -> &AtomicU64,
    matches: impl Fn(&T) -> bool,
    init: impl Fn(&T) -> bool,
) -> Option<&'a T> {
    for s in slots {
        loop {
            match settled(state(s)) {
                READY if matches(s) => return Some(s),
                FREE => {
                    if state(s).compare_exchange(FREE, CLAIMING, Ordering::AcqRel, Ordering::Acquire).is_err()
                    {
                        continue;
                    }
                    if init(s) {
                        state(s).store(READY, Ordering::Release);
                        return Some(s);
                    }
                    state(s).store(FREE, Ordering::Release);
                    return None;
                }
                _ => break,
            }
        }
    }
    None
}

impl EndpointSlot {
    /// The counters of `field` (`other` past the bound).
    fn field(&self, field: &str) -> &[AtomicU64; 2] {
        if field == OTHER {
            return &self.other_field;
        }
        let name = field.as_bytes();
        find_or_claim(
            self.fields.iter(),
            |f| &f.state,
            |f| f.name.get() == name,
            |f| {
                // SAFETY: the slot is ours in CLAIMING.
                unsafe { f.name.set(name) };
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
                e.fields.push((String::from_utf8_lossy(f.name.get()).into_owned(), counts));
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

/// The smallest zone that holds one target.
pub const MIN_SIZE: usize = 32 * 1024;

/// A view of the zone's memory; valid for the life of the configuration that created it.
#[derive(Clone, Copy)]
pub struct Zone {
    header: NonNull<Header>,
    capacity: usize,
    endpoints: usize,
}

impl Zone {
    /// # Safety
    /// `shm` must be an initialised zone created by [`init_zone`].
    pub unsafe fn from_shm(shm: *mut ngx_shm_zone_t) -> Option<Zone> {
        // SAFETY: per the contract.
        match unsafe { find(shm) } {
            Found::Ours(z) => Some(z),
            _ => None,
        }
    }

    fn header(&self) -> &Header {
        // SAFETY: the mapping lives as long as the configuration.
        unsafe { self.header.as_ref() }
    }

    fn slot(&self, i: usize) -> &Slot {
        debug_assert!(i < self.capacity);
        // SAFETY: slots follow the header, `capacity` of them fit in the mapping.
        unsafe { &*self.header.as_ptr().add(1).cast::<Slot>().add(i) }
    }

    fn endpoint(&self, i: usize) -> &EndpointSlot {
        debug_assert!(i < self.endpoints);
        // SAFETY: the endpoint area follows the `capacity` target slots inside the mapping.
        unsafe {
            &*self.header.as_ptr().add(1).cast::<Slot>().add(self.capacity).cast::<EndpointSlot>().add(i)
        }
    }

    fn slot_index(&self, slot: &Slot) -> usize {
        (std::ptr::from_ref(slot) as usize - self.header.as_ptr().wrapping_add(1) as usize)
            / size_of::<Slot>()
    }

    /// The endpoint `name` of target `slot`: claimed on first use, the target's `other`
    /// past [`ENDPOINTS`] named endpoints or when the area is full.
    pub fn endpoint_of<'a>(&'a self, slot: &'a Slot, name: &str) -> &'a EndpointSlot {
        if name == OTHER {
            return &slot.other;
        }
        let target = self.slot_index(slot) as u64;
        let name = name.as_bytes();
        find_or_claim(
            (0..self.endpoints).map(|i| self.endpoint(i)),
            |e| &e.state,
            |e| e.target.load(Ordering::Acquire) == target && e.name.get() == name,
            |e| {
                if slot.endpoint_count.fetch_add(1, Ordering::AcqRel) >= ENDPOINTS as u64 {
                    slot.endpoint_count.fetch_sub(1, Ordering::AcqRel);
                    return false;
                }
                e.target.store(target, Ordering::Release);
                // SAFETY: the slot is ours in CLAIMING.
                unsafe { e.name.set(name) };
                true
            },
        )
        .unwrap_or(&slot.other)
    }

    /// Comparison counters of target slot `i`, by endpoint.
    fn read_compare(&self, i: usize) -> Vec<EndpointCounts> {
        let mut out = Vec::new();
        for k in 0..self.endpoints {
            let e = self.endpoint(k);
            match e.state.load(Ordering::Acquire) {
                FREE => break,
                READY if e.target.load(Ordering::Acquire) == i as u64 => {
                    out.push(e.read(&String::from_utf8_lossy(e.name.get())));
                }
                _ => {}
            }
        }
        let other = &self.slot(i).other;
        if !other.is_empty() {
            out.push(other.read(OTHER));
        }
        out
    }

    /// The API's override of target slot `i`.
    pub fn override_of(&self, i: usize) -> Override {
        if i >= self.capacity || self.slot(i).used.load(Ordering::Acquire) != 1 {
            return Override::default();
        }
        let s = self.slot(i);
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
        if i >= self.capacity || self.slot(i).used.load(Ordering::Acquire) != 1 {
            return false;
        }
        let s = self.slot(i);
        let paused = match ov.paused {
            None => 0,
            Some(true) => 1,
            Some(false) => 2,
        };
        s.override_paused.store(paused, Ordering::Release);
        s.override_sample.store(ov.sample_ppm.map_or(0, |p| u64::from(p) + 1), Ordering::Release);
        true
    }

    /// Index of the slot of `url`.
    pub fn index_of(&self, url: &str) -> Option<usize> {
        self.find(url).map(|s| self.slot_index(s))
    }

    pub fn log_lines(&self) -> [u64; 3] {
        let h = self.header();
        [0, 1, 2].map(|i| h.log_lines[i].load(Ordering::Relaxed))
    }

    pub fn copy_lines(&self) -> [u64; 2] {
        let h = self.header();
        [0, 1].map(|i| h.copy_lines[i].load(Ordering::Relaxed))
    }

    pub fn add_log_lines(&self, delta: [u64; 3], copies: [u64; 2]) {
        for (c, d) in self.header().copy_lines.iter().zip(copies) {
            if d != 0 {
                c.fetch_add(d, Ordering::Relaxed);
            }
        }
        for (c, d) in self.header().log_lines.iter().zip(delta) {
            if d != 0 {
                c.fetch_add(d, Ordering::Relaxed);
            }
        }
    }

    fn slot_url(&self, i: usize) -> &[u8] {
        let s = self.slot(i);
        let len = (s.url_len.load(Ordering::Acquire) as usize).min(URL_MAX);
        &s.url[..len]
    }

    /// The slot of `url`, if the master assigned one.
    pub fn find(&self, url: &str) -> Option<&Slot> {
        (0..self.capacity)
            .take_while(|&i| self.slot(i).used.load(Ordering::Acquire) == 1)
            .find(|&i| self.slot_url(i) == url.as_bytes())
            .map(|i| self.slot(i))
    }

    /// Every assigned slot, in slot order (a target's index is its API id).
    pub fn read(&self) -> Vec<TargetSnapshot> {
        let mut out = Vec::new();
        for i in 0..self.capacity {
            let s = self.slot(i);
            if s.used.load(Ordering::Acquire) != 1 {
                break;
            }
            let mut c = [0; slot::COUNTERS];
            for (k, v) in s.counters.iter().enumerate() {
                c[k] = v.load(Ordering::Relaxed);
            }
            out.push(TargetSnapshot {
                url: String::from_utf8_lossy(self.slot_url(i)).into_owned(),
                counters: c,
                inflight: s.inflight.load(Ordering::Relaxed),
                breaker_open: s.breaker_open.load(Ordering::Relaxed),
                connections: s.connections.load(Ordering::Relaxed),
                compare: self.read_compare(i),
                ov: self.override_of(i),
            });
        }
        out
    }

    pub fn queue(&self) -> (i64, i64) {
        let h = self.header();
        (h.queue_jobs.load(Ordering::Relaxed), h.queue_bytes.load(Ordering::Relaxed))
    }

    pub fn add_queue(&self, jobs: i64, bytes: i64) {
        let h = self.header();
        h.queue_jobs.fetch_add(jobs, Ordering::Relaxed);
        h.queue_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Assigns a slot to `url` (master only, while loading configuration).
    fn assign(&self, url: &str) -> bool {
        for i in 0..self.capacity {
            let s = self.slot(i);
            if s.used.load(Ordering::Acquire) == 0 {
                // SAFETY: only the master writes URLs, and only to unused slots no worker reads.
                let dst = s.url.as_ptr().cast_mut();
                unsafe { std::ptr::copy_nonoverlapping(url.as_ptr(), dst, url.len()) };
                s.url_len.store(url.len() as u64, Ordering::Release);
                s.used.store(1, Ordering::Release);
                return true;
            }
            if self.slot_url(i) == url.as_bytes() {
                return true;
            }
        }
        false
    }
}

/// # Safety
/// `shm` is a shared zone whose slab pool nginx has initialised.
unsafe fn find(shm: *mut ngx_shm_zone_t) -> Found {
    // SAFETY: per the contract, the zone starts with nginx's slab pool.
    let Some(sp) = (unsafe { (*shm).shm.addr.cast::<ngx_slab_pool_t>().as_ref() }) else {
        return Found::Nothing;
    };
    let Some(header) = NonNull::new(sp.data.cast::<Header>()) else { return Found::Nothing };
    // SAFETY: a non-null `data` is a table this module allocated (zones are tagged
    // with the module), at least as large as the first layout's header.
    let h = unsafe { header.as_ref() };
    if h.magic.load(Ordering::Acquire) != MAGIC {
        return Found::Nothing;
    }
    let layout = h.layout.load(Ordering::Acquire);
    if layout != test_layout(LAYOUT) || h.slot_size.load(Ordering::Acquire) != size_of::<Slot>() as u64 {
        return Found::Other(layout);
    }
    Found::Ours(Zone {
        header,
        capacity: h.slots.load(Ordering::Acquire) as usize,
        endpoints: h.endpoints.load(Ordering::Acquire) as usize,
    })
}

/// Test builds can pretend to be another layout: the number in `zone-layout` under the
/// configuration prefix, if present, replaces the layout's low bits.
#[cfg(feature = "test-hooks")]
fn test_layout(layout: u64) -> u64 {
    // SAFETY: ngx_cycle is valid while configuration is loaded; read-only.
    let prefix = unsafe { (*ngx::ffi::ngx_cycle).conf_prefix };
    let dir = String::from_utf8_lossy(super::request::str_bytes(&prefix)).into_owned();
    match std::fs::read_to_string(std::path::Path::new(&dir).join("zone-layout")) {
        Ok(s) => (layout & !0xffff_ffff) | s.trim().parse::<u64>().unwrap_or(0),
        Err(_) => layout,
    }
}

#[cfg(not(feature = "test-hooks"))]
fn test_layout(layout: u64) -> u64 {
    layout
}

impl Slot {
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
}

/// nginx's zone init callback; `shm.data` is the MainConf that declared the zone.
pub unsafe extern "C" fn init_zone(shm: *mut ngx_shm_zone_t, _old: *mut c_void) -> ngx_int_t {
    let result = std::panic::catch_unwind(|| {
        // SAFETY: nginx passes the zone it mapped; data was set to our MainConf by the directive.
        let (zone_ref, mc) = unsafe { (&*shm, &*(*shm).data.cast::<MainConf>()) };
        let log = zone_ref.shm.log;
        let name = String::from_utf8_lossy(super::request::str_bytes(&zone_ref.shm.name)).into_owned();
        // A reused zone (same name and size across a reload) keeps its table and counters.
        // SAFETY: nginx initialised the zone's slab pool before calling init.
        let found = match unsafe { find(shm) } {
            Found::Ours(z) => Some(z),
            Found::Other(layout) => {
                ngx_log_error!(
                    NGX_LOG_NOTICE,
                    log,
                    "async_mirror: zone \"{name}\" holds counters of another layout ({layout:#x}, \
                     this module uses {:#x}): re-initialised, counters start from zero",
                    test_layout(LAYOUT)
                );
                None
            }
            Found::Nothing => None,
        };
        // SAFETY: as above; the master is loading configuration, single-threaded.
        let zone = match found.or_else(|| unsafe { create_table(zone_ref) }) {
            Some(z) => z,
            None => {
                ngx_log_error!(
                    NGX_LOG_EMERG,
                    log,
                    "async_mirror: cannot allocate the table of zone \"{name}\" (zone too small?)"
                );
                return NGX_ERROR as ngx_int_t;
            }
        };
        for t in mc.targets.values() {
            if !zone.assign(&t.url) {
                ngx_log_error!(
                    NGX_LOG_EMERG,
                    log,
                    "async_mirror: zone is too small for {} targets (holds {})",
                    mc.targets.len(),
                    zone.capacity
                );
                return NGX_ERROR as ngx_int_t;
            }
        }
        NGX_OK as ngx_int_t
    });
    result.unwrap_or(NGX_ERROR as ngx_int_t)
}

/// Allocates the largest table the fresh slab pool can hold and records it in `sp->data`.
///
/// # Safety
/// `zone` is a freshly initialised shared zone (nginx set up its slab pool).
unsafe fn create_table(zone: &ngx_shm_zone_t) -> Option<Zone> {
    let sp = zone.shm.addr.cast::<ngx_slab_pool_t>();
    // SAFETY: per the contract; trying sizes that do not fit is expected, not worth a log line.
    unsafe { (*sp).set_log_nomem(0) };
    // Half the zone for targets, the rest for the endpoints comparisons name.
    let mut capacity = (zone.shm.size / 2 / size_of::<Slot>()).max(1);
    let mut endpoints =
        zone.shm.size.saturating_sub(capacity * size_of::<Slot>()) / size_of::<EndpointSlot>();
    while capacity > 0 {
        let bytes =
            size_of::<Header>() + capacity * size_of::<Slot>() + endpoints * size_of::<EndpointSlot>();
        // SAFETY: allocation from the zone's own pool while the master loads configuration.
        let p = unsafe { ngx_slab_alloc(sp, bytes) };
        if !p.is_null() {
            // SAFETY: p holds `bytes` fresh bytes; zero is the empty table.
            unsafe {
                std::ptr::write_bytes(p.cast::<u8>(), 0, bytes);
                let h = &*p.cast::<Header>();
                h.slots.store(capacity as u64, Ordering::Release);
                h.endpoints.store(endpoints as u64, Ordering::Release);
                h.slot_size.store(size_of::<Slot>() as u64, Ordering::Release);
                h.layout.store(test_layout(LAYOUT), Ordering::Release);
                h.magic.store(MAGIC, Ordering::Release);
                (*sp).data = p;
                (*sp).set_log_nomem(1);
            }
            return Some(Zone { header: NonNull::new(p.cast())?, capacity, endpoints });
        }
        capacity = capacity * 9 / 10;
        endpoints = endpoints * 9 / 10;
    }
    None
}

/// This worker's link to the shared zone: its targets' slots and what it already added.
pub struct Shared {
    pub zone: Zone,
    slots: Table<TargetId, *const Slot>,
    /// Each target's slot index (its API id).
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
    slot: *const EndpointSlot,
    last: [u64; Verdict::COUNT],
    fields: Vec<(*const [AtomicU64; 2], [u64; 2])>,
}

impl Shared {
    pub fn new(zone: Zone, engine: &Engine) -> Shared {
        let slots: Table<TargetId, *const Slot> = engine
            .targets()
            .map(|(_, spec, _)| zone.find(&spec.url).map_or(std::ptr::null(), std::ptr::from_ref))
            .collect();
        let indexes = engine.targets().map(|(_, spec, _)| zone.index_of(&spec.url)).collect();
        Shared {
            zone,
            indexes,
            last: slots.map(|_| [0; slot::COUNTERS]),
            last_gauges: slots.map(|_| Gauges::default()),
            compare: slots.map(|_| Vec::new()),
            slots,
            last_queue: (0, 0),
            last_lines: [0; 3],
            last_copy_lines: [0; 2],
        }
    }

    /// The API's overrides of this worker's targets, as the zone holds them now.
    pub fn overrides(&self) -> Table<TargetId, Override> {
        self.indexes.map(|i| i.map_or_else(Override::default, |i| self.zone.override_of(i)))
    }

    /// Adds what changed since the last fold; `last_fold` withdraws this worker's gauges.
    pub fn fold(&mut self, engine: &Engine, last_fold: bool) {
        for (id, _, stats) in engine.targets() {
            // SAFETY: slots point into the zone, mapped for the life of this configuration.
            let Some(slot) = self.slots.get(id).and_then(|s| unsafe { s.as_ref() }) else { continue };
            let (Some(last), Some(last_g)) = (self.last.get_mut(id), self.last_gauges.get_mut(id)) else {
                continue;
            };
            let now = stats.snapshot();
            let mut delta = [0; slot::COUNTERS];
            for k in 0..slot::COUNTERS {
                delta[k] = now[k].wrapping_sub(last[k]);
            }
            slot.add(&delta);
            *last = now;
            let g = if last_fold { Gauges::default() } else { engine.gauges(id) };
            slot.add_gauges(g, *last_g);
            *last_g = g;
            if let (Some(links), Some(now)) = (self.compare.get_mut(id), engine.verdicts(id)) {
                fold_compare(&self.zone, slot, links, &now);
            }
        }
        let lines = engine.difflog().counts.snapshot();
        let delta = [0, 1, 2].map(|i| lines[i].wrapping_sub(self.last_lines[i]));
        let copies = engine.copylog().counts();
        let copies_delta = [0, 1].map(|i| copies[i].wrapping_sub(self.last_copy_lines[i]));
        self.zone.add_log_lines(delta, copies_delta);
        self.last_lines = lines;
        self.last_copy_lines = copies;
        let q = if last_fold { (0, 0) } else { (engine.queued_jobs() as i64, engine.queued_bytes() as i64) };
        self.zone.add_queue(q.0 - self.last_queue.0, q.1 - self.last_queue.1);
        self.last_queue = q;
    }
}

/// Adds what changed in one target's comparison counters since the last fold.
fn fold_compare(zone: &Zone, slot: &Slot, links: &mut Vec<EndpointLink>, now: &[EndpointCounts]) {
    for (i, e) in now.iter().enumerate() {
        if links.len() <= i {
            let ep = zone.endpoint_of(slot, &e.name);
            links.push(EndpointLink { slot: ep, last: [0; Verdict::COUNT], fields: Vec::new() });
        }
        let link = &mut links[i];
        // SAFETY: the slot lies in the zone, mapped for the life of this configuration.
        let ep = unsafe { &*link.slot };
        for (k, (v, last)) in e.verdicts.iter().zip(link.last.iter_mut()).enumerate() {
            if *v != *last {
                ep.verdicts[k].fetch_add(v.wrapping_sub(*last), Ordering::Relaxed);
                *last = *v;
            }
        }
        for (j, (name, counts)) in e.fields.iter().enumerate() {
            if link.fields.len() <= j {
                link.fields.push((std::ptr::from_ref(ep.field(name)), [0; 2]));
            }
            let (dst, last) = &mut link.fields[j];
            // SAFETY: as above.
            let dst = unsafe { &**dst };
            for side in 0..2 {
                if counts[side] != last[side] {
                    dst[side].fetch_add(counts[side].wrapping_sub(last[side]), Ordering::Relaxed);
                    last[side] = counts[side];
                }
            }
        }
    }
}
