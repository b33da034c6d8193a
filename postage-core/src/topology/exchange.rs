//! Exchanges: where messages are published, described once and shared by every component.

use std::borrow::Cow;

use lapin::options::ExchangeDeclareOptions;
use lapin::types::FieldTable;

use crate::error::{Error, Result};

/// How an exchange routes: the AMQP exchange types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExchangeKind {
    /// By exact routing key (Postage's default).
    Direct,
    /// To every bound queue.
    Fanout,
    /// By routing-key pattern.
    Topic,
    /// By message headers.
    Headers,
    /// By a hash of the routing key, each queue taking a share of the hash space as its
    /// binding key (a number) weighs: RabbitMQ's `x-consistent-hash`, of the
    /// `rabbitmq_consistent_hash_exchange` plugin shipped with the broker (the project's
    /// scripts enable it). [`Partitions`](crate::Partitions) is built on it.
    ConsistentHash,
}

/// The consistent-hash exchange's type name.
const CONSISTENT_HASH: &str = "x-consistent-hash";

impl ExchangeKind {
    fn to_lapin(self) -> lapin::ExchangeKind {
        match self {
            Self::Direct => lapin::ExchangeKind::Direct,
            Self::Fanout => lapin::ExchangeKind::Fanout,
            Self::Topic => lapin::ExchangeKind::Topic,
            Self::Headers => lapin::ExchangeKind::Headers,
            Self::ConsistentHash => lapin::ExchangeKind::Custom(CONSISTENT_HASH.to_owned()),
        }
    }
}

/// An exchange's name and declaration flags, with Postage's defaults: direct, not
/// passive, durable, not auto-delete. Declare one as a constant and share it:
///
/// ```
/// use postage_core::{Exchange, ExchangeKind};
///
/// const ECHO: Exchange = Exchange::new("echo-exchange");
/// const EVENTS: Exchange = Exchange::new("events").kind(ExchangeKind::Fanout).durable(false);
/// assert!(ECHO.is_durable() && !EVENTS.is_durable());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Exchange {
    name: Cow<'static, str>,
    kind: ExchangeKind,
    passive: bool,
    durable: bool,
    auto_delete: bool,
}

impl Exchange {
    /// The AMQP default exchange (`""`): routes to the queue named by the routing key.
    pub const DEFAULT: Self = Self::new("");

    /// A direct, durable exchange called `name`.
    pub const fn new(name: &'static str) -> Self {
        Self::with_cow(Cow::Borrowed(name))
    }

    /// Like [`Exchange::new`] for a name known only at run time.
    pub fn named(name: impl Into<String>) -> Self {
        Self::with_cow(Cow::Owned(name.into()))
    }

    const fn with_cow(name: Cow<'static, str>) -> Self {
        Self {
            name,
            kind: ExchangeKind::Direct,
            passive: false,
            durable: true,
            auto_delete: false,
        }
    }

    /// Sets the exchange type.
    #[must_use]
    pub const fn kind(mut self, kind: ExchangeKind) -> Self {
        self.kind = kind;
        self
    }

    /// Only checks that the exchange exists instead of creating it.
    #[must_use]
    pub const fn passive(mut self, passive: bool) -> Self {
        self.passive = passive;
        self
    }

    /// Whether the exchange survives a broker restart.
    #[must_use]
    pub const fn durable(mut self, durable: bool) -> Self {
        self.durable = durable;
        self
    }

    /// Whether the broker deletes the exchange when its last queue is unbound.
    #[must_use]
    pub const fn auto_delete(mut self, auto_delete: bool) -> Self {
        self.auto_delete = auto_delete;
        self
    }

    /// The exchange's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The exchange type.
    pub const fn exchange_kind(&self) -> ExchangeKind {
        self.kind
    }

    /// True when declared durable.
    pub const fn is_durable(&self) -> bool {
        self.durable
    }

    /// True for the AMQP default exchange, which is never declared, or for the
    /// predeclared `amq.*` exchanges.
    pub(crate) fn is_predeclared(&self) -> bool {
        self.name.is_empty() || self.name.starts_with("amq.")
    }

    /// Declares the exchange on `channel` (nothing to do for the default exchange).
    pub async fn declare(&self, channel: &lapin::Channel) -> Result<()> {
        if self.is_predeclared() {
            return Ok(());
        }
        let options = ExchangeDeclareOptions {
            passive: self.passive,
            durable: self.durable,
            auto_delete: self.auto_delete,
            internal: false,
            nowait: false,
        };
        channel
            .exchange_declare(
                self.name.as_ref().into(),
                self.kind.to_lapin(),
                options,
                FieldTable::default(),
            )
            .await
            .map_err(Error::amqp(format!("declaring exchange {:?}", self.name)))
    }
}
