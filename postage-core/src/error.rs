//! The framework's failures, with the context a user needs to act on them.

use std::time::Duration;

/// Everything postage itself can fail at. Handler failures are a separate type,
/// [`HandlerError`](crate::HandlerError).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is wrong; `setting` names it (an environment variable or a field).
    #[error("invalid setting {setting}: {reason}")]
    InvalidConfig {
        /// The environment variable or field that holds the wrong value.
        setting: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// No configured host accepted a connection.
    #[error("cannot connect to RabbitMQ: {attempts}")]
    ConnectionFailed {
        /// One `host:port: reason` entry per host tried, credentials left out.
        attempts: String,
    },
    /// The broker refused the user name or password.
    #[error(
        "RabbitMQ refused the login of user {user:?} on virtual host {vhost:?} at {host} (POSTAGE_USER, POSTAGE_PASSWORD)"
    )]
    AccessRefused {
        /// The user name that was refused.
        user: String,
        /// The virtual host asked for.
        vhost: String,
        /// The `host:port` that refused.
        host: String,
    },
    /// The broker refused the virtual host: it does not exist, or the user may not use it.
    #[error(
        "RabbitMQ at {host} refused virtual host {vhost:?} (POSTAGE_VHOST) for user {user:?}: {reason}"
    )]
    VhostRefused {
        /// The virtual host asked for.
        vhost: String,
        /// The user name.
        user: String,
        /// The `host:port` that refused.
        host: String,
        /// The broker's words.
        reason: String,
    },
    /// An AMQP operation failed on an open connection.
    #[error("{operation} failed: {source}")]
    Amqp {
        /// What postage was doing, with the names involved.
        operation: String,
        /// The client library's error.
        #[source]
        source: lapin::Error,
    },
    /// The broker refused to declare a queue: its shape, flags or permissions.
    #[error("RabbitMQ refused to declare queue {queue:?}: {reason}")]
    QueueRefused {
        /// The queue's name (empty for a server-named one).
        queue: String,
        /// Why, and what to change.
        reason: String,
    },
    /// A body that is not a Postage message.
    #[error("malformed message: {0}")]
    MalformedMessage(String),
    /// A value could not be turned into or out of a message payload.
    #[error("payload of {what} does not fit: {source}")]
    Payload {
        /// Which message or handler was involved.
        what: String,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
    /// The broker could not route a mandatory message to any queue.
    #[error("no queue is bound to exchange {exchange:?} with routing key {routing_key:?}")]
    Unroutable {
        /// The exchange published to.
        exchange: String,
        /// The routing key used.
        routing_key: String,
    },
    /// The broker refused a published message (a negative publisher confirm).
    #[error(
        "the broker refused a message for exchange {exchange:?} with routing key {routing_key:?}"
    )]
    PublishRefused {
        /// The exchange published to.
        exchange: String,
        /// The routing key used.
        routing_key: String,
    },
    /// No reply came to an RPC call.
    #[error(
        "RPC {command:?} to routing key {routing_key:?} got no reply in {attempts} attempts of {timeout:?}"
    )]
    RpcTimeout {
        /// The command called.
        command: String,
        /// The routing key it was sent with.
        routing_key: String,
        /// How many times it was sent.
        attempts: u32,
        /// How long each attempt waited.
        timeout: Duration,
    },
    /// The remote handler answered with an error result.
    #[error("RPC {command:?} failed: {message}")]
    RemoteError {
        /// The command called.
        command: String,
        /// The error message.
        message: String,
    },
    /// The remote handler answered with an exception result.
    #[error("RPC {command:?} raised {kind}: {message}")]
    RemoteException {
        /// The command called.
        command: String,
        /// The kind of exception.
        kind: String,
        /// The exception message.
        message: String,
    },
    /// Two RPC handlers of one processor answer the same command.
    #[error("{processor} has two RPC handlers for command {command:?}: {first} and {second}")]
    DuplicateHandler {
        /// The processor type.
        processor: &'static str,
        /// The command both answer.
        command: &'static str,
        /// The first handler and where it is.
        first: String,
        /// The second handler and where it is.
        second: String,
    },
    /// The producer or consumer was closed while an operation waited on it.
    #[error("{0} is closed")]
    Closed(&'static str),
    /// The broker ended a subscription while its connection lived on: its queue was
    /// deleted or its consumer cancelled.
    #[error(
        "the broker ended the subscription to queue {queue:?} (queue deleted or consumer cancelled)"
    )]
    SubscriptionEnded {
        /// The queue that was consumed.
        queue: String,
    },
    /// A publish or call could not go out within its bound because the broker blocked the
    /// connection: a memory or disk alarm is in effect.
    #[error(
        "{operation} waited {waited:?}: RabbitMQ blocked publishing on the connection ({reason}: a memory or disk alarm); it resumes when the alarm clears"
    )]
    Blocked {
        /// What was waited for, with the names involved.
        operation: String,
        /// The broker's reason.
        reason: String,
        /// How long it waited.
        waited: Duration,
    },
    /// A blocking call did not finish within its timeout.
    #[error("{operation} did not finish within {timeout:?}")]
    Timeout {
        /// What was waited for, with the names involved.
        operation: String,
        /// How long it waited.
        timeout: Duration,
    },
    /// A blocking call was woken by an interrupt from another task.
    #[error("{operation} was interrupted")]
    Interrupted {
        /// What was waited for.
        operation: String,
    },
    /// An address that does not read as `amqp[s]://[user[:password]@]host[:port]/name`.
    #[error("invalid address {address:?}: {reason}")]
    InvalidAddress {
        /// The address, its password masked.
        address: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl Error {
    /// Wraps a lapin error with a description of what was being done.
    pub(crate) fn amqp(operation: impl Into<String>) -> impl FnOnce(lapin::Error) -> Self {
        let operation = operation.into();
        move |source| Self::Amqp { operation, source }
    }

    /// Whether this failure is the loss of a connection or its channel (closed under it,
    /// reset, a connection-level error from the broker), which recovery mends, rather
    /// than a refusal of what was asked (a missing exchange, a bad argument).
    pub(crate) fn is_link_loss(&self) -> bool {
        let Self::Amqp { source, .. } = self else {
            return false;
        };
        match source.kind() {
            lapin::ErrorKind::InvalidChannelState(..)
            | lapin::ErrorKind::InvalidConnectionState(..)
            | lapin::ErrorKind::IOError(..)
            | lapin::ErrorKind::MissingHeartbeatError => true,
            lapin::ErrorKind::ProtocolError(error) => {
                matches!(error.kind(), lapin::protocol::AMQPErrorKind::Hard(_))
            }
            _ => false,
        }
    }

    pub(crate) fn config(setting: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidConfig {
            setting,
            reason: reason.into(),
        }
    }
}

/// The result of a postage operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;
