//! What a caller has learned of how each destination answers: with the call's
//! correlation id (postage, and any AMQP RPC server), or without one (Python Postage 1.x
//! receivers, which copy none).
//!
//! An answer without a correlation id can be matched to its call only on a reply queue
//! that call has to itself. So the caller sends calls on its shared reply queue until a
//! destination shows it answers so; from then on calls to it get a queue of their own.
//! See [`crate::rpc`] for the whole rule.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::sync::Locked;

/// How many destinations a caller remembers; past it, those known to correlate are
/// forgotten first (they are learned again from their next answer).
const REMEMBERED: usize = 4096;

/// A destination, an (exchange, routing key) pair, as a hash: a call carries it without
/// an allocation. Two destinations sharing a hash (one chance in 2^64) only make a call
/// to one of them wait out its timeout before it is sent again on a queue of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Destination(u64);

impl Destination {
    pub(crate) fn new(exchange: &str, routing_key: &str) -> Self {
        let mut hasher = DefaultHasher::new();
        (exchange, routing_key).hash(&mut hasher);
        Self(hasher.finish())
    }
}

/// How a destination answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answers {
    /// With the call's correlation id.
    Correlated,
    /// Without one, at least once: calls to it get a reply queue of their own.
    Uncorrelated,
}

/// One caller's knowledge of its destinations.
#[derive(Debug, Default)]
pub(crate) struct Destinations {
    known: Locked<HashMap<Destination, Answers>>,
    /// Whether any answer without a correlation id has come: until one does, a call's
    /// sending consults nothing else here.
    mixed: AtomicBool,
}

impl Destinations {
    /// Whether calls to `destination` need a reply queue of their own.
    pub(crate) fn needs_own_queue(&self, destination: Destination) -> bool {
        self.is_mixed()
            && self
                .known
                .with(|known| known.get(&destination) == Some(&Answers::Uncorrelated))
    }

    /// Whether `destination` answered with a correlation id, and never without one.
    pub(crate) fn correlates(&self, destination: Destination) -> bool {
        self.known
            .with(|known| known.get(&destination) == Some(&Answers::Correlated))
    }

    /// Whether an answer without a correlation id ever came to this caller.
    pub(crate) fn is_mixed(&self) -> bool {
        self.mixed.load(Ordering::Relaxed)
    }

    /// Notes that an answer without a correlation id came on the shared reply queue: its
    /// destination is not known yet.
    pub(crate) fn saw_uncorrelated(&self) {
        self.mixed.store(true, Ordering::Relaxed);
    }

    /// Notes that `destination` answered with a correlation id: its calls waiting when
    /// an answer without one comes need not be sent again.
    pub(crate) fn answered_correlated(&self, destination: Destination) {
        self.remember(destination, Answers::Correlated);
    }

    /// Notes that `destination` answered without a correlation id; true the first time.
    pub(crate) fn answered_uncorrelated(&self, destination: Destination) -> bool {
        self.mixed.store(true, Ordering::Relaxed);
        self.remember(destination, Answers::Uncorrelated)
    }

    /// Records how `destination` answers; an uncorrelated answer is never overwritten.
    /// True when this changed what was known.
    fn remember(&self, destination: Destination, answers: Answers) -> bool {
        self.known.with(|known| {
            let before = known.get(&destination).copied();
            if before == Some(Answers::Uncorrelated) || before == Some(answers) {
                return false;
            }
            if known.len() >= REMEMBERED {
                known.retain(|_, kind| *kind == Answers::Uncorrelated);
                if known.len() >= REMEMBERED {
                    known.clear();
                }
            }
            known.insert(destination, answers);
            true
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_postage_destination_keeps_the_shared_queue() {
        let destinations = Destinations::default();
        let echo = Destination::new("echo-exchange", "echo-rk");
        destinations.answered_correlated(echo);
        assert!(!destinations.is_mixed());
        assert!(destinations.correlates(echo));
        assert!(!destinations.needs_own_queue(echo));
    }

    #[test]
    fn a_destination_that_answered_without_an_id_keeps_its_own_queues() {
        let destinations = Destinations::default();
        let python = Destination::new("echo-exchange", "echo-rk");
        let rust = Destination::new("echo-exchange", "other-rk");
        destinations.answered_correlated(rust);
        destinations.saw_uncorrelated();
        assert!(!destinations.needs_own_queue(python), "not known yet");
        assert!(destinations.answered_uncorrelated(python));
        assert!(!destinations.answered_uncorrelated(python), "learned once");
        destinations.answered_correlated(python);
        assert!(
            destinations.needs_own_queue(python),
            "never forgotten for a correlated answer"
        );
        assert!(destinations.correlates(rust));
        assert!(!destinations.needs_own_queue(rust));
    }

    #[test]
    fn memory_stays_bounded_and_keeps_the_uncorrelated() {
        let destinations = Destinations::default();
        let python = Destination::new("x", "python");
        destinations.answered_uncorrelated(python);
        for n in 0..REMEMBERED * 3 {
            destinations.answered_correlated(Destination::new("x", &n.to_string()));
        }
        assert!(destinations.known.with(|known| known.len()) <= REMEMBERED);
        assert!(destinations.needs_own_queue(python));
    }
}
