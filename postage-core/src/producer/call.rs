//! RPC calls from a producer: many calls in flight on one channel, each matched to its
//! answer by correlation id through the RPC engine, the answers coming back over
//! RabbitMQ's direct reply-to, a private reply queue, or a queue per call (see
//! [`ReplyQueue`]).

use std::time::Duration;

use futures_util::StreamExt;
use lapin::types::ShortString;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot};

use super::options::{RpcOptions, RpcSettings};
use super::pending::PendingCall;
use crate::deadline::instant_after;
use crate::error::{Error, Result};
use crate::producer::{Producer, Publish, Route};
use crate::rpc::{Destination, Heard, Replies, ReplyQueue, start_reply_consumer};
use crate::topology::Exchange;
use crate::wire::{Category, Message, RpcResult};

/// A call waiting for its answer on the shared reply queue.
#[derive(Debug)]
pub(super) struct Waiter {
    /// The reply consumer (its epoch) the call was last sent for.
    pub(super) epoch: u64,
    /// Where the call went.
    pub(super) destination: Destination,
    pub(super) answer: oneshot::Sender<Heard>,
    /// Where its progress beats go, when it asked for them.
    pub(super) beats: Option<mpsc::Sender<Vec<u8>>>,
}

impl crate::rpc::Waiter for Waiter {
    fn epoch(&self) -> u64 {
        self.epoch
    }

    fn destination(&self) -> Option<Destination> {
        Some(self.destination)
    }

    fn hear(self, heard: Heard) {
        let _ = self.answer.send(heard);
    }

    fn progress(&self, body: Vec<u8>) {
        // A beat the call has no room for tells nothing the ones waiting do not.
        if let Some(beats) = &self.beats {
            let _ = beats.try_send(body);
        }
    }
}

/// A producer's RPC settings and its calls in flight, whose answers come on a reply
/// consumer started with the first call.
#[derive(Debug)]
pub(crate) struct RpcState {
    pub(crate) settings: RpcSettings,
    pub(super) replies: Replies<Waiter>,
}

impl RpcState {
    pub(crate) fn new(settings: RpcSettings) -> Self {
        Self {
            settings,
            replies: Replies::new(settings.reply_queue),
        }
    }
}

impl Producer {
    /// Calls the RPC command `name` with `parameters` and returns the answer as Postage
    /// does: a success, error or exception result; after the last retry an exception of
    /// kind `TimeoutError`.
    pub async fn rpc(&self, name: &str, parameters: impl Serialize) -> Result<RpcResult> {
        self.rpc_with(name, parameters, RpcOptions::new()).await
    }

    /// [`Producer::rpc`] with per-call options.
    pub async fn rpc_with(
        &self,
        name: &str,
        parameters: impl Serialize,
        options: RpcOptions,
    ) -> Result<RpcResult> {
        match self
            .rpc_deferred(name, parameters, options)
            .await?
            .result()
            .await
        {
            Err(Error::RpcTimeout {
                attempts, timeout, ..
            }) => Ok(RpcResult::exception(
                "TimeoutError",
                format!("no answer in {attempts} attempts of {timeout:?}"),
            )),
            other => other,
        }
    }

    /// Calls `name` and decodes a success into `T`; an error or exception result is
    /// [`Error::RemoteError`] or [`Error::RemoteException`], no answer [`Error::RpcTimeout`].
    pub async fn call<T: DeserializeOwned>(
        &self,
        name: &str,
        parameters: impl Serialize,
    ) -> Result<T> {
        self.call_with(name, parameters, RpcOptions::new()).await
    }

    /// [`Producer::call`] with per-call options.
    pub async fn call_with<T: DeserializeOwned>(
        &self,
        name: &str,
        parameters: impl Serialize,
        options: RpcOptions,
    ) -> Result<T> {
        self.rpc_deferred(name, parameters, options)
            .await?
            .value()
            .await
    }

    /// Sends the call now and returns a [`PendingCall`] to await the answer later
    /// (Postage's `_queue_only`).
    pub async fn rpc_deferred(
        &self,
        name: &str,
        parameters: impl Serialize,
        mut options: RpcOptions,
    ) -> Result<PendingCall> {
        let (exchange, routing_key, body) =
            self.request(name, parameters, &options.route.take().unwrap_or_default())?;
        PendingCall::new(self, name, exchange.name(), &routing_key, body, &options)
            .sent()
            .await
    }
}

