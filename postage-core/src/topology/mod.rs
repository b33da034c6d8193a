//! What lives on the broker: [`Exchange`]s, [`Queue`]s and the [`Binding`]s between
//! them, described once, as values, and declared by whoever needs them, each queue in
//! the [`QueueShape`] the broker accepts.

mod binding;
mod exchange;
mod partitions;
mod queue;

pub use self::binding::Binding;
pub use self::exchange::{Exchange, ExchangeKind};
pub use self::partitions::Partitions;
pub use self::queue::{Queue, QueueShape};
