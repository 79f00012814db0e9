//! The PRECONTENT handler: decides, captures and queues copies; never delays the request.

use std::sync::Arc;

use ngx::ffi::{NGX_DECLINED, ngx_http_request_t, ngx_int_t};

use super::conf::{LocConf, MirrorRef, Registered};
use super::ctx::RequestCtx;
use super::log;
use super::process::{Selection, with_engine};
use super::request::{HeaderIter, eval, str_bytes};
use crate::engine::compare::CompareSettings;
use crate::engine::copylog::Record;
use crate::engine::job::CaptureError;
use crate::engine::latch::{Latch, Setter};
use crate::engine::parse::{Dest, parse_dest};
use crate::engine::queue::Charge;
use crate::engine::sample::{PPM, key_bucket};
use crate::engine::shadow::{
    BaselineState, CompareJob, Primary, PrimaryCapture, Role, baseline_channel, primary_channel,
};
use crate::engine::verdict::bounded_name;
use crate::engine::{DropReason, Engine, HeaderEdits, Outcome, RequestHead};
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
    // Subrequests (SSI, auth_request, the built-in mirror) are never copied.
    if !std::ptr::eq(r.main, r) || lc.mirrors().is_empty() {
        return;
    }
    // SAFETY: the phase handler is the only code holding the context right now.
    let Some(ctx) = (unsafe { RequestCtx::create_once(r) }) else { return };
    for &cv in lc.conditions.as_deref().unwrap_or(&[]) {
        match eval(r, cv) {
            Some(v) if !v.is_empty() && v != b"0" => {}
            _ => return,
        }
    }
    #[cfg(feature = "test-hooks")]
    if HeaderIter::new(&r.headers_in.headers)
        .any(|(n, _)| n.eq_ignore_ascii_case(b"x-async-mirror-test-panic"))
    {
        panic!("test-panic header");
    }
    with_engine(|engine, select| dispatch(r, lc, engine, select, ctx));
}

/// What the location and the request say about every copy of this request.
struct Request<'r> {
    r: &'r ngx_http_request_t,
    lc: &'r LocConf,
    mark: Option<&'r str>,
    /// The body is copied: it is streamed as nginx reads it.
    stream_body: bool,
    /// A body exists but is not copied (`async_mirror_body off`).
    drop_body: bool,
    length: Option<u64>,
    /// Not copyable at all (loop guard, Upgrade, a body something else already read).
    skip: bool,
    too_large: bool,
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
    let length = u64::try_from(r.headers_in.content_length_n).ok().filter(|&l| l > 0);
    let has_body = length.is_some() || r.headers_in.chunked() != 0;
    let stream_body = has_body && lc.body();
    let req = Request {
        r,
        lc,
        mark,
        stream_body,
        drop_body: has_body && !stream_body,
        length,
        // The loop guard and WebSocket/Upgrade requests are never copied; nor is a body
        // something else already started reading (the filter could not see all of it).
        skip: mark.is_some_and(|m| is(m.as_bytes()))
            || is(b"upgrade")
            || (stream_body && !r.request_body.is_null()),
        too_large: stream_body && length.is_some_and(|l| l > lc.body_max_size()),
    };
    let opts = lc.copy_options();
    let held = lc.primary_status.is_some();
    if held {
        ctx.held_statuses = lc.primary_status.clone().unwrap_or_default();
    }
    // Made with the request's first copy: sampled-out requests cost nothing here.
    let mut shadow: Option<Shadow> = None;
    let mut head: Option<Result<Arc<RequestHead>, CaptureError>> = None;
    let now = std::time::Instant::now();
    // `async_mirror_log`, its `if=` evaluated once for the request's copies.
    let log = lc.copy_log.flatten().filter(|l| l.cond.is_none_or(|cv| is_true(eval(r, cv.as_ptr()))));
    let (method, uri) = (
        String::from_utf8_lossy(str_bytes(&r.method_name)),
        String::from_utf8_lossy(str_bytes(&r.unparsed_uri)),
    );
    for m in lc.mirrors() {
        let Some(id) = m.target else { continue };
        let Some(spec) = engine.spec(id) else { continue };
        // A copy whose outcome is decided here: for the variable, and for the copy log.
        let refused = |ctx: &mut RequestCtx, outcome: Outcome| {
            ctx.record(outcome);
            if let Some(l) = log {
                engine.copylog().push(l.index, &Record::new(&spec.url, &method, &uri, outcome));
            }
        };
        // The control API's override: a paused target gets no copies (not counted).
        let ov = select.overrides.get(id).copied().unwrap_or_default();
        if ov.paused == Some(true) {
            ctx.push("paused");
            continue;
        }
        let sample_ppm = ov.sample_ppm.unwrap_or(m.sample_ppm);
        // Sampled-out requests were never meant to be copied: not counted.
        if sample_ppm < PPM {
            let bucket = match m.key {
                Some(key) => key_bucket(&spec.url, eval(r, key.as_ptr()).unwrap_or(b"")),
                None => select.rng.bucket(),
            };
            if bucket >= sample_ppm {
                ctx.push("sampled_out");
                continue;
            }
        }
        let mut dest = None;
        let early = req.early(m, spec.https, &mut dest).and_then(|()| match m.rate {
            Some(rate) if select.buckets.get_mut(rate).is_some_and(|b| !b.take(now)) => {
                Err(Outcome::Dropped(DropReason::RateLimited))
            }
            _ => Ok(()),
        });
        let admission = match engine.admit(id, early, opts, held) {
            Ok(a) => a,
            Err(outcome) => {
                refused(ctx, outcome);
                continue;
            }
        };
        let captured = head.get_or_insert_with(|| req.capture().map(Arc::new));
        let Ok(h) = captured else {
            refused(ctx, admission.end(Outcome::Skipped));
            continue;
        };
        let body = req.stream_body.then(|| {
            let (tx, rx) = engine.body_channel(lc.body_max_size(), req.length);
            ctx.bodies.push(tx);
            rx
        });
        let mut copy = match admission.into_copy(h.clone(), dest, body) {
            Ok(copy) => copy,
            Err(outcome) => {
                refused(ctx, outcome);
                continue;
            }
        };
        copy.log = log.map(|l| l.index);
        if let Some(settings) = lc.compare_settings.as_ref() {
            let shadow = shadow.get_or_insert_with(|| Shadow::new(r, lc, settings));
            copy.compare = Some(shadow.job(engine, ctx, m.baseline));
        }
        if held {
            let i = ctx.push("held");
            ctx.held.push((i, copy));
            continue;
        }
        match engine.submit(copy) {
            Ok(()) => ctx.push("queued"),
            Err(outcome) => {
                refused(ctx, outcome);
                0
            }
        };
    }
}

