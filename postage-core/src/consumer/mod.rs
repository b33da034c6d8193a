//! Receiving messages: queues bound to exchanges, consumed with explicit acknowledgement.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use futures_util::Stream;
use futures_util::stream::SelectAll;
use futures_util::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions,
    QueueBindOptions,
};
use lapin::types::FieldTable;
use tokio::sync::{mpsc, watch};

use crate::connection::{ChannelLease, Connection};
use crate::error::{Error, Result};
use crate::topology::Exchange;
use crate::topology::Queue;
use crate::wire::Message;
use crate::wire::{Encoder, JsonEncoder};

/// The deliveries of one queue.
type Deliveries = std::pin::Pin<Box<dyn Stream<Item = Delivery> + Send + Sync>>;

/// One queue bound to one exchange with one routing key.
#[derive(Debug, Clone, PartialEq)]
pub struct Binding {
    /// The exchange messages come from.
    pub exchange: Exchange,
    /// The queue they land in.
    pub queue: Queue,
    /// The routing key that binds them.
    pub routing_key: String,
}

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

/// A cheap, cloneable handle on a [`Consumer`]: binds, unbinds and stops consuming
/// queues at run time from anywhere, a handler included, while the consumer runs.
#[derive(Debug, Clone)]
pub struct ConsumerHandle {
    inner: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    connection: Connection,
    prefetch: u16,
    /// The live channel, replaced when the connection is re-established.
    channel: RwLock<Arc<ChannelLease>>,
    encoder: Arc<dyn Encoder>,
    /// What was bound, as declared, with each queue's actual name: replayed on recovery.
    bindings: Mutex<Vec<Bound>>,
    /// Queue name -> consumer tag, once started (`None` before `start` and after `stop`).
    consuming: Mutex<Option<HashMap<String, String>>>,
    /// Hands each new queue's stream to the [`Consumer`].
    streams: mpsc::UnboundedSender<Deliveries>,
    /// Tells the recovery task that a consumer of the channel with this serial ended
    /// while its connection lived on (the broker closed the channel, or cancelled the
    /// consumer because its queue was deleted).
    lost: mpsc::UnboundedSender<u64>,
}

/// A binding and the name its queue has on the broker (the broker's choice when the
/// queue was declared without one).
#[derive(Debug, Clone)]
struct Bound {
    binding: Binding,
    queue_name: String,
}

/// Configures a [`Consumer`]; made by [`Consumer::builder`].
#[derive(Debug)]
pub struct ConsumerBuilder {
    connection: Connection,
    bindings: Vec<Binding>,
    prefetch: u16,
    encoder: Arc<dyn Encoder>,
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

    /// Opens the consumer's channel, sets its prefetch and declares every exchange,
    /// queue and binding, so either side may start first.
    pub async fn build(self) -> Result<Consumer> {
        let channel = self.connection.lease_channel().await?;
        channel
            .basic_qos(self.prefetch, BasicQosOptions::default())
            .await
            .map_err(Error::amqp(format!("setting prefetch {}", self.prefetch)))?;
        let (streams, added) = mpsc::unbounded_channel();
        let (lost, losses) = mpsc::unbounded_channel();
        let consumer = Consumer {
            handle: ConsumerHandle {
                inner: Arc::new(Shared {
                    connection: self.connection.clone(),
                    prefetch: self.prefetch,
                    channel: RwLock::new(Arc::new(channel)),
                    encoder: self.encoder,
                    bindings: Mutex::new(Vec::new()),
                    consuming: Mutex::new(None),
                    streams,
                    lost,
                }),
            },
            streams: SelectAll::new(),
            added,
        };
        tokio::spawn(recover(
            Arc::downgrade(&consumer.handle.inner),
            self.connection.watch_generation(),
            losses,
        ));
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

    /// See [`ConsumerHandle::close`].
    pub async fn close(&self) -> Result<()> {
        self.handle.close().await
    }

    /// The consumer's channel (the live one), for anything postage does not wrap.
    pub fn channel(&self) -> lapin::Channel {
        self.handle.live_channel()
    }
}

impl ConsumerHandle {
    /// The live channel.
    pub(crate) fn live_channel(&self) -> lapin::Channel {
        (*self.live_lease()).clone()
    }

