//! The hook an inbox plugs into a processor, with no database in sight: a processor
//! built with [`ProcessorBuilder::inbox`](crate::ProcessorBuilder::inbox) asks its
//! [`Inbox`] to open a unit of work before each message handler runs, for the message's
//! id and that handler. The inbox answers that the handler handled it before (the message
//! is then acknowledged without running it again), or opens the unit: a database
//! transaction in which it has recorded the id, which the handler takes as an argument
//! (recognised by its type, as `State<T>` is) and writes in. The processor commits the
//! unit when the handler succeeds, and drops it (rolling back) when it fails; only then
//! is the delivery settled.
//!
//! The message's id is its AMQP `message_id` (every postage producer sets one), else the
//! one [`message_id::derive`](crate::message_id::derive) derives from its body and
//! routing. The `postage-outbox` crate implements this on SQLite and PostgreSQL.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use crate::handler::{BoxFuture, HandlerError};

/// Records which messages each handler has handled; see the [module](self).
pub trait Inbox: fmt::Debug + Send + Sync + 'static {
    /// Opens the unit of work of `handler` (its `Processor::method` name) on the message
    /// `message_id`: `Ok(None)` when that handler already handled it. An error (the
    /// database is unreachable) sends the message back to its queue.
    fn begin(
        &self,
        message_id: String,
        handler: String,
    ) -> BoxFuture<Result<Option<Box<dyn Unit>>, HandlerError>>;
}

/// One handler's unit of work on one message: open until committed; dropped, it rolls
/// back.
pub trait Unit: Send + Sync {
    /// What the handler's argument is made from (the argument's `FromCall` takes it back
    /// with [`CallParts::unit`](crate::__private::CallParts::unit)).
    fn handle(&self) -> Arc<dyn Any + Send + Sync>;

    /// Makes the handler's writes, and the record of the message, durable. An error
    /// (the commit failed, or its answer was lost) sends the message back to its queue:
    /// the inbox then knows whether it was handled.
    fn commit(self: Box<Self>) -> BoxFuture<Result<(), HandlerError>>;
}

/// What a handler argument that needs an inbox names as its "state", so that a processor
/// built without one fails its build, naming the handler.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct Given;