/// How `if=` reads a value, as nginx's `access_log ... if=` does: empty or "0" is false.
fn is_true(v: Option<&[u8]>) -> bool {
    matches!(v, Some(v) if !v.is_empty() && v != b"0")
}

/// One request's comparison: the endpoint, the primary's channel and the baseline's.
struct Shadow {
    settings: Arc<CompareSettings>,
    endpoint: String,
    primary: Option<Latch<Arc<Primary>>>,
    baseline_tx: Option<Setter<BaselineState>>,
    baseline_rx: Option<Latch<BaselineState>>,
}

impl Shadow {
    fn new(r: &ngx_http_request_t, lc: &LocConf, settings: &Arc<CompareSettings>) -> Shadow {
        // The endpoint label: `async_mirror_compare_key`, or the location as written.
        let endpoint = match lc.compare_key {
            Some(cv) => eval(r, cv.as_ptr()).unwrap_or(b""),
            None => NgxHttpCoreModule::location_conf(r).map_or(&b""[..], |c| str_bytes(&c.name)),
        };
        let endpoint = String::from_utf8_lossy(endpoint);
        let endpoint = bounded_name(&endpoint).to_string();
        let (baseline_tx, baseline_rx) = match lc.mirrors().iter().any(|m| m.baseline) {
            true => {
                let (tx, rx) = baseline_channel();
                (Some(tx), Some(rx))
            }
            false => (None, None),
        };
        Shadow { settings: settings.clone(), endpoint, primary: None, baseline_tx, baseline_rx }
    }

    /// The comparison part of one copy; the first one starts the primary's capture.
    fn job(&mut self, engine: &Engine, ctx: &mut RequestCtx, baseline: bool) -> CompareJob {
        let primary = self
            .primary
            .get_or_insert_with(|| {
                let (tx, rx) = primary_channel();
                ctx.primary =
                    Some(PrimaryCapture::new(tx, self.settings.clone(), Charge::new(engine.backlog())));
                rx
            })
            .clone();
        let role = match self.baseline_tx.take_if(|_| baseline) {
            Some(tx) => Role::Baseline(tx),
            None => Role::Candidate(self.baseline_rx.clone()),
        };
        CompareJob { settings: self.settings.clone(), endpoint: self.endpoint.clone(), primary, role }
    }
}

impl Request<'_> {
    /// The checks made for one target before anything is captured.
    fn early(&self, m: &MirrorRef, https: bool, dest: &mut Option<Dest>) -> Result<(), Outcome> {
        if self.skip {
            return Err(Outcome::Skipped);
        }
        // A URL with variables is evaluated here, on the nginx thread; one that is
        // empty or not a URL of the template's scheme is not copied.
        if let Some(cv) = m.url {
            let url = eval(self.r, cv.as_ptr()).and_then(|u| std::str::from_utf8(u).ok()).unwrap_or("");
            *dest = Some(parse_dest(url, https, m.path).map_err(|_| Outcome::Skipped)?);
        }
        if self.too_large {
            return Err(Outcome::Dropped(DropReason::BodyTooLarge));
        }
        Ok(())
    }

    fn capture(&self) -> Result<RequestHead, CaptureError> {
        let mut values = Vec::new();
        if self.drop_body {
            // `async_mirror_body off`: the copy says it has no body.
            values.push((&b"Content-Length"[..], &b"0"[..]));
        }
        for h in self.lc.set_headers.as_deref().unwrap_or(&[]) {
            values.push((h.name.as_bytes(), eval(self.r, h.value).unwrap_or(b"")));
        }
        let edits = HeaderEdits { set: values, mark: self.mark.map(str::as_bytes) };
        RequestHead::capture(
            str_bytes(&self.r.method_name),
            str_bytes(&self.r.unparsed_uri),
            HeaderIter::new(&self.r.headers_in.headers),
            &edits,
        )
    }
}
