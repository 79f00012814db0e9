//! `$async_mirror_outcome`: what happened to this request's copies, for the access log.

use ngx::ffi::{NGX_ERROR, NGX_OK, ngx_http_request_t, ngx_http_variable_value_t, ngx_int_t};

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
                v.set_len(o.len() as _);
                v.data = o.as_ptr().cast_mut();
                v.set_valid(1);
                v.set_no_cacheable(1);
                v.set_not_found(0);
            }
            None => v.set_not_found(1),
        }
    });
    if result.is_err() {
        return NGX_ERROR as ngx_int_t;
    }
    NGX_OK as ngx_int_t
}
