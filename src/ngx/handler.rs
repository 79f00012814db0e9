//! The PRECONTENT handler: decides, captures and queues copies; never delays the request.

use std::ffi::c_void;
use std::sync::Arc;

use ngx::ffi::{
    NGX_DECLINED, NGX_OK, ngx_http_complex_value, ngx_http_complex_value_t, ngx_http_request_t, ngx_int_t,
    ngx_list_t, ngx_pool_cleanup_add, ngx_str_t, ngx_table_elt_t,
};
use ngx::http::HttpModuleLocationConf;

use super::conf::LocConf;
use super::module::Module;
use super::process::{Selection, with_engine};
use crate::engine::body::BodyTx;
use crate::engine::job::CaptureError;
use crate::engine::parse::parse_dest;
use crate::engine::sample::{PPM, key_bucket};
use crate::engine::{DropReason, Engine, HeaderEdits, Outcome, RequestHead, Ticket};

/// Always declines: the request goes on exactly as without the module, whatever happens here.
pub unsafe extern "C" fn precontent_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: nginx passes a valid request to phase handlers.
        let r = unsafe { &mut *r };
        mirror_request(r);
    }));
    if result.is_err() {
        super::process::log_alert("async_mirror: panic in request handler, copy abandoned");
    }
    NGX_DECLINED as ngx_int_t
}

fn mirror_request(r: &mut ngx_http_request_t) {
    // Subrequests (SSI, auth_request, the built-in mirror) are never copied.
    if !std::ptr::eq(r.main, r) {
        return;
    }
    let Some(lc) = Module::location_conf(r) else { return };
    if lc.mirrors().is_empty() {
        return;
    }
    let Some(mut ctx) = RequestCtx::create_once(r) else { return };
    for &cv in lc.conditions.as_deref().unwrap_or(&[]) {
        match eval(r, cv) {
            Some(v) if !v.is_empty() && v != b"0" => {}
            _ => return,
        }
    }
    #[cfg(feature = "test-panic")]
    if HeaderIter::new(&r.headers_in.headers)
        .any(|(n, _)| n.eq_ignore_ascii_case(b"x-async-mirror-test-panic"))
    {
        panic!("test-panic header");
    }
    // SAFETY: the context lives in the request pool, apart from the fields read here.
    with_engine(|engine, select| dispatch(r, lc, engine, select, unsafe { ctx.as_mut() }));
}

