//! A message handed to a [`Consumer`](super::Consumer), and how any delivery is settled.

use std::sync::Arc;

use lapin::options::{BasicAckOptions, BasicRejectOptions};

use crate::connection::ChannelLease;
use crate::error::{Error, Result};
use crate::wire::{Encoder, Message};

/// A message handed to a consumer, to be acknowledged or rejected once handled.
#[derive(Debug)]
pub struct Delivery {
    /// Shared, so a handler's [`Metadata`](crate::Metadata) reads it without copies.
    pub(super) inner: Arc<lapin::message::Delivery>,
    pub(super) queue: Arc<str>,
    pub(super) encoder: Arc<dyn Encoder>,
    /// The channel it came on: its delivery tag means something there only.
    pub(super) channel: Arc<ChannelLease>,
    /// Counts it among its queue's deliveries not yet dropped.
    pub(super) _held: Held,
}

/// One of a queue's deliveries (or its stream) still held: counted while it lives, so a
/// consumer that stopped reading a queue can tell when nothing of it is left.
#[derive(Debug)]
pub(super) struct Held(Arc<std::sync::atomic::AtomicUsize>);

impl Held {
    pub(super) fn new(count: &Arc<std::sync::atomic::AtomicUsize>) -> Self {
        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Self(Arc::clone(count))
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Delivery {
    /// The channel it came on, which settles it by its tag.
    pub(crate) fn channel(&self) -> &Arc<ChannelLease> {
        &self.channel
    }

    /// The lapin delivery and the queue's name, to share.
    pub(crate) fn shared(&self) -> (&Arc<lapin::message::Delivery>, &Arc<str>) {
        (&self.inner, &self.queue)
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
