//! Low-level access for those who think in AMQP terms (Python amqplib's users): a channel
//! on the shared [`Connection`] to declare, bind, publish plain [`Envelope`]s, poll a queue,
//! consume and cancel by consumer tag, and a close that flushes every publish.

mod envelope;
mod tracker;

pub use self::envelope::{Envelope, HeaderValue, Incoming};
pub(crate) use self::tracker::Confirms;
pub use self::tracker::{DeliveryStatus, Tracker};

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::{Stream, StreamExt};
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::FieldTable;
use tokio::sync::{OwnedSemaphorePermit, RwLock};

use crate::connection::{ChannelLease, Connection};
use crate::error::{Error, Result};
use crate::topology::Exchange;
use crate::topology::Queue;

/// What a passive declare tells of a queue ([`Channel::queue_state`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct QueueState {
    /// Messages ready for delivery (not those delivered and not yet acknowledged).
    pub messages: u32,
    /// Consumers reading it.
    pub consumers: u32,
}

/// An AMQP channel on a [`Connection`], in publisher-confirm mode, for everything
/// [`Producer`](crate::Producer) and [`Consumer`](crate::Consumer) do not wrap. Clones
/// share the channel.
///
/// Every [`publish`](Channel::publish) returns once the message is queued on its
/// connection, in order with the channel's other frames (waiting only while more than
/// 256 KiB is queued there), with a [`Tracker`] for the broker's confirm. [`close`](Channel::close) waits for the
/// confirm of every publish that started before it, so that when it returns every message
/// is in its queues: lapin's own close does not promise that (see the method).
///
/// Like any AMQP channel it dies with its connection: after the [`Connection`] has
/// reconnected ([`Connection::generation`] changed), open another.
///
/// ```no_run
/// use postage_core::{Connection, Exchange, Queue, channel::{Channel, Envelope}};
///
/// # async fn demo() -> postage_core::Result<()> {
/// let connection = Connection::from_env().await?;
/// let channel = Channel::open(&connection).await?;
///
/// // A server-named queue bound to a predeclared exchange.
/// let queue = channel.declare_queue(&Queue::new("").exclusive(true)).await?;
/// channel.bind(&queue, "amq.fanout", "").await?;
/// channel
///     .publish("amq.fanout", "", Envelope::text("hello").header("foo", 7))
///     .await?;
///
/// // Polling, with an explicit acknowledgement.
/// if let Some(message) = channel.get(&queue).await? {
///     println!("{} (foo = {:?})", message.text()?, message.header("foo"));
///     message.ack().await?;
/// }
///
/// // Consuming under a tag of our choosing, then cancelling by that tag.
/// let mut subscription = channel.consume(&queue, "mytag").await?;
/// # let _ = subscription.next().await;
/// channel.cancel("mytag").await?;
/// channel.close().await // every publish above is in its queue by now
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Channel {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    connection: Connection,
    /// Closed explicitly when the last clone goes, and awaited by `Connection::close`.
    amqp: ChannelLease,
    confirms: Confirms,
    /// Each publish holds a read guard while it hands its frames to lapin; `close` takes
    /// the write guard, so it waits for those and later publishes see `true`.
    closing: RwLock<bool>,
}

impl Channel {
    /// This channel's number, unique in the process (see `ChannelLease::serial`).
    pub(crate) fn serial(&self) -> u64 {
        self.inner.amqp.serial()
    }

    /// Whether the channel is still open (a connection loss closes it).
    pub(crate) fn is_open(&self) -> bool {
        self.lapin().status().connected()
    }

    /// Opens a channel on `connection` and turns on publisher confirms.
    pub async fn open(connection: &Connection) -> Result<Self> {
        let amqp = connection.lease_channel().await?;
        amqp.confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(Error::amqp("enabling publisher confirms"))?;
        Ok(Self {
            inner: Arc::new(Inner {
                connection: connection.clone(),
                amqp,
                confirms: Confirms::start(),
                closing: RwLock::new(false),
            }),
        })
    }

    /// Declares `exchange` (nothing to do for `""` and the predeclared `amq.*` ones).
    pub async fn declare_exchange(&self, exchange: &Exchange) -> Result<()> {
        exchange.declare(&self.inner.amqp).await
    }

    /// Declares `queue` and returns its name: the broker's choice (`amq.gen-...`) when
    /// the name is empty. Declared in the connection's [`QueueShape`].
    ///
    /// [`QueueShape`]: crate::QueueShape
    pub async fn declare_queue(&self, queue: &Queue) -> Result<String> {
        queue
            .declare(
                &self.inner.amqp,
                self.inner.connection.shape_for(queue).await,
            )
            .await
    }

