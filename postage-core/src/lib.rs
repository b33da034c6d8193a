//! Typed, async components that talk over AMQP 0-9-1 through RabbitMQ, on the wire
//! format of Python Postage.
//!
//! A component sends [`Message`]s with a [`Producer`] and reads them with a
//! [`Consumer`]; both share one [`Connection`] made from a [`Config`].
//!
//! ```no_run
//! use postage_core::{Connection, Consumer, Exchange, Fingerprint, Producer, Queue};
//!
//! const ECHO: Exchange = Exchange::new("echo-exchange");
//!
//! # async fn demo() -> postage_core::Result<()> {
//! let connection = Connection::from_env().await?;
//! let mut consumer = Consumer::builder(&connection)
//!     .bind(ECHO, Queue::new("echo-queue"), "echo-rk")
//!     .build()
//!     .await?;
//! consumer.start().await?;
//!
//! let producer = Producer::builder(&connection)
//!     .destination(ECHO, "echo-rk")
//!     .fingerprint(Fingerprint::new("echo_send", "application"))
//!     .build()
//!     .await?;
//! producer.command("echo", "A test message").await?;
//!
//! if let Some(delivery) = consumer.next().await {
//!     let delivery = delivery?;
//!     let text: String = delivery.message()?.parameters()?;
//!     println!("{text}");
//!     delivery.ack().await?;
//! }
//! # Ok(()) }
//! ```

pub mod asyncapi;
mod config;
mod connection;
mod consumer;
mod deadline;
mod delay;
mod error;
mod handler;
mod processor;
mod producer;
mod rpc;
mod sync;
mod topology;
mod wire;

pub mod channel;
pub mod client;
pub mod inbox;
pub mod message_id;
pub mod messenger;
pub mod telemetry;
pub mod testing;

pub use config::{Config, DEFAULT_PORT, DEFAULT_TLS_PORT, Host, Password, TlsFiles};
pub use connection::{Connection, LinkState};
pub use consumer::{Consumer, ConsumerBuilder, ConsumerHandle, Delivery};
pub use error::{Error, Result};
pub use handler::{
    Deadline, Disposition, FilterFn, Filtered, HandlerError, Metadata, Reply, State, UserId,
};
pub use postage_macros::{message_handler, processor, rpc_handler, timer};
pub use processor::{
    ATTEMPT_HEADER, ControlPolicy, DEFAULT_MAX_BODY, ERROR_HEADER, Exit, HandlerInfo,
    ORDERED_BACKLOG, Processor, ProcessorBuilder, ProcessorHandle, RetryPolicy,
};
pub use producer::{
    DEFAULT_ANSWER_WITHIN, DEFAULT_PUBLISH_TIMEOUT, PendingCall, Producer, ProducerBuilder, Route,
    RpcOptions,
};
pub use rpc::ReplyQueue;
pub use rpc::progress::PROGRESS_HEADER;
pub use topology::{Binding, Exchange, ExchangeKind, Partitions, Queue, QueueShape};
pub use wire::{
    COMMAND, Category, Content, Encoder, Fingerprint, JsonEncoder, Message, NONE, RESULT,
    RpcResult, STATUS, VERSION,
};

/// The README's examples, compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;

/// The AMQP client postage is built on, re-exported so its types always match.
pub use lapin;
/// The metrics library of the endpoint ([`Connection::register_metrics`] takes its
/// registry), re-exported so versions match.
pub use prometheus_client;
/// The JSON Schema derive the API document reads payload types with
/// (`#[derive(postage_core::schemars::JsonSchema)]`), re-exported so versions match.
pub use schemars;

/// What the handler attributes expand to; not a public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::asyncapi::schema::{OpenSchema, ResultSchema, SchemaProbe, TypedSchema};
    /// The bytes of publishes a connection queues before a publish waits: the benchmark
    /// gives its raw lapin side the same.
    pub use crate::connection::dial::PUBLISH_BACKLOG;
    pub use crate::handler::{
        BoxFuture, CallParts, FilterResult, Filtered, FreeFilter, FromCall, HandlerCall,
        HandlerRegistration, MessageOutcome, Outcome, Probe, RawKind, RepliedOutcome, ResultKind,
        StateNeed, States, TimerRegistration, ValueKind, replied, run_filter,
    };
    /// The workspace's one lock policy, for its other crates.
    pub use crate::sync::Locked;
    pub use inventory;
    pub use schemars::SchemaGenerator;
    pub use serde_json;
}
