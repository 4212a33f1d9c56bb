//! The coalescing buffer (protocol section 5 and edge rule 8.9).
//!
//! Holds at most one entry per topic: the latest. Bounded by
//! `cloud.buffer_topics`; past that the least recently updated entry is
//! dropped and counted. Pure data structure, no I/O.
//!
//! It serves two cases with one mechanism: while the cloud link is down,
//! and while it is up but the writer has fallen behind (the outbound
//! channel is full). In both, newer state replaces older state of the same
//! topic, which is what state is for; per-topic order is kept because an
//! entry is only ever replaced by a newer one.
//!
//! An entry is everything one MQTT message became (the app frame and the
//! filtered payload for the links exposing the topic), so a busy topic
//! costs one entry however many links see it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// A buffered frame and what the writer needs to know about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<T> {
    pub topic: Arc<str>,
    pub item: T,
}

/// Coalescing buffer ordered by last update.
#[derive(Debug)]
pub struct Coalescer<T> {
    cap: usize,
    seq: i64,
    by_key: HashMap<Arc<str>, (i64, T)>,
    order: BTreeMap<i64, Arc<str>>,
    dropped: u64,
}

impl<T> Coalescer<T> {
    pub fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            seq: 0,
            by_key: HashMap::new(),
            order: BTreeMap::new(),
            dropped: 0,
        }
    }

    /// Changes the capacity; entries past a smaller one are dropped, least
    /// recently updated first, and counted.
    pub fn set_capacity(&mut self, cap: usize) {
        self.cap = cap.max(1);
        while self.by_key.len() > self.cap {
            if let Some((_, key)) = self.order.pop_first() {
                self.by_key.remove(&key);
                self.dropped += 1;
            }
        }
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Entries dropped because the buffer was full, since creation.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Stores `item` as the latest for its key. Returns true when an older
    /// entry had to be dropped to make room.
    pub fn put(&mut self, topic: Arc<str>, item: T) -> bool {
        self.seq += 1;
        let key = topic;
        if let Some((old_seq, slot)) = self.by_key.get_mut(&key) {
            self.order.remove(old_seq);
            *old_seq = self.seq;
            *slot = item;
            self.order.insert(self.seq, key);
            return false;
        }
        let mut dropped = false;
        if self.by_key.len() >= self.cap {
            if let Some((_, oldest)) = self.order.pop_first() {
                self.by_key.remove(&oldest);
                self.dropped += 1;
                dropped = true;
            }
        }
        self.order.insert(self.seq, key.clone());
        self.by_key.insert(key, (self.seq, item));
        dropped
    }

    /// Stores `item` only when nothing newer is held for its key (used for
    /// frames handed back unsent by the writer: anything buffered since is
    /// newer). Such an entry counts as the oldest.
    pub fn put_if_absent(&mut self, topic: Arc<str>, item: T) {
        let key = topic;
        if self.by_key.contains_key(&key) {
            return;
        }
        if self.by_key.len() >= self.cap {
            self.dropped += 1;
            return;
        }
        // One below the current oldest (sequence numbers may go negative).
        let seq = match self.order.first_key_value() {
            Some((oldest, _)) => oldest - 1,
            None => self.seq,
        };
        self.order.insert(seq, key.clone());
        self.by_key.insert(key, (seq, item));
    }

    /// Removes and returns the least recently updated entry.
    pub fn pop_oldest(&mut self) -> Option<Entry<T>> {
        let (_, topic) = self.order.pop_first()?;
        let (_, item) = self.by_key.remove(&topic)?;
        Some(Entry { topic, item })
    }

    /// Puts back an entry just popped (the writer had no room after all).
    pub fn push_back_oldest(&mut self, e: Entry<T>) {
        self.put_if_absent(e.topic, e.item);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    #[test]
    fn keeps_only_latest_per_key() {
        let mut b = Coalescer::new(10);
        b.put(t("a"), 1);
        b.put(t("b"), 1);
        b.put(t("a"), 2);
        assert_eq!(b.len(), 2);
        let first = b.pop_oldest().expect("one");
        assert_eq!((first.topic, first.item), (t("b"), 1));
        assert_eq!(b.pop_oldest().map(|e| e.item), Some(2));
        assert!(b.pop_oldest().is_none());
    }

    #[test]
    fn drops_least_recently_updated_when_full() {
        let mut b = Coalescer::new(2);
        b.put(t("a"), 1);
        b.put(t("b"), 1);
        b.put(t("a"), 2); // a is now the newest
        assert!(b.put(t("c"), 1)); // drops b
        assert_eq!(b.dropped(), 1);
        let topics: Vec<_> = std::iter::from_fn(|| b.pop_oldest())
            .map(|e| e.topic)
            .collect();
        assert_eq!(topics, [t("a"), t("c")]);
    }

    #[test]
    fn returned_frames_never_overwrite_newer() {
        let mut b = Coalescer::new(10);
        b.put(t("a"), 5);
        b.put_if_absent(t("a"), 4);
        b.put_if_absent(t("b"), 4);
        assert_eq!(b.pop_oldest().map(|e| (e.topic, e.item)), Some((t("b"), 4)));
        assert_eq!(b.pop_oldest().map(|e| e.item), Some(5));
    }
}
