//! One request's copies on the nginx thread: which targets get a copy (paused, sampled
//! out, rate limited, refused or admitted), the head captured once for all of them,
//! their body streams, their comparison parts, the copies held for the primary's status,
//! and what `$async_mirror_outcome` says of each. The nginx layer keeps one
//! [`RequestCopies`] per request and answers [`RequestView`]'s questions.

use std::cell::OnceCell;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::admission::MirrorCopy;
use super::fates::Fates;
use super::lane::Lanes;
use super::recorded::recording;
use super::select::{Selection, key_bucket};
use crate::engine::capture::{BodyAbort, BodyTx, CaptureError, RequestHead};
use crate::engine::client::CopyOptions;
use crate::engine::compare::{CompareSettings, PrimaryCapture, RequestComparison};
use crate::engine::config::{Dest, PathKind, TargetSpec, parse_dest};
use crate::engine::ids::{RateId, TargetId};
use crate::engine::outcome::{DropReason, FailReason, Fate, Outcome};
use crate::engine::record::RecordSettings;
use crate::engine::report::Record;

/// One `async_mirror` line as a location uses it.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub target: TargetId,
    /// Fraction of requests copied, in parts per million.
    pub sample_ppm: u32,
    /// `key=`: sampling is consistent on the key's value instead of random.
    pub keyed: bool,
    /// A URL with variables, and what its evaluated path is.
    pub template: Option<PathKind>,
    pub rate: Option<RateId>,
    /// `baseline`: runs production's version; its differences are the noise floor.
    pub baseline: bool,
}

/// What the location says about every copy it makes.
#[derive(Debug, Clone, Copy)]
pub struct Location<'a> {
    pub opts: CopyOptions,
    /// `async_mirror_body`.
    pub body: bool,
    pub body_max_size: u64,
    /// `async_mirror_body_buffer_size`: bodies up to this size go once complete.
    pub body_buffer_size: u64,
    /// `async_mirror_primary_status`: copies wait for one of these statuses.
    pub held: Option<&'a [(u16, u16)]>,
    pub compare: Option<&'a Arc<CompareSettings>>,
    /// `async_mirror_log`, when its `if=` holds for this request.
    pub log: Option<usize>,
    /// Set when the location has capture targets.
    pub record: Option<&'a Arc<RecordSettings>>,
}

/// What the nginx layer read off the request before any copy.
#[derive(Debug, Clone, Copy, Default)]
pub struct Facts {
    /// `Content-Length`, when the client sent one above zero.
    pub length: Option<u64>,
    pub has_body: bool,
    /// Not copyable at all (the loop guard, Upgrade, a body something else already read).
    pub skip: bool,
}

/// What the engine asks of the request while deciding; the nginx layer evaluates
/// variables only when asked, so a sampled-out request evaluates none.
pub trait RequestView {
    /// Read once, and only when a route's copy passed selection.
    fn facts(&self) -> Facts;
    fn method(&self) -> &[u8];
    /// `$request_uri`.
    fn uri(&self) -> &[u8];
    /// The `key=` of the `line`-th route, evaluated.
    fn key(&self, line: usize) -> &[u8];
    /// The URL of the `line`-th route, its variables evaluated.
    fn url(&self, line: usize) -> &[u8];
    /// The head every copy of this request sends; `no_body` says the copy has none.
    ///
    /// # Errors
    /// When the request cannot be expressed as a valid copy.
    fn capture(&self, no_body: bool) -> Result<RequestHead, CaptureError>;
    /// The endpoint label of a compared request.
    fn endpoint(&self) -> &[u8];
    /// Whether the request is conditional or asks for a range (its answer's status may be
    /// decided after the primary's capture).
    fn conditional(&self) -> bool;
}

/// One request's copies, kept with the request for as long as it lives. Dropped with it:
/// a body that never finished aborts its copies, an unfinished primary answer tells the
/// comparisons it is incomplete, copies held for the primary's status are discarded.
#[derive(Default)]
pub struct RequestCopies {
    fates: Fates,
    bodies: Vec<BodyTx>,
    /// Body bytes seen so far, and the size up to which copies wait for the whole body.
    body_seen: u64,
    body_buffer_size: u64,
    /// The primary's answer as the response filters capture it (comparison on). Boxed:
    /// the context lives in the request's pool, and a small one leaves the pool's block
    /// room for what nginx allocates after it.
    primary: Option<Box<PrimaryCapture>>,
    /// Copies that wait on the nginx thread before they go to their lanes.
    waiting: Vec<Waiting>,
    held_statuses: Vec<(u16, u16)>,
}

/// A copy that does not go yet: it waits for the primary's status
/// (`async_mirror_primary_status`), or for the client's whole body, so that a slow
/// upload never holds a mirror connection (or the mirror's timeout) while it trickles in.
struct Waiting {
    /// Its place among the fates.
    at: usize,
    copy: MirrorCopy,
    status: bool,
    body: bool,
}

