//! Capture targets and their records: GoReplay's format, the file writer, the Kafka producer
//! and consumer, the delivery of a copy as records, and the replayer that sends them again.

mod file_writer;
mod format;
#[cfg(feature = "kafka")]
mod kafka;
mod replay;
mod replay_args;
mod sink;

pub use replay::replay_main;
pub use sink::{RecordSettings, Recording, Sink, start_sink};
