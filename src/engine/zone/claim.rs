//! Claiming slots of the zone while traffic flows: endpoint and field names come from
//! requests, so workers claim their slots first fit, in order, with a compare-and-swap.
//! A slot being claimed is waited for (boundedly), so two workers never claim one name
//! twice; a worker that died mid-claim leaves its slot CLAIMING, which is then skipped.

use std::sync::atomic::{AtomicU64, Ordering};

pub const FREE: u64 = 0;
pub const CLAIMING: u64 = 1;
pub const READY: u64 = 2;

/// Waits, bounded, for a slot another worker is claiming.
fn settled(state: &AtomicU64) -> u64 {
    for _ in 0..100_000 {
        let s = state.load(Ordering::Acquire);
        if s != CLAIMING {
            return s;
        }
        std::hint::spin_loop();
    }
    CLAIMING
}

/// The first slot that `matches`, or a free one claimed with `init` (a false `init`
/// gives the slot back). `None` when neither is found.
pub fn find_or_claim<'a, T>(
    slots: impl Iterator<Item = &'a T>,
    state: impl Fn(&T) -> &AtomicU64,
    matches: impl Fn(&T) -> bool,
    init: impl Fn(&T) -> bool,
) -> Option<&'a T> {
    for s in slots {
        loop {
            match settled(state(s)) {
                READY if matches(s) => return Some(s),
                FREE => {
                    if state(s).compare_exchange(FREE, CLAIMING, Ordering::AcqRel, Ordering::Acquire).is_err()
                    {
                        continue;
                    }
                    if init(s) {
                        state(s).store(READY, Ordering::Release);
                        return Some(s);
                    }
                    state(s).store(FREE, Ordering::Release);
                    return None;
                }
                _ => break,
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::zone::layout::Text;

    struct Named {
        state: AtomicU64,
        name: Text<16>,
    }

    fn claim<'a>(slots: &'a [Named], name: &str) -> Option<&'a Named> {
        find_or_claim(
            slots.iter(),
            |s| &s.state,
            |s| s.name.is(name.as_bytes()),
            |s| {
                s.name.set(name.as_bytes());
                true
            },
        )
    }

    #[test]
    fn racing_workers_claim_each_name_once() {
        let slots: Vec<Named> =
            (0..12).map(|_| Named { state: AtomicU64::new(FREE), name: Text::new() }).collect();
        let names = ["a", "b", "c", "d", "e", "f", "g", "h"];
        std::thread::scope(|scope| {
            for t in 0..8 {
                let slots = &slots;
                scope.spawn(move || {
                    for round in 0..200 {
                        // Every thread wants the same name first, then names of its own.
                        let same = claim(slots, "same").expect("room");
                        assert!(same.name.is(b"same"));
                        let mine = names[(t + round) % names.len()];
                        assert!(claim(slots, mine).expect("room").name.is(mine.as_bytes()));
                    }
                });
            }
        });
        let mut claimed: Vec<Vec<u8>> =
            slots.iter().filter(|s| s.state.load(Ordering::Acquire) == READY).map(|s| s.name.get()).collect();
        claimed.sort();
        let mut want: Vec<Vec<u8>> = names.iter().chain(&["same"]).map(|n| n.as_bytes().to_vec()).collect();
        want.sort();
        assert_eq!(claimed, want, "each name claimed exactly once");
        assert!(claim(&slots, "x").is_some() && claim(&slots, "y").is_some() && claim(&slots, "z").is_some());
        assert!(claim(&slots, "full").is_none(), "no room left");
    }

    #[test]
    fn a_stuck_claim_is_skipped_and_a_refused_one_given_back() {
        let slots: Vec<Named> =
            (0..2).map(|_| Named { state: AtomicU64::new(FREE), name: Text::new() }).collect();
        slots[0].state.store(CLAIMING, Ordering::Release);
        assert!(std::ptr::eq(claim(&slots, "a").unwrap(), &slots[1]));
        let refused = find_or_claim(slots.iter(), |s| &s.state, |_| false, |_| false);
        assert!(refused.is_none());
        assert_eq!(slots[1].state.load(Ordering::Acquire), READY);
    }
}
