//! What makes a copy to a capture target a capture copy, decided on the nginx thread: its
//! sink, the location's record settings, the `key=` value, the arrival time and, when the
//! sink records answers, its wait for the client's answer (which starts the request's
//! capture of that answer, shared with comparisons).

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;

use crate::engine::capture::Backlog;
use crate::engine::compare::{CompareSettings, PrimaryCapture, RequestComparison};
use crate::engine::record::{RecordSettings, Recording, Sink};

/// The recording of one capture copy, and the capture of the client's answer if this copy
/// started it (keep it with the request). `None`: the copy cannot be recorded.
pub fn recording(
    sink: &Arc<Sink>,
    settings: Option<&Arc<RecordSettings>>,
    backlog: Option<&Arc<Backlog>>,
    comparison: &mut Option<RequestComparison>,
    start: impl FnOnce(&Arc<CompareSettings>) -> RequestComparison,
    key: Option<Bytes>,
) -> Option<(Recording, Option<PrimaryCapture>)> {
    let settings = settings?;
    let (answer, capture) = match (&settings.answer, sink.response) {
        (Some(answer), Some(_)) => {
            let comparison = comparison.get_or_insert_with(|| start(answer));
            let (answer, capture) = comparison.answer(backlog?);
            (Some(answer), capture)
        }
        _ => (None, None),
    };
    let at = SystemTime::now();
    Some((Recording { sink: sink.clone(), settings: settings.clone(), key, answer, at }, capture))
}
