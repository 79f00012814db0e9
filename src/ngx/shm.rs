//! `async_mirror_zone` in nginx's shared memory: the slab allocation that holds the
//! engine's table (`engine::zone`), and the view of it workers and the master use.
//!
//! nginx lays every shared zone out as a slab pool (its master even reads the pool's
//! mutex when a worker dies), so the table is one slab allocation whose address is kept
//! in the pool's `data` field. Target slots are assigned only in the master while it
//! loads a configuration (single threaded), so workers never allocate or lock: they add
//! deltas to atomics. nginx hands the same memory to the new configuration on reload
//! when name and size are unchanged, so counters survive reloads. A zone left by another
//! layout (a reload onto a module built with other counters) gets a fresh table,
//! announced with a `notice`, and is never read with the wrong layout; the old table
//! stays allocated for the old generation of workers still writing into it.

use std::ffi::c_void;
use std::ptr::NonNull;

use ngx::ffi::{
    NGX_ERROR, NGX_LOG_EMERG, NGX_LOG_NOTICE, NGX_OK, ngx_int_t, ngx_shm_zone_t, ngx_slab_alloc,
    ngx_slab_pool_t,
};
use ngx::ngx_log_error;

use super::conf::MainConf;
use std::sync::atomic::AtomicI64;

use crate::engine::zone::{
    EndpointSlot, Header, LAYOUT, TargetSlot, WorkerRows, ZoneTable, plan, row_len, table_bytes,
};

/// What a zone's memory holds.
enum Found {
    Ours(ZoneTable<'static>),
    /// A table of another layout: its layout word.
    Other(u64),
    Nothing,
}

/// The table of a zone, if it holds one of this module's layout.
///
/// # Safety
/// `shm` is a shared zone whose slab pool nginx has initialised (the master set it up
/// before workers started, or this is its init callback).
pub unsafe fn table(shm: *mut ngx_shm_zone_t) -> Option<ZoneTable<'static>> {
    // SAFETY: per the contract.
    match unsafe { find(shm) } {
        Found::Ours(t) => Some(t),
        _ => None,
    }
}

/// # Safety
/// As [`table`].
unsafe fn find(shm: *mut ngx_shm_zone_t) -> Found {
    // SAFETY: per the contract, the zone starts with nginx's slab pool.
    let Some(sp) = (unsafe { (*shm).shm.addr.cast::<ngx_slab_pool_t>().as_ref() }) else {
        return Found::Nothing;
    };
    let Some(header) = NonNull::new(sp.data.cast::<Header>()) else { return Found::Nothing };
    // SAFETY: a non-null `data` is a table this module allocated (zones are tagged with
    // the module), at least as large as the first layout's header.
    let h = unsafe { header.as_ref() };
    match h.layout_found() {
        None => Found::Nothing,
        Some(_) if h.is_layout(test_layout(LAYOUT)) => {
            // SAFETY: the table was allocated with these counts (`create_table`), in the
            // mapping that lives as long as the process.
            Found::Ours(unsafe { view(header, h.capacity()) })
        }
        Some(other) => Found::Other(other),
    }
}

/// The table at `header` with its target slots, endpoint area and worker rows.
///
/// # Safety
/// `header` starts an allocation of `table_bytes(sizes)` bytes holding a table (zeroed
/// is a valid, empty one), mapped for the rest of the process.
unsafe fn view(
    header: NonNull<Header>,
    (capacity, endpoints, rows): (usize, usize, usize),
) -> ZoneTable<'static> {
    // SAFETY: per the contract; slots follow the header, the endpoint area the slots,
    // the rows the endpoint area, each correctly aligned (every type is a repr(C) of
    // 8-byte atomics).
    unsafe {
        let slots_at = header.as_ptr().add(1).cast::<TargetSlot>();
        let endpoints_at = slots_at.add(capacity).cast::<EndpointSlot>();
        let rows_at = endpoints_at.add(endpoints).cast::<AtomicI64>();
        ZoneTable::new(
            header.as_ref(),
            std::slice::from_raw_parts(slots_at, capacity),
            std::slice::from_raw_parts(endpoints_at, endpoints),
            WorkerRows::new(std::slice::from_raw_parts(rows_at, rows * row_len(capacity)), capacity),
        )
    }
}