impl Producer {
    /// The exchange, routing key and body of a call of `name` along `route`.
    fn request(
        &self,
        name: &str,
        parameters: impl Serialize,
        route: &Route,
    ) -> Result<(Exchange, String, Vec<u8>)> {
        let (exchange, routing_key) = self
            .resolve(route)?
            .first()
            .map(|(e, k)| (e.clone(), k.clone()))
            .ok_or_else(|| Error::config("route", "an RPC route needs one (exchange, key) pair"))?;
        let body = if self.plain_json() {
            self.command_body(name, Category::Rpc, &parameters)?
        } else {
            let message = Message::rpc_command(name, parameters)?
                .with_fingerprint(self.fingerprint().clone());
            if self.debug() {
                tracing::info!(exchange = %exchange.name(), routing_key = %routing_key, name, content = %message.content, "--> RPC call");
            }
            self.encoder().encode(&message)?
        };
        Ok((exchange, routing_key, body))
    }

    /// Calls `name` on every component `route` reaches (a fanout key runs the handler on
    /// each) and collects their answers for `wait`, or, with `after_first`, until that
    /// long after the first one. The answers come on a reply queue of the call's own (as
    /// [`ReplyQueue::PerCall`]), so answers without a correlation id count too. Sending
    /// counts against `wait`; under a resource alarm the call fails with
    /// [`Error::Blocked`]. A reliable producer reports a route no queue takes as
    /// [`Error::Unroutable`].
    pub async fn gather(
        &self,
        name: &str,
        parameters: impl Serialize,
        route: &Route,
        wait: Duration,
        after_first: Option<Duration>,
    ) -> Result<Vec<RpcResult>> {
        let (exchange, routing_key, body) = self.request(name, parameters, route)?;
        let id = self.rpc_state().replies.waiters.next_id();
        if let Some(recording) = self.recording() {
            let properties = self.properties().with_correlation_id(id.as_ref().into());
            let publish = Publish::new(exchange.name(), &routing_key, &body, properties);
            self.send_unbounded(publish.mandatory(true)).await?;
            return Ok(recording.answer_of(name).into_iter().collect());
        }
        let link = self.link()?;
        let asked = async {
            self.ensure_declared(&exchange).await?;
            let channel = link.lease_channel().await?;
            let (address, answers) =
                start_reply_consumer(link, &channel, ReplyQueue::PerCall).await?;
            let properties = self
                .properties()
                .with_reply_to(address)
                .with_correlation_id(id.as_ref().into());
            let publish = Publish::new(exchange.name(), &routing_key, &body, properties);
            self.send_unbounded(publish.mandatory(true)).await?;
            Ok::<_, Error>((channel, answers))
        };
        let Ok(asked) = tokio::time::timeout(wait, asked).await else {
            return Err(self.overdue(
                format!("calling {name:?} on routing key {routing_key:?}"),
                wait,
            ));
        };
        let (_channel, mut answers) = asked?;
        let mut found = Vec::new();
        let mut deadline = instant_after(wait);
        while let Ok(Some(Ok(delivery))) = tokio::time::timeout_at(deadline, answers.next()).await {
            match self.encoder().decode(&delivery.data) {
                Ok(answer) => found.push(answer.to_result()),
                Err(error) => tracing::warn!(%error, name, "ignoring a malformed answer"),
            }
            if let Some(grace) = after_first
                && found.len() == 1
            {
                deadline = deadline.min(instant_after(grace));
            }
        }
        Ok(found)
    }
}

impl Producer {
    /// The `reply_to` address of this producer's calls and the epoch of the answer
    /// consumer behind it, starting that consumer on the live channel when it is not
    /// running there yet.
    pub(super) async fn reply_address(&self) -> Result<(ShortString, u64)> {
        if self.recording().is_some() {
            return Ok((ShortString::from("postage.recording"), 0));
        }
        let channel = self.live_channel().await?;
        self.rpc_state()
            .replies
            .address(self.link()?, &channel)
            .await
    }
}

impl Producer {
    /// Hands a recorded call's answer to the call waiting for it.
    pub(super) fn answer_recorded(&self, correlation_id: &str, body: Vec<u8>) {
        self.rpc_state().replies.hand(correlation_id, body);
    }
}
