//! The table in `async_mirror_zone`'s shared memory: a header, then one slot per target,
//! then the endpoint area comparisons claim from, then one row per running worker for
//! its gauges. Every field is an atomic, so workers (and the master, which assigns
//! target slots while loading a configuration) share it without locks; the nginx layer
//! only maps it.

use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU64, Ordering};

use crate::engine::compare::{FIELDS, NAME_MAX, Verdict};
use crate::engine::outcome::slot;

pub const MAGIC: u64 = 0x6173_796e_636d_6972; // "asyncmir"
pub const URL_MAX: usize = 512;

/// The table's layout: bump the low bits whenever `Header` or a slot changes. The high
/// bits ("LAYT") make it distinct from the slot count the first layout kept here.
pub const LAYOUT: u64 = 0x4c41_5954_0000_0007;

/// The smallest zone that holds one target.
pub const MIN_SIZE: usize = 32 * 1024;

#[repr(C)]
pub struct Header {
    pub magic: AtomicU64,
    pub layout: AtomicU64,
    pub slot_size: AtomicU64,
    pub slots: AtomicU64,
    /// Slots of the endpoint area that follows the target slots.
    pub endpoints: AtomicU64,
    /// Worker rows after the endpoint area (each `row_len(slots)` cells).
    pub rows: AtomicU64,
    pub log_lines: [AtomicU64; 3],
    /// `async_mirror_log` lines: written, lost.
    pub copy_lines: [AtomicU64; 2],
}

/// Bytes of text kept in atomics, so that a reader never sees a torn write as undefined
/// behaviour; writers publish the length last.
#[repr(C)]
pub struct Text<const N: usize> {
    len: AtomicU64,
    bytes: [AtomicU8; N],
}

impl<const N: usize> Text<N> {
    pub fn new() -> Self {
        Text { len: AtomicU64::new(0), bytes: std::array::from_fn(|_| AtomicU8::new(0)) }
    }

    /// Written once by whoever owns the slot (the master, or a worker while claiming).
    pub fn set(&self, text: &[u8]) {
        let len = text.len().min(N);
        for (d, s) in self.bytes.iter().zip(&text[..len]) {
            d.store(*s, Ordering::Relaxed);
        }
        self.len.store(len as u64, Ordering::Release);
    }

    pub fn get(&self) -> Vec<u8> {
        let len = (self.len.load(Ordering::Acquire) as usize).min(N);
        self.bytes[..len].iter().map(|b| b.load(Ordering::Relaxed)).collect()
    }

    pub fn is(&self, text: &[u8]) -> bool {
        let len = (self.len.load(Ordering::Acquire) as usize).min(N);
        len == text.len().min(N)
            && self.bytes[..len].iter().zip(text).all(|(b, t)| b.load(Ordering::Relaxed) == *t)
    }
}

impl<const N: usize> Default for Text<N> {
    fn default() -> Self {
        Self::new()
    }
}

#[repr(C)]
pub struct TargetSlot {
    pub used: AtomicU64,
    pub url: Text<URL_MAX>,
    pub counters: [AtomicU64; slot::COUNTERS],
    /// Named endpoints claimed for this target in the endpoint area.
    pub endpoint_count: AtomicU64,
    /// The `async_mirror_api` override as one word (`Override::to_word`).
    pub override_word: AtomicU64,
    /// Bumped whenever the slot is assigned or freed, so a worker of an older
    /// configuration stops adding to a slot that now names another target.
    pub epoch: AtomicU64,
    /// Endpoints past the bound (or past the area's room).
    pub other: EndpointSlot,
}

#[repr(C)]
pub struct FieldSlot {
    pub state: AtomicU64,
    pub name: Text<NAME_MAX>,
    pub counts: [AtomicU64; 2],
}

#[repr(C)]
pub struct EndpointSlot {
    pub state: AtomicU64,
    /// Index of the target slot this endpoint belongs to.
    pub target: AtomicU64,
    pub name: Text<NAME_MAX>,
    pub verdicts: [AtomicU64; Verdict::COUNT],
    pub fields: [FieldSlot; FIELDS],
    pub other_field: [AtomicU64; 2],
}

fn zeros<const N: usize>() -> [AtomicU64; N] {
    std::array::from_fn(|_| AtomicU64::new(0))
}

impl Default for FieldSlot {
    fn default() -> Self {
        FieldSlot { state: AtomicU64::new(0), name: Text::new(), counts: zeros() }
    }
}

impl Default for EndpointSlot {
    fn default() -> Self {
        EndpointSlot {
            state: AtomicU64::new(0),
            target: AtomicU64::new(0),
            name: Text::new(),
            verdicts: zeros(),
            fields: std::array::from_fn(|_| FieldSlot::default()),
            other_field: zeros(),
        }
    }
}

