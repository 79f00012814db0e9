//! One copy to one target, from admission to its outcome.
//!
//! "Does this copy go?" is answered here only: [`admit`] on the nginx thread
//! (the checks made there, the breaker, room in the backlog) and
//! [`MirrorCopy::depart`] on the runtime when the copy leaves the backlog (the breaker
//! may have opened while it waited). An admitted copy owns its ticket, the
//! breaker's probe if it is the probe, and its place in the backlog; dropping
//! it gives each back, and the ticket then counts `dropped{shutdown}`.

use std::sync::Arc;

use crate::engine::capture::{Backlog, BodyRx, RequestHead, Reservation};
use crate::engine::client::{Breaker, CopyOptions, Gate};
use crate::engine::compare::Comparison;
use crate::engine::config::Dest;
use crate::engine::ids::TargetId;
use crate::engine::outcome::{DropReason, Outcome, Ticket};
use crate::engine::record::Recording;

/// Bytes a copy is charged for what it holds besides its captured head while queued or in
/// flight (its task, the protocol's request and stream state: a few KiB measured), so
/// `async_mirror_queue_bytes` bounds the memory of copies in flight too.
pub const COPY_STATE_BYTES: usize = 4096;

/// The breaker's single probe, handed back unless the copy reached the mirror.
#[derive(Debug)]
struct Probe {
    breaker: Arc<Breaker>,
    armed: bool,
}

impl Drop for Probe {
    fn drop(&mut self) {
        if self.armed {
            self.breaker.release_probe();
        }
    }
}

/// A copy that passed admission but is not captured yet.
#[derive(Debug)]
pub struct Admission {
    target: TargetId,
    ticket: Ticket,
    breaker: Arc<Breaker>,
    probe: Option<Probe>,
    place: Reservation,
    opts: CopyOptions,
}

/// Opens the accounting for one copy and decides whether it goes: `early` carries what
/// the nginx layer decided before (skipped, too large, rate limited), then the breaker,
/// then a place in the backlog. `Err` is the outcome the copy was counted with.
///
/// # Errors
/// The outcome of a copy that does not go.
pub fn admit(
    target: TargetId,
    ticket: Ticket,
    breaker: &Arc<Breaker>,
    backlog: &Arc<Backlog>,
    early: Result<(), Outcome>,
    opts: CopyOptions,
    now_ms: u64,
) -> Result<Admission, Outcome> {
    let refuse = |ticket: Ticket, o: Outcome| {
        ticket.finish(o);
        Err(o)
    };
    if let Err(o) = early {
        return refuse(ticket, o);
    }
    let probe = match breaker.admit(now_ms, opts.breaker) {
        Gate::Pass => None,
        Gate::Probe => Some(Probe { breaker: breaker.clone(), armed: true }),
        Gate::Reject => return refuse(ticket, Outcome::Dropped(DropReason::BreakerOpen)),
    };
    // A job slot is taken now, before anything is captured, so a drop under overload
    // costs two atomic operations; the captured bytes are charged in `into_copy`.
    let Some(place) = backlog.reserve(0) else {
        drop(probe);
        return refuse(ticket, Outcome::Dropped(DropReason::QueueFull));
    };
    Ok(Admission { target, ticket, breaker: breaker.clone(), probe, place, opts })
}

impl Admission {
    /// Completes the copy with what was captured, charging the head to the backlog.
    ///
    /// # Errors
    /// `dropped{queue_full}` when the byte budget has no room for it.
    pub fn into_copy(
        mut self,
        head: Arc<RequestHead>,
        dest: Option<Dest>,
        body: Option<BodyRx>,
    ) -> Result<MirrorCopy, Outcome> {
        if !self.place.grow(head.weight() + COPY_STATE_BYTES) {
            return Err(self.end(Outcome::Dropped(DropReason::QueueFull)));
        }
        let Admission { target, ticket, breaker, probe, place, opts } = self;
        Ok(MirrorCopy {
            target,
            head,
            dest,
            body,
            opts,
            compare: None,
            record: None,
            log: None,
            queued_at: std::time::Instant::now(),
            ticket,
            breaker,
            probe,
            place: Some(place),
        })
    }

    /// Ends a copy that could not be captured after all.
    pub fn end(self, outcome: Outcome) -> Outcome {
        self.ticket.finish(outcome);
        outcome
    }
}

/// An admitted, captured copy: queued, then in flight.
pub struct MirrorCopy {
    pub target: TargetId,
    pub head: Arc<RequestHead>,
    /// For a URL with variables: where this copy goes.
    pub dest: Option<Dest>,
    pub body: Option<BodyRx>,
    pub opts: CopyOptions,
    /// Set when the location compares responses.
    pub compare: Option<Comparison>,
    /// Set when the target is a capture target: the copy is kept as records.
    pub record: Option<Recording>,
    /// `async_mirror_log`: which file gets this copy's line.
    pub log: Option<usize>,
    /// When it entered its target's backlog (set when it is handed to the lane).
    pub queued_at: std::time::Instant,
    ticket: Ticket,
    breaker: Arc<Breaker>,
    probe: Option<Probe>,
    place: Option<Reservation>,
}

