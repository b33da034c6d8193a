//! How a handler call ended, from what the method returned: the conversions behind the
//! handler attributes, chosen by the return type (so aliases such as
//! `type Answer<T> = Result<T, HandlerError>` work like what they stand for).

use std::fmt;

use serde::Serialize;

use super::failure::{Disposition, HandlerError, failure};
use crate::wire::RpcResult;

/// How a handler call ended; the runtime settles the delivery and answers from it.
#[derive(Debug)]
#[doc(hidden)]
pub enum Outcome {
    /// Handled; acknowledge.
    Done,
    /// A message handler chose what becomes of the message.
    Settle(Disposition),
    /// Failed: the error's disposition, or the processor's default, applies.
    Failed(HandlerError),
    /// An RPC answer to send.
    Answer(RpcResult),
    /// The handler answered through its [`Reply`](super::Reply) itself.
    Replied,
    /// A filter made the handler skip the message.
    Skipped,
    /// A filter rejected the message, for this reason.
    Refused(String),
}

impl Outcome {
    /// How a handler run ended, as spans and metrics name it, and whether that is well.
    pub(crate) fn describe(&self) -> (&'static str, bool) {
        match self {
            Self::Done => ("done", true),
            Self::Settle(Disposition::Ack) => ("ack", true),
            Self::Settle(Disposition::Reject) => ("reject", false),
            Self::Settle(Disposition::Requeue) => ("requeue", false),
            Self::Settle(Disposition::Retry(_)) => ("retry", false),
            Self::Failed(_) => ("failed", false),
            Self::Answer(RpcResult::Success { .. }) => ("success", true),
            Self::Answer(RpcResult::Error { .. }) => ("error", false),
            Self::Answer(RpcResult::Exception { .. }) => ("exception", false),
            Self::Replied => ("replied", true),
            Self::Skipped => ("filtered", true),
            Self::Refused(_) => ("refused", false),
        }
    }

    /// Whether the handler's unit of work (see [`crate::inbox`]) is to be committed: it
    /// succeeded.
    pub(crate) fn commits(&self) -> bool {
        matches!(
            self,
            Self::Done
                | Self::Settle(Disposition::Ack)
                | Self::Answer(RpcResult::Success { .. })
                | Self::Replied
        )
    }

    /// The registration's type check failed: a bug in postage, not in the user's code.
    pub fn wrong_processor() -> Self {
        Self::Failed(HandlerError::error("handler registered for another processor type").reject())
    }

    /// An RPC handler asked for a reply handle on a message that has none.
    pub fn no_reply_handle() -> Self {
        Self::Failed(HandlerError::error("no reply handle for this call").reject())
    }

    /// A handler took a `State<T>` its processor was not given (a build checks it; a
    /// test harness may not have been).
    pub(crate) fn missing_state(type_name: &str) -> Self {
        Self::Failed(HandlerError::error(format!(
            "the handler takes State<{type_name}>, which its processor was not given \
             (give it with with_state)"
        )))
    }

    /// The payload did not decode: bad input, rejected and never retried.
    pub(crate) fn undecodable(reason: String) -> Self {
        Self::Failed(HandlerError::error(reason).reject())
    }
}

/// What a message handler may return.
#[diagnostic::on_unimplemented(
    message = "a message handler cannot return `{Self}`",
    label = "returns `{Self}`",
    note = "a message handler returns nothing, a `postage_core::Disposition`, or a `Result` \
            of either whose error type implements `Display` (`HandlerError`, any \
            `std::error::Error`, `anyhow::Error`, `String`)"
)]
#[doc(hidden)]
pub trait MessageOutcome {
    fn into_outcome(self) -> Outcome;
}

impl MessageOutcome for () {
    fn into_outcome(self) -> Outcome {
        Outcome::Done
    }
}

impl MessageOutcome for Disposition {
    fn into_outcome(self) -> Outcome {
        match self {
            Self::Ack => Outcome::Done,
            other => Outcome::Settle(other),
        }
    }
}

impl<T: MessageOutcome, E: fmt::Display + 'static> MessageOutcome for Result<T, E> {
    fn into_outcome(self) -> Outcome {
        match self {
            Ok(done) => done.into_outcome(),
            Err(error) => Outcome::Failed(failure(error)),
        }
    }
}

