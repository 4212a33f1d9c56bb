//! The coalescing buffer (protocol section 5 and edge rule 8.9).
//!
//! Holds at most one entry per topic: the latest. Bounded by
//! `cloud.buffer_topics` entries and `cloud.buffer_bytes` of frames; past
//! either the least recently updated entries are dropped and counted. Pure
//! data structure, no I/O.
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

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::topic::TopicMap;

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
    /// Bound on the sum of `weigh` over the entries; the newest entry is
    /// kept even when it alone is over it.
    max_bytes: usize,
    weigh: fn(&T) -> usize,
    bytes: usize,
    seq: i64,
    by_key: TopicMap<(i64, T)>,
    order: BTreeMap<i64, Arc<str>>,
    dropped: u64,
}

impl<T> Coalescer<T> {
    /// At most `cap` entries, with no bound on their size.
    pub fn new(cap: usize) -> Self {
        Self::with_bytes(cap, usize::MAX, |_| 0)
    }

    /// At most `cap` entries weighing at most `max_bytes` together.
    pub fn with_bytes(cap: usize, max_bytes: usize, weigh: fn(&T) -> usize) -> Self {
        Self {
            cap: cap.max(1),
            max_bytes,
            weigh,
            bytes: 0,
            seq: 0,
            by_key: TopicMap::default(),
            order: BTreeMap::new(),
            dropped: 0,
        }
    }

    /// Changes the bounds; entries past smaller ones are dropped, least
    /// recently updated first, and counted.
    pub fn set_capacity(&mut self, cap: usize, max_bytes: usize) {
        self.cap = cap.max(1);
        self.max_bytes = max_bytes;
        self.shrink(0);
    }

    /// Drops the least recently updated entries, counted, while over a
    /// bound, keeping at least `keep` entries. Returns true if any went.
    fn shrink(&mut self, keep: usize) -> bool {
        let mut dropped = false;
        while self.by_key.len() > keep
            && (self.by_key.len() > self.cap || self.bytes > self.max_bytes)
        {
            let Some((_, key)) = self.order.pop_first() else {
                break;
            };
            if let Some((_, item)) = self.by_key.remove(&key) {
                self.bytes -= (self.weigh)(&item);
            }
            self.dropped += 1;
            dropped = true;
        }
        dropped
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Sum of the entries' weights.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Entries dropped because the buffer was full, since creation.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Stores `item` as the latest for its key. Returns true when older
    /// entries had to be dropped to make room.
    pub fn put(&mut self, topic: Arc<str>, item: T) -> bool {
        self.seq += 1;
        let key = topic;
        let w = (self.weigh)(&item);
        if let Some((old_seq, slot)) = self.by_key.get_mut(&key) {
            self.order.remove(old_seq);
            *old_seq = self.seq;
            self.bytes = self.bytes - (self.weigh)(slot) + w;
            *slot = item;
            self.order.insert(self.seq, key);
        } else {
            self.bytes += w;
            self.order.insert(self.seq, key.clone());
            self.by_key.insert(key, (self.seq, item));
        }
        // The entry just stored is the newest: it is never the one dropped.
        self.shrink(1)
    }

    /// Stores `item` only when nothing newer is held for its key (used for
    /// frames handed back unsent by the writer: anything buffered since is
    /// newer). Such an entry counts as the oldest, so it is the one dropped
    /// (and counted) when it does not fit.
    pub fn put_if_absent(&mut self, topic: Arc<str>, item: T) {
        let key = topic;
        if self.by_key.contains_key(&key) {
            return;
        }
        let w = (self.weigh)(&item);
        if self.by_key.len() >= self.cap
            || (!self.by_key.is_empty() && self.bytes.saturating_add(w) > self.max_bytes)
        {
            self.dropped += 1;
            return;
        }
        // One below the current oldest (sequence numbers may go negative).
        let seq = match self.order.first_key_value() {
            Some((oldest, _)) => oldest - 1,
            None => self.seq,
        };
        self.bytes += w;
        self.order.insert(seq, key.clone());
        self.by_key.insert(key, (seq, item));
    }

    /// Removes and returns the least recently updated entry.
    pub fn pop_oldest(&mut self) -> Option<Entry<T>> {
        let (_, topic) = self.order.pop_first()?;
        let (_, item) = self.by_key.remove(&topic)?;
        self.bytes -= (self.weigh)(&item);
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

    #[test]
    fn bytes_bound_drops_the_oldest_and_keeps_the_newest() {
        let len = |s: &String| s.len();
        let mut b: Coalescer<String> = Coalescer::with_bytes(100, 10, len);
        assert!(!b.put(t("a"), "aaaa".into()));
        assert!(!b.put(t("b"), "bbbb".into()));
        assert_eq!(b.bytes(), 8);
        // Replacing a with a bigger value: b (now the oldest) goes.
        assert!(b.put(t("a"), "aaaaaaaa".into()));
        assert_eq!((b.len(), b.bytes(), b.dropped()), (1, 8, 1));
        // One entry over the whole bound is kept alone.
        assert!(b.put(t("c"), "c".repeat(50)));
        assert_eq!((b.len(), b.bytes(), b.dropped()), (1, 50, 2));
        // A handed-back entry that does not fit is dropped and counted.
        b.put_if_absent(t("d"), "dd".into());
        assert_eq!((b.len(), b.dropped()), (1, 3));
        let e = b.pop_oldest().expect("c");
        assert_eq!((&*e.topic, b.bytes()), ("c", 0));
        // Into an empty buffer it goes, whatever its size.
        b.put_if_absent(t("e"), "e".repeat(20));
        assert_eq!((b.len(), b.bytes()), (1, 20));
        // Lowering the bounds drops at once, counted.
        b.set_capacity(100, 100);
        assert!(!b.put(t("f"), "f".into()));
        assert_eq!((b.len(), b.bytes(), b.dropped()), (2, 21, 3));
        b.set_capacity(100, 5);
        assert_eq!((b.len(), b.bytes(), b.dropped()), (1, 1, 4));
    }
}
