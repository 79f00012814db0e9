//! The answer the client got, kept whole for a capture's response record: the status, every
//! header the content handler set and the body up to a limit, taken by the same response
//! filters that capture the primary's answer for comparison.

use std::time::SystemTime;

use bytes::{Bytes, BytesMut};

use crate::engine::capture::Charge;

/// The header lines (`Name: value\r\n` each), in the order the content handler set them:
/// one buffer, taken on the nginx thread with one allocation.
pub type Headers = Vec<u8>;

/// The client's answer as a capture records it.
#[derive(Debug)]
pub struct RawAnswer {
    pub status: u16,
    pub headers: Bytes,
    /// At most the limit's bytes of the body, charged to the worker's budget.
    pub body: Bytes,
    /// When the header went out.
    pub at: SystemTime,
    _charge: Option<Charge>,
}

/// A [`RawAnswer`] while the response filters feed it. A body cut at the limit (or left in
/// a file buffer, which the nginx thread never reads) is recorded as far as it was kept;
/// its `Content-Length` then says more.
#[derive(Debug)]
pub struct RawCapture {
    /// Status, headers, and when they went out.
    head: Option<(u16, Headers, SystemTime)>,
    body: BytesMut,
    max: usize,
    charge: Charge,
}

impl RawCapture {
    pub fn new(max: usize, charge: Charge) -> RawCapture {
        RawCapture { head: None, body: BytesMut::new(), max, charge }
    }

    pub fn head(&mut self, status: u16, headers: Headers) {
        self.head = Some((status, headers, SystemTime::now()));
    }

    pub fn data(&mut self, chunk: &[u8]) {
        let take = self.max.saturating_sub(self.body.len()).min(chunk.len());
        if take > 0 && self.charge.grow(take) {
            self.body.extend_from_slice(&chunk[..take]);
        } else {
            self.cut();
        }
    }

    /// The body stays as far as it is: past the limit or the budget, or data the nginx
    /// thread does not read (a file buffer).
    pub fn cut(&mut self) {
        self.max = self.body.len();
    }

    /// The answer, once the header went by.
    pub fn finish(self) -> Option<RawAnswer> {
        let (status, headers, at) = self.head?;
        let headers = Bytes::from(headers);
        Some(RawAnswer { status, headers, body: self.body.freeze(), at, _charge: Some(self.charge) })
    }
}