fn dispatch(
    r: &ngx_http_request_t,
    lc: &LocConf,
    engine: &Engine,
    select: &mut Selection,
    ctx: &mut RequestCtx,
) {
    let headers = HeaderIter::new(&r.headers_in.headers);
    let mark = lc.mark_header();
    let is = |name: &[u8]| headers.clone().any(|(n, _)| n.eq_ignore_ascii_case(name));
    let length = r.headers_in.content_length_n;
    let has_body = length > 0 || r.headers_in.chunked() != 0;
    let stream_body = has_body && lc.body();
    // The loop guard and WebSocket/Upgrade requests are never copied; nor is a body
    // something else already started reading (the filter could not see all of it).
    let skip = mark.is_some_and(|m| is(m.as_bytes()))
        || is(b"upgrade")
        || (stream_body && !r.request_body.is_null());
    let too_large = stream_body && length > 0 && length as u64 > lc.body_max_size();
    let opts = lc.copy_options();
    let mut head: Option<Result<Arc<RequestHead>, CaptureError>> = None;
    let now = std::time::Instant::now();
    for m in lc.mirrors() {
        let index = m.target;
        // Sampled-out requests were never meant to be copied: not counted.
        if m.sample_ppm < PPM {
            let bucket = match m.key {
                Some(key) => key_bucket(engine.target_url(index), eval(r, key.as_ptr()).unwrap_or(b"")),
                None => select.rng.bucket(),
            };
            if bucket >= m.sample_ppm {
                ctx.push("sampled_out");
                continue;
            }
        }
        let Some(ticket) = engine.ticket(index) else { continue };
        if skip {
            ctx.end(ticket, Outcome::Skipped);
            continue;
        }
        // A URL with variables is evaluated here, on the nginx thread; one that is
        // empty or not a URL of the template's scheme is not copied.
        let dest = match m.url {
            None => None,
            Some(cv) => {
                let url = eval(r, cv.as_ptr()).and_then(|u| std::str::from_utf8(u).ok()).unwrap_or("");
                match parse_dest(url, engine.target_is_https(index), m.verbatim) {
                    Ok(d) => Some(d),
                    Err(_) => {
                        ctx.end(ticket, Outcome::Skipped);
                        continue;
                    }
                }
            }
        };
        if too_large {
            ctx.end(ticket, Outcome::Dropped(DropReason::BodyTooLarge));
            continue;
        }
        if let Some(bucket) = m.rate.and_then(|b| select.buckets.get_mut(b)) {
            if !bucket.take(now) {
                ctx.end(ticket, Outcome::Dropped(DropReason::RateLimited));
                continue;
            }
        }
        // Breaker and backlog are checked before capturing: a drop costs no allocation.
        let probe = match engine.admit(index, &opts) {
            Ok(probe) => probe,
            Err(reason) => {
                ctx.end(ticket, Outcome::Dropped(reason));
                continue;
            }
        };
        match head.get_or_insert_with(|| capture(r, lc, mark, has_body && !stream_body).map(Arc::new)) {
            Ok(h) => {
                let body = stream_body.then(|| {
                    let (tx, rx) =
                        engine.body_channel(lc.body_max_size(), (length > 0).then_some(length as u64));
                    ctx.bodies.push(tx);
                    rx
                });
                match engine.submit(index, h, dest, body, opts, probe, ticket) {
                    Ok(()) => ctx.push("queued"),
                    Err(reason) => ctx.push_drop(reason),
                }
            }
            Err(_) => ctx.end(ticket, Outcome::Skipped),
        }
    }
}

fn capture(
    r: &ngx_http_request_t,
    lc: &LocConf,
    mark: Option<&str>,
    drop_body: bool,
) -> Result<RequestHead, CaptureError> {
    let mut values = Vec::new();
    if drop_body {
        // `async_mirror_body off`: the copy says it has no body.
        values.push((&b"Content-Length"[..], &b"0"[..]));
    }
    for h in lc.set_headers.as_deref().unwrap_or(&[]) {
        values.push((h.name.as_bytes(), eval(r, h.value).unwrap_or(b"")));
    }
    let edits = HeaderEdits { set: values, mark: mark.map(str::as_bytes) };
    RequestHead::capture(
        str_bytes(&r.method_name),
        str_bytes(&r.unparsed_uri),
        HeaderIter::new(&r.headers_in.headers),
        &edits,
    )
}

/// Evaluates a compiled value; the result lives in the request pool.
fn eval<'r>(r: &'r ngx_http_request_t, cv: *mut ngx_http_complex_value_t) -> Option<&'r [u8]> {
    let mut out = ngx_str_t { len: 0, data: std::ptr::null_mut() };
    // SAFETY: cv was compiled at config time; r is the current request.
    if unsafe { ngx_http_complex_value(std::ptr::from_ref(r).cast_mut(), cv, &mut out) }
        != NGX_OK as ngx_int_t
    {
        return None;
    }
    if out.len == 0 || out.data.is_null() {
        return Some(&[]);
    }
    // SAFETY: the value was allocated from the request pool, which outlives 'r.
    Some(unsafe { std::slice::from_raw_parts(out.data, out.len) })
}

fn str_bytes(s: &ngx_str_t) -> &[u8] {
    if s.len == 0 || s.data.is_null() {
        return &[];
    }
    // SAFETY: nginx strings are valid (data, len) pairs for the request's lifetime.
    unsafe { std::slice::from_raw_parts(s.data, s.len) }
}

/// Per-request state: what happened to this request's copies (`$async_mirror_outcome`).
///
/// Internal redirects (`index`, `try_files`, `error_page`) clear module contexts
/// and run the phases again; like nginx's realip module, the context lives in
/// a request-pool cleanup entry, which survives them. Its existence is also the
/// "already decided" mark that keeps a request from being copied twice.
pub struct RequestCtx {
    outcome: String,
    /// Body streams of this request's copies, fed by the request body filter.
    /// Dropped with the request pool: a body that never finished is aborted then.
    pub bodies: Vec<BodyTx>,
}