/// The per-request decisions that do not change from target to target.
/// What costs something to learn (the request's facts, the clock) is learnt when a copy
/// first needs it: a sampled-out request pays for neither.
struct Decision<'a, V: RequestView> {
    loc: &'a Location<'a>,
    facts: OnceCell<Facts>,
    view: &'a V,
    head: Option<Result<Arc<RequestHead>, CaptureError>>,
    comparison: Option<RequestComparison>,
    now: Option<Instant>,
}

impl RequestCopies {
    /// Decides and queues one copy per route of a client request (called once per request).
    /// `routes` are the location's lines, each with its place among them (what
    /// [`RequestView::key`] and [`RequestView::url`] are asked about).
    pub fn decide<V: RequestView>(
        &mut self,
        routes: impl Iterator<Item = (usize, Route)> + Clone,
        loc: &Location<'_>,
        view: &V,
        lanes: &Lanes,
        select: &mut Selection,
    ) {
        let mut d = Decision { loc, facts: OnceCell::new(), view, head: None, comparison: None, now: None };
        if let Some(held) = loc.held {
            self.held_statuses = held.to_vec();
        }
        self.body_buffer_size = loc.body_buffer_size;
        let has_baseline = routes.clone().any(|(_, r)| r.baseline);
        for (line, route) in routes {
            let fate = self.offer(&mut d, line, &route, has_baseline, lanes, select);
            self.fates.push(fate);
        }
    }

    /// One route's copy: its fate as the variable will show it.
    fn offer<V: RequestView>(
        &mut self,
        d: &mut Decision<'_, V>,
        line: usize,
        route: &Route,
        has_baseline: bool,
        lanes: &Lanes,
        select: &mut Selection,
    ) -> Fate {
        let Some(target) = lanes.target(route.target) else { return Fate::Ended(Outcome::Skipped) };
        let url = &target.spec.url;
        let keyed = || route.keyed.then(|| key_bucket(url, d.view.key(line)));
        if let Some(fate) = select.pass(route.target, route.sample_ppm, keyed) {
            return fate;
        }
        let mut dest = None;
        let early = d.early(line, route, &target.spec, &mut dest).and_then(|()| match route.rate {
            Some(rate) if !select.take_token(rate, *d.now.get_or_insert_with(Instant::now)) => {
                Err(Outcome::Dropped(DropReason::RateLimited))
            }
            _ => Ok(()),
        });
        let held = d.loc.held.is_some();
        let refused = |outcome: Outcome| {
            if let Some(l) = d.loc.log {
                lanes.logs.copies.push(l, &Record::new(url, d.view.method(), d.view.uri(), outcome));
            }
            Fate::Ended(outcome)
        };
        let admission = match lanes.admit(route.target, early, d.loc.opts, held) {
            Ok(a) => a,
            Err(outcome) => return refused(outcome),
        };
        let (facts, stream_body) = (*d.facts(), d.stream_body());
        let no_body = facts.has_body && !stream_body;
        let head = d.head.get_or_insert_with(|| d.view.capture(no_body).map(Arc::new));
        let Ok(head) = head.as_ref().map(Arc::clone) else { return refused(admission.end(Outcome::Skipped)) };
        let body = match stream_body {
            true => lanes.body_channel(route.target, d.loc.body_max_size, facts.length).map(|(tx, rx)| {
                self.bodies.push(tx);
                rx
            }),
            false => None,
        };
        let mut copy = match admission.into_copy(head, dest, body) {
            Ok(copy) => copy,
            Err(outcome) => return refused(outcome),
        };
        copy.log = d.loc.log;
        if let Some(sink) = lanes.sinks.get(route.target).and_then(Option::as_ref) {
            let comparison = &mut d.comparison;
            let (view, target) = (d.view, route.target);
            let start =
                |s: &Arc<_>| RequestComparison::new(s, view.endpoint(), has_baseline, view.conditional());
            let key = route.keyed.then(|| Bytes::copy_from_slice(d.view.key(line)));
            let Some(r) = recording(sink, d.loc.record, lanes.backlog(target), comparison, start, key) else {
                copy.finish(Outcome::Skipped);
                return refused(Outcome::Skipped);
            };
            if let Some(p) = r.1 {
                self.primary = Some(Box::new(p));
            }
            copy.record = Some(r.0);
        } else if let Some(settings) = d.loc.compare {
            let comparison = d.comparison.get_or_insert_with(|| {
                RequestComparison::new(settings, d.view.endpoint(), has_baseline, d.view.conditional())
            });
            let Some(backlog) = lanes.backlog(route.target) else { return Fate::Ended(Outcome::Skipped) };
            let (part, capture) = comparison.part(backlog, route.baseline);
            copy.compare = Some(part);
            if let Some(p) = capture {
                self.primary = Some(Box::new(p));
            }
        }
        // A body that fits the buffer is sent once complete (chunked ones until they outgrow it).
        let body = stream_body && facts.length.is_none_or(|l| l <= d.loc.body_buffer_size);
        if held || body {
            self.waiting.push(Waiting { at: self.fates.len(), copy, status: held, body });
            return if held { Fate::Held } else { Fate::Queued };
        }
        match lanes.submit(copy) {
            Ok(()) => Fate::Queued,
            Err(outcome) => refused(outcome),
        }
    }