    /// How many messages queue `name` holds ready and how many consumers read it, asked
    /// with a passive declare: `None` when there is no such queue (the broker closes the
    /// channel then, so a later call needs a new one).
    pub async fn queue_state(&self, name: &str) -> Result<Option<QueueState>> {
        let options = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        match self
            .inner
            .amqp
            .queue_declare(name.into(), options, FieldTable::default())
            .await
        {
            Ok(queue) => Ok(Some(QueueState {
                messages: queue.message_count(),
                consumers: queue.consumer_count(),
            })),
            Err(error)
                if matches!(
                    error.kind(),
                    lapin::ErrorKind::ProtocolError(amqp)
                        if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND))
                ) =>
            {
                Ok(None)
            }
            Err(error) => Err(Error::amqp(format!("asking about queue {name:?}"))(error)),
        }
    }

    /// Deletes `queue` and returns how many messages it held.
    pub async fn delete_queue(&self, queue: &str) -> Result<u32> {
        self.inner
            .amqp
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await
            .map_err(Error::amqp(format!("deleting queue {queue:?}")))
    }

    /// Binds `queue` to `exchange` with `routing_key`.
    pub async fn bind(&self, queue: &str, exchange: &str, routing_key: &str) -> Result<()> {
        self.inner
            .amqp
            .queue_bind(
                queue.into(),
                exchange.into(),
                routing_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(Error::amqp(format!(
                "binding queue {queue:?} to exchange {exchange:?} with key {routing_key:?}"
            )))
    }

    /// Removes the binding of `queue` to `exchange` with `routing_key`.
    pub async fn unbind(&self, queue: &str, exchange: &str, routing_key: &str) -> Result<()> {
        self.inner
            .amqp
            .queue_unbind(
                queue.into(),
                exchange.into(),
                routing_key.into(),
                FieldTable::default(),
            )
            .await
            .map_err(Error::amqp(format!(
                "unbinding queue {queue:?} from exchange {exchange:?} with key {routing_key:?}"
            )))
    }

    /// How many unacknowledged messages each consumer of this channel may hold at once.
    /// There is no channel-wide (`global`) prefetch: RabbitMQ 4.3 denies it by default
    /// (answering `qos-ok` and applying the prefetch to each consumer instead).
    pub async fn qos(&self, prefetch: u16) -> Result<()> {
        self.inner
            .amqp
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .map_err(Error::amqp(format!("setting prefetch {prefetch}")))
    }

    /// Publishes `envelope` to `exchange` (`""`: the default exchange, which routes to
    /// the queue named `routing_key`; `amq.direct`, `amq.fanout`, `amq.topic`... need no
    /// declaration). Returns once the message is queued on the connection (waiting only
    /// while more than 256 KiB is queued there, as under a memory alarm), with a
    /// [`Tracker`] of the broker's confirm; a publish after [`close`](Self::close)
    /// began is [`Error::Closed`].
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        envelope: Envelope,
    ) -> Result<Tracker> {
        self.publish_in_window(exchange, routing_key, envelope, None)
            .await
    }

    /// [`publish`](Self::publish), holding `window` until the broker confirms.
    pub(crate) async fn publish_in_window(
        &self,
        exchange: &str,
        routing_key: &str,
        envelope: Envelope,
        window: Option<OwnedSemaphorePermit>,
    ) -> Result<Tracker> {
        let closing = self.inner.closing.read().await;
        if *closing {
            return Err(Error::Closed("the channel"));
        }
        let (body, properties, mandatory) = envelope.into_parts();
        let confirm = self
            .inner
            .amqp
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory,
                    immediate: false,
                },
                &body,
                properties,
            )
            .await
            .map_err(Error::amqp(format!(
                "publishing to exchange {exchange:?} with key {routing_key:?}"
            )))?;
        Ok(self.inner.confirms.track(confirm, window).await)
    }

    /// Takes the next message of `queue` if there is one, without waiting (AMQP
    /// `basic.get`); acknowledge it with [`Incoming::ack`].
    pub async fn get(&self, queue: &str) -> Result<Option<Incoming>> {
        let got = self
            .inner
            .amqp
            .basic_get(queue.into(), BasicGetOptions { no_ack: false })
            .await
            .map_err(Error::amqp(format!("polling queue {queue:?}")))?;
        Ok(got.map(|message| Incoming::new(message.delivery, Arc::from(queue), None)))
    }

    /// Consumes `queue` under `tag` (empty: the broker picks one, see
    /// [`Subscription::tag`]); each message waits for [`Incoming::ack`] or
    /// [`Incoming::reject`]. Server-named queues are consumed by the name
    /// [`declare_queue`](Self::declare_queue) returned.
    pub async fn consume(&self, queue: &str, tag: &str) -> Result<Subscription> {
        self.start_consuming(queue, tag, false).await
    }

    /// Like [`consume`](Self::consume), but the broker counts each message acknowledged
    /// as soon as it sends it (`no_ack`): nothing to acknowledge, nothing redelivered.
    pub async fn consume_no_ack(&self, queue: &str, tag: &str) -> Result<Subscription> {
        self.start_consuming(queue, tag, true).await
    }

    async fn start_consuming(&self, queue: &str, tag: &str, no_ack: bool) -> Result<Subscription> {
        let consumer = self
            .inner
            .amqp
            .basic_consume(
                queue.into(),
                tag.into(),
                BasicConsumeOptions {
                    no_ack,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(Error::amqp(format!("consuming queue {queue:?}")))?;
        Ok(Subscription {
            tag: Arc::from(consumer.tag().as_str()),
            queue: Arc::from(queue),
            consumer,
        })
    }

    /// Cancels the consumer `tag`: the broker sends it nothing more and its
    /// [`Subscription`] ends once the messages already received are read.
    pub async fn cancel(&self, tag: &str) -> Result<()> {
        self.inner
            .amqp
            .basic_cancel(tag.into(), BasicCancelOptions::default())
            .await
            .map_err(Error::amqp(format!("cancelling consumer {tag:?}")))
    }

    /// How many published messages the broker has not confirmed yet.
    pub fn unconfirmed(&self) -> usize {
        self.inner.confirms.unsettled()
    }

    /// Waits until the broker confirmed every message published so far.
    pub async fn flush(&self) -> Result<()> {
        self.inner
            .amqp
            .wait_for_confirms()
            .await
            .map_err(Error::amqp("waiting for publisher confirms"))?;
        self.inner.confirms.all_settled().await;
        Ok(())
    }

    /// Waits until every tracked message is settled, without asking the broker: on a
    /// closed channel, they settle as aborted.
    pub(crate) async fn settled(&self) {
        self.inner.confirms.all_settled().await;
    }

    /// Flushes, then closes the channel. Publishes that started before the call are
    /// confirmed first (so every message is in its queues, or its tracker says why not);
    /// later ones fail with [`Error::Closed`]. Closing a closed channel does nothing.
    ///
    /// lapin alone does not promise this: a `Channel.Close` frame is queued ahead of
    /// publish frames not yet written (so concurrent or not-yet-awaited publishes are
    /// lost), and after a connection close the broker may still be routing the last
    /// messages when the call returns.
    pub async fn close(&self) -> Result<()> {
        let mut closing = self.inner.closing.write().await;
        if *closing {
            return Ok(());
        }
        *closing = true;
        if !self.inner.amqp.status().connected() {
            return Ok(());
        }
        self.flush().await?;
        self.inner
            .amqp
            .close(200, "postage: channel closed".into())
            .await
            .map_err(Error::amqp("closing a channel"))
    }

    /// The connection this channel is on.
    pub fn connection(&self) -> &Connection {
        &self.inner.connection
    }

    /// The lapin channel, for anything postage does not wrap.
    pub fn lapin(&self) -> &lapin::Channel {
        &self.inner.amqp
    }
}

/// The messages of one consumer, as a [`Stream`] or with [`Subscription::next`]; it ends
/// when the consumer is cancelled or its channel closes.
#[derive(Debug)]
pub struct Subscription {
    tag: Arc<str>,
    queue: Arc<str>,
    consumer: lapin::Consumer,
}

impl Subscription {
    /// The consumer tag, to [`Channel::cancel`] it.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The queue consumed.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The next message; `None` once the consumer is cancelled.
    pub async fn next(&mut self) -> Option<Result<Incoming>> {
        StreamExt::next(self).await
    }
}

impl Stream for Subscription {
    type Item = Result<Incoming>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        this.consumer.poll_next_unpin(cx).map(|next| {
            next.map(|delivery| {
                delivery
                    .map(|d| Incoming::new(d, Arc::clone(&this.queue), Some(Arc::clone(&this.tag))))
                    .map_err(Error::amqp(format!("consuming queue {:?}", this.queue)))
            })
        })
    }
}
