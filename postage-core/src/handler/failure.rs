//! How a handler fails, and what then becomes of the message.

use std::any::Any;
use std::fmt;
use std::time::Duration;

use crate::wire::RpcResult;

/// What becomes of a delivery once its handlers have run: the broker's answers, and a
/// retry later through the processor's retry policy.
///
/// A message handler chooses one by what it returns: `()` or `Ok(())` acknowledges, a
/// [`Disposition`] (or `Ok` of one) says so itself, and an error applies the disposition
/// the [`HandlerError`] carries or, when it carries none, the processor's default
/// (see [`RetryPolicy`](crate::RetryPolicy)). A payload that does not decode is always
/// rejected: bad input is never retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Handled: acknowledge, and the broker forgets it.
    Ack,
    /// Reject without requeue: to the processor's dead-letter queue when its retry policy
    /// keeps one, else to the queue's own dead-letter exchange, else dropped.
    Reject,
    /// Back to its queue at once, to be delivered again (to this or another consumer).
    Requeue,
    /// Again later, through a delay queue: after the given delay, or the retry policy's
    /// next backoff when `None`. Once the policy's attempts are spent it is rejected.
    Retry(Option<Duration>),
}

/// A handler's failure: a foreseen error or an exception, and optionally what to do with
/// the message. In an RPC handler the first is answered with Postage's error result (and
/// the delivery acknowledged), the second with an exception result (and the delivery
/// rejected). Any `std::error::Error` converts into an exception named after its type,
/// so `?` works in handlers.
///
/// ```
/// use std::time::Duration;
/// use postage_core::{Disposition, HandlerError};
///
/// let busy = HandlerError::error("the warehouse is busy").retry_after(Duration::from_secs(5));
/// assert_eq!(busy.disposition(), Some(Disposition::Retry(Some(Duration::from_secs(5)))));
/// let bad = HandlerError::exception("ValueError", "no such sku").reject();
/// assert_eq!(bad.to_string(), "ValueError: no such sku");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerError {
    /// The exception's kind; `None` for a foreseen error.
    kind: Option<String>,
    message: String,
    disposition: Option<Disposition>,
}

impl HandlerError {
    /// A foreseen failure.
    pub fn error(message: impl Into<String>) -> Self {
        Self {
            kind: None,
            message: message.into(),
            disposition: None,
        }
    }

    /// An unexpected failure of kind `kind`, such as `ValueError`.
    pub fn exception(kind: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            kind: Some(kind.into()),
            message: message.into(),
            disposition: None,
        }
    }

    /// What went wrong.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The exception's kind, `None` for a foreseen error.
    pub fn kind(&self) -> Option<&str> {
        self.kind.as_deref()
    }

    /// What this failure asks for the message; `None` leaves it to the processor.
    pub fn disposition(&self) -> Option<Disposition> {
        self.disposition
    }

    /// Asks for `disposition`.
    #[must_use]
    pub fn with(mut self, disposition: Disposition) -> Self {
        self.disposition = Some(disposition);
        self
    }

    /// Asks for a retry after the retry policy's next backoff: a transient failure.
    #[must_use]
    pub fn retry(self) -> Self {
        self.with(Disposition::Retry(None))
    }

    /// Asks for a retry after `delay`.
    #[must_use]
    pub fn retry_after(self, delay: Duration) -> Self {
        self.with(Disposition::Retry(Some(delay)))
    }

    /// Asks for the message to go back to its queue at once.
    #[must_use]
    pub fn requeue(self) -> Self {
        self.with(Disposition::Requeue)
    }

    /// Asks for the message to be rejected now, without a retry: a permanent failure.
    #[must_use]
    pub fn reject(self) -> Self {
        self.with(Disposition::Reject)
    }

    /// The RPC answer for this failure.
    pub(crate) fn to_result(&self) -> RpcResult {
        match &self.kind {
            None => RpcResult::error(self.message.clone()),
            Some(kind) => RpcResult::exception(kind.clone(), self.message.clone()),
        }
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            None => f.write_str(&self.message),
            Some(kind) => write!(f, "{kind}: {}", self.message),
        }
    }
}

impl<E: std::error::Error> From<E> for HandlerError {
    fn from(error: E) -> Self {
        Self::exception(kind_of::<E>(), error.to_string())
    }
}

/// The error a handler returned, whatever its type: a [`HandlerError`] as it is, a
/// `String` or `&str` as a foreseen error, anything else (`std::error::Error` types,
/// `anyhow::Error`, `Box<dyn Error>`) as an exception named after its type.
pub(super) fn failure<E: fmt::Display + 'static>(error: E) -> HandlerError {
    let any: &dyn Any = &error;
    if let Some(error) = any.downcast_ref::<HandlerError>() {
        return error.clone();
    }
    if any.is::<String>() || any.is::<&'static str>() {
        return HandlerError::error(error.to_string());
    }
    HandlerError::exception(kind_of::<E>(), error.to_string())
}

/// The name of `E` for people: its last path segment without generics (`ParseIntError`),
/// and `Error` for a box or another wrapper of any error.
fn kind_of<E: ?Sized>() -> &'static str {
    let full = std::any::type_name::<E>();
    let plain = full.split('<').next().unwrap_or(full);
    match plain.rsplit("::").next().unwrap_or(plain) {
        "Box" | "Arc" | "" => "Error",
        kind => kind,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_error_type_becomes_a_handler_error() {
        assert_eq!(failure("out of stock"), HandlerError::error("out of stock"));
        assert_eq!(
            failure(String::from("out of stock")),
            HandlerError::error("out of stock")
        );
        let retry = HandlerError::error("busy").retry();
        assert_eq!(failure(retry.clone()), retry);
        let parse = "x".parse::<u8>().unwrap_err();
        assert_eq!(failure(parse.clone()).kind(), Some("ParseIntError"));
        let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(parse);
        assert_eq!(failure(boxed).kind(), Some("Error"));
    }
}
