//! Typed indices. Targets, written URLs and rate buckets live in parallel tables
//! (configuration, engine, shared zone, sampling state); a typed id can only index
//! the tables of its own kind, so two of them cannot be mixed up by position.

use std::fmt;
use std::marker::PhantomData;

macro_rules! id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(u32);

        impl Id for $name {
            fn from_index(i: usize) -> Self {
                $name(u32::try_from(i).expect("fewer than 2^32 entries"))
            }
            fn index(self) -> usize {
                self.0 as usize
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

pub trait Id: Copy {
    fn from_index(i: usize) -> Self;
    fn index(self) -> usize;
}

id!(
    /// A target as the engine runs it: one pool and one set of counters per worker.
    TargetId
);
id!(
    /// A URL as written in an `async_mirror` line.
    SpecId
);
id!(
    /// One `rate=` token bucket, shared by the locations that inherit its line.
    RateId
);

/// A vector indexed by one kind of id.
#[derive(Debug, Clone)]
pub struct Table<I, T> {
    items: Vec<T>,
    _id: PhantomData<fn(I) -> I>,
}

impl<I, T> Default for Table<I, T> {
    fn default() -> Self {
        Table { items: Vec::new(), _id: PhantomData }
    }
}

impl<I: Id, T> Table<I, T> {
    pub fn push(&mut self, item: T) -> I {
        self.items.push(item);
        I::from_index(self.items.len() - 1)
    }

    pub fn get(&self, id: I) -> Option<&T> {
        self.items.get(id.index())
    }

    pub fn get_mut(&mut self, id: I) -> Option<&mut T> {
        self.items.get_mut(id.index())
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (I, &T)> {
        self.items.iter().enumerate().map(|(i, t)| (I::from_index(i), t))
    }

    pub fn values(&self) -> std::slice::Iter<'_, T> {
        self.items.iter()
    }

    pub fn position(&self, f: impl FnMut(&T) -> bool) -> Option<I> {
        self.items.iter().position(f).map(I::from_index)
    }

    /// A parallel table: the same ids, one derived value each.
    pub fn map<U>(&self, f: impl FnMut(&T) -> U) -> Table<I, U> {
        Table { items: self.items.iter().map(f).collect(), _id: PhantomData }
    }
}

impl<I: Id, T> std::ops::Index<I> for Table<I, T> {
    type Output = T;
    fn index(&self, id: I) -> &T {
        &self.items[id.index()]
    }
}

impl<I: Id, T> FromIterator<T> for Table<I, T> {
    fn from_iter<It: IntoIterator<Item = T>>(iter: It) -> Self {
        Table { items: iter.into_iter().collect(), _id: PhantomData }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_tables_share_ids() {
        let mut urls: Table<TargetId, &str> = Table::default();
        let a = urls.push("http://a");
        let b = urls.push("http://b");
        let lens = urls.map(|u| u.len());
        assert_eq!((urls[b], lens[a]), ("http://b", 8));
        assert_eq!(urls.position(|u| *u == "http://b"), Some(b));
        assert_eq!(urls.iter().map(|(id, _)| id).collect::<Vec<_>>(), [a, b]);
        assert!(lens.get(TargetId::from_index(2)).is_none());
    }
}
