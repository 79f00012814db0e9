//! Comparing each copy's answer with the primary's (what the client got): the fields
//! (status, listed headers, body or JSON paths), the join of the answers of one request,
//! the verdicts by endpoint and field, and the mismatch log.

mod fields;
mod join;
mod json;
mod json_diff;
mod latch;
mod mismatch_log;
mod raw_answer;
mod request_comparison;
mod verdict;

pub use fields::CompareSettings;
pub use join::{Comparison, PrimaryCapture, Sinks};
pub use json_diff::parse_json_path;
pub use mismatch_log::{LINE_RESULTS, Mismatch, MismatchLog, iso8601};
pub use request_comparison::{PrimaryAnswer, RequestComparison};
pub use verdict::{
    ENDPOINTS, EndpointCounts, FIELDS, NAME_MAX, OTHER, Side, Verdict, VerdictStats, merge_into,
};
