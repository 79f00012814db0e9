//! Capture targets and their records: GoReplay's format (written and read back), the file
//! writer, the Kafka producer (and the consumer the replayer reads with), and the delivery
//! of a copy as records.

mod file_writer;
mod format;
#[cfg(feature = "kafka")]
mod kafka;
mod sink;

pub use format::{Payload, PayloadReader, REQUEST, RESPONSE, parse_http, parse_payload};
#[cfg(feature = "kafka")]
pub use kafka::TopicReader;
pub use sink::{RecordSettings, Recording, Sink, start_sink};
