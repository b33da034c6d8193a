//! Testing handlers without a broker: [`TestProcessor`] feeds a processor's handlers
//! messages (typed, or raw bodies as Python Postage writes them, with any metadata)
//! through the dispatch a running processor uses, and says what became of each.
//!
//! The project's own tests run against a real RabbitMQ; this is for users' unit tests of
//! their handlers.

pub use crate::processor::testing::{Handled, TestProcessor};
