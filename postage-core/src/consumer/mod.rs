//! Receiving messages: queues bound to exchanges, consumed with explicit acknowledgement,
//! and restored by the connection's supervisor whenever the link or a channel is lost.

mod delivery;
mod engine;
mod handle;

pub use self::delivery::Delivery;
pub(crate) use self::delivery::{ack, reject};
pub use self::handle::ConsumerHandle;

use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::SelectAll;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::mpsc;

use self::engine::{Deliveries, Engine};
use crate::connection::Connection;
use crate::error::Result;
use crate::topology::{Binding, Exchange, Queue};
use crate::wire::{Encoder, JsonEncoder};

/// Reads messages from bound queues, one channel per consumer, with a prefetch limit and
/// explicit acknowledgement of each [`Delivery`].
///
/// It restores itself on a new channel (prefetch, exchanges, queues, bindings and
/// consumers) when the connection is re-established, and also on a live connection when
/// the broker closes its channel or cancels one of its consumers (a deleted queue is
/// declared again). Deliveries received before can no longer be settled
/// ([`Delivery::ack`] fails): the broker delivers them again.
///
/// ```no_run
/// use postage_core::{Connection, Consumer, Exchange, Queue};
///
/// const ECHO: Exchange = Exchange::new("echo-exchange");
///
/// # async fn demo() -> postage_core::Result<()> {
/// let connection = Connection::from_env().await?;
/// let mut consumer = Consumer::builder(&connection)
///     .bindings(ECHO, [(Queue::new("echo-queue"), "echo-rk")])
///     .prefetch(10)
///     .build()
///     .await?;
/// consumer.start().await?;
/// while let Some(delivery) = consumer.next().await {
///     let delivery = delivery?;
///     println!("{:?}", delivery.message()?.content);
///     delivery.ack().await?;
/// }
/// # Ok(()) }
/// ```
pub struct Consumer {
    handle: ConsumerHandle,
    /// The deliveries of every queue read, polled straight from lapin's streams.
    streams: SelectAll<Deliveries>,
    /// The streams started since the last poll, by a bind, a start or a recovery.
    added: mpsc::UnboundedReceiver<Deliveries>,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("handle", &self.handle)
            .field("streams", &self.streams.len())
            .finish_non_exhaustive()
    }
}

/// Configures a [`Consumer`]; made by [`Consumer::builder`].
#[derive(Debug)]
pub struct ConsumerBuilder {
    connection: Connection,
    bindings: Vec<Binding>,
    prefetch: u16,
    encoder: Arc<dyn Encoder>,
    delivery_timeout: Option<Duration>,
}

impl ConsumerBuilder {
    /// Binds `queue` to `exchange` with `routing_key`.
    #[must_use]
    pub fn bind(
        mut self,
        exchange: Exchange,
        queue: impl Into<Queue>,
        routing_key: impl Into<String>,
    ) -> Self {
        self.bindings.push(Binding {
            exchange,
            queue: queue.into(),
            routing_key: routing_key.into(),
        });
        self
    }

    /// Binds several (queue, routing key) pairs to one exchange: Postage's
    /// `(Exchange, [(Queue, Key), ...])`.
    #[must_use]
    pub fn bindings<Q: Into<Queue>, K: Into<String>>(
        mut self,
        exchange: Exchange,
        pairs: impl IntoIterator<Item = (Q, K)>,
    ) -> Self {
        for (queue, key) in pairs {
            self = self.bind(exchange.clone(), queue, key);
        }
        self
    }

