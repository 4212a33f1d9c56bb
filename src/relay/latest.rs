//! The last value of each topic, kept for `sync` (protocol note 8).
//!
//! Pure data structure, no I/O. Two things it does that a plain
//! `HashMap<String, Bytes>` did not:
//!
//! - **It copies the payload** into a buffer the topic keeps and reuses.
//!   The payload rumqttc hands over is a slice of its ~10 KiB read buffer;
//!   keeping that slice keeps the whole buffer alive. With one chatty
//!   device and many quiet ones, each quiet topic held a read buffer of
//!   its own: 2 000 quiet topics next to one busy topic took 17.9 MB of
//!   heap instead of 2.2 MB. The copy is a `memcpy` of the payload into
//!   the topic's buffer, with no allocation once the buffer is big enough.
//! - **It is bounded**, like the offline buffer, by `cloud.buffer_topics`
//!   topics and `cloud.buffer_bytes` of payload: a device inventing a new
//!   topic per message, or sending huge payloads, cannot grow it without
//!   end. When a new topic finds it full, the least recently updated tenth
//!   is forgotten in one pass, so the cost per new topic stays constant
//!   and updates of known topics pay nothing for the topic bound. The
//!   newest message is always kept, even when it alone is over the bytes.
//!
//! It also interns topic names: a message on a known topic gets the
//! topic's `Arc<str>` from here instead of allocating one.
//!
//! Why not [`super::buffer::Coalescer`], which is bounded the same way:
//! this store is written for every message, the coalescer only while the
//! cloud is away or behind. The coalescer keeps an exact recency order (a
//! `BTreeMap` remove and insert per update, ~80 ns) and takes an owned
//! `Arc<str>` key per `put`; here an update is one hash lookup, and the
//! order is derived from the message numbers only when something must be
//! forgotten.

use std::sync::Arc;

use crate::topic::TopicMap;

/// One topic's last message.
#[derive(Debug)]
struct Slot {
    topic: Arc<str>,
    payload: Vec<u8>,
    ts: i64,
    seq: u64,
}

/// A payload buffer this many times larger than the payload it holds (and
/// over [`SHRINK_FLOOR`] bytes) is given back: one large message must not
/// pin its size for the topic's life.
const SHRINK_FACTOR: usize = 4;
const SHRINK_FLOOR: usize = 4096;

/// The last message of each topic, at most `cap` topics.
#[derive(Debug)]
pub struct Latest {
    cap: usize,
    max_bytes: usize,
    /// Sum of the kept payloads' lengths.
    bytes: usize,
    by_topic: TopicMap<Slot>,
    forgotten: u64,
}

/// One entry of [`Latest::snapshot`].
#[derive(Debug, PartialEq, Eq)]
pub struct Snap<'a> {
    pub topic: &'a Arc<str>,
    pub payload: &'a [u8],
    pub ts: i64,
    pub seq: u64,
}

impl Latest {
    pub fn new(cap: usize, max_bytes: usize) -> Self {
        Self {
            cap: cap.max(1),
            max_bytes,
            bytes: 0,
            by_topic: TopicMap::default(),
            forgotten: 0,
        }
    }

    /// Topics forgotten to stay within the bound, since creation.
    pub fn forgotten(&self) -> u64 {
        self.forgotten
    }

    /// Changes the bounds; past smaller ones the least recently updated
    /// topics are forgotten now.
    pub fn set_capacity(&mut self, cap: usize, max_bytes: usize) {
        self.cap = cap.max(1);
        self.max_bytes = max_bytes;
        if self.by_topic.len() > self.cap {
            self.forget_oldest(self.by_topic.len() - self.cap);
        }
        self.fit_bytes();
    }

    /// Forgets the least recently updated tenth at a time while the
    /// payloads are over the bytes bound, keeping the newest topic.
    fn fit_bytes(&mut self) {
        while self.bytes > self.max_bytes && self.by_topic.len() > 1 {
            let n = (self.by_topic.len() / 10).clamp(1, self.by_topic.len() - 1);
            self.forget_oldest(n);
        }
    }

