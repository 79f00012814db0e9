//! The request as the nginx thread captures it for its copies: the head (once per
//! request), the body streamed as nginx reads it, and the worker's backlog budget that
//! both are charged to.

mod backlog;
mod body;
mod h1_form;
mod head;
mod request_form;

pub use backlog::{Backlog, Charge, Reservation};
pub use body::{BodyAbort, BodyRx, BodyTx, CopyBody, channel as body_channel, empty as empty_body};
pub use head::{CaptureError, HeaderEdits, RequestHead, SCRUBBED};