/// Test builds can pretend to be another layout: the number in `zone-layout` under the
/// configuration prefix, if present, replaces the layout's low bits.
#[cfg(feature = "test-hooks")]
fn test_layout(layout: u64) -> u64 {
    // SAFETY: ngx_cycle is valid while configuration is loaded; read-only.
    let prefix = unsafe { (*ngx::ffi::ngx_cycle).conf_prefix };
    let dir = String::from_utf8_lossy(super::strings::str_bytes(&prefix)).into_owned();
    match std::fs::read_to_string(std::path::Path::new(&dir).join("zone-layout")) {
        Ok(s) => (layout & !0xffff_ffff) | s.trim().parse::<u64>().unwrap_or(0),
        Err(_) => layout,
    }
}

#[cfg(not(feature = "test-hooks"))]
fn test_layout(layout: u64) -> u64 {
    layout
}

/// nginx's zone init callback; `shm.data` is the MainConf that declared the zone.
pub unsafe extern "C" fn init_zone(shm: *mut ngx_shm_zone_t, _old: *mut c_void) -> ngx_int_t {
    let result = std::panic::catch_unwind(|| {
        // SAFETY: nginx passes the zone it mapped; data was set to our MainConf by the directive.
        let (zone_ref, mc) = unsafe { (&*shm, &*(*shm).data.cast::<MainConf>()) };
        let log = zone_ref.shm.log;
        let name = String::from_utf8_lossy(super::strings::str_bytes(&zone_ref.shm.name)).into_owned();
        // A reused zone (same name and size across a reload) keeps its table and counters.
        // SAFETY: nginx initialised the zone's slab pool before calling init.
        let found = match unsafe { find(shm) } {
            Found::Ours(t) => Some(t),
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
        let Some(table) = found.or_else(|| unsafe { create_table(zone_ref) }) else {
            ngx_log_error!(
                NGX_LOG_EMERG,
                log,
                "async_mirror: cannot allocate the table of zone \"{name}\" (zone too small?)"
            );
            return NGX_ERROR as ngx_int_t;
        };
        // Slots of targets this configuration no longer names make room for new ones;
        // the others keep their counters.
        let named: Vec<&str> = mc.targets.values().map(|t| t.url.as_str()).collect();
        table.reclaim(&named);
        for t in mc.targets.values() {
            if !table.assign(&t.url) {
                ngx_log_error!(
                    NGX_LOG_EMERG,
                    log,
                    "async_mirror: zone is too small for {} targets (holds {})",
                    mc.targets.len(),
                    table.capacity()
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
unsafe fn create_table(zone: &ngx_shm_zone_t) -> Option<ZoneTable<'static>> {
    let sp = zone.shm.addr.cast::<ngx_slab_pool_t>();
    // SAFETY: per the contract; trying sizes that do not fit is expected, not worth a log line.
    unsafe { (*sp).set_log_nomem(0) };
    let (mut capacity, mut endpoints, mut rows) = plan(zone.shm.size);
    while capacity > 0 {
        let sizes = (capacity, endpoints, rows);
        let bytes = table_bytes(sizes);
        // SAFETY: allocation from the zone's own pool while the master loads configuration.
        let p = unsafe { ngx_slab_alloc(sp, bytes) };
        if let Some(header) = NonNull::new(p.cast::<Header>()) {
            // SAFETY: p holds `bytes` fresh bytes; zero is the empty table.
            unsafe {
                std::ptr::write_bytes(p.cast::<u8>(), 0, bytes);
                (*sp).data = p;
                (*sp).set_log_nomem(1);
            }
            // SAFETY: just allocated with these counts, in the zone's mapping.
            let table = unsafe { view(header, sizes) };
            // SAFETY: the header lies at the start of the zeroed allocation.
            unsafe { header.as_ref() }.init(test_layout(LAYOUT), sizes);
            return Some(table);
        }
        capacity = capacity * 9 / 10;
        endpoints = endpoints * 9 / 10;
        rows = (rows * 9 / 10).max(1);
    }
    None
}
