//! The one vocabulary of what happens to a copy: every word the metrics, the JSON
//! status, the copy log, the error log and `$async_mirror_outcome` print comes from
//! here, each format rendered one way ([`Outcome::label`]/[`Outcome::reason`] for
//! labels and log fields, [`Outcome`]'s `Display` for keys, [`Fate::variable`] for
//! the variable).

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailReason {
    Connect,
    Timeout,
    Reset,
    BodyAborted,
    /// The copy's time ran out while the client's body was still arriving: the client's
    /// slowness, not the mirror's (the breaker does not hear of it).
    BodySlow,
    /// A capture target could not keep the record: the file's write failed (a full disk, a
    /// read-only file) or the Kafka broker refused the message.
    Write,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    QueueFull,
    /// Waited in its target's backlog longer than its `async_mirror_timeout`: never sent late.
    QueueTimeout,
    BodyTooLarge,
    BreakerOpen,
    RateLimited,
    Shutdown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The mirror answered 2xx or 3xx; for a capture target, its records were kept.
    Ok,
    Status4xx,
    Status5xx,
    Failed(FailReason),
    Dropped(DropReason),
    /// Not copyable (upgrade, loop guard, an unusable URL from variables, unrepresentable request).
    Skipped,
}

impl Outcome {
    /// Every outcome, in counter-slot order.
    pub const ALL: [Outcome; 15] = [
        Outcome::Ok,
        Outcome::Status4xx,
        Outcome::Status5xx,
        Outcome::Failed(FailReason::Connect),
        Outcome::Failed(FailReason::Timeout),
        Outcome::Failed(FailReason::Reset),
        Outcome::Failed(FailReason::BodyAborted),
        Outcome::Failed(FailReason::BodySlow),
        Outcome::Failed(FailReason::Write),
        Outcome::Dropped(DropReason::QueueFull),
        Outcome::Dropped(DropReason::QueueTimeout),
        Outcome::Dropped(DropReason::BodyTooLarge),
        Outcome::Dropped(DropReason::BreakerOpen),
        Outcome::Dropped(DropReason::RateLimited),
        Outcome::Dropped(DropReason::Shutdown),
    ];
    pub const COUNT: usize = Self::ALL.len() + 1;

    pub fn slot(self) -> usize {
        match self {
            Outcome::Skipped => Self::ALL.len(),
            o => Self::ALL.iter().position(|x| *x == o).unwrap_or(Self::ALL.len()),
        }
    }

    pub fn from_slot(i: usize) -> Outcome {
        Self::ALL.get(i).copied().unwrap_or(Outcome::Skipped)
    }

    /// Outcome label, as in metrics: `ok`, `status_4xx`, `failed`, `dropped`, `skipped`.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Status4xx => "status_4xx",
            Outcome::Status5xx => "status_5xx",
            Outcome::Failed(_) => "failed",
            Outcome::Dropped(_) => "dropped",
            Outcome::Skipped => "skipped",
        }
    }

    /// Reason label for failed/dropped outcomes, empty otherwise.
    pub fn reason(self) -> &'static str {
        match self {
            Outcome::Failed(r) => match r {
                FailReason::Connect => "connect",
                FailReason::Timeout => "timeout",
                FailReason::Reset => "reset",
                FailReason::BodyAborted => "body_aborted",
                FailReason::BodySlow => "body_slow",
                FailReason::Write => "write",
            },
            Outcome::Dropped(r) => match r {
                DropReason::QueueFull => "queue_full",
                DropReason::QueueTimeout => "queue_timeout",
                DropReason::BodyTooLarge => "body_too_large",
                DropReason::BreakerOpen => "breaker_open",
                DropReason::RateLimited => "rate_limited",
                DropReason::Shutdown => "shutdown",
            },
            _ => "",
        }
    }

    /// Maps a mirror's status code to its class outcome.
    pub fn from_status(code: u16) -> Outcome {
        match code {
            400..=499 => Outcome::Status4xx,
            500.. => Outcome::Status5xx,
            _ => Outcome::Ok,
        }
    }
}

impl fmt::Display for Outcome {
    /// `ok`, `failed_connect`, `dropped_queue_full`: the key used in log lines.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.reason() {
            "" => f.write_str(self.label()),
            r => write!(f, "{}_{}", self.label(), r),
        }
    }
}

/// A copy that failed: the counted reason, and what to tell the error log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub reason: FailReason,
    pub detail: String,
}

impl Failure {
    pub fn new(reason: FailReason, detail: impl Into<String>) -> Failure {
        Failure { reason, detail: detail.into() }
    }
}

/// What the nginx thread decided for one target of one request, as
/// `$async_mirror_outcome` lists it: the copy went on (`queued`, `held`), was never a
/// copy (`paused`, `sampled_out`, `primary_status`: not counted), or already ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    Queued,
    /// Waiting for the primary's status (`async_mirror_primary_status`).
    Held,
    /// The control API paused the target.
    Paused,
    SampledOut,
    /// The primary's status did not let a held copy go.
    PrimaryStatus,
    Ended(Outcome),
}

impl Fate {
    /// The variable's word: `queued`, `sampled_out`, `dropped:queue_full`, `skipped`.
    pub fn variable(self) -> &'static str {
        match self {
            Fate::Queued => "queued",
            Fate::Held => "held",
            Fate::Paused => "paused",
            Fate::SampledOut => "sampled_out",
            Fate::PrimaryStatus => "primary_status",
            Fate::Ended(Outcome::Dropped(r)) => match r {
                DropReason::QueueFull => "dropped:queue_full",
                DropReason::QueueTimeout => "dropped:queue_timeout",
                DropReason::BodyTooLarge => "dropped:body_too_large",
                DropReason::BreakerOpen => "dropped:breaker_open",
                DropReason::RateLimited => "dropped:rate_limited",
                DropReason::Shutdown => "dropped:shutdown",
            },
            Fate::Ended(o) => o.label(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_round_trip() {
        for i in 0..Outcome::COUNT {
            assert_eq!(Outcome::from_slot(i).slot(), i);
        }
        assert_eq!(Outcome::Skipped.to_string(), "skipped");
        assert_eq!(Outcome::Dropped(DropReason::QueueFull).to_string(), "dropped_queue_full");
        assert_eq!(Outcome::from_status(204), Outcome::Ok);
        assert_eq!(Outcome::from_status(302), Outcome::Ok);
        assert_eq!(Outcome::from_status(404), Outcome::Status4xx);
        assert_eq!(Outcome::from_status(503), Outcome::Status5xx);
    }

    #[test]
    fn every_format_renders_from_the_same_words() {
        for o in Outcome::ALL.into_iter().chain([Outcome::Skipped]) {
            let key = o.to_string();
            match o.reason() {
                "" => assert_eq!(key, o.label()),
                r => assert_eq!(key, format!("{}_{r}", o.label())),
            }
            if let Outcome::Dropped(_) = o {
                assert_eq!(Fate::Ended(o).variable(), format!("dropped:{}", o.reason()));
            }
        }
        assert_eq!(Fate::SampledOut.variable(), "sampled_out");
        assert_eq!(Fate::Ended(Outcome::Skipped).variable(), "skipped");
    }
}
