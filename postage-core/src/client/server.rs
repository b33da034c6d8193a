//! A server of one target, built on the consumer engine: the connection's supervisor
//! restores its queues and consumers after any loss, for as long as it runs.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt;
use lapin::BasicProperties;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::Notify;

use super::{FANOUT_EXCHANGE, Mode, Target};
use crate::connection::Connection;
use crate::consumer::{Consumer, Delivery};
use crate::error::{Error, Result};
use crate::producer::{Producer, Publish};
use crate::rpc::ReturnAddress;
use crate::topology::{Exchange, Queue};

/// One message a [`Server`] handles: its JSON body, how it was sent, its properties.
#[derive(Debug, Clone)]
pub struct Request {
    body: Value,
    mode: Mode,
    properties: BasicProperties,
}

impl Request {
    /// The JSON body.
    pub fn body(&self) -> &Value {
        &self.body
    }

    /// The body decoded into `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        T::deserialize(&self.body).map_err(|source| Error::Payload {
            what: "a request".to_owned(),
            source,
        })
    }

    /// How it was sent: a call (it has a `reply_to`), a cast or a fanout.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The AMQP properties: `reply_to`, `correlation_id`, headers...
    pub fn properties(&self) -> &BasicProperties {
        &self.properties
    }
}

/// Stops a running [`Server`] from elsewhere: it finishes the request in hand, and
/// [`Server::serve`] returns.
#[derive(Debug, Clone)]
pub struct ServerHandle {
    stop: Arc<Notify>,
}

impl ServerHandle {
    /// Asks the server to stop (before it started serving too).
    pub fn shutdown(&self) {
        self.stop.notify_one();
    }
}

/// A server of one [`Target`]: consumes the target's shared queue and its own private
/// fanout queue, one message at a time, and answers calls. It is built on a
/// [`Consumer`]: when the connection is lost, however long for, or the broker closes
/// its channel or cancels a consumer (a deleted queue), its queues and consumers are
/// restored and it goes on serving.
#[derive(Debug)]
pub struct Server {
    consumer: Consumer,
    /// Publishes the answers.
    answers: Producer,
    target: Target,
    stop: Arc<Notify>,
}

/// How many messages a server's broker hands over ahead.
const SERVER_PREFETCH: u16 = 10;

impl Server {
    /// Declares the target's queue and a private fanout queue, and consumes both.
    pub(super) async fn declare(connection: &Connection, target: &Target) -> Result<Self> {
        let consumer = Consumer::builder(connection)
            .prefetch(SERVER_PREFETCH)
            .bind(Exchange::new(""), target.queue().clone(), target.name())
            .bind(
                Exchange::new(FANOUT_EXCHANGE),
                Queue::new("").exclusive(true).auto_delete(true),
                target.fanout_key(),
            )
            .build()
            .await?;
        let answers = Producer::builder(connection).build().await?;
        Ok(Self {
            consumer,
            answers,
            target: target.clone(),
            stop: Arc::new(Notify::new()),
        })
    }

    /// A handle to stop the server.
    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            stop: Arc::clone(&self.stop),
        }
    }

    /// The target served.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The server-named queue that receives this server's fanout copies (named anew by
    /// the broker after a recovery).
    pub fn private_queue(&self) -> String {
        self.consumer
            .bindings()
            .into_iter()
            .find(|b| b.exchange.name() == FANOUT_EXCHANGE)
            .map(|b| b.queue.name().to_owned())
            .unwrap_or_default()
    }

    /// Handles messages until [`ServerHandle::shutdown`] or until the connection is
    /// closed, then closes its channel. A lost connection is waited for, however long it
    /// takes (see [`Connection`]), and serving resumes on a new channel, as it does when
    /// the broker closes the channel or cancels a consumer (a deleted queue is declared
    /// again). `handler` gets each [`Request`]; when the request has a `reply_to`, its
    /// return value is sent there as JSON with the request's `correlation_id`. A body
    /// that is not JSON, or a handler that panics, has the message rejected and logged,
    /// and the server goes on.
    pub async fn serve<F, Fut, R>(self, handler: F) -> Result<()>
    where
        F: Fn(Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send,
        R: Serialize,
    {
        let mut server = self;
        server.consumer.start().await?;
        loop {
            let next = tokio::select! {
                biased;
                () = server.stop.notified() => break,
                next = server.consumer.next() => next,
            };
            let Some(delivery) = next else {
                break;
            };
            let delivery = delivery?;
            if let Err(error) = server.answer(&handler, &delivery).await {
                tracing::warn!(target = server.target.name(), %error, "a request was not answered; the broker delivers it again");
            }
        }
        match server.consumer.close().await {
            // Closed by the application with its connection: nothing more to close.
            Err(_)
                if server
                    .answers
                    .connection()
                    .is_some_and(|c| !c.lapin().status().connected()) =>
            {
                Ok(())
            }
            other => other,
        }
    }

    async fn answer<F, Fut, R>(&self, handler: &F, message: &Delivery) -> Result<()>
    where
        F: Fn(Request) -> Fut,
        Fut: Future<Output = R>,
        R: Serialize,
    {
        let target = self.target.name();
        let body: Value = match serde_json::from_slice(message.body()) {
            Ok(body) => body,
            Err(error) => {
                tracing::warn!(target, %error, "rejecting a request that is not JSON");
                return message.reject(false).await;
            }
        };
        let properties = message.properties();
        let reply_to = ReturnAddress::of(properties);
        let mode = if message.exchange() == FANOUT_EXCHANGE {
            Mode::Fanout
        } else if reply_to.is_some() {
            Mode::Rpc
        } else {
            Mode::Cast
        };
        let request = Request {
            body,
            mode,
            properties: properties.clone(),
        };
        let answer = match AssertUnwindSafe(handler(request)).catch_unwind().await {
            Ok(answer) => answer,
            Err(panic) => {
                let reason = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(
                    target,
                    reason,
                    "the handler panicked; rejecting the request"
                );
                return message.reject(false).await;
            }
        };
        let Some(reply_to) = reply_to else {
            return message.ack().await;
        };
        // Serialized in a block of its own, so the answer is not held across an await.
        let body = {
            let answer = answer;
            serde_json::to_vec(&answer)
        };
        let body = match body {
            Ok(body) => body,
            Err(error) => {
                tracing::error!(target, %error, "the answer does not serialize; rejecting the request");
                return message.reject(false).await;
            }
        };
        let answer = reply_to.properties("application/json");
        let publish = Publish::new("", reply_to.reply_to(), &body, answer);
        self.answers
            .send(publish.mandatory(self.answers.reliable()))
            .await?;
        message.ack().await
    }
}
