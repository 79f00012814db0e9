//! The request body filter: tees each body buffer into the copies' body streams.
//!
//! Installed at the top of `ngx_http_top_request_body_filter`, it sees the body
//! decoded (no chunk framing) and in memory, before nginx's save filter spools
//! it to a temporary file, and only when the content handler reads the body —
//! so nginx reads exactly as it would without the module. Bodies nginx
//! discards never pass here; their copies are aborted when the request ends.

use ngx::ffi::{NGX_ERROR, ngx_chain_t, ngx_http_request_body_filter_pt, ngx_http_request_t, ngx_int_t};

use super::ctx::RequestCtx;
use super::log;
use super::process::{handoff, with_worker};
use crate::engine::copy::{Lanes, RequestCopies};

/// The filter that was at the top before ours; set once in postconfiguration.
pub static mut NEXT: ngx_http_request_body_filter_pt = None;

pub unsafe extern "C" fn body_filter(r: *mut ngx_http_request_t, chain: *mut ngx_chain_t) -> ngx_int_t {
    let tee = std::panic::catch_unwind(|| {
        // SAFETY: nginx passes a valid request and chain; the body belongs to the main request.
        unsafe { tee(&*(*r).main, chain) }
    });
    if tee.is_err() {
        log::alert("async_mirror: panic in request body filter, copies of this body abandoned");
    }
    // SAFETY: NEXT was the chain's top filter when we were installed.
    match unsafe { NEXT } {
        Some(next) => unsafe { next(r, chain) },
        None => NGX_ERROR as ngx_int_t,
    }
}

/// # Safety
/// `chain` is the (possibly empty) chain nginx passes to request body filters, on the
/// nginx thread, while nothing else holds the request's context.
unsafe fn tee(main: &ngx_http_request_t, chain: *mut ngx_chain_t) {
    // SAFETY: per the contract.
    let Some(ctx) = (unsafe { RequestCtx::find_mut(main) }) else { return };
    let copies = &mut ctx.copies;
    if !copies.wants_body() {
        return;
    }
    // SAFETY: per the contract.
    with_worker(|w| {
        // SAFETY: per the contract.
        unsafe { feed(copies, w.engine.lanes(), chain) };
        handoff(&w.engine);
    });
}

/// # Safety
/// As [`tee`].
unsafe fn feed(copies: &mut RequestCopies, lanes: &Lanes, mut chain: *mut ngx_chain_t) {
    // SAFETY: chain links and buffers are valid for this call.
    while let Some(cl) = unsafe { chain.as_ref() } {
        let Some(b) = (unsafe { cl.buf.as_ref() }) else { break };
        let in_memory = b.temporary() != 0 || b.memory() != 0 || b.mmap() != 0;
        if in_memory && b.last > b.pos {
            let len = b.last as usize - b.pos as usize;
            // SAFETY: pos..last is the buffer's unread data.
            copies.body_chunk(unsafe { std::slice::from_raw_parts(b.pos, len) }, lanes);
        } else if !in_memory && b.in_file() != 0 && b.file_last > b.file_pos {
            // Data we cannot see: the copy would be incomplete.
            copies.body_unseen();
        }
        if b.last_buf() != 0 {
            copies.body_complete(lanes);
            return;
        }
        chain = cl.next;
    }
}
