//! The PRECONTENT handler: reads what the engine needs off the request and lets the
//! engine decide, capture and queue its copies; never delays the request.

use ngx::ffi::{NGX_DECLINED, ngx_http_core_loc_conf_t, ngx_http_request_t, ngx_int_t};

use super::conf::{LocConf, Registered};
use super::ctx::RequestCtx;
use super::log;
use super::process::{handoff, with_worker};
use super::strings::{HeaderIter, eval, str_bytes};
use crate::engine::capture::{CaptureError, HeaderEdits, RequestHead};
use crate::engine::copy::{Facts, RequestView};
use ngx::http::{HttpModuleLocationConf, NgxHttpCoreModule};

/// Always declines: the request goes on exactly as without the module, whatever happens here.
pub unsafe extern "C" fn precontent_handler<M: Registered>(r: *mut ngx_http_request_t) -> ngx_int_t {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: nginx passes a valid request to phase handlers.
        let r = unsafe { &mut *r };
        if let Some(lc) = M::location_conf(&*r) {
            mirror_request(r, lc);
        }
    }));
    if result.is_err() {
        log::alert("async_mirror: panic in request handler, copy abandoned");
    }
    NGX_DECLINED as ngx_int_t
}

fn mirror_request(r: &mut ngx_http_request_t, lc: &LocConf) {
    // Subrequests (SSI, auth_request, the built-in mirror) are never copied, nor is
    // operator traffic (the status page, the control API).
    if !std::ptr::eq(r.main, r) || lc.mirrors().is_empty() || lc.operator {
        return;
    }
    // SAFETY: the phase handler is the only code holding the context right now.
    let Some(ctx) = (unsafe { RequestCtx::create_once(r) }) else { return };
    if !lc.conditions.as_deref().unwrap_or(&[]).iter().all(|&cv| is_true(eval(r, cv))) {
        return;
    }
    #[cfg(feature = "test-hooks")]
    if HeaderIter::new(&r.headers_in.headers)
        .any(|(n, _)| n.eq_ignore_ascii_case(b"x-async-mirror-test-panic"))
    {
        panic!("test-panic header");
    }
    let view = View { r, lc };
    // `async_mirror_log`, its `if=` evaluated once for the request's copies.
    let log = lc.copy_log.flatten().filter(|l| l.cond.is_none_or(|cv| is_true(eval(r, cv.as_ptr()))));
    let location = lc.location(log.map(|l| l.index));
    with_worker(|w| {
        ctx.copies.decide(lc.routes(), &location, &view, w.engine.lanes(), &mut w.select);
        handoff(&w.engine);
    });
}

/// How `if=` and `async_mirror_if` read a value, as nginx's `access_log ... if=` does:
/// empty or "0" is false.
fn is_true(v: Option<&[u8]>) -> bool {
    matches!(v, Some(v) if !v.is_empty() && v != b"0")
}

/// The request and its location, as the engine asks about them.
struct View<'r> {
    r: &'r ngx_http_request_t,
    lc: &'r LocConf,
}

impl View<'_> {
    /// `host[:port]` of an absolute-form request line (`GET http://host:port/x`): nginx
    /// routed the request on it, whatever the `Host` header says.
    fn request_line_authority(&self) -> Option<&[u8]> {
        let (start, end) = (self.r.host_start, self.r.host_end);
        if start.is_null() || end.is_null() || end < start {
            return None;
        }
        // SAFETY: nginx's parser set both into the request line, which lives as long as
        // the request; the port's digits follow the host there.
        let line = unsafe {
            let mut stop = end;
            if *stop == b':' {
                stop = stop.add(1);
                while stop.read().is_ascii_digit() {
                    stop = stop.add(1);
                }
            }
            std::slice::from_raw_parts(start, stop.offset_from(start) as usize)
        };
        Some(line)
    }
}

impl RequestView for View<'_> {
    fn facts(&self) -> Facts {
        let r = self.r;
        let headers = HeaderIter::new(&r.headers_in.headers);
        let is = |name: &[u8]| headers.clone().any(|(n, _)| n.eq_ignore_ascii_case(name));
        let length = u64::try_from(r.headers_in.content_length_n).ok().filter(|&l| l > 0);
        let has_body = length.is_some() || r.headers_in.chunked() != 0;
        Facts {
            length,
            has_body,
            // The loop guard and WebSocket/Upgrade requests are never copied; nor is a body
            // something else already started reading (the filter could not see all of it).
            skip: self.lc.mark_header().is_some_and(|m| is(m.as_bytes()))
                || is(b"upgrade")
                || (has_body && self.lc.body() && !r.request_body.is_null()),
        }
    }

    fn method(&self) -> &[u8] {
        str_bytes(&self.r.method_name)
    }

    fn uri(&self) -> &[u8] {
        str_bytes(&self.r.unparsed_uri)
    }

    fn key(&self, line: usize) -> &[u8] {
        let key = self.lc.mirrors().get(line).and_then(|m| m.key);
        key.and_then(|cv| eval(self.r, cv.as_ptr())).unwrap_or(b"")
    }

    fn url(&self, line: usize) -> &[u8] {
        let url = self.lc.mirrors().get(line).and_then(|m| m.url);
        url.and_then(|cv| eval(self.r, cv.as_ptr())).unwrap_or(b"")
    }

    fn capture(&self, no_body: bool) -> Result<RequestHead, CaptureError> {
        let mut values = Vec::new();
        if no_body {
            // `async_mirror_body off`: the copy says it has no body.
            values.push((&b"Content-Length"[..], &b"0"[..]));
        }
        for h in self.lc.set_headers.as_deref().unwrap_or(&[]) {
            values.push((h.name.as_bytes(), eval(self.r, h.value).unwrap_or(b"")));
        }
        let edits = HeaderEdits {
            set: values,
            scrub: self.lc.scrub_headers.as_deref().unwrap_or(&[]),
            mark: self.lc.mark_header().map(str::as_bytes),
            host: self.request_line_authority(),
        };
        RequestHead::capture(self.method(), self.uri(), HeaderIter::new(&self.r.headers_in.headers), &edits)
    }

    fn conditional(&self) -> bool {
        const CONDITIONAL: [&[u8]; 6] = [
            b"range",
            b"if-range",
            b"if-match",
            b"if-none-match",
            b"if-modified-since",
            b"if-unmodified-since",
        ];
        HeaderIter::new(&self.r.headers_in.headers)
            .any(|(n, _)| CONDITIONAL.iter().any(|c| n.eq_ignore_ascii_case(c)))
    }

    fn endpoint(&self) -> &[u8] {
        // `async_mirror_compare_key`, or the location as written.
        match self.lc.compare_key {
            Some(cv) => eval(self.r, cv.as_ptr()).unwrap_or(b""),
            None => NgxHttpCoreModule::location_conf(self.r)
                .map_or(&b""[..], |c: &ngx_http_core_loc_conf_t| str_bytes(&c.name)),
        }
    }
}
