//! `async-mirror-replay`: capture records sent again through the engine (its lanes, client
//! and comparison), paced as recorded or faster.

mod replay_args;
mod replayer;

pub use replayer::replay_main;