    /// How many unacknowledged messages the broker may hand over at once (Postage: 1).
    #[must_use]
    pub fn prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = prefetch;
        self
    }

    /// Replaces the JSON encoder.
    #[must_use]
    pub fn encoder(mut self, encoder: impl Encoder) -> Self {
        self.encoder = Arc::new(encoder);
        self
    }

    /// How long each delivery of a quorum queue may stay unacknowledged before the broker
    /// takes it back: asked for with the consumer argument `x-consumer-timeout`, above the
    /// broker's `consumer_timeout` or below it. RabbitMQ 4.3 honours it; 3.10 and 4.0
    /// accept and ignore it; classic queues are left without it, as 4.3 refuses it there
    /// (and times out none of their deliveries).
    #[must_use]
    pub fn delivery_timeout(mut self, timeout: Duration) -> Self {
        self.delivery_timeout = Some(timeout);
        self
    }

    /// Opens the consumer's channel, sets its prefetch and declares every exchange,
    /// queue and binding, so either side may start first.
    pub async fn build(self) -> Result<Consumer> {
        let (streams, added) = mpsc::unbounded_channel();
        let engine = Engine::start(
            &self.connection,
            self.prefetch,
            self.delivery_timeout,
            self.encoder,
            streams,
        )
        .await?;
        let consumer = Consumer {
            handle: ConsumerHandle { engine },
            streams: SelectAll::new(),
            added,
        };
        for binding in self.bindings {
            consumer
                .bind(&binding.exchange, &binding.queue, &binding.routing_key)
                .await?;
        }
        Ok(consumer)
    }
}

impl Consumer {
    /// Starts configuring a consumer on `connection` (prefetch 1, JSON encoding).
    pub fn builder(connection: &Connection) -> ConsumerBuilder {
        ConsumerBuilder {
            connection: connection.clone(),
            bindings: Vec::new(),
            prefetch: 1,
            encoder: Arc::new(JsonEncoder),
            delivery_timeout: None,
        }
    }

    /// A handle to bind, unbind and stop queues while the consumer runs.
    pub fn handle(&self) -> ConsumerHandle {
        self.handle.clone()
    }

    /// The next delivery from any consumed queue. It waits while nothing is consumed
    /// (before [`Consumer::start`], after [`Consumer::stop`], during a recovery) and
    /// returns `None` only when the consumer can no longer receive anything.
    pub async fn next(&mut self) -> Option<Result<Delivery>> {
        loop {
            while let Ok(stream) = self.added.try_recv() {
                self.streams.push(stream);
            }
            tokio::select! {
                biased;
                Some(delivery) = self.streams.next(), if !self.streams.is_empty() => {
                    return Some(Ok(delivery));
                }
                stream = self.added.recv() => self.streams.push(stream?),
            }
        }
    }

    /// Deliveries already received and not yet handed out by [`Consumer::next`].
    pub(crate) fn take_buffered(&mut self) -> Vec<Delivery> {
        let mut buffered = Vec::new();
        while let Some(Some(Ok(delivery))) = self.next().now_or_never() {
            buffered.push(delivery);
        }
        buffered
    }

    /// See [`ConsumerHandle::bind`].
    pub async fn bind(
        &self,
        exchange: &Exchange,
        queue: &Queue,
        routing_key: &str,
    ) -> Result<String> {
        self.handle.bind(exchange, queue, routing_key).await
    }

    /// See [`ConsumerHandle::unbind`].
    pub async fn unbind(&self, exchange: &Exchange, queue: &str, routing_key: &str) -> Result<()> {
        self.handle.unbind(exchange, queue, routing_key).await
    }

    /// See [`ConsumerHandle::bindings`].
    pub fn bindings(&self) -> Vec<Binding> {
        self.handle.bindings()
    }

    /// See [`ConsumerHandle::start`].
    pub async fn start(&self) -> Result<()> {
        self.handle.start().await
    }

    /// See [`ConsumerHandle::stop`].
    pub async fn stop(&self) -> Result<()> {
        self.handle.stop().await
    }

    /// Closes the channel without cancelling first: what was not acknowledged goes back
    /// to its queue in its place, before another consumer gets the queue.
    pub(crate) async fn close_in_order(&self) -> Result<()> {
        self.handle.close_in_order().await
    }

    /// See [`ConsumerHandle::close`].
    pub async fn close(&self) -> Result<()> {
        self.handle.close().await
    }

    /// The consumer's channel (the live one), for anything postage does not wrap.
    pub fn channel(&self) -> lapin::Channel {
        self.handle.live_channel()
    }
}
