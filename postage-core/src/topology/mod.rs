//! What lives on the broker: [`Exchange`]s and [`Queue`]s described once, as values, and
//! declared by whoever needs them, with the [`QueueShape`] the broker accepts.

mod exchange;
mod queue;

pub use self::exchange::{Exchange, ExchangeKind};
pub use self::queue::{Queue, QueueShape};
