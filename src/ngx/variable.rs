//! `$async_mirror_outcome`: what happened to this request's copies, for the access log.

use ngx::ffi::{NGX_ERROR, NGX_OK, ngx_http_request_t, ngx_http_variable_value_t, ngx_int_t, ngx_pnalloc};

use super::ctx::RequestCtx;

/// E.g. `queued`, `skipped`, `dropped:queue_full`, one per target.
pub unsafe extern "C" fn outcome_variable(
    r: *mut ngx_http_request_t,
    v: *mut ngx_http_variable_value_t,
    _data: usize,
) -> ngx_int_t {
    let result = std::panic::catch_unwind(|| {
        // SAFETY: nginx passes a valid request and value slot.
        let (r, v) = unsafe { (&*r, &mut *v) };
        // SAFETY: r.main is the main request, alive while any of its subrequests is.
        let main = unsafe { &*r.main };
        match RequestCtx::find(main).map(|c| c.copies.variable()).filter(|o| !o.is_empty()) {
            Some(o) => {
                // A copy in the request's pool: the words change when held copies go, and
                // nginx may keep the value (`set`, `map`) past this call.
                // SAFETY: main.pool is the request's pool; the copy fills what was allocated.
                let data = unsafe { ngx_pnalloc(main.pool, o.len()) }.cast::<u8>();
                if data.is_null() {
                    return false;
                }
                // SAFETY: as above.
                unsafe { std::ptr::copy_nonoverlapping(o.as_ptr(), data, o.len()) };
                v.set_len(o.len() as _);
                v.data = data;
                v.set_valid(1);
                v.set_no_cacheable(1);
                v.set_not_found(0);
            }
            None => v.set_not_found(1),
        }
        true
    });
    match result {
        Ok(true) => NGX_OK as ngx_int_t,
        _ => NGX_ERROR as ngx_int_t,
    }
}
