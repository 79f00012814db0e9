//! Per-request state: the engine's [`RequestCopies`], kept where nginx's filters and
//! variable handlers find it.
//!
//! Internal redirects (`index`, `try_files`, `error_page`) clear module contexts
//! and run the phases again; like nginx's realip module, the context lives in
//! a request-pool cleanup entry, which survives them. Its existence is also the
//! "already decided" mark that keeps a request from being copied twice.

use std::ffi::c_void;
use std::ptr::NonNull;

use ngx::ffi::{ngx_http_request_t, ngx_pool_cleanup_add};

use crate::engine::copy::RequestCopies;

pub struct RequestCtx {
    /// This request's copies: their fates (`$async_mirror_outcome`), the body streams
    /// the request body filter feeds, the primary's capture the response filters feed,
    /// and copies held for the primary's status. Dropped with the request pool.
    pub copies: RequestCopies,
}

unsafe extern "C" fn ctx_cleanup(data: *mut c_void) {
    let dropped = std::panic::catch_unwind(|| {
        // SAFETY: data is the RequestCtx written by create_once; the pool runs this once.
        unsafe { std::ptr::drop_in_place(data.cast::<RequestCtx>()) };
    });
    if dropped.is_err() {
        super::log::alert("async_mirror: panic while ending a request's copies");
    }
}

/// The context's address in `r`'s pool, if copies were decided for it.
fn find_ptr(r: &ngx_http_request_t) -> Option<NonNull<RequestCtx>> {
    let ours = ctx_cleanup as unsafe extern "C" fn(*mut c_void) as usize;
    // SAFETY: the pool's cleanup list is valid for the request's lifetime.
    let mut c = unsafe { (*r.pool).cleanup };
    // SAFETY: each entry of the list is valid; `next` ends it with null.
    while let Some(cln) = unsafe { c.as_ref() } {
        if cln.handler.map(|h| h as usize) == Some(ours) {
            return NonNull::new(cln.data.cast::<RequestCtx>());
        }
        c = cln.next;
    }
    None
}

impl RequestCtx {
    /// The request's context, if copies were decided for it.
    pub fn find(r: &ngx_http_request_t) -> Option<&RequestCtx> {
        // SAFETY: entries with our handler hold a live RequestCtx; shared access only.
        find_ptr(r).map(|p| unsafe { p.as_ref() })
    }

    /// As [`RequestCtx::find`], writable.
    ///
    /// # Safety
    /// The caller is on the nginx thread and holds no other reference to this
    /// request's context for as long as the returned one lives (nginx calls the
    /// phase handler, the body filter and variable handlers one at a time).
    // The context lives in the request's pool, not in `r`; exclusivity is the caller's
    // promise (see # Safety).
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn find_mut(r: &ngx_http_request_t) -> Option<&mut RequestCtx> {
        // SAFETY: per the contract, this is the only reference.
        find_ptr(r).map(|mut p| unsafe { p.as_mut() })
    }

    /// A new context the first time; `None` if the request was already decided (or on OOM).
    ///
    /// # Safety
    /// As [`RequestCtx::find_mut`].
    #[allow(clippy::mut_from_ref)] // as for find_mut
    pub unsafe fn create_once(r: &ngx_http_request_t) -> Option<&mut RequestCtx> {
        if find_ptr(r).is_some() {
            return None;
        }
        // SAFETY: r.pool is the request pool; the entry is initialised before use.
        unsafe {
            let c = ngx_pool_cleanup_add(r.pool, size_of::<RequestCtx>());
            if c.is_null() {
                return None;
            }
            let ctx = (*c).data.cast::<RequestCtx>();
            ctx.write(RequestCtx { copies: RequestCopies::default() });
            (*c).handler = Some(ctx_cleanup);
            ctx.as_mut()
        }
    }
}
