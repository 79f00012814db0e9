//! What the engine tells people: the status snapshot and its formats (Prometheus text,
//! JSON, the HTML page), and the copy log.

mod copy_log;
mod html;
mod line_file;
mod prometheus;
mod snapshot;
mod status_json;

pub use copy_log::{CopyLog, Record};
pub use html::{CONTENT_TYPE as HTML_CONTENT_TYPE, html};
pub use line_file::LineFile;
pub use prometheus::{PROMETHEUS_CONTENT_TYPE, prometheus};
pub use snapshot::{Snapshot, TargetSnapshot, merge_by_url};
pub use status_json::json;
