//! The mirror engine: plain Rust, no nginx types, unit-tested without nginx.
//!
//! The nginx layer captures a [`RequestHead`] on the nginx thread, admits a
//! [`copy::Copy`] per target and hands it to the [`Engine`], which sends it on
//! its own Tokio runtime.
#![forbid(unsafe_code)]

pub mod api;
pub mod body;
pub mod breaker;
pub mod compare;
pub mod connect;
pub mod copy;
pub mod copylog;
pub mod difflog;
pub mod http1;
pub mod http2;
pub mod ids;
pub mod job;
pub mod json;
pub mod latch;
pub mod logq;
pub mod outcome;
pub mod page;
pub mod parse;
pub mod pool;
pub mod queue;
pub mod resolve;
pub mod response;
pub mod runtime;
pub mod sample;
pub mod shadow;
pub mod sniff;
pub mod status;
pub mod target;
pub mod tls;
pub mod url;
pub mod verdict;

pub use breaker::BreakerSettings;
pub use copy::CopyOptions;
pub use ids::{RateId, SpecId, TargetId};
pub use job::{HeaderEdits, RequestHead};
pub use outcome::{DropReason, Outcome, TargetStats};
pub use parse::TargetSpec;
pub use runtime::{Engine, EngineSettings};
pub use target::ClientSettings;
