//! Declarations on channels of their own: a declaration the broker refuses (a 406 over
//! an exchange of another type, a 404, an access refusal) closes the channel it ran on,
//! and that must never be a channel that carries consumers, deliveries to settle or RPC
//! answers. Every exchange, queue and binding postage declares goes through here.

use std::future::Future;

use lapin::options::QueueBindOptions;
use lapin::types::FieldTable;

use super::Connection;
use crate::error::{Error, Result};
use crate::topology::{Exchange, Queue, QueueShape};

impl Connection {
    /// Runs `operation` on the connection's declaration channel, opened the first time
    /// and again after it was closed (by a refusal, or with the connection); while one
    /// operation holds it, another gets a channel of its own for the time it takes. The
    /// whole of it is bounded by [`Config::operation_timeout`](crate::Config), and named
    /// `what` in the timeout's error.
    async fn declaring<T, F, Fut>(&self, what: impl FnOnce() -> String, operation: F) -> Result<T>
    where
        F: FnOnce(lapin::Channel) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        self.bounded(what, self.declaring_unbounded(operation))
            .await
    }

    async fn declaring_unbounded<T, F, Fut>(&self, operation: F) -> Result<T>
    where
        F: FnOnce(lapin::Channel) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let spare = self
            .inner
            .declaring
            .with(Option::take)
            .filter(|channel| channel.status().connected());
        let channel = match spare {
            Some(channel) => channel,
            None => self.open_channel().await?,
        };
        let outcome = operation(channel.clone()).await;
        if channel.status().connected() {
            let returned = self.inner.declaring.with(|slot| {
                if slot.is_none() {
                    *slot = Some(channel.clone());
                    None
                } else {
                    Some(channel.clone())
                }
            });
            // Another operation's channel went back first: this one is surplus.
            if let Some(surplus) = returned {
                tokio::spawn(async move {
                    let _ = surplus
                        .close(200, "postage: declarations done".into())
                        .await;
                });
            }
        }
        outcome
    }

    /// Declares `exchange` (nothing to do for the default and `amq.*` ones).
    pub(crate) async fn declare_exchange(&self, exchange: &Exchange) -> Result<()> {
        if exchange.is_predeclared() {
            return Ok(());
        }
        self.declaring(
            || format!("declaring exchange {:?}", exchange.name()),
            |channel| async move { exchange.declare(&channel).await },
        )
        .await
    }

    /// Declares `queue`, in the shape this connection's broker accepts, and returns its
    /// name (the broker's choice for an unnamed queue).
    pub(crate) async fn declare_queue(&self, queue: &Queue) -> Result<String> {
        let shape = self.shape_for(queue).await;
        self.declaring(
            || format!("declaring queue {:?}", queue.name()),
            |channel| async move { queue.declare(&channel, shape).await },
        )
        .await
    }

    /// The shape `queue` is declared in here: asked of the broker only for a queue whose
    /// shape it decides.
    pub(crate) async fn shape_for(&self, queue: &Queue) -> QueueShape {
        if queue.takes_shape() {
            self.queue_shape().await
        } else {
            QueueShape::Transient
        }
    }

    /// Binds queue `name` to `exchange` with `routing_key`.
    pub(crate) async fn bind_queue(
        &self,
        name: &str,
        exchange: &Exchange,
        routing_key: &str,
    ) -> Result<()> {
        let what = || format!("binding queue {name:?} to exchange {:?}", exchange.name());
        self.declaring(what, |channel| async move {
            channel
                .queue_bind(
                    name.into(),
                    exchange.name().into(),
                    routing_key.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(Error::amqp(format!(
                    "binding queue {name:?} to exchange {:?} with key {routing_key:?}",
                    exchange.name()
                )))
        })
        .await
    }

    /// Removes the binding of queue `name` to `exchange` with `routing_key`.
    pub(crate) async fn unbind_queue(
        &self,
        name: &str,
        exchange: &Exchange,
        routing_key: &str,
    ) -> Result<()> {
        let what = || {
            format!(
                "unbinding queue {name:?} from exchange {:?}",
                exchange.name()
            )
        };
        self.declaring(what, |channel| async move {
            channel
                .queue_unbind(
                    name.into(),
                    exchange.name().into(),
                    routing_key.into(),
                    FieldTable::default(),
                )
                .await
                .map_err(Error::amqp(format!(
                    "unbinding queue {name:?} from exchange {:?} with key {routing_key:?}",
                    exchange.name()
                )))
        })
        .await
    }
}