    /// Hands every copy that waits for nothing more to its lane.
    fn release(&mut self, lanes: &Lanes) {
        let (ready, waiting) =
            std::mem::take(&mut self.waiting).into_iter().partition(|w| !w.status && !w.body);
        self.waiting = waiting;
        for w in ready {
            let w: Waiting = w;
            let fate = match lanes.submit(w.copy) {
                Ok(()) => Fate::Queued,
                Err(outcome) => Fate::Ended(outcome),
            };
            self.fates.set(w.at, fate);
        }
    }

    /// `$async_mirror_outcome`: one word per route, e.g. `queued,sampled_out`.
    pub fn variable(&self) -> String {
        self.fates.words()
    }

    /// Whether the request body filter has copies to feed.
    pub fn wants_body(&self) -> bool {
        !self.bodies.is_empty()
    }

    /// A chunk of the body as nginx read it, to every copy still streaming. A body that
    /// outgrows the buffer size is streamed: its copies go now.
    pub fn body_chunk(&mut self, chunk: &[u8], lanes: &Lanes) {
        let bytes = Bytes::copy_from_slice(chunk);
        for tx in &mut self.bodies {
            if tx.is_open() {
                let _ = tx.send(&bytes);
            }
        }
        self.body_seen += chunk.len() as u64;
        if self.body_seen > self.body_buffer_size && self.waiting.iter().any(|w| w.body) {
            self.waiting.iter_mut().for_each(|w| w.body = false);
            self.release(lanes);
        }
    }

    /// Body data went by that the filter cannot see (in a file): the copies would be incomplete.
    pub fn body_unseen(&mut self) {
        for tx in &mut self.bodies {
            tx.abort(BodyAbort::Incomplete);
        }
    }

    /// The whole body went by: the copies' streams end cleanly, and copies that waited
    /// for it go.
    pub fn body_complete(&mut self, lanes: &Lanes) {
        for tx in self.bodies.drain(..) {
            tx.finish();
        }
        if self.waiting.iter().any(|w| w.body) {
            self.waiting.iter_mut().for_each(|w| w.body = false);
            self.release(lanes);
        }
    }

    /// The primary's answer being captured, when the request is compared.
    pub fn primary(&mut self) -> Option<&mut PrimaryCapture> {
        self.primary.as_deref_mut()
    }

    /// Whether copies wait for the primary's status.
    pub fn holds(&self) -> bool {
        self.waiting.iter().any(|w| w.status)
    }

    /// The primary's status is known: held copies go (or wait on for the body), or are
    /// discarded (not copies, not counted, like `sampled_out`).
    pub fn release_held(&mut self, status: u16, lanes: &Lanes) {
        if !self.holds() {
            return;
        }
        let go = self.held_statuses.iter().any(|&(lo, hi)| (lo..=hi).contains(&status));
        let (held, others): (Vec<Waiting>, Vec<Waiting>) =
            std::mem::take(&mut self.waiting).into_iter().partition(|w| w.status);
        self.waiting = others;
        for mut w in held {
            if !go {
                w.copy.discard();
                self.fates.set(w.at, Fate::PrimaryStatus);
                continue;
            }
            w.copy.confirm();
            w.status = false;
            self.waiting.push(w);
        }
        self.release(lanes);
    }
}

impl Drop for RequestCopies {
    /// The request ended with copies still waiting: a held one never became a copy; one
    /// that waited for the body lost it with the client.
    fn drop(&mut self) {
        for w in self.waiting.drain(..) {
            if w.status {
                w.copy.discard();
            } else {
                w.copy.finish(Outcome::Failed(FailReason::BodyAborted));
            }
        }
    }
}

impl<V: RequestView> Decision<'_, V> {
    fn facts(&self) -> &Facts {
        self.facts.get_or_init(|| self.view.facts())
    }

    /// The body goes with the copies (the client sent one, `async_mirror_body` is on).
    fn stream_body(&self) -> bool {
        self.facts().has_body && self.loc.body
    }

    /// The checks made for one target before anything is captured.
    fn early(
        &self,
        line: usize,
        route: &Route,
        spec: &TargetSpec,
        dest: &mut Option<Dest>,
    ) -> Result<(), Outcome> {
        if self.facts().skip {
            return Err(Outcome::Skipped);
        }
        // A URL with variables is evaluated here, on the nginx thread; one that is empty,
        // not a URL of the template's scheme, or a place `hosts=` does not allow is not copied.
        if let Some(kind) = route.template {
            *dest = Some(parse_dest(self.view.url(line), spec, kind).map_err(|_| Outcome::Skipped)?);
        }
        if self.stream_body() && self.facts().length.is_some_and(|l| l > self.loc.body_max_size) {
            return Err(Outcome::Dropped(DropReason::BodyTooLarge));
        }
        Ok(())
    }
}
