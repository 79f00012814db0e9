//! nginx-async-mirror: copies live requests to mirror targets from a Tokio
//! runtime inside each nginx worker, so the client never waits for a mirror.
//!
//! `engine` is plain Rust; `ngx` is the only place that touches nginx.
#![deny(unsafe_op_in_unsafe_fn)]

// Private: the module's only interfaces are nginx's and the replayer's entry point, so the
// compiler reports what nothing uses.
mod engine;

/// `async-mirror-replay`'s whole program (`src/bin` is a wrapper): replays capture records
/// with the engine's client; returns the exit code.
pub fn replay_main(args: Vec<String>) -> i32 {
    engine::replay::replay_main(args)
}

// The nginx glue references symbols that only the nginx binary provides, so
// unit-test builds of this crate leave it out.
#[cfg(not(test))]
mod ngx;
