//! A handler's arguments, recognised by type: the payload (any `serde` type, borrowed
//! `&str` included), the delivery's `&Metadata`, the RPC `Reply`, the sender's
//! [`UserId`] and the handler's [`Deadline`], in any order.

use std::sync::Mutex;

use serde::Deserialize;
use tokio::time::Instant;

use super::{HandlerCall, Metadata, Outcome, Reply};
use crate::wire::{COMMAND, Message};

/// The AMQP `user_id` of whoever sent the message, which RabbitMQ checks against the
/// sender's login (so it can be trusted); `None` when the sender set none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserId(pub Option<String>);

impl UserId {
    /// The user, when the sender named one.
    pub fn get(&self) -> Option<&str> {
        self.0.as_deref()
    }
}

/// When the processor cancels this handler (its timeout, see
/// [`ProcessorBuilder::handler_timeout`](crate::ProcessorBuilder::handler_timeout)), so
/// that it can give up in time on work of its own; `None` without a timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline(pub Option<Instant>);

impl Deadline {
    /// What is left of the time, `None` without a timeout.
    pub fn remaining(&self) -> Option<std::time::Duration> {
        self.0
            .map(|at| at.saturating_duration_since(Instant::now()))
    }
}

/// One call's parts, which a handler's arguments are taken from.
#[derive(Debug)]
#[doc(hidden)]
pub struct CallParts {
    pub message: Message,
    pub metadata: Metadata,
    reply: Mutex<Option<Reply>>,
    deadline: Option<Instant>,
}

impl CallParts {
    pub fn new(call: HandlerCall) -> Self {
        Self {
            message: call.message,
            metadata: call.metadata,
            reply: Mutex::new(call.reply),
            deadline: call.deadline,
        }
    }
}

/// A type a handler may take as an argument.
#[diagnostic::on_unimplemented(
    message = "a handler cannot take `{Self}` as an argument",
    label = "not something a handler is given",
    note = "a handler takes, in any order: its payload (any type that implements \
            `serde::Deserialize`, `&str` included), `&Metadata`, `Reply` (rpc handlers), \
            `UserId` and `Deadline`"
)]
#[doc(hidden)]
pub trait FromCall<'a>: Sized {
    /// Whether this argument is the payload: a handler takes one at most.
    const PAYLOAD: bool = false;

    fn from_call(call: &'a CallParts) -> Result<Self, Outcome>;
}

/// The payload: a command's `parameters`, any other message's whole `content`.
impl<'a, T: Deserialize<'a>> FromCall<'a> for T {
    const PAYLOAD: bool = true;

    fn from_call(call: &'a CallParts) -> Result<Self, Outcome> {
        let value = if call.message.kind == COMMAND {
            call.message.raw_parameters()
        } else {
            &call.message.content
        };
        T::deserialize(value).map_err(|e| {
            Outcome::undecodable(format!(
                "payload does not decode into {}: {e}",
                std::any::type_name::<T>()
            ))
        })
    }
}

impl<'a> FromCall<'a> for &'a Metadata {
    fn from_call(call: &'a CallParts) -> Result<Self, Outcome> {
        Ok(&call.metadata)
    }
}

impl<'a> FromCall<'a> for Reply {
    fn from_call(call: &'a CallParts) -> Result<Self, Outcome> {
        call.reply
            .lock()
            .ok()
            .and_then(|mut reply| reply.take())
            .ok_or_else(Outcome::no_reply_handle)
    }
}

impl<'a> FromCall<'a> for UserId {
    fn from_call(call: &'a CallParts) -> Result<Self, Outcome> {
        Ok(Self(call.metadata.user_id.clone()))
    }
}

impl<'a> FromCall<'a> for Deadline {
    fn from_call(call: &'a CallParts) -> Result<Self, Outcome> {
        Ok(Self(call.deadline))
    }
}
