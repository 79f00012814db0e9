//! Where the nginx thread leaves a target's copies for its lane on the runtime. Copies are
//! handed over in batches: the nginx thread keeps a request's copies until its flush (a
//! millisecond later, or at once when many are pending), then appends them here and wakes
//! the lane once. A wake-up costs the nginx thread a system call and both threads a trip
//! through the scheduler, more than a copy's own hand-off, so it is shared by the batch.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

use super::admission::MirrorCopy;

#[derive(Default)]
pub struct Inbox {
    copies: Mutex<Vec<MirrorCopy>>,
    notify: Notify,
    closed: AtomicBool,
}

impl Inbox {
    /// Appends `batch` (emptying it) and wakes the lane.
    pub fn deliver(&self, batch: &mut Vec<MirrorCopy>) {
        if let Ok(mut copies) = self.copies.lock() {
            copies.append(batch);
        }
        self.notify.notify_one();
    }

    /// Everything waiting, in order.
    pub fn take(&self) -> Vec<MirrorCopy> {
        self.copies.lock().map(|mut c| std::mem::take(&mut *c)).unwrap_or_default()
    }

    /// No more copies will come: the lane ends once it has sent what it holds.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.notify.notify_one();
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Resolves once copies were delivered (or the inbox closed) since the last wait.
    pub async fn wait(&self) {
        self.notify.notified().await;
    }
}