    /// Records `payload` as the last value of `topic` (message number `seq`,
    /// which must grow from call to call) and returns the topic's name.
    pub fn record(&mut self, topic: &str, payload: &[u8], ts: i64, seq: u64) -> Arc<str> {
        if let Some(slot) = self.by_topic.get_mut(topic) {
            self.bytes = self.bytes - slot.payload.len() + payload.len();
            let cap = slot.payload.capacity();
            if cap > SHRINK_FLOOR && cap > SHRINK_FACTOR * payload.len() {
                slot.payload = payload.to_vec();
            } else {
                slot.payload.clear();
                slot.payload.extend_from_slice(payload);
            }
            slot.ts = ts;
            slot.seq = seq;
            let topic = slot.topic.clone();
            self.fit_bytes();
            return topic;
        }
        if self.by_topic.len() >= self.cap {
            // A tenth at a time: one O(n) pass per n/10 new topics.
            self.forget_oldest((self.cap / 10).max(1));
        }
        let topic: Arc<str> = Arc::from(topic);
        self.bytes += payload.len();
        self.by_topic.insert(
            topic.clone(),
            Slot {
                topic: topic.clone(),
                payload: payload.to_vec(),
                ts,
                seq,
            },
        );
        self.fit_bytes();
        topic
    }

    /// Forgets the `n` least recently updated topics.
    fn forget_oldest(&mut self, n: usize) {
        let n = n.min(self.by_topic.len());
        if n == 0 {
            return;
        }
        let mut by_age: Vec<(u64, Arc<str>)> = self
            .by_topic
            .values()
            .map(|s| (s.seq, s.topic.clone()))
            .collect();
        if n < by_age.len() {
            by_age.select_nth_unstable_by_key(n - 1, |(seq, _)| *seq);
        }
        for (_, topic) in by_age.into_iter().take(n) {
            if let Some(slot) = self.by_topic.remove(&topic) {
                self.bytes -= slot.payload.len();
            }
        }
        self.forgotten += n as u64;
    }

