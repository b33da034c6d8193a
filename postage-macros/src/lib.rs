//! Handler attributes for postage processors.
//!
//! `#[processor]` goes on an inherent `impl` block; inside it, `#[message_handler(...)]`
//! and `#[rpc_handler(...)]` mark the methods that answer messages. The attribute strips
//! the markers, keeps the impl as written, and registers one handler per marker with
//! `postage_core`'s handler registry, so a processor finds its handlers wherever their
//! impl blocks are.
//!
//! Use them through `postage_core`, which re-exports them:
//!
//! ```ignore
//! use postage_core::{HandlerError, Metadata, processor};
//!
//! struct Calculator;
//!
//! #[processor]
//! impl Calculator {
//!     #[message_handler("command", "log")]
//!     async fn log(&self, text: String, metadata: &Metadata) {
//!         println!("{text} (from {})", metadata.routing_key());
//!     }
//!
//!     #[rpc_handler("command", "sum")]
//!     async fn sum(&self, numbers: Vec<i64>) -> Result<i64, HandlerError> {
//!         numbers
//!             .into_iter()
//!             .try_fold(0_i64, i64::checked_add)
//!             .ok_or_else(|| HandlerError::error("overflow"))
//!     }
//! }
//! ```

mod marker;
mod processor;
mod registration;
mod signature;
mod timer;

use proc_macro::TokenStream;
use quote::quote;

use crate::marker::Category;

/// Registers the handlers of an inherent `impl` block with the processor runtime.
///
/// Each method marked `#[message_handler(type, name, ...)]` or
/// `#[rpc_handler("command", name, ...)]` becomes a handler of messages of that type and
/// name. A handler is a method (async or not) taking `&self` and then, in any order,
/// arguments recognised by their type:
///
/// - at most one payload: any `serde::Deserialize` type, borrowed ones (`&str`) included,
///   decoded from the message (a command's parameters, any other message's content), or
///   the whole `Message` with `full_body`;
/// - the delivery's `&Metadata`, the sender's `UserId`, the handler's `Deadline`;
/// - for an RPC handler, the `Reply` to answer through.
///
/// A message handler returns `()`, a `Disposition`, or a `Result` of either whose error
/// implements `Display`. An RPC handler returns its answer: a serializable value, a
/// `Result<T, E>` (any alias of one) where `E: Display`, or an `RpcResult`; or it takes a
/// `Reply` and returns `()` or `Result<(), E>`.
///
/// Marker options: `full_body` (message handlers only), `filter = path` (repeatable, run
/// in order before the handler: `fn(Message) -> Filtered`, `fn(Message, &Metadata) ->
/// Filtered`, or `Self::method` taking `(&self, Message, &Metadata)`, sync or async),
/// `attempts = N` (message handlers only: at most N tries of a message under the
/// processor's retry policy) and `timeout = "30s"` (a run that takes longer is cancelled
/// and failed). `#[timer(every = "30s")]` marks a method run every period.
///
/// A type may have several `#[processor]` impl blocks, in any module of its crate.
#[proc_macro_attribute]
pub fn processor(args: TokenStream, item: TokenStream) -> TokenStream {
    processor::expand(args.into(), item.into())
        .unwrap_or_else(Failure::into_tokens)
        .into()
}

/// Marks a method of a `#[processor]` impl block as a handler of fire-and-forget
/// messages: `#[message_handler("command", "echo")]`, with the options `full_body` and
/// `filter = path`. See [`macro@processor`].
#[proc_macro_attribute]
pub fn message_handler(_args: TokenStream, item: TokenStream) -> TokenStream {
    marker::expand(Category::Message, item.into())
        .unwrap_or_else(Failure::into_tokens)
        .into()
}

/// Marks a method of a `#[processor]` impl block as the answer to an RPC command:
/// `#[rpc_handler("command", "sum")]`, with the option `filter = path`. See
/// [`macro@processor`].
#[proc_macro_attribute]
pub fn rpc_handler(_args: TokenStream, item: TokenStream) -> TokenStream {
    marker::expand(Category::Rpc, item.into())
        .unwrap_or_else(Failure::into_tokens)
        .into()
}

/// Marks a method of a `#[processor]` impl block as a timer: `#[timer(every = "30s")]`.
/// The processor runs it every period (the first time one period after it starts) for
/// as long as it runs, and stops it with itself. A timer takes only `&self`, may be
/// async, and returns `()` or a `Result<(), E>` whose error is logged. A tick that takes
/// longer than the period delays the next; ticks never pile up.
#[proc_macro_attribute]
pub fn timer(_args: TokenStream, item: TokenStream) -> TokenStream {
    timer::expand(item.into())
        .unwrap_or_else(Failure::into_tokens)
        .into()
}

/// An expansion that failed: the errors to report, and the item to emit anyway so the
/// rest of the crate (and the editor) still sees it.
struct Failure {
    error: syn::Error,
    item: proc_macro2::TokenStream,
}

impl Failure {
    fn into_tokens(self) -> proc_macro2::TokenStream {
        let Self { error, item } = self;
        let error = error.to_compile_error();
        quote!(#item #error)
    }
}

/// The errors found in one item, gathered so that all of them are reported at once.
#[derive(Default)]
struct Errors(Option<syn::Error>);

impl Errors {
    fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(errors) => errors.combine(error),
            None => self.0 = Some(error),
        }
    }

    /// Records the error of `result`, if any, and passes its value on.
    fn take<T>(&mut self, result: syn::Result<T>) -> Option<T> {
        result.map_err(|error| self.push(error)).ok()
    }

    /// All the errors so far, and then `error`.
    fn and(self, error: syn::Error) -> syn::Error {
        match self.0 {
            Some(mut errors) => {
                errors.combine(error);
                errors
            }
            None => error,
        }
    }

    fn finish(self) -> syn::Result<()> {
        self.0.map_or(Ok(()), Err)
    }
}
