//! The mirror engine: plain Rust, no nginx types, unit-tested without nginx.
//!
//! The nginx layer (`src/ngx`) keeps a [`copy::RequestCopies`] per request, which decides
//! and captures that request's copies on the nginx thread and hands them to the
//! [`Engine`]'s lanes; each copy is sent on the engine's own Tokio runtime and ends in
//! exactly one counted outcome. Rooms, each behind the small face its `mod.rs` exports:
//! `config` (what the configuration says), `capture` (the request as captured), `copy`
//! (a copy's life), `client` (sending to mirrors), `compare` (comparing answers),
//! `outcome` (how copies end and are counted), `record` (capture targets' records), `replay`
//! (the replayer), `report` (status formats and logs), `zone` (the shared-memory table).
#![forbid(unsafe_code)]
// Test builds leave the nginx layer out, so what only it uses looks unused there.
#![cfg_attr(test, allow(dead_code, unused_imports))]

pub mod capture;
pub mod client;
pub mod compare;
pub mod config;
pub mod control;
pub mod copy;
pub mod error_log;
pub mod ids;
pub mod outcome;
pub mod record;
pub mod replay;
pub mod report;
mod runtime;
mod scheduler;
mod token_bucket;
pub mod zone;

pub use runtime::{Engine, EngineSettings};
