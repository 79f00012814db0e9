//! `$async_mirror_outcome`'s words, one fate per route of a request. Locations have a
//! route or a few: those are kept inline, so a request that makes no copy (sampled out,
//! paused) allocates nothing for them, and the words are joined only when the variable
//! is read.

use crate::engine::outcome::Fate;

const INLINE: usize = 4;

#[derive(Debug)]
pub struct Fates {
    inline: [Fate; INLINE],
    len: usize,
    /// The fifth route's fate and later ones.
    more: Vec<Fate>,
}

impl Default for Fates {
    fn default() -> Fates {
        Fates { inline: [Fate::Queued; INLINE], len: 0, more: Vec::new() }
    }
}

impl Fates {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn push(&mut self, fate: Fate) {
        match self.inline.get_mut(self.len) {
            Some(slot) => *slot = fate,
            None => self.more.push(fate),
        }
        self.len += 1;
    }

    /// Changes the `i`-th fate (a held copy went or was discarded).
    pub fn set(&mut self, i: usize, fate: Fate) {
        let slot = match i.checked_sub(INLINE) {
            None if i < self.len => self.inline.get_mut(i),
            None => None,
            Some(j) => self.more.get_mut(j),
        };
        if let Some(slot) = slot {
            *slot = fate;
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = Fate> + '_ {
        self.inline.iter().take(self.len).chain(&self.more).copied()
    }

    /// The variable's value: the words joined by commas, e.g. `queued,sampled_out`.
    pub fn words(&self) -> String {
        let mut s = String::new();
        for (i, f) in self.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push_str(f.variable());
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::outcome::{DropReason, Outcome};

    #[test]
    fn words_follow_the_routes_past_the_inline_ones() {
        let mut f = Fates::default();
        assert_eq!(f.words(), "");
        for _ in 0..6 {
            f.push(Fate::SampledOut);
        }
        f.push(Fate::Held);
        f.set(1, Fate::Queued);
        f.set(6, Fate::Ended(Outcome::Dropped(DropReason::QueueFull)));
        f.set(9, Fate::Queued); // past the end: ignored
        assert_eq!(f.len(), 7);
        assert_eq!(
            f.words(),
            "sampled_out,queued,sampled_out,sampled_out,sampled_out,sampled_out,dropped:queue_full"
        );
    }
}
