//! The simple client of the message-client SDK: a [`Transport`] to the broker, a
//! [`Target`] naming a queue, `send` in three [`Mode`]s, non-blocking requests whose
//! [`Response`]s arrive on a stream or a callback, and a [`Server`] that answers with its
//! handler's return value.
//!
//! The wire convention is plain AMQP RPC, not the Postage envelope: the body is JSON, a
//! call carries `reply_to` and `correlation_id`, and the answer (JSON too) goes to the
//! default exchange with the `reply_to` as routing key and the same `correlation_id`. So
//! a bare pika or lapin client can call a postage server, and a postage client a bare
//! server.
//!
//! Topology for a target `T`: RPC and cast messages go to the queue `T` through the
//! default exchange, so one server takes each. Every server also binds a private,
//! server-named queue to `amq.direct` with the routing key `T.fanout`; fanout messages
//! are published there, so every server gets a copy. (`amq.direct` always exists, so
//! nothing has to be declared before a fanout and nothing is left behind.)

mod server;
mod target;
mod transport;

pub use self::server::{Request, Server, ServerHandle};
pub use self::target::{Mode, Target};
pub use self::transport::{RESPONSE_BUFFER, Response, Responses, Transport};

use std::time::Duration;

/// The exchange fanout messages go through, with the routing key `<target>.fanout`.
pub const FANOUT_EXCHANGE: &str = "amq.direct";

/// How long [`Transport::call`] waits for an answer unless told otherwise.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);
