//! Seeing inside a fleet: spans after OpenTelemetry's messaging conventions, W3C trace
//! context carried in the AMQP headers across every hop, deadlines that travel with calls,
//! and (with [`Config::metrics`](crate::Config::metrics)) Prometheus metrics and health
//! probes on an HTTP endpoint.
//!
//! - **Spans**, named and with fields after OpenTelemetry's messaging conventions:
//!   `process <queue>` per delivery (with its disposition), `handle <Processor>::<method>`
//!   per handler run (outcome, duration), `publish <exchange>` per message sent, `call
//!   <command>` per RPC call on the caller's side (attempts, outcome). They go to
//!   whatever `tracing` subscriber the program installs; with the `otel` feature,
//!   `otel::Otlp` exports them to an OpenTelemetry collector, and a trace follows a
//!   message from its producer through every handler and call it causes.
//! - **Metrics and health**: with `Config::metrics` (`POSTAGE_METRICS`), `/metrics`
//!   (deliveries by disposition per handler, handler and call latency, calls by outcome,
//!   messages in flight, publishes, reconnects, connections by state), `/health/live` and
//!   `/health/ready` (200, or 503 with the reasons).
//! - **Trace context**: what is sent inside a span carries its `traceparent` and
//!   `tracestate` headers; a delivery's span is the child of the span that sent it.
//!   Without the `otel` feature the context a message came with is passed on as it came.
//! - **Deadlines**: an RPC request carries the time its caller stops waiting
//!   ([`DEADLINE_HEADER`], and as its AMQP expiration); a request that arrives after it is
//!   acknowledged and not run; a handler reads what is left as its
//!   [`Deadline`](crate::Deadline), and the calls it makes wait no longer than that.

mod context;
mod endpoint;
mod metrics;
pub(crate) mod span;

#[cfg(feature = "otel")]
pub mod otel;

pub use self::context::{DEADLINE_HEADER, TRACEPARENT, TRACESTATE};

pub(crate) use self::context::{Scope, current_deadline, stamp, with_deadline};
pub(crate) use self::endpoint::{Telemetry, Watched, terminating};
