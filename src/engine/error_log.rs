//! Error reports from runtime threads to the nginx thread, rate-limited per target.
//!
//! Runtime threads must not call nginx's logger, so they leave reports here and
//! a timer on the nginx thread takes them at most once a second: per target the
//! first message of the interval plus how many more were suppressed. Memory is
//! one string per target whatever the error rate.

use std::sync::Mutex;

use crate::engine::ids::{Id, TargetId};

#[derive(Debug, Default)]
struct Pending {
    first: Option<String>,
    suppressed: u64,
}

#[derive(Debug)]
pub struct ErrorLog {
    slots: Mutex<Vec<Pending>>,
}

/// One line for the error log.
#[derive(Debug, PartialEq, Eq)]
pub struct ErrorLine {
    pub target: TargetId,
    pub message: String,
    pub suppressed: u64,
}

impl ErrorLog {
    pub fn new(targets: usize) -> ErrorLog {
        ErrorLog { slots: Mutex::new((0..targets).map(|_| Pending::default()).collect()) }
    }

    /// Called from runtime threads.
    pub fn push(&self, target: TargetId, message: impl FnOnce() -> String) {
        let Ok(mut slots) = self.slots.lock() else { return };
        if let Some(slot) = slots.get_mut(target.index()) {
            if slot.first.is_none() {
                slot.first = Some(message());
            } else {
                slot.suppressed += 1;
            }
        }
    }

    /// Called from the nginx thread; never waits for the lock (a busy lock means next tick).
    pub fn take(&self) -> Vec<ErrorLine> {
        let Ok(mut slots) = self.slots.try_lock() else { return Vec::new() };
        let mut out = Vec::new();
        for (target, slot) in slots.iter_mut().enumerate() {
            if let Some(message) = slot.first.take() {
                out.push(ErrorLine {
                    target: TargetId::from_index(target),
                    message,
                    suppressed: std::mem::take(&mut slot.suppressed),
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_report_per_target_per_take() {
        let q = ErrorLog::new(2);
        for i in 0..5 {
            q.push(TargetId::from_index(1), || format!("refused {i}"));
        }
        q.push(TargetId::from_index(0), || "timeout".into());
        q.push(TargetId::from_index(7), || "unknown target ignored".into());
        let r = q.take();
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[0],
            ErrorLine { target: TargetId::from_index(0), message: "timeout".into(), suppressed: 0 }
        );
        assert_eq!(
            r[1],
            ErrorLine { target: TargetId::from_index(1), message: "refused 0".into(), suppressed: 4 }
        );
        assert!(q.take().is_empty());
    }
}