unsafe extern "C" fn ctx_cleanup(data: *mut c_void) {
    // SAFETY: data is the RequestCtx written by create_once; the pool runs this once.
    unsafe { std::ptr::drop_in_place(data.cast::<RequestCtx>()) };
}

impl RequestCtx {
    /// The request's context, if copies were decided for it.
    pub fn find(r: &ngx_http_request_t) -> Option<&RequestCtx> {
        // SAFETY: a shared view of the pointer find_mut returns.
        Self::find_mut(r).map(|c| &*c)
    }

    /// As [`RequestCtx::find`], for the body filter (nginx thread, one caller at a time).
    pub fn find_mut(r: &ngx_http_request_t) -> Option<&mut RequestCtx> {
        let ours = ctx_cleanup as unsafe extern "C" fn(*mut c_void) as usize;
        // SAFETY: the pool's cleanup list is valid for the request's lifetime.
        let mut c = unsafe { (*r.pool).cleanup };
        while let Some(cln) = unsafe { c.as_ref() } {
            if cln.handler.map(|h| h as usize) == Some(ours) {
                // SAFETY: entries with our handler hold a RequestCtx.
                return Some(unsafe { &mut *cln.data.cast::<RequestCtx>() });
            }
            c = cln.next;
        }
        None
    }

    /// A new context the first time; `None` if the request was already decided (or on OOM).
    fn create_once(r: &ngx_http_request_t) -> Option<std::ptr::NonNull<RequestCtx>> {
        if Self::find(r).is_some() {
            return None;
        }
        // SAFETY: r.pool is the request pool; the entry is initialised before use.
        unsafe {
            let c = ngx_pool_cleanup_add(r.pool, size_of::<RequestCtx>());
            if c.is_null() {
                return None;
            }
            let ctx = (*c).data.cast::<RequestCtx>();
            ctx.write(RequestCtx { outcome: String::new(), bodies: Vec::new() });
            (*c).handler = Some(ctx_cleanup);
            std::ptr::NonNull::new(ctx)
        }
    }

    fn push(&mut self, what: &str) {
        if !self.outcome.is_empty() {
            self.outcome.push(',');
        }
        self.outcome.push_str(what);
    }

    fn push_drop(&mut self, reason: DropReason) {
        self.push(&format!("dropped:{}", Outcome::Dropped(reason).reason()));
    }

    /// Ends a copy decided on the nginx thread: counts it and records it for the variable.
    fn end(&mut self, ticket: Ticket, outcome: Outcome) {
        ticket.finish(outcome);
        match outcome {
            Outcome::Dropped(reason) => self.push_drop(reason),
            other => self.push(other.label()),
        }
    }

    pub fn outcome(&self) -> &str {
        &self.outcome
    }
}

/// Live request headers as byte pairs; entries nginx deleted (hash 0) are skipped.
#[derive(Clone)]
struct HeaderIter<'a> {
    part: *const ngx::ffi::ngx_list_part_t,
    i: usize,
    _list: std::marker::PhantomData<&'a ngx_list_t>,
}

impl<'a> HeaderIter<'a> {
    fn new(list: &'a ngx_list_t) -> Self {
        HeaderIter { part: &list.part, i: 0, _list: std::marker::PhantomData }
    }
}

impl<'a> Iterator for HeaderIter<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            // SAFETY: the list and its parts outlive 'a; elements are ngx_table_elt_t.
            let part = unsafe { self.part.as_ref()? };
            if self.i >= part.nelts {
                self.part = part.next;
                self.i = 0;
                continue;
            }
            let h = unsafe { &*part.elts.cast::<ngx_table_elt_t>().add(self.i) };
            self.i += 1;
            if h.hash != 0 {
                return Some((str_bytes(&h.key), str_bytes(&h.value)));
            }
        }
    }
}