impl Default for TargetSlot {
    fn default() -> Self {
        TargetSlot {
            used: AtomicU64::new(0),
            url: Text::new(),
            counters: zeros(),
            endpoint_count: AtomicU64::new(0),
            override_word: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            other: EndpointSlot::default(),
        }
    }
}

impl Default for Header {
    fn default() -> Self {
        Header {
            magic: AtomicU64::new(0),
            layout: AtomicU64::new(0),
            slot_size: AtomicU64::new(0),
            slots: AtomicU64::new(0),
            endpoints: AtomicU64::new(0),
            rows: AtomicU64::new(0),
            log_lines: zeros(),
            copy_lines: zeros(),
        }
    }
}

impl Header {
    /// Whether this memory holds a table of this module, and of which layout.
    pub fn layout_found(&self) -> Option<u64> {
        (self.magic.load(Ordering::Acquire) == MAGIC).then(|| self.layout.load(Ordering::Acquire))
    }

    /// Whether the table is of `layout` (the module's own, or a test's stand-in).
    pub fn is_layout(&self, layout: u64) -> bool {
        self.layout_found() == Some(layout)
            && self.slot_size.load(Ordering::Acquire) == size_of::<TargetSlot>() as u64
    }

    /// Marks fresh, zeroed memory as a table of `layout` with these many slots.
    pub fn init(&self, layout: u64, (capacity, endpoints, rows): (usize, usize, usize)) {
        self.slots.store(capacity as u64, Ordering::Release);
        self.endpoints.store(endpoints as u64, Ordering::Release);
        self.rows.store(rows as u64, Ordering::Release);
        self.slot_size.store(size_of::<TargetSlot>() as u64, Ordering::Release);
        self.layout.store(layout, Ordering::Release);
        self.magic.store(MAGIC, Ordering::Release);
    }

    /// Target slots, endpoint slots and worker rows.
    pub fn capacity(&self) -> (usize, usize, usize) {
        let get = |a: &AtomicU64| a.load(Ordering::Acquire) as usize;
        (get(&self.slots), get(&self.endpoints), get(&self.rows))
    }
}

/// Cells of one worker row: its process id, its backlog (jobs, bytes), then per target
/// slot three gauges (in flight, breaker open, connections) and the copies it counted as
/// attempted but not yet as ended.
pub fn row_len(capacity: usize) -> usize {
    3 + CELLS * capacity
}

/// Cells per target slot in a worker row.
pub const CELLS: usize = 4;

/// Bytes of a table with these many target slots, endpoint slots and worker rows.
pub fn table_bytes((capacity, endpoints, rows): (usize, usize, usize)) -> usize {
    size_of::<Header>()
        + capacity * size_of::<TargetSlot>()
        + endpoints * size_of::<EndpointSlot>()
        + rows * row_len(capacity) * size_of::<AtomicI64>()
}

/// The first table tried for a zone of `size` bytes: a quarter for targets, half for the
/// endpoints comparisons name, a quarter for worker rows (the slab allocator's own
/// overhead shrinks it on retry).
pub fn plan(size: usize) -> (usize, usize, usize) {
    let capacity = (size / 4 / size_of::<TargetSlot>()).max(1);
    let endpoints = size / 2 / size_of::<EndpointSlot>();
    let rows = (size / 4 / (row_len(capacity) * size_of::<AtomicI64>())).max(1);
    (capacity, endpoints, rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips_and_is_bounded() {
        let t: Text<8> = Text::new();
        assert!(t.is(b"") && t.get().is_empty());
        t.set(b"abc");
        assert!(t.is(b"abc") && !t.is(b"abcd") && !t.is(b"ab"));
        t.set(b"0123456789");
        assert_eq!(t.get(), b"01234567");
        assert!(t.is(b"0123456789"), "a name longer than the room is kept cut, and still found");
    }

    #[test]
    fn what_a_megabyte_holds() {
        // The figures docs/operations.md gives for `async_mirror_zone ... 1m`.
        assert_eq!(
            plan(1 << 20),
            (107, 322, 76),
            "{} {}",
            size_of::<TargetSlot>(),
            size_of::<EndpointSlot>()
        );
    }

    #[test]
    fn a_planned_table_fits_its_zone() {
        for size in [MIN_SIZE, 64 << 10, 1 << 20] {
            let (c, e, r) = plan(size);
            assert!(
                c >= 1 && r >= 16 && table_bytes((c, e, r)) <= size + size_of::<Header>(),
                "{size}: {c} {e} {r}"
            );
        }
    }
}
