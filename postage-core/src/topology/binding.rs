//! Bindings: which queue takes which messages of an exchange.

use super::{Exchange, Queue};

/// One queue bound to one exchange with one routing key.
#[derive(Debug, Clone, PartialEq)]
pub struct Binding {
    /// The exchange messages come from.
    pub exchange: Exchange,
    /// The queue they land in.
    pub queue: Queue,
    /// The routing key that binds them.
    pub routing_key: String,
}
