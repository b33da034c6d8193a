//! Receiving messages: queues bound to exchanges, consumed with explicit acknowledgement.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions,
    QueueBindOptions,
};
use lapin::types::FieldTable;
use tokio::sync::mpsc;

use crate::connection::{ChannelLease, Connection};
use crate::encoder::{Encoder, JsonEncoder};
use crate::error::{Error, Result};
use crate::exchange::Exchange;
use crate::message::Message;
use crate::queue::Queue;

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
#[derive(Debug)]
pub struct Consumer {
    handle: ConsumerHandle,
    receiver: mpsc::Receiver<Result<Delivery>>,
}

/// A cheap, cloneable handle on a [`Consumer`]: binds, unbinds and stops consuming
/// queues at run time from anywhere, a handler included, while the consumer runs.
#[derive(Debug, Clone)]
pub struct ConsumerHandle {
    inner: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    channel: ChannelLease,
    encoder: Arc<dyn Encoder>,
    bindings: Mutex<Vec<Binding>>,
    /// Queue name -> consumer tag, once started (`None` before `start` and after `stop`).
    consuming: Mutex<Option<HashMap<String, String>>>,
    sender: mpsc::Sender<Result<Delivery>>,
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
        let (sender, receiver) = mpsc::channel(usize::from(self.prefetch.max(1)) + 1);
        let consumer = Consumer {
            handle: ConsumerHandle {
                inner: Arc::new(Shared {
                    channel,
                    encoder: self.encoder,
                    bindings: Mutex::new(Vec::new()),
                    consuming: Mutex::new(None),
                    sender,
                }),
            },
            receiver,
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
        }
    }

    /// A handle to bind, unbind and stop queues while the consumer runs.
    pub fn handle(&self) -> ConsumerHandle {
        self.handle.clone()
    }

    /// The next delivery from any consumed queue; `None` once the consumer was stopped
    /// and every delivery already received was handed out.
    pub async fn next(&mut self) -> Option<Result<Delivery>> {
        self.receiver.recv().await
    }

    /// Deliveries already received and not yet handed out by [`Consumer::next`].
    pub(crate) fn take_buffered(&mut self) -> Vec<Delivery> {
        let mut buffered = Vec::new();
        while let Ok(item) = self.receiver.try_recv() {
            buffered.extend(item.ok());
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

    /// The consumer's channel, for anything postage does not wrap.
    pub fn channel(&self) -> &lapin::Channel {
        &self.handle.inner.channel
    }
}

impl ConsumerHandle {
    /// Declares `exchange` and `queue` and binds them with `routing_key`, now. When the
    /// consumer is already consuming, a queue it did not read yet is consumed too.
    /// Returns the queue's name (the broker's choice for an unnamed queue).
    pub async fn bind(
        &self,
        exchange: &Exchange,
        queue: &Queue,
        routing_key: &str,
    ) -> Result<String> {
        exchange.declare(&self.inner.channel).await?;
        let name = queue.declare(&self.inner.channel).await?;
        // The default exchange reaches every queue by its name and takes no bindings.
        let implicit = exchange.name().is_empty();
        if implicit && !routing_key.is_empty() && routing_key != name {
            return Err(Error::config(
                "routing_key",
                format!(
                    "the default exchange reaches queue {name:?} only by its own name, not {routing_key:?}"
                ),
            ));
        }
        if !implicit {
            self.inner
                .channel
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
        }
        let queue = if name == queue.name() {
            queue.clone()
        } else {
            Queue::new(name.clone())
        };
        let consuming = self.inner.consuming.lock().is_ok_and(|c| c.is_some());
        if let Ok(mut bindings) = self.inner.bindings.lock() {
            let binding = Binding {
                exchange: exchange.clone(),
                queue,
                routing_key: routing_key.to_owned(),
            };
            if !bindings.contains(&binding) {
                bindings.push(binding);
            }
        }
        if consuming {
            self.consume(&name).await?;
        }
        Ok(name)
    }

    /// Removes the binding of `queue` to `exchange` with `routing_key`, now.
    pub async fn unbind(&self, exchange: &Exchange, queue: &str, routing_key: &str) -> Result<()> {
        self.inner
            .channel
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
                !(b.exchange.name() == exchange.name()
                    && b.queue.name() == queue
                    && b.routing_key == routing_key)
            });
        }
        Ok(())
    }

    /// The bindings this consumer made, in order.
    pub fn bindings(&self) -> Vec<Binding> {
        self.inner
            .bindings
            .lock()
            .map(|b| b.clone())
            .unwrap_or_default()
    }

    /// Starts consuming every bound queue; deliveries then come from [`Consumer::next`].
    pub async fn start(&self) -> Result<()> {
        if let Ok(mut consuming) = self.inner.consuming.lock() {
            consuming.get_or_insert_with(HashMap::new);
        }
        let mut queues: Vec<String> = Vec::new();
        for binding in self.bindings() {
            if !queues.iter().any(|q| q == binding.queue.name()) {
                queues.push(binding.queue.name().to_owned());
            }
        }
        for queue in queues {
            self.consume(&queue).await?;
        }
        Ok(())
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
        let mut stream = self
            .inner
            .channel
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
        let sender = self.inner.sender.clone();
        let encoder = Arc::clone(&self.inner.encoder);
        let queue: Arc<str> = Arc::from(queue);
        tokio::spawn(async move {
            while let Some(next) = stream.next().await {
                let item = next
                    .map(|inner| Delivery {
                        inner,
                        queue: Arc::clone(&queue),
                        encoder: Arc::clone(&encoder),
                    })
                    .map_err(Error::amqp(format!("consuming queue {queue:?}")));
                if sender.send(item).await.is_err() {
                    break;
                }
            }
            tracing::debug!(queue = %queue, "consumer stream ended");
        });
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
        self.inner
            .channel
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
            self.cancel(&tag).await?;
        }
        Ok(())
    }

    /// Stops consuming and closes the consumer's channel; deliveries not acknowledged by
    /// then go back to their queues.
    pub async fn close(&self) -> Result<()> {
        self.stop().await?;
        if self.inner.channel.status().connected() {
            self.inner
                .channel
                .close(200, "postage: consumer closed".into())
                .await
                .map_err(Error::amqp("closing a consumer channel"))?;
        }
        Ok(())
    }

    /// The consumer's channel, for anything postage does not wrap.
    pub fn channel(&self) -> &lapin::Channel {
        &self.inner.channel
    }
}

/// A message handed to a consumer, to be acknowledged or rejected once handled.
#[derive(Debug)]
pub struct Delivery {
    inner: lapin::message::Delivery,
    queue: Arc<str>,
    encoder: Arc<dyn Encoder>,
}

impl Delivery {
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

    /// Acknowledges the message: the broker forgets it.
    pub async fn ack(&self) -> Result<()> {
        self.inner
            .acker
            .ack(BasicAckOptions::default())
            .await
            .map(drop)
            .map_err(Error::amqp(format!(
                "acknowledging a message from {:?}",
                self.queue
            )))
    }

    /// Rejects the message; with `requeue` the broker delivers it again, otherwise it is
    /// dropped or dead-lettered.
    pub async fn reject(&self, requeue: bool) -> Result<()> {
        self.inner
            .acker
            .reject(BasicRejectOptions { requeue })
            .await
            .map(drop)
            .map_err(Error::amqp(format!(
                "rejecting a message from {:?}",
                self.queue
            )))
    }

    /// The lapin delivery, for anything postage does not wrap.
    pub fn lapin(&self) -> &lapin::message::Delivery {
        &self.inner
    }
}
