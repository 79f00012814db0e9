//! Claiming slots of the zone while traffic flows: endpoint and field names come from
//! requests, so workers claim their slots with a compare-and-swap, first fit, after
//! looking for the name everywhere (the master frees slots of targets a new
//! configuration no longer names, so free slots may sit between claimed ones).
//!
//! A slot being claimed holds its claimer's process id. A claim that takes too long is
//! not waited for further: if the claimer died, the slot is freed again; if it is alive,
//! nothing after that slot is claimed (the name might be the one being written), and the
//! caller counts under `other`. So one name never gets two slots.

use std::sync::atomic::{AtomicU64, Ordering};

pub const FREE: u64 = 0;
pub const READY: u64 = 2;
/// The low byte of a slot being claimed; the claimer's pid is above it.
const CLAIMING: u64 = 1;

fn claiming(pid: u64) -> u64 {
    CLAIMING | (pid << 8)
}

fn is_claiming(state: u64) -> bool {
    state & 0xff == CLAIMING
}

/// Who claims, and how to tell whether another claimer is still alive.
#[derive(Clone, Copy)]
pub struct Claimer<'a> {
    pub pid: u64,
    pub alive: &'a dyn Fn(u64) -> bool,
}

/// Waits, bounded, for a slot another worker is claiming.
fn settled(state: &AtomicU64) -> u64 {
    for _ in 0..100_000 {
        let s = state.load(Ordering::Acquire);
        if !is_claiming(s) {
            return s;
        }
        std::hint::spin_loop();
    }
    state.load(Ordering::Acquire)
}

/// What one pass found at a slot.
enum Seen {
    Match,
    Free,
    Other,
    /// Still being claimed by a live worker.
    Busy,
}

fn look<T>(
    s: &T,
    state: &impl Fn(&T) -> &AtomicU64,
    matches: &impl Fn(&T) -> bool,
    who: Claimer<'_>,
) -> Seen {
    loop {
        let st = settled(state(s));
        match st {
            READY if matches(s) => return Seen::Match,
            FREE => return Seen::Free,
            st if is_claiming(st) => {
                // A claimer that died mid-claim leaves the slot to whoever comes next.
                if (who.alive)(st >> 8) {
                    return Seen::Busy;
                }
                let _ = state(s).compare_exchange(st, FREE, Ordering::AcqRel, Ordering::Acquire);
            }
            _ => return Seen::Other,
        }
    }
}

/// The slot that `matches`, or the first free one claimed with `init` (a false `init`
/// gives the slot back). `None` when neither is found, or when a slot another live
/// worker is claiming comes before the first free one.
pub fn find_or_claim<'a, T>(
    slots: impl Iterator<Item = &'a T> + Clone,
    state: impl Fn(&T) -> &AtomicU64,
    matches: impl Fn(&T) -> bool,
    init: impl Fn(&T) -> bool,
    who: Claimer<'_>,
) -> Option<&'a T> {
    // The name anywhere, free slots before it notwithstanding.
    if let Some(s) = slots.clone().find(|s| state(s).load(Ordering::Acquire) == READY && matches(s)) {
        return Some(s);
    }
    for s in slots {
        loop {
            match look(s, &state, &matches, who) {
                Seen::Match => return Some(s),
                Seen::Busy => return None,
                Seen::Other => break,
                Seen::Free => {
                    let mine = claiming(who.pid);
                    if state(s).compare_exchange(FREE, mine, Ordering::AcqRel, Ordering::Acquire).is_err() {
                        continue;
                    }
                    if init(s) {
                        state(s).store(READY, Ordering::Release);
                        return Some(s);
                    }
                    state(s).store(FREE, Ordering::Release);
                    return None;
                }
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

    fn slots(n: usize) -> Vec<Named> {
        (0..n).map(|_| Named { state: AtomicU64::new(FREE), name: Text::new() }).collect()
    }

    const ALIVE: &dyn Fn(u64) -> bool = &|_| true;

    fn claim<'a>(slots: &'a [Named], name: &str, who: Claimer<'_>) -> Option<&'a Named> {
        find_or_claim(
            slots.iter(),
            |s| &s.state,
            |s| s.name.is(name.as_bytes()),
            |s| {
                s.name.set(name.as_bytes());
                true
            },
            who,
        )
    }

    #[test]
    fn racing_workers_claim_each_name_once() {
        let slots = slots(12);
        let names = ["a", "b", "c", "d", "e", "f", "g", "h"];
        std::thread::scope(|scope| {
            for t in 0..8u64 {
                let slots = &slots;
                scope.spawn(move || {
                    let me = Claimer { pid: 100 + t, alive: ALIVE };
                    for round in 0..200 {
                        // Every thread wants the same name first, then names of its own.
                        let same = claim(slots, "same", me).expect("room");
                        assert!(same.name.is(b"same"));
                        let mine = names[(t as usize + round) % names.len()];
                        assert!(claim(slots, mine, me).expect("room").name.is(mine.as_bytes()));
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
        let me = Claimer { pid: 1, alive: ALIVE };
        assert!(claim(&slots, "x", me).is_some() && claim(&slots, "y", me).is_some());
        assert!(claim(&slots, "z", me).is_some() && claim(&slots, "full", me).is_none(), "no room left");
    }

    #[test]
    fn a_stuck_claim_is_never_doubled_and_a_dead_one_is_freed() {
        let slots = slots(3);
        slots[0].state.store(claiming(42), Ordering::Release);
        let live = Claimer { pid: 7, alive: &|pid| pid == 42 };
        assert!(claim(&slots, "a", live).is_none(), "the name may be the one being claimed: no second slot");
        let dead = Claimer { pid: 7, alive: &|pid| pid != 42 };
        let got = claim(&slots, "a", dead).expect("a dead claimer's slot is taken over");
        assert!(std::ptr::eq(got, &slots[0]));
        // A freed slot before a claimed name: the name is found where it is.
        slots[0].state.store(FREE, Ordering::Release);
        slots[1].name.set(b"b");
        slots[1].state.store(READY, Ordering::Release);
        assert!(std::ptr::eq(claim(&slots, "b", dead).unwrap(), &slots[1]));
        let refused = find_or_claim(slots.iter(), |s| &s.state, |_| false, |_| false, dead);
        assert!(refused.is_none());
        assert_eq!(slots[0].state.load(Ordering::Acquire), FREE, "a refused claim gives the slot back");
    }
}
