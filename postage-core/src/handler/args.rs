//! A handler's arguments, recognised by type: the payload (any `serde` type, borrowed
//! `&str` included), the delivery's `&Metadata`, the RPC `Reply`, the sender's
//! [`UserId`], the handler's [`Deadline`] and shared [`State`], in any order.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::ops::Deref;
use std::sync::Arc;

use serde::Deserialize;
use tokio::time::Instant;

use super::{HandlerCall, Metadata, Outcome, Reply};
use crate::sync::Locked;
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

/// When this handler's work must be done: the deadline its RPC request came with (when
/// the caller stops waiting), or when the processor cancels the handler (its timeout, see
/// [`ProcessorBuilder::handler_timeout`](crate::ProcessorBuilder::handler_timeout)),
/// whichever comes first; `None` without either. The calls the handler makes wait no
/// longer than this, so it can give up in time on work of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline(pub Option<Instant>);

impl Deadline {
    /// What is left of the time, `None` without a deadline.
    pub fn remaining(&self) -> Option<std::time::Duration> {
        self.0
            .map(|at| at.saturating_duration_since(Instant::now()))
    }
}

/// A value the handlers of a processor share, given to it with
/// [`ProcessorBuilder::with_state`](crate::ProcessorBuilder::with_state) (a pool, a
/// client, a cache: what the processor's own struct does not hold), one per type. A
/// handler that takes a `State<T>` the processor was not given fails its build.
///
/// ```
/// use postage_core::{State, processor};
///
/// struct Prices(std::collections::HashMap<String, u32>);
/// struct Shop;
///
/// #[processor]
/// impl Shop {
///     #[rpc_handler("command", "price")]
///     fn price(&self, sku: &str, prices: State<Prices>) -> Option<u32> {
///         prices.0.get(sku).copied()
///     }
/// }
/// ```
#[derive(Debug)]
pub struct State<T> {
    value: Arc<T>,
}

impl<T> State<T> {
    /// The shared value itself, to keep beyond the call.
    pub fn arc(&self) -> &Arc<T> {
        &self.value
    }
}

impl<T> Clone for State<T> {
    fn clone(&self) -> Self {
        Self {
            value: Arc::clone(&self.value),
        }
    }
}

impl<T> Deref for State<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.value
    }
}

/// The shared values a processor was given, by type.
#[derive(Debug, Default, Clone)]
#[doc(hidden)]
pub struct States {
    values: HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
}

impl States {
    /// Adds `value`, replacing one of its type.
    pub(crate) fn insert<T: Send + Sync + 'static>(&mut self, value: T) {
        self.values.insert(TypeId::of::<T>(), Arc::new(value));
    }

    pub(crate) fn contains(&self, id: TypeId) -> bool {
        self.values.contains_key(&id)
    }

    fn get<T: Send + Sync + 'static>(&self) -> Option<Arc<T>> {
        let value = Arc::clone(self.values.get(&TypeId::of::<T>())?);
        value.downcast::<T>().ok()
    }
}

/// One call's parts, which a handler's arguments are taken from.
#[derive(Debug)]
#[doc(hidden)]
pub struct CallParts {
    pub message: Message,
    pub metadata: Metadata,
    reply: Locked<Option<Reply>>,
    deadline: Option<Instant>,
    states: Arc<States>,
    unit: Option<Arc<dyn Any + Send + Sync>>,
}

impl CallParts {
    pub fn new(call: HandlerCall) -> Self {
        Self {
            message: call.message,
            metadata: call.metadata,
            reply: Locked::new(call.reply),
            deadline: call.deadline,
            states: call.states,
            unit: call.unit,
        }
    }

    /// The inbox's unit of work for this call (see [`crate::inbox`]), as the inbox's own
    /// argument type takes it: `None` without an inbox, or when it is not a `T`.
    pub fn unit<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        Arc::clone(self.unit.as_ref()?).downcast::<T>().ok()
    }
}

/// A type a handler may take as an argument.
#[diagnostic::on_unimplemented(
    message = "a handler cannot take `{Self}` as an argument",
    label = "not something a handler is given",
    note = "a handler takes, in any order: its payload (any type that implements \
            `serde::Deserialize`, `&str` included), `&Metadata`, `Reply` (rpc handlers), \
            `UserId`, `Deadline` and `State<T>`"
)]
#[doc(hidden)]
pub trait FromCall<'a>: Sized {
    /// Whether this argument is the payload: a handler takes one at most.
    const PAYLOAD: bool = false;

    /// The shared value this argument needs, for the processor's build to check.
    fn state() -> Option<(TypeId, &'static str)> {
        None
    }

    fn from_call(call: &'a CallParts) -> Result<Self, Outcome>;
}

/// The payload: a command's `parameters`, any other message's whole `content`.
impl<'a, T: Deserialize<'a>> FromCall<'a> for T {
    const PAYLOAD: bool = true;

    fn from_call(call: &'a CallParts) -> Result<Self, Outcome> {
        let field = (call.message.kind == COMMAND).then_some("parameters");
        call.message.content.decode(field).map_err(|e| {
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
            .with(Option::take)
            .ok_or_else(Outcome::no_reply_handle)
    }
}

impl<'a> FromCall<'a> for UserId {
    fn from_call(call: &'a CallParts) -> Result<Self, Outcome> {
        Ok(Self(call.metadata.user_id().map(str::to_owned)))
    }
}

impl<'a> FromCall<'a> for Deadline {
    fn from_call(call: &'a CallParts) -> Result<Self, Outcome> {
        Ok(Self(call.deadline))
    }
}

impl<'a, T: Send + Sync + 'static> FromCall<'a> for State<T> {
    fn state() -> Option<(TypeId, &'static str)> {
        Some((TypeId::of::<T>(), std::any::type_name::<T>()))
    }

    fn from_call(call: &'a CallParts) -> Result<Self, Outcome> {
        call.states
            .get::<T>()
            .map(|value| State { value })
            .ok_or_else(|| Outcome::missing_state(std::any::type_name::<T>()))
    }
}
