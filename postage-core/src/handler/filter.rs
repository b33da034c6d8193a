//! Filters: run before a handler, in the order its marker names them, each on what the
//! one before passed. A filter is a function, `fn(Message) -> Filtered` or
//! `fn(Message, &Metadata) -> Filtered`, or a method of the processor named
//! `Self::name`, `fn(&self, Message, &Metadata) -> Filtered` or the same `async fn`,
//! which sees the processor's state. They run inside the handler's call, so a panic in
//! one is handled as a panic in the handler.

use std::future::{Future, Ready, ready};

use super::Metadata;
use crate::wire::Message;

/// The plainest filter: a function of the message alone.
pub type FilterFn = fn(Message) -> Filtered;

/// What a filter decided.
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

/// A filter that is a free function, of the message (`Args = (Message,)`) or of the
/// message and its metadata (`Args = (Message, Metadata)`).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a filter",
    label = "not a filter",
    note = "a filter is `fn(Message) -> Filtered`, `fn(Message, &Metadata) -> Filtered`, or \
            a method of the processor named `Self::name`, `fn(&self, Message, &Metadata) -> \
            Filtered` or the same `async fn`"
)]
#[doc(hidden)]
pub trait FreeFilter<Args> {
    fn run(&self, message: Message, metadata: &Metadata) -> Filtered;
}

impl<F: Fn(Message) -> Filtered> FreeFilter<(Message,)> for F {
    fn run(&self, message: Message, _: &Metadata) -> Filtered {
        self(message)
    }
}

impl<F: Fn(Message, &Metadata) -> Filtered> FreeFilter<(Message, Metadata)> for F {
    fn run(&self, message: Message, metadata: &Metadata) -> Filtered {
        self(message, metadata)
    }
}

/// Runs a free-function filter, whichever of its shapes it has.
#[doc(hidden)]
pub fn run_filter<Args, F: FreeFilter<Args>>(
    filter: &F,
    message: Message,
    metadata: &Metadata,
) -> Filtered {
    filter.run(message, metadata)
}

/// What a filter method returns: a [`Filtered`], or (an `async fn`) a future of one.
#[diagnostic::on_unimplemented(
    message = "a filter method returns `Filtered`, or is an `async fn` returning it",
    label = "returns `{Self}`"
)]
#[doc(hidden)]
pub trait FilterResult {
    type Future: Future<Output = Filtered>;
    fn into_filtered(self) -> Self::Future;
}

impl FilterResult for Filtered {
    type Future = Ready<Filtered>;
    fn into_filtered(self) -> Self::Future {
        ready(self)
    }
}

impl<F: Future<Output = Filtered>> FilterResult for F {
    type Future = F;
    fn into_filtered(self) -> Self::Future {
        self
    }
}
