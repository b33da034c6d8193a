//! What a handler sees and answers: the registry the handler attributes fill, the call a
//! handler receives, its delivery metadata, its reply handle and its outcome.

use std::any::{Any, TypeId};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use lapin::types::FieldTable;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Result;
use crate::wire::{COMMAND, Category, Message, RpcResult};

/// A boxed future, as handler wrappers return.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Where a message came from: everything about its delivery except the body.
#[derive(Debug, Clone, Default)]
pub struct Metadata {
    /// The queue it was read from.
    pub queue: String,
    /// The exchange it was published to (`""` for the default exchange).
    pub exchange: String,
    /// The routing key it was published with.
    pub routing_key: String,
    /// True when the broker delivered it before without an acknowledgement.
    pub redelivered: bool,
    /// The AMQP application headers.
    pub headers: FieldTable,
    /// The queue the sender waits for an answer on, for RPC.
    pub reply_to: Option<String>,
    /// The sender's correlation id, copied into the answer.
    pub correlation_id: Option<String>,
    /// The AMQP `user_id` of the sender, when it set one; RabbitMQ checks that it is the
    /// user the sender logged in as, so it can be trusted.
    pub user_id: Option<String>,
}

/// A filter run before a handler on a copy of the message: it passes the message on
/// (possibly rewritten), makes that handler skip it, or rejects the delivery.
pub type FilterFn = fn(Message) -> Filtered;

/// What a [`FilterFn`] decided.
#[derive(Debug, Clone, PartialEq)]
#[allow(
    clippy::large_enum_variant,
    reason = "the message passes by value from filter to filter"
)]
pub enum Filtered {
    /// Hand this message (the original or a rewritten one) to the next filter or the handler.
    Pass(Message),
    /// This handler does not see the message; the delivery is still acknowledged.
    Skip,
    /// Reject the delivery without requeue, for the reason given.
    Reject(String),
}

/// A handler's failure: an error its author foresaw, or an exception. In an RPC handler
/// the first is answered with an error result (and the delivery acknowledged), the second
/// with an exception result (and the delivery rejected). Any `std::error::Error`
/// converts into an exception named after its type, so `?` works in handlers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandlerError {
    /// A foreseen failure, answered as Postage's error result.
    Error(String),
    /// An unexpected failure, answered as Postage's exception result.
    Exception {
        /// The kind of failure, such as `ValueError`.
        kind: String,
        /// What went wrong.
        message: String,
    },
}

impl HandlerError {
    /// A foreseen failure.
    pub fn error(message: impl Into<String>) -> Self {
        Self::Error(message.into())
    }

    /// An unexpected failure of kind `kind`.
    pub fn exception(kind: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Exception {
            kind: kind.into(),
            message: message.into(),
        }
    }

    fn into_result(self) -> RpcResult {
        match self {
            Self::Error(message) => RpcResult::Error { message },
            Self::Exception { kind, message } => RpcResult::Exception { kind, message },
        }
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Error(message) => f.write_str(message),
            Self::Exception { kind, message } => write!(f, "{kind}: {message}"),
        }
    }
}

impl<E: std::error::Error> From<E> for HandlerError {
    fn from(error: E) -> Self {
        let full = std::any::type_name::<E>();
        let kind = full.rsplit("::").next().unwrap_or(full);
        Self::exception(kind, error.to_string())
    }
}

/// The handle an RPC handler answers through, so it can reply first and keep working.
#[derive(Debug)]
pub struct Reply {
    pub(crate) sender: Arc<dyn ReplySender>,
    pub(crate) sent: Arc<AtomicBool>,
}

impl Reply {
    /// Sends the answer. A second answer to the same call is ignored.
    pub async fn send(self, result: RpcResult) -> Result<()> {
        if self.sent.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        self.sender.send(result).await
    }

    /// Answers with a success carrying `value`.
    pub async fn success(self, value: impl Serialize) -> Result<()> {
        let result = RpcResult::success(value)?;
        self.send(result).await
    }
}

/// Publishes an RPC answer; implemented by the processor runtime.
pub(crate) trait ReplySender: fmt::Debug + Send + Sync {
    fn send(&self, result: RpcResult) -> BoxFuture<Result<()>>;
}

