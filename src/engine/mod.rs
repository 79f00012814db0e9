//! The mirror engine: plain Rust, no nginx types, unit-tested without nginx.
//!
//! The nginx layer captures a [`RequestHead`] on the nginx thread and hands it
//! to the [`Engine`], which sends it to each target on its own Tokio runtime.
#![forbid(unsafe_code)]

pub mod body;
pub mod breaker;
pub mod client;
pub mod job;
pub mod logq;
pub mod outcome;
pub mod parse;
pub mod queue;
pub mod runtime;
pub mod sample;
pub mod status;
pub mod tls;

pub use breaker::BreakerSettings;
pub use client::{ClientSettings, CopyOptions};
pub use job::{HeaderEdits, RequestHead};
pub use outcome::{DropReason, Outcome, TargetStats, Ticket};
pub use parse::TargetSpec;
pub use runtime::{Engine, EngineSettings};
