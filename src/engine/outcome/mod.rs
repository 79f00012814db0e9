//! How copies end and are counted: the outcome vocabulary, the per-target counters,
//! and the ticket that makes every attempted copy end in exactly one outcome.

mod counters;
mod ticket;
mod vocabulary;

pub use counters::{BUCKETS_MS, CounterVec, Gauges, TargetStats, slot};
pub use ticket::Ticket;
pub use vocabulary::{DropReason, FailReason, Failure, Fate, Outcome};