/// How a handler call ended; the runtime acknowledges, rejects and answers from it.
#[derive(Debug)]
#[doc(hidden)]
pub enum Outcome {
    /// Handled; acknowledge.
    Done,
    /// Failed; reject without requeue and log why.
    Failed(String),
    /// An RPC answer to send.
    Answer(RpcResult),
    /// The handler answered through its [`Reply`] itself.
    Replied,
}

impl Outcome {
    /// The registration's type check failed: a bug in postage, not in the user's code.
    pub fn wrong_processor() -> Self {
        Self::Failed("handler registered for another processor type".to_owned())
    }

    /// An RPC handler asked for a reply handle on a message that has none.
    pub fn no_reply_handle() -> Self {
        Self::Failed("no reply handle for this call".to_owned())
    }
}

/// One handler call: the message (a copy of its own), its metadata and, for RPC, the
/// reply handle.
#[derive(Debug)]
#[doc(hidden)]
pub struct HandlerCall {
    pub message: Message,
    pub metadata: Metadata,
    pub reply: Option<Reply>,
}

impl HandlerCall {
    /// The payload decoded for the handler: a command's `parameters`, any other message's
    /// whole `content`.
    pub fn payload<T: DeserializeOwned>(&self) -> Result<T, Outcome> {
        let value = if self.message.kind == COMMAND {
            self.message.raw_parameters()
        } else {
            &self.message.content
        };
        T::deserialize(value).map_err(|e| {
            Outcome::Failed(format!(
                "payload does not decode into {}: {e}",
                std::any::type_name::<T>()
            ))
        })
    }
}

/// One handler, as `#[processor]` registers it through `inventory`.
#[derive(Debug)]
#[doc(hidden)]
pub struct HandlerRegistration {
    pub processor: fn() -> TypeId,
    pub processor_name: &'static str,
    pub category: Category,
    pub kind: &'static str,
    pub name: &'static str,
    pub full_body: bool,
    pub method: &'static str,
    pub location: &'static str,
    pub filters: &'static [FilterFn],
    pub call: fn(Arc<dyn Any + Send + Sync>, HandlerCall) -> BoxFuture<Outcome>,
}

inventory::collect!(HandlerRegistration);

/// The return types a message handler may have.
#[doc(hidden)]
pub trait MessageOutcome {
    fn into_outcome(self) -> Outcome;
}

impl MessageOutcome for () {
    fn into_outcome(self) -> Outcome {
        Outcome::Done
    }
}

impl<E: fmt::Display> MessageOutcome for std::result::Result<(), E> {
    fn into_outcome(self) -> Outcome {
        match self {
            Ok(()) => Outcome::Done,
            Err(e) => Outcome::Failed(e.to_string()),
        }
    }
}

/// An RPC handler returned a plain value.
#[doc(hidden)]
pub fn rpc_value<T: Serialize>(value: T) -> Outcome {
    match RpcResult::success(value) {
        Ok(result) => Outcome::Answer(result),
        Err(e) => Outcome::Answer(RpcResult::exception("SerializationError", e.to_string())),
    }
}

/// An RPC handler returned a `Result`.
#[doc(hidden)]
pub fn rpc_result<T: Serialize, E: Into<HandlerError>>(
    result: std::result::Result<T, E>,
) -> Outcome {
    match result {
        Ok(value) => rpc_value(value),
        Err(e) => Outcome::Answer(e.into().into_result()),
    }
}

/// An RPC handler returned an [`RpcResult`] of its own making.
#[doc(hidden)]
pub fn rpc_raw(result: RpcResult) -> Outcome {
    Outcome::Answer(result)
}

/// The return types of an RPC handler that answers through its [`Reply`].
#[doc(hidden)]
pub trait RepliedOutcome {
    fn into_outcome(self) -> Outcome;
}

impl RepliedOutcome for () {
    fn into_outcome(self) -> Outcome {
        Outcome::Replied
    }
}

impl<E: Into<HandlerError>> RepliedOutcome for std::result::Result<(), E> {
    fn into_outcome(self) -> Outcome {
        match self {
            Ok(()) => Outcome::Replied,
            Err(e) => Outcome::Answer(e.into().into_result()),
        }
    }
}

/// An RPC handler that took a [`Reply`] returned.
#[doc(hidden)]
pub fn replied(value: impl RepliedOutcome) -> Outcome {
    value.into_outcome()
}
