//! `async_mirror_status`: the counters as Prometheus text or JSON.

use ngx::ffi::{
    NGX_ERROR, NGX_HTTP_GET, NGX_HTTP_HEAD, NGX_HTTP_INTERNAL_SERVER_ERROR, NGX_HTTP_NOT_ALLOWED, NGX_OK,
    ngx_chain_t, ngx_create_temp_buf, ngx_http_arg, ngx_http_discard_request_body, ngx_http_output_filter,
    ngx_http_request_t, ngx_http_send_header, ngx_int_t, ngx_list_push, ngx_str_t, ngx_table_elt_t,
    ngx_uint_t,
};

use super::log;
use super::process::with_worker;
use super::strings::{HeaderIter, str_bytes};
use crate::engine::Engine;
use crate::engine::compare::{EndpointCounts, Mismatch};
use crate::engine::ids::TargetId;
use crate::engine::report::{
    HTML_CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE, Snapshot, TargetSnapshot, html, json, merge_by_url,
    prometheus,
};

pub unsafe extern "C" fn status_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    let result = std::panic::catch_unwind(|| {
        // SAFETY: nginx passes a valid request to content handlers.
        unsafe { serve(&mut *r) }
    });
    result.unwrap_or_else(|_| {
        log::alert("async_mirror: panic in status handler");
        NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t
    })
}

/// # Safety
/// `r` is the request being handled, on the nginx thread.
unsafe fn serve(r: &mut ngx_http_request_t) -> ngx_int_t {
    if r.method & (NGX_HTTP_GET | NGX_HTTP_HEAD) as ngx_uint_t == 0 {
        return NGX_HTTP_NOT_ALLOWED as ngx_int_t;
    }
    // SAFETY: valid request; nginx's own stub_status does the same.
    let rc = unsafe { ngx_http_discard_request_body(r) };
    if rc != NGX_OK as ngx_int_t {
        return rc;
    }
    let mut format = ngx_str_t { len: 0, data: std::ptr::null_mut() };
    // SAFETY: the name is a static byte string; the value points into the request line.
    let asked = unsafe { ngx_http_arg(r, c"format".as_ptr().cast_mut().cast(), 6, &mut format) }
        == NGX_OK as ngx_int_t;
    let format = if asked { str_bytes(&format) } else { b"" };
    // Without ?format=, a browser (which asks for text/html) gets the page; Prometheus
    // and curl (which do not) get the exposition.
    let browser = !asked
        && HeaderIter::new(&r.headers_in.headers)
            .any(|(n, v)| n.eq_ignore_ascii_case(b"accept") && contains(v, b"text/html"));
    let snap = snapshot();
    let (body, ctype): (String, &'static str) = match format {
        b"json" => (json(&snap), "application/json"),
        b"html" => (html(&snap, &recent()), HTML_CONTENT_TYPE),
        _ if browser => (html(&snap, &recent()), HTML_CONTENT_TYPE),
        _ => (prometheus(&snap), PROMETHEUS_CONTENT_TYPE),
    };

    // SAFETY: per this function's contract.
    unsafe { send(r, 200, ctype, body.as_bytes()) }
}

/// Sends a complete response from this handler: status, content type (a static
/// string) and body.
///
/// # Safety
/// `r` is the request being handled, on the nginx thread.
pub unsafe fn send(r: &mut ngx_http_request_t, status: u16, ctype: &'static str, body: &[u8]) -> ngx_int_t {
    // Counters change from one request to the next, and the page's format follows `Accept`.
    for (name, value) in [("Cache-Control", "no-store"), ("Vary", "Accept")] {
        // SAFETY: the response's header list belongs to the request; the strings are static.
        let h = unsafe { ngx_list_push(&mut r.headers_out.headers) }.cast::<ngx_table_elt_t>();
        if h.is_null() {
            continue;
        }
        // SAFETY: a fresh element of the list, zeroed (no lowercase key, no next header:
        // the fields differ between nginx versions) and filled before nginx reads it.
        unsafe {
            std::ptr::write_bytes(h, 0, 1);
            (*h).hash = 1;
            (*h).key = ngx_str_t { len: name.len(), data: name.as_ptr().cast_mut() };
            (*h).value = ngx_str_t { len: value.len(), data: value.as_ptr().cast_mut() };
        }
    }
    r.headers_out.status = ngx_uint_t::from(status);
    r.headers_out.content_length_n = body.len() as _;
    r.headers_out.content_type = ngx_str_t { len: ctype.len(), data: ctype.as_ptr().cast_mut() };
    r.headers_out.content_type_len = ctype.len();
    // SAFETY: headers are set; nginx owns the response from here.
    let rc = unsafe { ngx_http_send_header(r) };
    if rc == NGX_ERROR as ngx_int_t || rc > NGX_OK as ngx_int_t || r.header_only() != 0 {
        return rc;
    }
    // SAFETY: a buffer from the request pool, filled before it is linked into the chain.
    unsafe {
        let b = ngx_create_temp_buf(r.pool, body.len().max(1));
        if b.is_null() {
            return NGX_ERROR as ngx_int_t;
        }
        std::ptr::copy_nonoverlapping(body.as_ptr(), (*b).pos, body.len());
        (*b).last = (*b).pos.add(body.len());
        (*b).set_last_buf(1);
        (*b).set_last_in_chain(1);
        let mut out = ngx_chain_t { buf: b, next: std::ptr::null_mut() };
        ngx_http_output_filter(r, &mut out)
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w.eq_ignore_ascii_case(needle))
}

/// This worker's latest mismatches, for the HTML page.
fn recent() -> Vec<Mismatch> {
    with_worker(|w| w.engine.mismatch_log().recent())
}

/// What the page shows: the zone's sums if there is one (after adding this worker's
/// latest changes), otherwise this worker's own counters.
fn snapshot() -> Snapshot {
    with_worker(|w| {
        if let Some(zone) = w.zone.as_mut() {
            zone.fold(&w.engine, false);
            let (queue_jobs, queue_bytes) = zone.table.rows.queue();
            let targets = zone.table.read();
            let (log_lines, copy_lines) = (zone.table.log_lines(), zone.table.copy_lines());
            return Snapshot { targets, queue_jobs, queue_bytes, shared: true, log_lines, copy_lines };
        }
        let rows = w.engine.targets().map(|(id, spec, stats)| {
            let g = w.engine.gauges(id);
            TargetSnapshot {
                url: spec.url.clone(),
                counters: stats.snapshot(),
                inflight: g.inflight,
                breaker_open: g.breaker_open,
                connections: g.connections,
                compare: verdicts(&w.engine, id),
                ov: Default::default(),
            }
        });
        Snapshot {
            targets: merge_by_url(rows),
            queue_jobs: w.engine.queued_jobs() as i64,
            queue_bytes: w.engine.queued_bytes() as i64,
            shared: false,
            log_lines: w.engine.mismatch_log().counts.snapshot(),
            copy_lines: w.engine.copy_log().counts(),
        }
    })
}

/// A target's comparison counters; a runtime thread holds their lock only to add one
/// verdict, so a few tries find it free.
fn verdicts(engine: &Engine, id: TargetId) -> Vec<EndpointCounts> {
    for _ in 0..1000 {
        if let Some(v) = engine.verdicts(id) {
            return v;
        }
        std::hint::spin_loop();
    }
    Vec::new()
}
