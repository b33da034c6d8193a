//! Queues: where a consumer reads from, with their declaration flags.

use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

use crate::error::{Error, Result};
use crate::exchange::Exchange;

/// A queue's name, flags and arguments. The defaults are AMQP's and Python Postage's
/// (not durable, not exclusive, not auto-delete), so both sides declare a shared queue
/// alike; set `durable(true)` for messages that must survive a broker restart.
///
/// ```
/// use postage_core::Queue;
///
/// let jobs = Queue::new("jobs").durable(true).argument("x-max-length", 10_000i64);
/// assert_eq!(jobs.name(), "jobs");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Queue {
    name: String,
    durable: bool,
    exclusive: bool,
    auto_delete: bool,
    arguments: FieldTable,
}

impl Queue {
    /// A queue called `name`; an empty name asks the broker for a fresh one.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            durable: false,
            exclusive: false,
            auto_delete: false,
            arguments: FieldTable::default(),
        }
    }

    /// Whether the queue survives a broker restart.
    #[must_use]
    pub fn durable(mut self, durable: bool) -> Self {
        self.durable = durable;
        self
    }

    /// Whether only this connection may use the queue (deleted when it closes).
    #[must_use]
    pub fn exclusive(mut self, exclusive: bool) -> Self {
        self.exclusive = exclusive;
        self
    }

    /// Whether the broker deletes the queue when its last consumer leaves.
    #[must_use]
    pub fn auto_delete(mut self, auto_delete: bool) -> Self {
        self.auto_delete = auto_delete;
        self
    }

    /// Adds a declaration argument such as `x-message-ttl` or `x-dead-letter-exchange`.
    #[must_use]
    pub fn argument(mut self, key: &str, value: impl Into<AMQPValue>) -> Self {
        self.arguments.insert(ShortString::from(key), value.into());
        self
    }

    /// Sends messages rejected without requeue (and expired ones) to `exchange` with
    /// `routing_key`, instead of dropping them.
    #[must_use]
    pub fn dead_letter(self, exchange: &Exchange, routing_key: &str) -> Self {
        self.argument("x-dead-letter-exchange", LongString::from(exchange.name()))
            .argument("x-dead-letter-routing-key", LongString::from(routing_key))
    }

    /// Makes it a quorum queue: replicated over the nodes of a cluster, durable.
    #[must_use]
    pub fn quorum(self) -> Self {
        self.durable(true)
            .argument("x-queue-type", LongString::from("quorum"))
    }

    /// Dead-letters (or drops) a message after it was delivered this many times, so a
    /// message that always fails cannot loop forever. Quorum queues only; RabbitMQ 3.10
    /// sets no limit by default.
    #[must_use]
    pub fn delivery_limit(self, deliveries: u32) -> Self {
        self.argument("x-delivery-limit", i64::from(deliveries))
    }

    /// The same declaration under another name (a server-named queue's given name).
    pub(crate) fn renamed(&self, name: &str) -> Self {
        Self {
            name: name.to_owned(),
            ..self.clone()
        }
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Declares the queue on `channel` and returns its name (the broker's choice when the
    /// name was empty).
    pub async fn declare(&self, channel: &lapin::Channel) -> Result<String> {
        let options = QueueDeclareOptions {
            passive: false,
            durable: self.durable,
            exclusive: self.exclusive,
            auto_delete: self.auto_delete,
            nowait: false,
        };
        let declared = channel
            .queue_declare(self.name.as_str().into(), options, self.arguments.clone())
            .await
            .map_err(Error::amqp(format!("declaring queue {:?}", self.name)))?;
        Ok(declared.name().to_string())
    }
}

impl From<&str> for Queue {
    fn from(name: &str) -> Self {
        Self::new(name)
    }
}

impl From<String> for Queue {
    fn from(name: String) -> Self {
        Self::new(name)
    }
}
