//! Testing handlers without a broker: [`TestProcessor`] feeds a processor's handlers
//! messages (typed, or raw bodies as Python Postage writes them, with any metadata)
//! through the dispatch a running processor uses, and says what became of each; a
//! [`Recording`] makes producers for code that sends, which keep what they publish and
//! answer RPC calls as the test says.
//!
//! The project's own tests run against a real RabbitMQ; this is for users' unit tests of
//! their handlers.

pub use crate::processor::testing::{Handled, TestProcessor, TestProcessorBuilder};
pub use crate::producer::{RECORDING_LIMIT, Recording, Sent};
