//! Order per key: with [`ProcessorBuilder::ordered_by`](super::ProcessorBuilder::ordered_by)
//! the deliveries of one key run one after another, in the order they reached the
//! processor, and deliveries of different keys side by side, up to the concurrency.
//!
//! A delivery whose key has one in its handlers waits in that key's line; when the one in
//! its handlers is settled, the first in its line starts. Only deliveries whose key is
//! busy wait, so the lines hold at most what the broker hands over unacknowledged (the
//! prefetch), and at most [`ORDERED_BACKLOG`] with a prefetch of 0 (no limit): when the
//! lines are that full, the processor takes no more deliveries until one is settled.

use std::collections::hash_map::{DefaultHasher, Entry};
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use crate::handler::Metadata;
use crate::wire::Message;

/// How many deliveries may wait in the lines of a processor whose prefetch is 0 (no
/// limit): past that, it stops taking deliveries until one is settled.
pub const ORDERED_BACKLOG: usize = 1_000;

/// How long a delivery of an ordered processor whose handler asked for a requeue waits
/// before it runs again, here, its key held (see [`Disposition::Requeue`]).
///
/// [`Disposition::Requeue`]: crate::Disposition::Requeue
pub(super) const REQUEUE_PAUSE: Duration = Duration::from_millis(100);

/// What reads a message's key, hashed.
type HashKey = dyn Fn(&Message, &Metadata) -> u64 + Send + Sync;

/// The key a processor orders its deliveries by, hashed.
#[derive(Clone)]
pub(super) struct KeyOf(Arc<HashKey>);

impl KeyOf {
    /// Orders by what `key` returns for each message (hashed: two keys whose hashes meet
    /// share one line, which costs parallelism, never order).
    pub(super) fn new<K: Hash>(
        key: impl Fn(&Message, &Metadata) -> K + Send + Sync + 'static,
    ) -> Self {
        Self(Arc::new(move |message, metadata| {
            let mut hasher = DefaultHasher::new();
            key(message, metadata).hash(&mut hasher);
            hasher.finish()
        }))
    }

    /// The key of `message`, delivered with `metadata`.
    pub(super) fn of(&self, message: &Message, metadata: &Metadata) -> u64 {
        (self.0)(message, metadata)
    }
}

impl std::fmt::Debug for KeyOf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyOf(..)")
    }
}

/// The keys with a delivery in their handlers, each with the deliveries (`T`) waiting
/// for it, in arrival order.
#[derive(Debug)]
pub(super) struct Lanes<T> {
    busy: HashMap<u64, VecDeque<T>>,
    waiting: usize,
    limit: usize,
}

impl<T> Lanes<T> {
    /// Lines holding at most `limit` waiting deliveries in all.
    pub(super) fn new(limit: usize) -> Self {
        Self {
            busy: HashMap::new(),
            waiting: 0,
            limit: limit.max(1),
        }
    }

    /// A delivery of `key` arrives: given back when it may start now (its key is marked
    /// busy), kept in its key's line when one of its key is in its handlers.
    pub(super) fn enter(&mut self, key: u64, item: T) -> Option<T> {
        match self.busy.entry(key) {
            Entry::Occupied(mut line) => {
                line.get_mut().push_back(item);
                self.waiting += 1;
                None
            }
            Entry::Vacant(free) => {
                free.insert(VecDeque::new());
                Some(item)
            }
        }
    }

    /// The delivery of `key` in its handlers was settled: the next of its line, which
    /// starts now (the key stays busy), or none (the key is free).
    pub(super) fn leave(&mut self, key: u64) -> Option<T> {
        let Entry::Occupied(mut line) = self.busy.entry(key) else {
            return None;
        };
        match line.get_mut().pop_front() {
            Some(next) => {
                self.waiting -= 1;
                Some(next)
            }
            None => {
                line.remove();
                None
            }
        }
    }

    /// Whether the lines are full: take no delivery until one is settled.
    pub(super) fn full(&self) -> bool {
        self.waiting >= self.limit
    }

    /// How many deliveries wait.
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.waiting
    }

    /// How many keys have a delivery in their handlers.
    #[cfg(test)]
    fn busy(&self) -> usize {
        self.busy.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_runs_one_at_a_time_in_arrival_order_and_other_keys_pass() {
        let mut lanes = Lanes::new(10);
        assert_eq!(lanes.enter(1, "a1"), Some("a1"));
        assert_eq!(lanes.enter(1, "a2"), None);
        assert_eq!(
            lanes.enter(2, "b1"),
            Some("b1"),
            "another key is not held up"
        );
        assert_eq!(lanes.enter(1, "a3"), None);
        assert_eq!(lanes.waiting(), 2);
        assert_eq!(lanes.leave(1), Some("a2"));
        assert_eq!(lanes.enter(1, "a4"), None, "a2 runs: a4 waits behind a3");
        assert_eq!(lanes.leave(1), Some("a3"));
        assert_eq!(lanes.leave(1), Some("a4"));
        assert_eq!(lanes.leave(1), None);
        assert_eq!(lanes.leave(2), None);
        assert_eq!((lanes.busy(), lanes.waiting()), (0, 0));
        assert_eq!(
            lanes.enter(1, "a5"),
            Some("a5"),
            "a free key starts at once"
        );
    }

    #[test]
    fn the_lines_are_bounded() {
        let mut lanes = Lanes::new(2);
        assert!(lanes.enter(7, 0).is_some());
        assert!(!lanes.full());
        assert!(lanes.enter(7, 1).is_none());
        assert!(lanes.enter(7, 2).is_none());
        assert!(lanes.full());
        assert_eq!(lanes.leave(7), Some(1));
        assert!(!lanes.full());
    }

    #[test]
    fn keys_are_hashed_values_of_any_type() {
        let by_key = KeyOf::new(|message: &Message, _: &Metadata| {
            message.raw_parameters()["key"].as_str().map(str::to_owned)
        });
        let of = |key: &str| {
            let message = Message::command("step", serde_json::json!({"key": key})).unwrap();
            by_key.of(&message, &Metadata::default())
        };
        assert_eq!(of("a"), of("a"));
        assert_ne!(of("a"), of("b"));
    }
}
