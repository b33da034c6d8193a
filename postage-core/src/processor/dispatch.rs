//! Dispatch: a message to the handlers registered for it, filters first, and their
//! outcome to a disposition and an answer.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::FutureExt;

use super::Shared;
use super::reply::ChannelReply;
use super::table::Entry;
use crate::consumer::Delivery;
use crate::error::Result;
use crate::handler::{
    Filtered, HandlerCall, HandlerRegistration, Metadata, Outcome, Reply, ReplySender,
};
use crate::rpc::ReturnAddress;
use crate::wire::{COMMAND, Category, Message, RpcResult};

pub(super) fn metadata(delivery: &Delivery) -> Metadata {
    let properties = delivery.properties();
    Metadata {
        queue: delivery.queue().to_owned(),
        exchange: delivery.exchange().to_owned(),
        routing_key: delivery.routing_key().to_owned(),
        redelivered: delivery.redelivered(),
        headers: properties.headers().clone().unwrap_or_default(),
        reply_to: properties.reply_to().as_ref().map(ToString::to_string),
        correlation_id: properties
            .correlation_id()
            .as_ref()
            .map(ToString::to_string),
        user_id: properties.user_id().as_ref().map(ToString::to_string),
    }
}

impl<P: Send + Sync + 'static> Shared<P> {
    /// Runs the handlers for a delivery; false when it must be rejected.
    pub(super) async fn dispatch(&self, delivery: &Delivery, message: Message) -> bool {
        let metadata = metadata(delivery);
        match message.category {
            Category::Message => self.dispatch_message(message, metadata).await,
            Category::Rpc => self.dispatch_rpc(message, metadata).await,
        }
    }

    /// Runs every handler for the message, each on the message decoded once (the last
    /// one takes it, the others a copy); false when one failed or a filter rejected.
    pub(super) async fn dispatch_message(&self, message: Message, metadata: Metadata) -> bool {
        let mut ok = true;
        let handlers = self.table.message_handlers(&message.kind, &message.name);
        let Some((last, others)) = handlers.split_last() else {
            return true;
        };
        for entry in others {
            ok &= self
                .run_message(entry, message.clone(), metadata.clone())
                .await;
        }
        self.run_message(last, message, metadata).await && ok
    }

    /// Runs one message handler through its filters; false when it failed or a filter
    /// rejected the message.
    pub(super) async fn run_message(
        &self,
        entry: &Entry,
        message: Message,
        metadata: Metadata,
    ) -> bool {
        let handler = entry.registration;
        let copy = match filter(handler, message) {
            None => return true,
            Some(Err(())) => return false,
            Some(Ok(copy)) => copy,
        };
        let call = HandlerCall {
            message: copy,
            metadata,
            reply: None,
        };
        match self.call(entry, call).await {
            Outcome::Failed(reason) => {
                tracing::warn!(handler = handler.method, at = handler.location, kind = handler.kind, name = handler.name, %reason, "message handler failed; rejecting");
                false
            }
            Outcome::Done | Outcome::Answer(_) | Outcome::Replied => true,
        }
    }

    /// Runs the RPC handler and answers; false when the delivery must be rejected.
    pub(super) async fn dispatch_rpc(&self, message: Message, metadata: Metadata) -> bool {
        if message.kind != COMMAND {
            return true;
        }
        let Some(entry) = self.table.rpc_handler(&message.name) else {
            tracing::debug!(name = %message.name, "no RPC handler; acknowledging");
            return true;
        };
        let handler = entry.registration;
        let Some(reply_to) = metadata.reply_to.clone() else {
            tracing::warn!(handler = handler.method, name = %message.name, "rejecting an RPC call without reply_to");
            return false;
        };
        let copy = match filter(handler, message) {
            None => return true,
            Some(Err(())) => return false,
            Some(Ok(copy)) => copy,
        };
        let sent = Arc::new(AtomicBool::new(false));
        let sender: Arc<dyn ReplySender> = Arc::new(ChannelReply {
            answers: self.answers.clone(),
            to: ReturnAddress::new(reply_to, metadata.correlation_id.as_deref()),
            encoder: (!self.plain_json).then(|| Arc::clone(&self.encoder)),
            fingerprint: Arc::clone(&self.fingerprint),
        });
        let reply = Reply {
            sender: Arc::clone(&sender),
            sent: Arc::clone(&sent),
        };
        let call = HandlerCall {
            message: copy,
            metadata,
            reply: Some(reply),
        };
        let answer = match self.call(entry, call).await {
            Outcome::Answer(result) => result,
            Outcome::Replied | Outcome::Done => {
                RpcResult::error("the handler finished without replying")
            }
            Outcome::Failed(reason) => {
                tracing::warn!(handler = handler.method, at = handler.location, name = handler.name, %reason, "RPC handler failed; answering with an exception");
                RpcResult::exception("HandlerFailed", reason)
            }
        };
        let ok = !matches!(answer, RpcResult::Exception { .. });
        // An answer the handler already sent through its Reply stands.
        if !sent.swap(true, Ordering::SeqCst)
            && let Err(error) = sender.send(answer).await
        {
            tracing::warn!(%error, name = handler.name, "could not send the RPC answer");
        }
        ok
    }

    /// Calls one handler; a panic becomes a failure (answered with an exception in RPC).
    pub(super) async fn call(&self, entry: &Entry, call: HandlerCall) -> Outcome {
        let handler = entry.registration;
        let rpc = call.reply.is_some();
        match AssertUnwindSafe((handler.call)(Arc::clone(&entry.state), call))
            .catch_unwind()
            .await
        {
            Ok(outcome) => outcome,
            Err(panic) => {
                let text = panic
                    .downcast_ref::<&str>()
                    .map(ToString::to_string)
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "panic".to_owned());
                tracing::error!(handler = handler.method, at = handler.location, panic = %text, "handler panicked");
                if rpc {
                    Outcome::Answer(RpcResult::exception("Panic", text))
                } else {
                    Outcome::Failed(format!("panicked: {text}"))
                }
            }
        }
    }
}

/// Runs the handler's filters: `None` to skip, `Some(Err)` to reject.
pub(super) fn filter(
    handler: &HandlerRegistration,
    mut message: Message,
) -> Option<Result<Message, ()>> {
    for filter in handler.filters {
        match filter(message) {
            Filtered::Pass(next) => message = next,
            Filtered::Skip => return None,
            Filtered::Reject(reason) => {
                tracing::warn!(handler = handler.method, %reason, "a filter rejected the message");
                return Some(Err(()));
            }
        }
    }
    Some(Ok(message))
}