    /// The last message of `topic`, if it is remembered.
    pub fn get(&self, topic: &str) -> Option<Snap<'_>> {
        self.by_topic.get(topic).map(|s| Snap {
            topic: &s.topic,
            payload: &s.payload,
            ts: s.ts,
            seq: s.seq,
        })
    }

    /// The remembered topics, oldest first (the order of [`Latest::snapshot`]):
    /// a `sync` walks them and reads each one's value when its turn comes.
    pub fn order(&self) -> Vec<Arc<str>> {
        self.snapshot()
            .into_iter()
            .map(|s| s.topic.clone())
            .collect()
    }

    /// Every topic's last message, oldest first (by time, then by number).
    pub fn snapshot(&self) -> Vec<Snap<'_>> {
        let mut all: Vec<Snap<'_>> = self
            .by_topic
            .values()
            .map(|s| Snap {
                topic: &s.topic,
                payload: &s.payload,
                ts: s.ts,
                seq: s.seq,
            })
            .collect();
        all.sort_by_key(|s| (s.ts, s.seq));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics(l: &Latest) -> Vec<String> {
        l.snapshot().iter().map(|s| s.topic.to_string()).collect()
    }

    #[test]
    fn keeps_the_last_value_of_each_topic_in_time_order() {
        let mut l = Latest::new(10, usize::MAX);
        l.record("a", b"1", 10, 1);
        l.record("b", b"2", 5, 2);
        l.record("a", b"3", 20, 3);
        let s = l.snapshot();
        assert_eq!(s.len(), 2);
        assert_eq!(
            (&**s[0].topic, s[0].payload, s[0].ts, s[0].seq),
            ("b", &b"2"[..], 5, 2)
        );
        assert_eq!(
            (&**s[1].topic, s[1].payload, s[1].ts, s[1].seq),
            ("a", &b"3"[..], 20, 3)
        );
    }

    #[test]
    fn same_time_is_ordered_by_message_number() {
        let mut l = Latest::new(10, usize::MAX);
        l.record("b", b"", 7, 1);
        l.record("a", b"", 7, 2);
        assert_eq!(topics(&l), ["b", "a"]);
    }

    #[test]
    fn a_known_topic_gets_the_same_name_back() {
        let mut l = Latest::new(10, usize::MAX);
        let first = l.record("dev/1", b"x", 1, 1);
        let again = l.record("dev/1", b"y", 2, 2);
        assert!(Arc::ptr_eq(&first, &again), "no new allocation per message");
    }

    #[test]
    fn payload_is_a_copy_not_the_callers_buffer() {
        let mut l = Latest::new(10, usize::MAX);
        let mut buf = b"first".to_vec();
        l.record("t", &buf, 1, 1);
        buf.copy_from_slice(b"XXXXX");
        assert_eq!(l.snapshot()[0].payload, b"first");
        l.record("t", b"longer payload than before", 2, 2);
        assert_eq!(l.snapshot()[0].payload, b"longer payload than before");
        l.record("t", b"", 3, 3);
        assert_eq!(l.snapshot()[0].payload, b"");
    }

    #[test]
    fn one_large_payload_does_not_pin_its_size() {
        let mut l = Latest::new(10, usize::MAX);
        l.record("t", &vec![b'x'; 100_000], 1, 1);
        l.record("t", b"small", 2, 2);
        let slot = l.by_topic.get("t").expect("slot");
        assert_eq!(slot.payload, b"small");
        assert!(
            slot.payload.capacity() < SHRINK_FLOOR,
            "{}",
            slot.payload.capacity()
        );
    }

    #[test]
    fn full_store_forgets_the_least_recently_updated_tenth() {
        let mut l = Latest::new(20, usize::MAX);
        for i in 0..20u64 {
            l.record(&format!("t{i}"), b"v", 0, i);
        }
        // t0 and t1 are updated again: now the most recent.
        l.record("t0", b"v", 0, 20);
        l.record("t1", b"v", 0, 21);
        l.record("new", b"v", 0, 22);
        assert_eq!(l.by_topic.len(), 19, "two forgotten, one added");
        assert_eq!(l.forgotten(), 2);
        let kept = topics(&l);
        assert!(!kept.contains(&"t2".to_string()) && !kept.contains(&"t3".to_string()));
        for t in ["t0", "t1", "t4", "t19", "new"] {
            assert!(kept.contains(&t.to_string()), "{t} kept: {kept:?}");
        }
    }

    #[test]
    fn never_more_than_the_bound_whatever_the_topics() {
        let mut l = Latest::new(7, usize::MAX);
        for i in 0..1000u64 {
            l.record(&format!("t{}", i % 50), b"v", 0, i);
            assert!(l.by_topic.len() <= 7);
        }
        // The newest topic is always there.
        assert!(topics(&l).contains(&"t49".to_string()));
    }

    #[test]
    fn smaller_bound_forgets_the_oldest_at_once() {
        let mut l = Latest::new(10, usize::MAX);
        for i in 0..10u64 {
            l.record(&format!("t{i}"), b"v", 0, i);
        }
        l.set_capacity(3, usize::MAX);
        assert_eq!(topics(&l), ["t7", "t8", "t9"]);
        assert_eq!(l.forgotten(), 7);
        l.set_capacity(0, usize::MAX);
        assert_eq!(topics(&l), ["t9"], "the bound is at least 1");
    }

    #[test]
    fn payload_bytes_are_bounded_keeping_the_newest() {
        let mut l = Latest::new(100, 1000);
        for i in 0..10u64 {
            l.record(&format!("t{i}"), &[b'x'; 100], 0, i);
        }
        assert_eq!(l.bytes, 1000);
        assert_eq!(l.by_topic.len(), 10, "at the bound, nothing forgotten");
        // One more byte than fits: the oldest goes.
        l.record("t9", &[b'x'; 101], 0, 10);
        assert!(l.bytes <= 1000, "{}", l.bytes);
        assert!(!topics(&l).contains(&"t0".to_string()));
        assert!(topics(&l).contains(&"t9".to_string()));
        // One payload over the whole bound: only it is kept.
        l.record("big", &[b'x'; 5000], 0, 11);
        assert_eq!(topics(&l), ["big"]);
        assert_eq!(l.bytes, 5000);
        // The next message pushes it out; the count stays exact.
        l.record("a", b"12345", 0, 12);
        assert_eq!((topics(&l), l.bytes), (vec!["a".to_string()], 5));
        l.record("b", b"123456", 0, 13);
        assert_eq!(l.bytes, 11);
        // Shrinking the bound forgets at once.
        l.set_capacity(100, 10);
        assert_eq!((topics(&l), l.bytes), (vec!["b".to_string()], 6));
    }
}
