//! The response header and body filters: they watch the main request's response go
//! by to capture the primary's answer (comparison) and to let held copies go
//! (`async_mirror_primary_status`). They never change, delay or buffer the response.
//!
//! As a dynamic module loaded after nginx's own filters, these sit at the top of
//! the chain: they see the response as the content handler (proxy, fastcgi, static
//! files, `return`) produced it, before `gzip`, `sub_filter`, SSI, `not_modified`
//! and chunked framing. Body bytes are taken from in-memory buffers only; a body
//! in a file buffer (a static file, a response proxied through a temporary file)
//! is compared by status and headers.

use ngx::ffi::{
    NGX_ERROR, ngx_chain_t, ngx_http_output_body_filter_pt, ngx_http_output_header_filter_pt,
    ngx_http_request_t, ngx_int_t,
};

use super::conf::RESPONSE_FILTERS;
use super::ctx::RequestCtx;
use super::log;
use super::process::{handoff, with_worker};
use super::strings::{HeaderIter, str_bytes};

/// The filters that were at the top before ours; set once in postconfiguration.
pub static mut NEXT_HEADER: ngx_http_output_header_filter_pt = None;
pub static mut NEXT_BODY: ngx_http_output_body_filter_pt = None;

fn wanted(r: &ngx_http_request_t) -> bool {
    RESPONSE_FILTERS.load(std::sync::atomic::Ordering::Relaxed) && std::ptr::eq(r.main, r)
}

pub unsafe extern "C" fn header_filter(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx passes a valid request.
    if wanted(unsafe { &*r }) {
        let seen = std::panic::catch_unwind(|| {
            // SAFETY: valid request, on the nginx thread; nothing else holds the context now.
            let r = unsafe { &*r };
            if let Some(ctx) = unsafe { RequestCtx::find_mut(r) } {
                on_header(r, ctx);
            }
        });
        if seen.is_err() {
            log::alert("async_mirror: panic in response header filter");
        }
    }
    // SAFETY: NEXT_HEADER was the chain's top filter when we were installed.
    let rc = match unsafe { NEXT_HEADER } {
        Some(next) => unsafe { next(r) },
        None => NGX_ERROR as ngx_int_t,
    };
    // A response without a body (HEAD, 204, 304) is complete once its header is sent.
    // SAFETY: r is still valid after the header filters ran.
    let rr = unsafe { &*r };
    if wanted(rr) && rr.header_only() != 0 {
        let _ = std::panic::catch_unwind(|| {
            // SAFETY: as above.
            if let Some(p) = unsafe { RequestCtx::find_mut(rr) }.and_then(|c| c.copies.primary()) {
                p.finish();
            }
        });
    }
    rc
}

fn on_header(r: &ngx_http_request_t, ctx: &mut RequestCtx) {
    let out = &r.headers_out;
    let status = u16::try_from(out.status).unwrap_or(0);
    if let Some(p) = ctx.copies.primary() {
        let find = |name: &str| -> Option<Vec<u8>> {
            match name {
                "content-type" => {
                    let t = str_bytes(&out.content_type);
                    if t.is_empty() {
                        return None;
                    }
                    let mut v = t.to_vec();
                    let charset = str_bytes(&out.charset);
                    if !charset.is_empty() {
                        v.extend_from_slice(b"; charset=");
                        v.extend_from_slice(charset);
                    }
                    Some(v)
                }
                "content-length" => {
                    u64::try_from(out.content_length_n).ok().map(|n| n.to_string().into_bytes())
                }
                _ => HeaderIter::new(&out.headers)
                    .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
                    .map(|(_, v)| v.to_vec()),
            }
        };
        let headers = p.settings().headers.iter().map(|h| find(h)).collect();
        p.head(status, headers, find("content-type"), find("content-encoding"));
        if p.wants_raw() {
            // Every header as the content handler set it (nginx adds Date, Server and the
            // framing after this filter), as `Name: value` lines in one buffer.
            let mut lines = Vec::with_capacity(256);
            let mut line = |n: &[u8], v: &[u8]| {
                lines.extend_from_slice(n);
                lines.extend_from_slice(b": ");
                lines.extend_from_slice(v);
                lines.extend_from_slice(b"\r\n");
            };
            if let Some(v) = find("content-type") {
                line(b"Content-Type", &v);
            }
            if let Ok(n) = u64::try_from(out.content_length_n) {
                line(b"Content-Length", n.to_string().as_bytes());
            }
            let framing = |n: &[u8]| {
                n.eq_ignore_ascii_case(b"content-type") || n.eq_ignore_ascii_case(b"content-length")
            };
            for (n, v) in HeaderIter::new(&out.headers).filter(|(n, _)| !framing(n)) {
                line(n, v);
            }
            p.raw_head(status, lines);
        }
    }
    if ctx.copies.holds() {
        with_worker(|w| {
            ctx.copies.release_held(status, w.engine.lanes());
            handoff(&w.engine);
        });
    }
}

pub unsafe extern "C" fn body_filter(r: *mut ngx_http_request_t, chain: *mut ngx_chain_t) -> ngx_int_t {
    // SAFETY: nginx passes a valid request.
    if wanted(unsafe { &*r }) {
        let seen = std::panic::catch_unwind(|| {
            // SAFETY: valid request and chain on the nginx thread.
            unsafe { capture(&*r, chain) }
        });
        if seen.is_err() {
            log::alert("async_mirror: panic in response body filter");
        }
    }
    // SAFETY: NEXT_BODY was the chain's top filter when we were installed.
    match unsafe { NEXT_BODY } {
        Some(next) => unsafe { next(r, chain) },
        None => NGX_ERROR as ngx_int_t,
    }
}

/// # Safety
/// `chain` is the chain nginx passes to output body filters, on the nginx thread,
/// while nothing else holds the request's context.
unsafe fn capture(r: &ngx_http_request_t, mut chain: *mut ngx_chain_t) {
    // SAFETY: per the contract.
    let Some(p) = (unsafe { RequestCtx::find_mut(r) }).and_then(|c| c.copies.primary()) else { return };
    // SAFETY: chain links and buffers are valid for this call.
    while let Some(cl) = unsafe { chain.as_ref() } {
        let Some(b) = (unsafe { cl.buf.as_ref() }) else { break };
        let in_memory = b.temporary() != 0 || b.memory() != 0 || b.mmap() != 0;
        if in_memory && b.last > b.pos {
            // SAFETY: pos..last is the buffer's unread data.
            p.data(unsafe { std::slice::from_raw_parts(b.pos, b.last as usize - b.pos as usize) });
        } else if !in_memory && b.in_file() != 0 && b.file_last > b.file_pos {
            p.file();
        }
        if b.last_buf() != 0 {
            // SAFETY: the request's connection is valid while the request is.
            if unsafe { (*r.connection).error() } != 0 {
                p.abort();
            } else {
                p.finish();
            }
            return;
        }
        chain = cl.next;
    }
}
