//! Queues: where a consumer reads from, with their declaration flags, and the shape
//! they take on brokers that refuse transient shared queues.

use lapin::ErrorKind;
use lapin::options::QueueDeclareOptions;
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

use crate::error::{Error, Result};
use crate::topology::Exchange;

/// How a connection declares the queues that Postage's wire contract makes transient
/// (not durable) and shared (not exclusive): `echo-queue`, GenericApplication's queues,
/// the simple client's targets, any [`Queue`] left at its default flags.
///
/// RabbitMQ 3.13 and later deprecate such queues (the deprecated feature
/// `transient_nonexcl_queues`, still permitted by default on 4.3.6), an operator may deny
/// them (`deprecated_features.permit.transient_nonexcl_queues = false`), and a refusal
/// closes the whole connection. Unless [`Config::queue_shape`] (or
/// `POSTAGE_QUEUE_SHAPE`) says which, each connection asks its broker, on a short
/// connection of its own, the first time it declares such a queue (see
/// [`Connection::queue_shape`]), and uses `Transient` where the broker accepts it.
///
/// [`Config::queue_shape`]: crate::Config::queue_shape
/// [`Connection::queue_shape`]: crate::Connection::queue_shape
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QueueShape {
    /// Every queue is declared with its own flags: the wire contract's, which Python
    /// Postage declares too, so both work on one queue (`POSTAGE_QUEUE_SHAPE=transient`).
    Transient,
    /// A queue that is neither durable nor exclusive is declared durable (its auto-delete
    /// flag and arguments kept), or exclusive when the broker names it: the shape a broker
    /// that denies transient shared queues accepts (`POSTAGE_QUEUE_SHAPE=durable`). A queue Python Postage declared
    /// transient on the same broker is then refused as declared differently.
    Durable,
}

impl QueueShape {
    /// Reads a setting's value: `auto` (`None`: ask the broker), `transient` or `durable`.
    pub(crate) fn parse_setting(text: &str, setting: &'static str) -> Result<Option<Self>> {
        match text.trim().to_ascii_lowercase().as_str() {
            "auto" | "" => Ok(None),
            "transient" => Ok(Some(Self::Transient)),
            "durable" => Ok(Some(Self::Durable)),
            other => Err(Error::config(
                setting,
                format!("{other:?} is not a queue shape (auto, transient or durable)"),
            )),
        }
    }

    /// The setting's value that names this shape.
    fn setting(self) -> &'static str {
        match self {
            Self::Transient => "transient",
            Self::Durable => "durable",
        }
    }
}

