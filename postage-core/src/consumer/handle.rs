//! The cloneable handle that changes what a running consumer reads.

use std::sync::Arc;

use super::engine::Engine;
use crate::error::{Error, Result};
use crate::topology::{Binding, Exchange, Queue};

/// A cheap, cloneable handle on a [`Consumer`](super::Consumer): binds, unbinds and stops
/// consuming queues at run time from anywhere, a handler included, while the consumer
/// runs. What it changes is kept: a recovery restores it.
#[derive(Debug, Clone)]
pub struct ConsumerHandle {
    pub(super) engine: Arc<Engine>,
}

impl ConsumerHandle {
    /// The live channel.
    pub(crate) fn live_channel(&self) -> lapin::Channel {
        (*self.engine.live_lease()).clone()
    }

    /// Declares `exchange` and `queue` and binds them with `routing_key`, now, on a
    /// channel of their own (a declaration the broker refuses fails this call only, and
    /// leaves the consumer's channel, its consumers and its deliveries as they are), and
    /// remembers it so a recovery restores it. When the consumer is consuming, a queue it
    /// did not read yet is read too. Returns the queue's name (the broker's choice for an
    /// unnamed queue).
    pub async fn bind(
        &self,
        exchange: &Exchange,
        queue: &Queue,
        routing_key: &str,
    ) -> Result<String> {
        self.engine.bind(exchange, queue, routing_key).await
    }

    /// Removes the binding of `queue` to `exchange` with `routing_key`, now.
    pub async fn unbind(&self, exchange: &Exchange, queue: &str, routing_key: &str) -> Result<()> {
        self.engine.unbind(exchange, queue, routing_key).await
    }

    /// The bindings this consumer made, in order, each queue under its actual name.
    pub fn bindings(&self) -> Vec<Binding> {
        self.engine.bindings()
    }

    /// Starts consuming every bound queue; deliveries then come from
    /// [`Consumer::next`](super::Consumer::next).
    pub async fn start(&self) -> Result<()> {
        self.engine.start_consuming().await
    }

    /// Stops reading one queue, leaving its bindings in place; deliveries already received
    /// from it can still be acknowledged. Binding the queue again reads it again.
    pub async fn stop_consuming(&self, queue: &str) -> Result<()> {
        self.engine.stop_consuming(queue).await
    }

    /// The queues being read now, sorted.
    pub fn consumed_queues(&self) -> Vec<String> {
        self.engine.consumed_queues()
    }

    /// Stops consuming: the broker sends nothing more, and deliveries already received
    /// can still be read and acknowledged.
    pub async fn stop(&self) -> Result<()> {
        self.engine.stop().await
    }

    /// How many deliveries of `queue` the consumer still holds (received and not yet
    /// dropped, or waiting in its stream): 0 once a queue no longer read is done with.
    pub(crate) fn held(&self, queue: &str) -> usize {
        self.engine.held(queue)
    }

    /// Closes the consumer's channel without cancelling its consumers first: the broker
    /// puts every delivery not acknowledged back in its queue, in its place, before it
    /// hands the queue to another consumer (a single-active-consumer queue's next one),
    /// so a consumer that keeps an order hands over in order.
    pub(crate) async fn close_in_order(&self) -> Result<()> {
        self.engine.forget_consumers();
        let channel = self.live_channel();
        if channel.status().connected() {
            channel
                .close(200, "postage: consumer closed".into())
                .await
                .map_err(Error::amqp("closing a consumer channel"))?;
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
}
