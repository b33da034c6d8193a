//! Partitioned queues: one logical queue split over RabbitMQ's consistent-hash exchange
//! into partition queues, each read by one instance of a fleet at a time.

use std::time::Duration;

use crate::topology::{Exchange, ExchangeKind, Queue};

/// A queue split into `count` partitions, so a fleet of instances shares the keys and
/// each key keeps its order: publish to [`exchange`](Self::exchange) with the message's
/// key as routing key; RabbitMQ's consistent-hash exchange sends every message of one key
/// to one partition queue (`NAME.0`, `NAME.1`...), and a processor built with
/// [`ProcessorBuilder::partitions`](crate::ProcessorBuilder::partitions) reads the
/// partitions its instance owns.
///
/// How the partitions are shared, and why the order of a key survives a rebalance:
///
/// - Each partition queue is durable and single-active-consumer: whatever happens, one
///   consumer at a time reads it, and a consumer that goes (killed, disconnected) has
///   what it did not acknowledge put back in its place before the next one reads.
/// - An instance owns a partition while it holds its claim, an exclusive queue
///   `NAME.P.claim` that the broker lets one connection hold and deletes when that
///   connection goes. Only the holder reads the partition.
/// - The instances count themselves: each reads the (empty) roster queue `NAME.members`,
///   whose consumer count is the fleet's size. Every [`rebalance_every`] (1 s by default)
///   an instance owning more than its share (the partitions divided by the instances,
///   rounded up) gives one up, and one owning less claims a free one.
/// - Giving a partition up is done in order: the instance stops reading it, its handlers
///   finish every delivery of it already received and acknowledge them, and only then it
///   drops the claim; the next owner reads on from the first message not handled.
///   An instance that dies drops its claims and its deliveries at once; the single
///   active consumer makes a new owner wait until the broker has put the dead one's
///   deliveries back.
///
/// So a key's messages run in their order across instances joining and leaving, at least
/// once: a message handled but not yet acknowledged when its instance died runs again.
///
/// [`rebalance_every`]: Self::rebalance_every
///
/// ```
/// use postage_core::{ExchangeKind, Partitions};
///
/// let steps = Partitions::new("steps", 8);
/// assert_eq!(steps.exchange().exchange_kind(), ExchangeKind::ConsistentHash);
/// assert_eq!(steps.queue(3).name(), "steps.3");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partitions {
    name: String,
    count: u16,
    every: Duration,
}

impl Partitions {
    /// `count` partitions (at least 1) of the queue called `name`.
    pub fn new(name: impl Into<String>, count: u16) -> Self {
        Self {
            name: name.into(),
            count: count.max(1),
            every: Duration::from_secs(1),
        }
    }

    /// How often an instance checks its share of the partitions (default 1 s).
    #[must_use]
    pub fn rebalance_every(mut self, every: Duration) -> Self {
        self.every = every.max(Duration::from_millis(10));
        self
    }

    /// The exchange to publish to, with the message's key as routing key: `NAME`, a
    /// durable consistent-hash exchange.
    pub fn exchange(&self) -> Exchange {
        Exchange::named(self.name.clone()).kind(ExchangeKind::ConsistentHash)
    }

    /// Partition `partition`'s queue: `NAME.<partition>`, durable, single active consumer.
    pub fn queue(&self, partition: u16) -> Queue {
        Queue::new(format!("{}.{partition}", self.name))
            .durable(true)
            .single_active_consumer()
    }

    /// How many partitions there are.
    pub fn count(&self) -> u16 {
        self.count
    }

    /// The logical queue's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How often an instance checks its share.
    pub(crate) fn every(&self) -> Duration {
        self.every
    }

    /// The claim of `partition`: held by one connection, gone with it.
    pub(crate) fn claim(&self, partition: u16) -> Queue {
        Queue::new(format!("{}.{partition}.claim", self.name)).exclusive(true)
    }

    /// The roster the instances read, to count themselves.
    pub(crate) fn roster(&self) -> Queue {
        Queue::new(format!("{}.members", self.name)).durable(true)
    }

    /// The binding key of every partition: equal weights, equal shares of the keys.
    pub(crate) const WEIGHT: &'static str = "1";
}