/// A queue's name, flags and arguments. The defaults are AMQP's and Python Postage's
/// (not durable, not exclusive, not auto-delete), so both sides declare a shared queue
/// alike (on brokers that refuse that shape, see [`QueueShape`]); set `durable(true)` for
/// messages that must survive a broker restart.
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

    /// Lets one consumer at a time read the queue (`x-single-active-consumer`): the broker
    /// delivers to the first consumer only, and keeps the others waiting as hot standbys;
    /// when the active one goes (its process killed, its connection lost, its channel
    /// closed), what it had not acknowledged goes back to the queue, in its place, and
    /// the next consumer reads on from there. A fleet of instances on one queue so
    /// keeps the queue's order, with a processor's [`ordered_by`] keeping the order per
    /// key within the active one. Classic and quorum queues, every RabbitMQ postage
    /// supports; the flag is part of the declaration, so every component declares the
    /// queue alike.
    ///
    /// [`ordered_by`]: crate::ProcessorBuilder::ordered_by
    ///
    /// ```
    /// use postage_core::Queue;
    ///
    /// let steps = Queue::new("steps").durable(true).single_active_consumer();
    /// assert_eq!(steps.name(), "steps");
    /// ```
    #[must_use]
    pub fn single_active_consumer(self) -> Self {
        self.argument("x-single-active-consumer", AMQPValue::Boolean(true))
    }

    /// Dead-letters (or drops) a message after it was delivered this many times, so a
    /// message that always fails cannot loop forever. Quorum queues only; RabbitMQ 3.10
    /// sets no limit by default.
    #[must_use]
    pub fn delivery_limit(self, deliveries: u32) -> Self {
        self.argument("x-delivery-limit", i64::from(deliveries))
    }

    /// Whether this is a quorum queue (`x-queue-type = quorum`).
    pub(crate) fn is_quorum(&self) -> bool {
        matches!(self.arguments.inner().get("x-queue-type"),
            Some(AMQPValue::LongString(kind)) if kind.to_string() == "quorum")
    }

    /// Warns when this is a quorum queue without a dead-letter exchange: the broker then
    /// drops every message rejected without requeue (postage's answer to bad input) and
    /// every message delivered more often than the queue's delivery limit, which RabbitMQ
    /// 4 sets to 20 by default.
    pub(crate) fn warn_if_dropping(&self) {
        if self.is_quorum()
            && !self
                .arguments
                .inner()
                .contains_key("x-dead-letter-exchange")
        {
            tracing::warn!(
                queue = %self.name,
                "quorum queue without a dead-letter exchange: a message rejected, or delivered \
                 more often than its delivery limit (20 by default on RabbitMQ 4), is dropped; \
                 give it one with Queue::dead_letter"
            );
        }
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

    /// The flags this queue is declared with in `shape`.
    fn options(&self, shape: QueueShape) -> QueueDeclareOptions {
        let mut options = QueueDeclareOptions {
            passive: false,
            durable: self.durable,
            exclusive: self.exclusive,
            auto_delete: self.auto_delete,
            nowait: false,
        };
        if shape == QueueShape::Durable && !self.durable && !self.exclusive {
            if self.name.is_empty() {
                options.exclusive = true;
            } else {
                options.durable = true;
            }
        }
        options
    }

    /// Declares the queue on `channel` in the shape `connection`'s broker accepts and
    /// returns its name (the broker's choice when the name was empty).
    /// Whether the broker decides this queue's shape: only a queue neither durable nor
    /// exclusive takes another where the broker refuses the transient one.
    pub(crate) fn takes_shape(&self) -> bool {
        !self.durable && !self.exclusive
    }

    /// Declares the queue on `channel` in `shape` (used only when
    /// [`takes_shape`](Self::takes_shape)), and returns its name (the broker's choice for
    /// an unnamed queue).
    pub(crate) async fn declare(
        &self,
        channel: &lapin::Channel,
        shape: QueueShape,
    ) -> Result<String> {
        let shape = if self.takes_shape() {
            shape
        } else {
            QueueShape::Transient
        };
        let options = self.options(shape);
        let declared = channel
            .queue_declare(self.name.as_str().into(), options, self.arguments.clone())
            .await
            .map_err(|source| self.refused(shape, source))?;
        Ok(declared.name().to_string())
    }

    /// The error for a declaration the broker refused, saying what to change where the
    /// queue's shape is the cause.
    fn refused(&self, shape: QueueShape, source: lapin::Error) -> Error {
        let ErrorKind::ProtocolError(amqp) = source.kind() else {
            return Error::amqp(format!("declaring queue {:?}", self.name))(source);
        };
        let text = amqp.get_message().as_str();
        let reason = match amqp.kind() {
            AMQPErrorKind::Hard(AMQPHardError::INTERNALERROR)
                if text.contains("transient_nonexcl_queues") =>
            {
                "the broker refuses queues that are neither durable nor exclusive (denied \
                 transient_nonexcl_queues); set POSTAGE_QUEUE_SHAPE=durable, or leave it \
                 unset (auto)"
                    .to_owned()
            }
            AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)
                if text.contains("inequivalent") =>
            {
                format!(
                    "it exists with other flags ({}); declared here {:?}, with \
                     POSTAGE_QUEUE_SHAPE={}: every component using it must declare it alike",
                    text.trim_start_matches("PRECONDITION_FAILED - "),
                    self.options(shape),
                    shape.setting(),
                )
            }
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) => {
                format!("{text} (the user's configure permission on the virtual host)")
            }
            _ => return Error::amqp(format!("declaring queue {:?}", self.name))(source),
        };
        Error::QueueRefused {
            queue: self.name.clone(),
            reason,
        }
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