/// What an RPC handler that answers through its [`Reply`](super::Reply) may return.
#[diagnostic::on_unimplemented(
    message = "an rpc handler that takes a `Reply` cannot return `{Self}`",
    label = "returns `{Self}`",
    note = "it answers through its `Reply`, and returns nothing or a `Result<(), E>` whose \
            error (answered when the handler did not reply) implements `Display`"
)]
#[doc(hidden)]
pub trait RepliedOutcome {
    fn into_outcome(self) -> Outcome;
}

impl RepliedOutcome for () {
    fn into_outcome(self) -> Outcome {
        Outcome::Replied
    }
}

impl<E: fmt::Display + 'static> RepliedOutcome for Result<(), E> {
    fn into_outcome(self) -> Outcome {
        match self {
            Ok(()) => Outcome::Replied,
            Err(error) => Outcome::Answer(failure(error).to_result()),
        }
    }
}

/// An RPC handler that took a [`Reply`](super::Reply) returned.
#[doc(hidden)]
pub fn replied(value: impl RepliedOutcome) -> Outcome {
    value.into_outcome()
}

/// An RPC handler's return value, looked at by type: `(&&&Probe(&value)).rpc_kind()`
/// finds the most specific of [`RawKind`] (an `RpcResult`), [`ResultKind`] (any
/// `Result`, aliases included) and [`ValueKind`] (anything else), whose tag then turns
/// the value into the answer, with the bounds (and their errors) of that kind only.
#[doc(hidden)]
#[derive(Debug)]
pub struct Probe<'a, R>(pub &'a R);

#[doc(hidden)]
pub trait RawKind {
    fn rpc_kind(&self) -> RawTag {
        RawTag
    }
}

impl RawKind for &&Probe<'_, RpcResult> {}

#[doc(hidden)]
pub trait ResultKind {
    fn rpc_kind(&self) -> ResultTag {
        ResultTag
    }
}

impl<T, E> ResultKind for &Probe<'_, Result<T, E>> {}

#[doc(hidden)]
pub trait ValueKind {
    fn rpc_kind(&self) -> ValueTag {
        ValueTag
    }
}

impl<R> ValueKind for Probe<'_, R> {}

/// The answer is an [`RpcResult`] of the handler's own making.
#[doc(hidden)]
#[derive(Debug)]
pub struct RawTag;

impl RawTag {
    pub fn rpc_outcome(self, result: RpcResult) -> Outcome {
        Outcome::Answer(result)
    }
}

/// The answer is a `Result`: a success with its value, or the error's result.
#[doc(hidden)]
#[derive(Debug)]
pub struct ResultTag;

impl ResultTag {
    pub fn rpc_outcome<T: Serialize, E: fmt::Display + 'static>(
        self,
        result: Result<T, E>,
    ) -> Outcome {
        match result {
            Ok(value) => ValueTag.rpc_outcome(value),
            Err(error) => Outcome::Answer(failure(error).to_result()),
        }
    }
}

/// The answer is a plain value, a success.
#[doc(hidden)]
#[derive(Debug)]
pub struct ValueTag;

impl ValueTag {
    pub fn rpc_outcome<T: Serialize>(self, value: T) -> Outcome {
        match RpcResult::success(value) {
            Ok(result) => Outcome::Answer(result),
            Err(e) => Outcome::Answer(RpcResult::exception("SerializationError", e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Answer<T> = Result<T, HandlerError>;

    #[test]
    #[allow(clippy::needless_borrow, reason = "the borrows pick the kind")]
    fn each_return_type_answers_as_what_it_is() {
        let value = 3u8;
        let tag = (&&&Probe(&value)).rpc_kind();
        assert!(matches!(
            tag.rpc_outcome(value),
            Outcome::Answer(RpcResult::Success { .. })
        ));
        let aliased: Answer<u8> = Err(HandlerError::error("no"));
        let tag = (&&&Probe(&aliased)).rpc_kind();
        assert!(matches!(
            tag.rpc_outcome(aliased),
            Outcome::Answer(RpcResult::Error { message }) if message == "no"
        ));
        let raw = RpcResult::error("raw");
        let tag = (&&&Probe(&raw)).rpc_kind();
        assert!(matches!(
            tag.rpc_outcome(raw),
            Outcome::Answer(RpcResult::Error { .. })
        ));
        let text: Result<u8, String> = Err("typed".to_owned());
        let tag = (&&&Probe(&text)).rpc_kind();
        assert!(matches!(
            tag.rpc_outcome(text),
            Outcome::Answer(RpcResult::Error { .. })
        ));
    }
}
