//! A value set once by one side and awaited by many: the primary's answer (set on the
//! nginx thread, awaited by the request's copies) and a baseline's (awaited by the
//! candidates). Cheaper on the setting side than a watch channel: one lock and one
//! wake-up, which matters because the nginx thread sets one for every compared request.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

struct Cell<T> {
    value: Mutex<Option<T>>,
    /// The setter is gone: no value will come.
    closed: AtomicBool,
    notify: Notify,
}

/// The setting side; dropped without [`Setter::set`], waiters learn no value will come.
pub struct Setter<T>(Arc<Cell<T>>);

/// An awaiting side; clone one per waiter.
pub struct Latch<T>(Arc<Cell<T>>);

impl<T> Clone for Latch<T> {
    fn clone(&self) -> Self {
        Latch(self.0.clone())
    }
}

pub fn latch<T>() -> (Setter<T>, Latch<T>) {
    let shared =
        Arc::new(Cell { value: Mutex::new(None), closed: AtomicBool::new(false), notify: Notify::new() });
    (Setter(shared.clone()), Latch(shared))
}

impl<T> Setter<T> {
    pub fn set(self, value: T) {
        if let Ok(mut v) = self.0.value.lock() {
            *v = Some(value);
        }
        // Drop closes and wakes.
    }
}

impl<T> Drop for Setter<T> {
    fn drop(&mut self) {
        self.0.closed.store(true, Ordering::Release);
        self.0.notify.notify_waiters();
    }
}

impl<T: Clone> Latch<T> {
    /// The value, or `None` once the setter is gone without one.
    pub async fn get(&self) -> Option<T> {
        loop {
            let notified = self.0.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(v) = self.0.value.lock().ok().and_then(|v| v.clone()) {
                return Some(v);
            }
            if self.0.closed.load(Ordering::Acquire) {
                return self.0.value.lock().ok().and_then(|v| v.clone());
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_waiter_gets_the_value_or_learns_there_is_none() {
        let (tx, rx) = latch::<u32>();
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                tokio::spawn({
                    let rx = rx.clone();
                    async move { rx.get().await }
                })
            })
            .collect();
        tokio::task::yield_now().await;
        tx.set(7);
        for w in waiters {
            assert_eq!(w.await.unwrap(), Some(7));
        }
        assert_eq!(rx.get().await, Some(7), "a late waiter too");
        let (tx, rx) = latch::<u32>();
        drop(tx);
        assert_eq!(rx.get().await, None);
    }
}