    fn live_lease(&self) -> Arc<ChannelLease> {
        match self.inner.channel.read() {
            Ok(lease) => Arc::clone(&lease),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Declares `exchange` and `queue` and binds them with `routing_key`, now, and
    /// remembers it so a recovered connection gets it back. When the consumer is
    /// consuming, a queue it did not read yet is consumed too. Returns the queue's name
    /// (the broker's choice for an unnamed queue).
    pub async fn bind(
        &self,
        exchange: &Exchange,
        queue: &Queue,
        routing_key: &str,
    ) -> Result<String> {
        queue.warn_if_dropping();
        let name = declare_and_bind(
            &self.live_channel(),
            exchange,
            queue,
            queue.name(),
            routing_key,
            &self.inner.connection,
        )
        .await?;
        let consuming = self.inner.consuming.lock().is_ok_and(|c| c.is_some());
        if let Ok(mut bindings) = self.inner.bindings.lock() {
            let binding = Binding {
                exchange: exchange.clone(),
                queue: queue.clone(),
                routing_key: routing_key.to_owned(),
            };
            if !bindings
                .iter()
                .any(|b| b.binding == binding && b.queue_name == name)
            {
                bindings.push(Bound {
                    binding,
                    queue_name: name.clone(),
                });
            }
        }
        if consuming {
            self.consume(&name).await?;
        }
        Ok(name)
    }

    /// Removes the binding of `queue` to `exchange` with `routing_key`, now.
    pub async fn unbind(&self, exchange: &Exchange, queue: &str, routing_key: &str) -> Result<()> {
        self.live_channel()
            .queue_unbind(
                queue.into(),
                exchange.name().into(),
                routing_key.into(),
                FieldTable::default(),
            )
            .await
            .map_err(Error::amqp(format!(
                "unbinding queue {queue:?} from exchange {:?} with key {routing_key:?}",
                exchange.name()
            )))?;
        if let Ok(mut bindings) = self.inner.bindings.lock() {
            bindings.retain(|b| {
                !(b.binding.exchange.name() == exchange.name()
                    && b.queue_name == queue
                    && b.binding.routing_key == routing_key)
            });
        }
        Ok(())
    }

    /// The bindings this consumer made, in order, each queue under its actual name.
    pub fn bindings(&self) -> Vec<Binding> {
        self.inner
            .bindings
            .lock()
            .map(|bound| {
                bound
                    .iter()
                    .map(|b| Binding {
                        queue: b.binding.queue.renamed(&b.queue_name),
                        ..b.binding.clone()
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Starts consuming every bound queue; deliveries then come from [`Consumer::next`].
    pub async fn start(&self) -> Result<()> {
        if let Ok(mut consuming) = self.inner.consuming.lock() {
            consuming.get_or_insert_with(HashMap::new);
        }
        for queue in self.bound_queues() {
            self.consume(&queue).await?;
        }
        Ok(())
    }

    /// Every bound queue's actual name, once each, in binding order.
    fn bound_queues(&self) -> Vec<String> {
        let mut queues: Vec<String> = Vec::new();
        for binding in self.bindings() {
            if !queues.iter().any(|q| q == binding.queue.name()) {
                queues.push(binding.queue.name().to_owned());
            }
        }
        queues
    }

    /// Starts reading `queue` unless it is read already.
    async fn consume(&self, queue: &str) -> Result<()> {
        // Claim the queue first (tag filled in below) so two binds cannot consume it twice.
        let fresh = self.inner.consuming.lock().is_ok_and(|mut c| {
            let queues = c.get_or_insert_with(HashMap::new);
            if queues.contains_key(queue) {
                return false;
            }
            queues.insert(queue.to_owned(), String::new());
            true
        });
        if !fresh {
            return Ok(());
        }
        let lease = self.live_lease();
        let stream = lease
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(Error::amqp(format!("consuming queue {queue:?}")))?;
        if let Ok(mut consuming) = self.inner.consuming.lock() {
            consuming
                .get_or_insert_with(HashMap::new)
                .insert(queue.to_owned(), stream.tag().to_string());
        }
        let encoder = Arc::clone(&self.inner.encoder);
        let queue: Arc<str> = Arc::from(queue);
        let queue_name = Arc::clone(&queue);
        let ending = Ending {
            consumer: Arc::downgrade(&self.inner),
            queue: Arc::clone(&queue),
            tag: stream.tag().to_string(),
            lease: Arc::clone(&lease),
        };
        let deliveries = stream
            .take_while(move |next| {
                // A lost channel ends the stream: the consumer's recovery starts a new one.
                if let Err(error) = next {
                    tracing::debug!(queue = %queue_name, %error, "consumer stream failed");
                }
                std::future::ready(next.is_ok())
            })
            .filter_map(move |next| {
                std::future::ready(next.ok().map(|inner| Delivery {
                    inner,
                    queue: Arc::clone(&queue),
                    encoder: Arc::clone(&encoder),
                    channel: Arc::clone(&lease),
                }))
            })
            .chain(
                futures_util::stream::once(async move { ending.report() })
                    .filter_map(|()| std::future::ready(None)),
            );
        // The consumer is gone when the send fails: nobody reads this queue any more.
        let _ = self.inner.streams.send(Box::pin(deliveries));
        Ok(())
    }

    /// Stops reading one queue, leaving its bindings in place; deliveries already received
    /// from it can still be acknowledged. Binding the queue again reads it again.
    pub async fn stop_consuming(&self, queue: &str) -> Result<()> {
        let tag = self
            .inner
            .consuming
            .lock()
            .ok()
            .and_then(|mut c| c.as_mut().and_then(|queues| queues.remove(queue)));
        match tag {
            Some(tag) if !tag.is_empty() => self.cancel(&tag).await,
            _ => Ok(()),
        }
    }

    /// The queues being read now.
    pub fn consumed_queues(&self) -> Vec<String> {
        let mut queues: Vec<String> = self
            .inner
            .consuming
            .lock()
            .ok()
            .and_then(|c| c.as_ref().map(|q| q.keys().cloned().collect()))
            .unwrap_or_default();
        queues.sort();
        queues
    }

    async fn cancel(&self, tag: &str) -> Result<()> {
        self.live_channel()
            .basic_cancel(tag.into(), BasicCancelOptions::default())
            .await
            .map_err(Error::amqp(format!("cancelling consumer {tag:?}")))
    }

    /// Stops consuming: the broker sends nothing more, and deliveries already received
    /// can still be read and acknowledged.
    pub async fn stop(&self) -> Result<()> {
        let queues = self
            .inner
            .consuming
            .lock()
            .ok()
            .and_then(|mut c| c.take())
            .unwrap_or_default();
        for tag in queues.into_values().filter(|t| !t.is_empty()) {
            match self.cancel(&tag).await {
                // A channel that is down (recovery under way) has no consumers to cancel.
                Err(error) if !self.live_channel().status().connected() => {
                    tracing::debug!(%error, "consumer already gone with its channel");
                }
                other => other?,
            }
        }
        Ok(())
    }

    /// Stops consuming and closes the consumer's channel; deliveries not acknowledged by
    /// then go back to their queues.
    pub async fn close(&self) -> Result<()> {
        self.stop().await?;
        let channel = self.live_channel();
        if channel.status().connected() {
            channel
                .close(200, "postage: consumer closed".into())
                .await
                .map_err(Error::amqp("closing a consumer channel"))?;
        }
        Ok(())
    }

    /// Restores everything on a new channel after the connection was re-established:
    /// QoS, exchanges, queues (server-named ones under new names), bindings, and the
    /// consumers of the queues that were being read.
    async fn recover(&self) -> Result<()> {
        let lease = self.inner.connection.lease_channel().await?;
        lease
            .basic_qos(self.inner.prefetch, BasicQosOptions::default())
            .await
            .map_err(Error::amqp(format!(
                "setting prefetch {}",
                self.inner.prefetch
            )))?;
        let bound = self
            .inner
            .bindings
            .lock()
            .map(|b| b.clone())
            .unwrap_or_default();
        let mut renamed: HashMap<String, String> = HashMap::new();
        let mut restored = Vec::with_capacity(bound.len());
        for Bound {
            binding,
            queue_name,
        } in bound
        {
            // A server-named queue cannot be declared again under its old `amq.gen-` name.
            let wanted = if binding.queue.name().is_empty() {
                renamed.get(&queue_name).cloned().unwrap_or_default()
            } else {
                queue_name.clone()
            };
            let name = declare_and_bind(
                &lease,
                &binding.exchange,
                &binding.queue,
                &wanted,
                &binding.routing_key,
                &self.inner.connection,
            )
            .await?;
            renamed.insert(queue_name, name.clone());
            restored.push(Bound {
                binding,
                queue_name: name,
            });
        }
        if let Ok(mut bindings) = self.inner.bindings.lock() {
            *bindings = restored;
        }
        let old = match self.inner.channel.write() {
            Ok(mut channel) => std::mem::replace(&mut *channel, Arc::new(lease)),
            Err(poisoned) => std::mem::replace(&mut *poisoned.into_inner(), Arc::new(lease)),
        };
        let was_consuming = self
            .inner
            .consuming
            .lock()
            .ok()
            .and_then(|mut c| c.as_mut().map(std::mem::take));
        if let Some(queues) = was_consuming {
            for queue in queues.into_keys() {
                let queue = renamed.get(&queue).cloned().unwrap_or(queue);
                self.consume(&queue).await?;
            }
        }
        // Still open when only a consumer was cancelled: its other consumers would stack
        // on those just started, and its unacknowledged deliveries go back to the queues.
        if old.status().connected() {
            let _ = old
                .close(200, "postage: consumer moved to a new channel".into())
                .await;
        }
        Ok(())
    }
}

/// What a queue's stream knows to report its end.
struct Ending {
    consumer: Weak<Shared>,
    queue: Arc<str>,
    tag: String,
    lease: Arc<ChannelLease>,
}

impl Ending {
    /// Tells the recovery task when the stream ended by no doing of ours: not cancelled by
    /// `stop` or `stop_consuming` (the queue would no longer be consumed under this tag),
    /// nor lost with the connection (its re-establishment recovers everything).
    fn report(self) {
        let Some(inner) = self.consumer.upgrade() else {
            return;
        };
        let current = inner
            .consuming
            .lock()
            .ok()
            .and_then(|c| c.as_ref()?.get(&*self.queue).cloned());
        if current.as_deref() != Some(self.tag.as_str())
            || !inner.connection.lapin().status().connected()
        {
            return;
        }
        let why = if self.lease.status().connected() {
            "the broker cancelled the consumer (queue deleted?)"
        } else {
            "the broker closed the channel"
        };
        tracing::warn!(queue = %self.queue, why, "consumer lost; recovering it on a new channel");
        let _ = inner.lost.send(self.lease.serial());
    }
}

/// Declares `exchange` and `queue` (under `name`; empty for a server-named one) and binds
/// them, the queue in the shape `connection`'s broker accepts; returns the queue's actual
/// name.
async fn declare_and_bind(
    channel: &lapin::Channel,
    exchange: &Exchange,
    queue: &Queue,
    name: &str,
    routing_key: &str,
    connection: &Connection,
) -> Result<String> {
    exchange.declare(channel).await?;
    let name = queue.renamed(name).declare(channel, connection).await?;
    // The default exchange reaches every queue by its name and takes no bindings.
    if exchange.name().is_empty() {
        if !routing_key.is_empty() && routing_key != name {
            return Err(Error::config(
                "routing_key",
                format!(
                    "the default exchange reaches queue {name:?} only by its own name, not {routing_key:?}"
                ),
            ));
        }
        return Ok(name);
    }
    channel
        .queue_bind(
            name.as_str().into(),
            exchange.name().into(),
            routing_key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(Error::amqp(format!(
            "binding queue {name:?} to exchange {:?} with key {routing_key:?}",
            exchange.name()
        )))?;
    Ok(name)
}

/// Restores a consumer each time its connection is re-established, or its channel or one
/// of its consumers was lost on a live connection, until it is dropped.
async fn recover(
    consumer: Weak<Shared>,
    mut generations: watch::Receiver<u64>,
    mut losses: mpsc::UnboundedReceiver<u64>,
) {
    loop {
        tokio::select! {
            changed = generations.changed() => if changed.is_err() {
                return;
            },
            lost = losses.recv() => {
                let Some(serial) = lost else {
                    return;
                };
                // Reported before a recovery that replaced that channel already.
                let current = consumer.upgrade().map(|inner| ConsumerHandle { inner }.live_lease().serial());
                if current != Some(serial) {
                    continue;
                }
            }
        }
        let mut backoff = Duration::from_millis(100);
        loop {
            let Some(inner) = consumer.upgrade() else {
                return;
            };
            let handle = ConsumerHandle { inner };
            match handle.recover().await {
                Ok(()) => {
                    tracing::info!(queues = ?handle.consumed_queues(), "consumer recovered");
                    break;
                }
                Err(error) => {
                    tracing::warn!(%error, "consumer recovery failed; trying again");
                    drop(handle);
                    if generations.has_changed().unwrap_or(true) {
                        break;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}

/// A message handed to a consumer, to be acknowledged or rejected once handled.
#[derive(Debug)]
pub struct Delivery {
    inner: lapin::message::Delivery,
    queue: Arc<str>,
    encoder: Arc<dyn Encoder>,
    /// The channel it came on: its delivery tag means something there only.
    channel: Arc<ChannelLease>,
}

impl Delivery {
    /// The channel it came on, which settles it by its tag.
    pub(crate) fn channel(&self) -> &Arc<ChannelLease> {
        &self.channel
    }

    /// Decodes the body as a Postage message.
    pub fn message(&self) -> Result<Message> {
        self.encoder.decode(&self.inner.data)
    }

    /// The raw body.
    pub fn body(&self) -> &[u8] {
        &self.inner.data
    }

    /// The queue the message was read from.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The exchange the message was published to (`""` for the default exchange).
    pub fn exchange(&self) -> &str {
        self.inner.exchange.as_str()
    }

    /// The routing key it was published with.
    pub fn routing_key(&self) -> &str {
        self.inner.routing_key.as_str()
    }

    /// True when the broker delivered this message before without an acknowledgement.
    pub fn redelivered(&self) -> bool {
        self.inner.redelivered
    }

    /// The AMQP properties: headers, `reply_to`, `correlation_id`, content type...
    pub fn properties(&self) -> &lapin::BasicProperties {
        &self.inner.properties
    }

    /// Acknowledges the message: the broker forgets it. Fails with [`Error::Closed`] when
    /// the channel it came on has closed since (a lost connection, or closed by the
    /// broker): the broker delivers it again.
    pub async fn ack(&self) -> Result<()> {
        ack(&self.inner, &self.queue).await
    }

    /// Rejects the message; with `requeue` the broker delivers it again, otherwise it is
    /// dropped or dead-lettered. Fails as [`ack`](Self::ack) does.
    pub async fn reject(&self, requeue: bool) -> Result<()> {
        reject(&self.inner, &self.queue, requeue).await
    }

    /// The lapin delivery, for anything postage does not wrap.
    pub fn lapin(&self) -> &lapin::message::Delivery {
        &self.inner
    }
}

/// Acknowledges a delivery read from `queue`.
pub(crate) async fn ack(delivery: &lapin::message::Delivery, queue: &str) -> Result<()> {
    let done = delivery
        .acker
        .ack(BasicAckOptions::default())
        .await
        .map_err(Error::amqp(format!(
            "acknowledging a message from {queue:?}"
        )))?;
    settled(delivery, done)
}

/// Rejects a delivery read from `queue`, requeued or not.
pub(crate) async fn reject(
    delivery: &lapin::message::Delivery,
    queue: &str,
    requeue: bool,
) -> Result<()> {
    let done = delivery
        .acker
        .reject(BasicRejectOptions { requeue })
        .await
        .map_err(Error::amqp(format!("rejecting a message from {queue:?}")))?;
    settled(delivery, done)
}

/// What an acknowledgement or rejection that lapin did (`done`) or skipped comes to: one
/// skipped because the delivery's channel has closed since is [`Error::Closed`] (the
/// broker delivers the message again); one skipped because the delivery was settled
/// before changes nothing.
fn settled(delivery: &lapin::message::Delivery, done: bool) -> Result<()> {
    if !done && delivery.acker.poisoned() {
        return Err(Error::Closed("the channel the message came on"));
    }
    Ok(())
}
