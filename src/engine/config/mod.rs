//! What the configuration says, apart from nginx: directive values in nginx's syntax,
//! target URLs, capture targets and `async_mirror` lines, and every default.

pub mod defaults;
mod mirror_line;
mod sink_line;
mod spec;
mod url;
mod values;

pub use mirror_line::parse_mirror_line;
pub use sink_line::{SinkKind, SinkSpec};
#[cfg(test)]
pub use spec::parse_target;
pub use spec::{Dest, TargetSpec, parse_dest};
pub use url::PathKind;
pub use values::{
    HttpVersion, PPM, parse_count, parse_flag, parse_header_name, parse_http_version, parse_rate, parse_size,
    parse_status_range, parse_time, positive_time,
};
