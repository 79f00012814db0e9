//! What the engine tells people: the status snapshot and its formats (Prometheus text,
//! JSON, the HTML page), the copy log, and error lines for nginx's error log.

mod copy_log;
mod error_log;
mod html;
mod prometheus;
mod snapshot;
mod status_json;

pub use copy_log::{CopyLog, Record};
pub use error_log::ErrorLog;
pub use html::{CONTENT_TYPE as HTML_CONTENT_TYPE, html};
pub use prometheus::{PROMETHEUS_CONTENT_TYPE, prometheus};
pub use snapshot::{Snapshot, TargetSnapshot, merge_by_url};
pub use status_json::json;
