//! Idempotency window (protocol section 4 and edge rule 8.6).
//!
//! Remembers the first ack given for each frame id for 10 minutes, bounded
//! in count (oldest forgotten first). Ids whose frame is still running
//! (a command waiting for its PUBACK) are tracked so a duplicate gets the
//! first one's ack when that is known. Pure: time is passed in.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::protocol::Outcome;

/// How long an ack is remembered.
pub const WINDOW: Duration = Duration::from_secs(600);
/// How many ids are remembered at most (the spec asks for at least 100000).
pub const CAPACITY: usize = 100_000;

/// What to do with a frame id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// Never seen (or forgotten): execute.
    New,
    /// Executed before: answer with this ack again.
    Done(Outcome),
    /// Still running: answer when it completes.
    Running,
}

#[derive(Debug)]
pub struct IdemStore {
    done: HashMap<String, (Instant, Outcome)>,
    order: VecDeque<(Instant, String)>,
    /// Running ids and how many duplicates wait for their ack.
    running: HashMap<String, usize>,
    window: Duration,
    capacity: usize,
}

impl Default for IdemStore {
    fn default() -> Self {
        Self::new(WINDOW, CAPACITY)
    }
}

impl IdemStore {
    pub fn new(window: Duration, capacity: usize) -> Self {
        Self {
            done: HashMap::new(),
            order: VecDeque::new(),
            running: HashMap::new(),
            window,
            capacity: capacity.max(1),
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            let too_old = now.saturating_duration_since(*at) >= self.window;
            if !too_old && self.order.len() <= self.capacity {
                break;
            }
            if let Some((at, id)) = self.order.pop_front() {
                // Only forget when the entry is the one this queue slot was for.
                if self.done.get(&id).is_some_and(|(t, _)| *t == at) {
                    self.done.remove(&id);
                }
            }
        }
    }

    /// Looks `id` up; a duplicate of a running id is counted as waiting.
    pub fn check(&mut self, id: &str, now: Instant) -> Seen {
        self.expire(now);
        if let Some(waiting) = self.running.get_mut(id) {
            *waiting += 1;
            return Seen::Running;
        }
        match self.done.get(id) {
            Some((_, outcome)) => Seen::Done(outcome.clone()),
            None => Seen::New,
        }
    }

    /// Marks `id` as running (after [`Seen::New`]).
    pub fn start(&mut self, id: &str) {
        self.running.insert(id.to_owned(), 0);
    }

    /// Records the final outcome of `id`. Returns how many duplicates were
    /// waiting for it; each gets the same ack.
    pub fn finish(&mut self, id: &str, outcome: &Outcome, now: Instant) -> usize {
        let waiting = self.running.remove(id).unwrap_or(0);
        self.record(id, outcome, now);
        waiting
    }

    /// Remembers an outcome given at once (no running phase).
    pub fn record(&mut self, id: &str, outcome: &Outcome, now: Instant) {
        if let Outcome::Rejected { reason, .. } = outcome {
            if reason.is_retryable() {
                return;
            }
        }
        if self.done.contains_key(id) {
            return; // the first ack stays
        }
        self.done.insert(id.to_owned(), (now, outcome.clone()));
        self.order.push_back((now, id.to_owned()));
        self.expire(now);
    }

    pub fn len(&self) -> usize {
        self.done.len()
    }

    pub fn is_empty(&self) -> bool {
        self.done.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Reason;

    #[test]
    fn replays_first_ack_within_window() {
        let mut s = IdemStore::default();
        let t0 = Instant::now();
        assert_eq!(s.check("c-1", t0), Seen::New);
        s.start("c-1");
        assert_eq!(s.check("c-1", t0), Seen::Running);
        assert_eq!(s.finish("c-1", &Outcome::Ok, t0), 1);
        assert_eq!(
            s.check("c-1", t0 + Duration::from_secs(599)),
            Seen::Done(Outcome::Ok)
        );
        assert_eq!(s.check("c-1", t0 + Duration::from_secs(600)), Seen::New);
    }

    #[test]
    fn retryable_outcomes_are_not_remembered() {
        let mut s = IdemStore::default();
        let t0 = Instant::now();
        s.record("a", &Outcome::rejected(Reason::RateLimited, "x"), t0);
        s.record("b", &Outcome::rejected(Reason::Unavailable, "x"), t0);
        s.record("c", &Outcome::rejected(Reason::Forbidden, "x"), t0);
        assert_eq!(s.check("a", t0), Seen::New);
        assert_eq!(s.check("b", t0), Seen::New);
        assert!(matches!(s.check("c", t0), Seen::Done(_)));
    }

    #[test]
    fn bounded_oldest_forgotten_first() {
        let mut s = IdemStore::new(WINDOW, 3);
        let t0 = Instant::now();
        for id in ["a", "b", "c", "d"] {
            s.record(id, &Outcome::Ok, t0);
        }
        assert_eq!(s.len(), 3);
        assert_eq!(s.check("a", t0), Seen::New);
        assert!(matches!(s.check("d", t0), Seen::Done(_)));
    }
}
