//! What a handler sees and answers: the registry the handler attributes fill, the call a
//! handler receives, its delivery metadata, its reply handle, how it fails and what
//! becomes of the message.

mod args;
mod failure;
mod filter;
mod metadata;
mod outcome;

pub use self::args::{CallParts, Deadline, FromCall, State, States, UserId};
pub use self::failure::{Disposition, HandlerError};
pub use self::filter::{FilterFn, FilterResult, Filtered, FreeFilter, run_filter};
pub use self::metadata::Metadata;
pub use self::outcome::{
    MessageOutcome, Outcome, Probe, RawKind, RepliedOutcome, ResultKind, ValueKind, replied,
};

use std::any::{Any, TypeId};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::wire::{Category, Message, RpcResult};

/// A boxed future, as handler wrappers return.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

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

    /// Tells the caller how the work goes, with `value` (a percentage, a stage, any JSON
    /// value), before the answer. Only a caller that asked for progress (see
    /// [`RpcOptions::progress`](crate::RpcOptions::progress)) is sent anything: for any
    /// other, a Python Postage caller included, this does nothing. Also counts as a beat:
    /// while the handler runs the processor sends the caller a plain beat every interval
    /// the caller asked for, whether the handler calls this or not.
    ///
    /// ```
    /// use postage_core::{HandlerError, Reply, RpcResult, processor};
    ///
    /// struct Reports;
    ///
    /// #[processor]
    /// impl Reports {
    ///     #[rpc_handler("command", "build_report")]
    ///     async fn build_report(&self, pages: u32, reply: Reply) -> Result<(), HandlerError> {
    ///         for page in 1..=pages {
    ///             // ... a page's work ...
    ///             reply.progress(serde_json::json!({"page": page, "of": pages})).await?;
    ///         }
    ///         reply.success("done").await?;
    ///         Ok(())
    ///     }
    /// }
    /// ```
    pub async fn progress(&self, value: impl Serialize) -> Result<()> {
        if self.sent.load(Ordering::SeqCst) {
            return Ok(());
        }
        let value = serde_json::to_value(value).map_err(|source| Error::Payload {
            what: "a progress value".into(),
            source,
        })?;
        self.sender.progress(value).await
    }
}

/// Publishes an RPC answer, and the caller's progress beats; implemented by the
/// processor runtime.
pub(crate) trait ReplySender: fmt::Debug + Send + Sync {
    fn send(&self, result: RpcResult) -> BoxFuture<Result<()>>;

    /// Sends the caller a beat carrying `value`, when it asked for beats.
    fn progress(&self, value: serde_json::Value) -> BoxFuture<Result<()>>;
}

/// One handler call: the message (a copy of its own), its metadata and, for RPC, the
/// reply handle.
#[derive(Debug)]
#[doc(hidden)]
pub struct HandlerCall {
    pub message: Message,
    pub metadata: Metadata,
    pub reply: Option<Reply>,
    /// When the processor cancels the handler, with a timeout.
    pub deadline: Option<tokio::time::Instant>,
    /// The shared values the processor was given.
    pub states: Arc<States>,
    /// The inbox's unit of work for this call, when the processor has an inbox
    /// (see [`crate::inbox`]).
    pub unit: Option<Arc<dyn Any + Send + Sync>>,
}

/// Which shared value (`State<T>`) an argument needs, if any: its type and name.
#[doc(hidden)]
pub type StateNeed = fn() -> Option<(TypeId, &'static str)>;

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
    /// The marker's `attempts`: at most this many tries of one message.
    pub attempts: Option<u32>,
    /// The marker's `timeout`: a run that takes longer is cancelled, and failed.
    pub timeout: Option<std::time::Duration>,
    /// The shared values (`State<T>`) its arguments take, by type and name.
    pub states: &'static [StateNeed],
    /// The JSON Schema of its payload (open when its type has none).
    pub payload_schema: fn(&mut schemars::SchemaGenerator) -> serde_json::Value,
    /// The JSON Schema of an RPC handler's answer; `None` for a message handler.
    pub answer_schema: fn(&mut schemars::SchemaGenerator) -> Option<serde_json::Value>,
    pub call: fn(Arc<dyn Any + Send + Sync>, HandlerCall) -> BoxFuture<Outcome>,
}

inventory::collect!(HandlerRegistration);

/// One timer, as `#[timer(every = "...")]` in a `#[processor]` impl registers it.
#[derive(Debug)]
#[doc(hidden)]
pub struct TimerRegistration {
    pub processor: fn() -> TypeId,
    pub processor_name: &'static str,
    pub method: &'static str,
    pub location: &'static str,
    pub every: std::time::Duration,
    pub call: fn(Arc<dyn Any + Send + Sync>) -> BoxFuture<Outcome>,
}

inventory::collect!(TimerRegistration);
