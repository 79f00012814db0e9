//! `async_mirror_api`: the control API's content handler (the answers are in
//! `engine::control`). Overrides go to the shared zone; every worker reads them on its
//! next tick.

use ngx::ffi::{
    NGX_DONE, NGX_HTTP_INTERNAL_SERVER_ERROR, NGX_HTTP_PATCH, NGX_HTTP_SPECIAL_RESPONSE, NGX_OK, ngx_chain_t,
    ngx_http_discard_request_body, ngx_http_finalize_request, ngx_http_read_client_request_body,
    ngx_http_request_t, ngx_int_t, ngx_uint_t,
};

use super::conf::{MainConf, Registered};
use super::log;
use super::process::with_worker;
use super::shm;
use super::status_handler::send;
use super::strings::str_bytes;
use crate::engine::control::{self, Override, TargetView, Targets};
use crate::engine::outcome::{Outcome, slot};
use crate::engine::zone::ZoneTable;

/// Largest PATCH body read (a change is a few dozen bytes).
const BODY_MAX: usize = 4096;

pub unsafe extern "C" fn api_handler<M: Registered>(r: *mut ngx_http_request_t) -> ngx_int_t {
    let result = std::panic::catch_unwind(|| {
        // SAFETY: nginx passes a valid request to content handlers.
        let r = unsafe { &mut *r };
        if r.method == NGX_HTTP_PATCH as ngx_uint_t {
            r.set_request_body_in_single_buf(1);
            // SAFETY: valid request; nginx calls `body_read` once the body is in.
            let rc = unsafe { ngx_http_read_client_request_body(r, Some(body_read::<M>)) };
            if rc >= NGX_HTTP_SPECIAL_RESPONSE as ngx_int_t {
                return rc;
            }
            return NGX_DONE as ngx_int_t;
        }
        // SAFETY: valid request; a body other methods may carry is not used.
        let rc = unsafe { ngx_http_discard_request_body(r) };
        if rc != NGX_OK as ngx_int_t {
            return rc;
        }
        respond::<M>(r, b"")
    });
    result.unwrap_or_else(|_| {
        log::alert("async_mirror: panic in the API handler");
        NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t
    })
}

unsafe extern "C" fn body_read<M: Registered>(r: *mut ngx_http_request_t) {
    let rc = std::panic::catch_unwind(|| {
        // SAFETY: nginx calls the post handler with the request whose body it read.
        let r = unsafe { &mut *r };
        // SAFETY: request_body is set once the body was read.
        match unsafe { collect(r) } {
            Some(body) => respond::<M>(r, &body),
            None => reply(r, 413, "{\"error\":\"the body must be a small JSON object\"}\n"),
        }
    })
    .unwrap_or(NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t);
    // SAFETY: the request is still ours; this ends it with the handler's result.
    unsafe { ngx_http_finalize_request(r, rc) };
}

/// The request body, if it is in memory and small.
///
/// # Safety
/// `r` is a request whose body nginx has read.
unsafe fn collect(r: &ngx_http_request_t) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    // SAFETY: per the contract, request_body and its chain are valid.
    let mut cl: *mut ngx_chain_t = unsafe { r.request_body.as_ref()? }.bufs;
    // SAFETY: chain links and buffers are valid.
    while let Some(link) = unsafe { cl.as_ref() } {
        let b = unsafe { link.buf.as_ref()? };
        if b.in_file() != 0 && b.temporary() == 0 && b.memory() == 0 {
            return None;
        }
        if b.last > b.pos {
            // SAFETY: pos..last is the buffer's data.
            out.extend_from_slice(unsafe {
                std::slice::from_raw_parts(b.pos, b.last as usize - b.pos as usize)
            });
        }
        if out.len() > BODY_MAX {
            return None;
        }
        cl = link.next;
    }
    Some(out)
}

fn reply(r: &mut ngx_http_request_t, status: u16, body: &str) -> ngx_int_t {
    // SAFETY: r is the request being handled, on the nginx thread.
    unsafe { send(r, status, "application/json", body.as_bytes()) }
}

fn respond<M: Registered>(r: &mut ngx_http_request_t, body: &[u8]) -> ngx_int_t {
    let Some(lc) = M::location_conf(&*r) else { return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t };
    let write = lc.api_write.unwrap_or(false);
    let (Some(mc), method) =
        (M::main_conf(&*r), String::from_utf8_lossy(str_bytes(&r.method_name)).into_owned())
    else {
        return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
    };
    let path = String::from_utf8_lossy(str_bytes(&r.uri)).into_owned();
    // SAFETY: the zone was initialised by the master before workers started.
    let zone = mc.zone.and_then(|z| unsafe { shm::table(z.as_ptr()) });
    let Some(zone) = zone else {
        return reply(r, 503, "{\"error\":\"async_mirror_api needs async_mirror_zone\"}\n");
    };
    // Fold this worker's latest counters first, as the status page does.
    with_worker(|w| {
        if let Some(z) = w.zone.as_mut() {
            z.fold(&w.engine, false);
        }
    });
    let answer = control::handle(&method, &path, body, write, &ZoneTargets { zone, mc });
    if answer.status == 200 && method != "GET" && method != "HEAD" {
        // Applied here at once; the other workers follow on their next tick.
        with_worker(|w| {
            if let Some(z) = w.zone.as_ref() {
                w.select.overrides = z.overrides();
            }
        });
    }
    reply(r, answer.status, &answer.body)
}

struct ZoneTargets<'a> {
    zone: ZoneTable<'static>,
    mc: &'a MainConf,
}

impl Targets for ZoneTargets<'_> {
    fn list(&self) -> Vec<TargetView> {
        self.zone
            .read()
            .into_iter()
            .enumerate()
            .map(|(id, t)| TargetView {
                id,
                configured_ppm: self
                    .mc
                    .samples
                    .iter()
                    .filter(|(u, _)| *u == t.url)
                    .map(|(_, p)| *p)
                    .collect(),
                url: t.url,
                ov: t.ov,
                breaker_open: t.breaker_open,
                attempted: t.counters[slot::ATTEMPTED],
                ok: t.counters[Outcome::Ok.slot()],
                finished: t.counters[..Outcome::COUNT].iter().sum(),
            })
            .collect()
    }

    fn update(&self, id: usize, change: &dyn Fn(Override) -> Override) -> Option<Override> {
        self.zone.update_override(id, change)
    }
}