impl MirrorCopy {
    /// The copy leaves the backlog for the mirror: its job slot is given back, its bytes
    /// stay charged until it ends (copies in flight hold memory too). `None`: the breaker
    /// opened while it waited, and it was counted `dropped{breaker_open}` (the probe
    /// always goes).
    pub fn depart(mut self, now_ms: u64) -> Option<MirrorCopy> {
        if let Some(place) = self.place.as_mut() {
            place.leave_queue();
        }
        if self.probe.is_none() && self.opts.breaker.max_fails > 0 && self.breaker.still_open(now_ms) {
            self.finish(Outcome::Dropped(DropReason::BreakerOpen));
            return None;
        }
        Some(self)
    }

    /// A held copy (admitted with a deferred ticket) the primary's status lets go.
    pub fn confirm(&mut self) {
        self.ticket.confirm();
    }

    /// A held copy the primary's status stops: not a copy, nothing counted; its place
    /// and probe are given back.
    pub fn discard(self) {
        let MirrorCopy { ticket, .. } = self;
        ticket.discard();
    }

    /// Whether this copy is the breaker's probe (it goes even while the breaker is open).
    pub fn is_probe(&self) -> bool {
        self.probe.is_some()
    }

    /// The copy's one outcome. The breaker has already heard how the mirror did.
    pub fn finish(self, outcome: Outcome) {
        let MirrorCopy { ticket, mut probe, .. } = self;
        if let Some(p) = probe.as_mut() {
            p.armed = false;
        }
        ticket.finish(outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::capture::HeaderEdits;
    use crate::engine::client::BreakerSettings;
    use crate::engine::ids::Id;
    use crate::engine::outcome::TargetStats;
    use std::time::Duration;

    const OPTS: CopyOptions = CopyOptions {
        connect_timeout: Duration::from_secs(1),
        timeout: Duration::from_secs(1),
        breaker: BreakerSettings { max_fails: 1, fail_timeout: Duration::from_secs(10) },
    };

    fn head() -> Arc<RequestHead> {
        let none = Vec::<(&[u8], &[u8])>::new();
        Arc::new(RequestHead::capture(b"GET", b"/", none.into_iter(), &HeaderEdits::default()).unwrap())
    }

    #[test]
    fn every_path_ends_in_one_outcome_and_gives_back_its_place() {
        let stats = Arc::new(TargetStats::default());
        let breaker = Arc::new(Breaker::default());
        let backlog = Backlog::new(1, 1 << 20);
        let id = TargetId::from_index(0);
        let go = |early| admit(id, Ticket::new(stats.clone()), &breaker, &backlog, early, OPTS, 0);

        assert_eq!(go(Err(Outcome::Skipped)).unwrap_err(), Outcome::Skipped);
        let a = go(Ok(())).unwrap();
        assert_eq!(go(Ok(())).unwrap_err(), Outcome::Dropped(DropReason::QueueFull), "one job slot");
        let copy = a.into_copy(head(), None, None).unwrap();
        assert!(backlog.bytes() > 0);
        let copy = copy.depart(0).unwrap();
        assert_eq!(backlog.jobs(), 0, "departed copies leave the queue");
        assert!(backlog.bytes() > 0, "their bytes stay charged while in flight");
        copy.finish(Outcome::Ok);
        drop(go(Ok(())).unwrap()); // torn down: counted as shutdown
        assert_eq!(stats.attempted(), 4);
        assert_eq!(stats.finished(), 4);
        assert_eq!(stats.get(Outcome::Dropped(DropReason::Shutdown)), 1);
        assert_eq!((backlog.jobs(), backlog.bytes()), (0, 0));
    }

    #[test]
    fn probe_is_given_back_unless_it_reached_the_mirror() {
        let stats = Arc::new(TargetStats::default());
        let breaker = Arc::new(Breaker::default());
        let backlog = Backlog::new(8, 1 << 20);
        let id = TargetId::from_index(0);
        breaker.failure(0, OPTS.breaker);
        let later = 20_000;
        let go = || admit(id, Ticket::new(stats.clone()), &breaker, &backlog, Ok(()), OPTS, later);
        let probe = go().unwrap();
        assert_eq!(go().unwrap_err(), Outcome::Dropped(DropReason::BreakerOpen), "one probe at a time");
        drop(probe);
        let probe = go().expect("a dropped probe is given back");
        let queued =
            admit(id, Ticket::new(stats.clone()), &Arc::new(Breaker::default()), &backlog, Ok(()), OPTS, 0)
                .unwrap()
                .into_copy(head(), None, None)
                .unwrap();
        let copy = probe.into_copy(head(), None, None).unwrap().depart(later).expect("the probe always goes");
        breaker.failure(later, OPTS.breaker);
        copy.finish(Outcome::Ok);
        queued.depart(0).expect("another target's breaker is closed").finish(Outcome::Ok);
        assert_eq!(stats.get(Outcome::Dropped(DropReason::Shutdown)), 1, "only the dropped probe");
        assert_eq!((stats.attempted(), stats.finished()), (4, 4));
    }
}
