//! postage's spans, named and with fields after OpenTelemetry's messaging conventions
//! (`messaging.system`, `messaging.operation.type`, `messaging.destination.name`...) plus
//! Postage's own (`postage.type`, `postage.name`, `postage.category`, `postage.handler`):
//!
//! - `process <queue>` (consumer): one per delivery, with the disposition it came to;
//! - `handle <handler>` (internal): a child of that one per handler run, with its outcome
//!   and duration;
//! - `publish <exchange>` (producer): one per message sent, whose trace context goes out
//!   in the message's headers;
//! - `call <command>` (client): one per RPC call on the caller's side, with its attempts
//!   and outcome; the publishes of its requests are its children.
//!
//! With no subscriber listening, a span costs a check of one flag: no field is formatted.

use tracing::Span;
use tracing::field::Empty;

use crate::handler::HandlerRegistration;
use crate::wire::Message;

/// The span of one delivery, from its arrival to its settlement: a root (whatever span
/// the processor runs in), or the child of the span that sent it, named in its headers.
pub(crate) fn delivery(
    queue: &str,
    delivery: &lapin::message::Delivery,
    message: Option<&Message>,
    attempt: u32,
) -> Span {
    let properties = &delivery.properties;
    let span = tracing::info_span!(
        parent: None,
        "process",
        otel.name = %format_args!("process {queue}"),
        otel.kind = "consumer",
        otel.status_code = Empty,
        "messaging.system" = "rabbitmq",
        "messaging.operation.type" = "process",
        "messaging.destination.name" = delivery.exchange.as_str(),
        "messaging.rabbitmq.destination.routing_key" = delivery.routing_key.as_str(),
        "messaging.rabbitmq.message.delivery_tag" = delivery.delivery_tag,
        "messaging.message.id" = properties.message_id().as_ref().map(|id| id.as_str()),
        "messaging.message.conversation_id" = properties.correlation_id().as_ref().map(|id| id.as_str()),
        "messaging.message.body.size" = delivery.data.len(),
        "messaging.consumer.group.name" = queue,
        "postage.type" = message.map(|m| m.kind.as_str()),
        "postage.name" = message.map(|m| m.name.as_str()),
        "postage.category" = message.map(|m| m.category.as_str()),
        "postage.redelivered" = delivery.redelivered,
        "postage.attempt" = attempt,
        "postage.disposition" = Empty,
    );
    #[cfg(feature = "otel")]
    super::otel::adopt(&span, properties.headers().as_ref());
    span
}

/// The span of one handler run.
pub(crate) fn handler(handler: &HandlerRegistration) -> Span {
    tracing::info_span!(
        "handle",
        otel.name = %format_args!("handle {}::{}", handler.processor_name, handler.method),
        otel.kind = "internal",
        otel.status_code = Empty,
        "postage.handler" = handler.method,
        "postage.processor" = handler.processor_name,
        "postage.category" = handler.category.as_str(),
        "postage.type" = handler.kind,
        "postage.name" = handler.name,
        "code.filepath" = handler.location,
        "postage.outcome" = Empty,
        "postage.duration_ms" = Empty,
    )
}

/// The span of one publish.
pub(crate) fn publish(exchange: &str, routing_key: &str, size: usize) -> Span {
    tracing::info_span!(
        "publish",
        otel.name = %format_args!("publish {}", if exchange.is_empty() { "amq.default" } else { exchange }),
        otel.kind = "producer",
        otel.status_code = Empty,
        "messaging.system" = "rabbitmq",
        "messaging.operation.type" = "send",
        "messaging.operation.name" = "publish",
        "messaging.destination.name" = exchange,
        "messaging.rabbitmq.destination.routing_key" = routing_key,
        "messaging.message.body.size" = size,
        "postage.outcome" = Empty,
    )
}

/// The span of one RPC call on the caller's side.
pub(crate) fn call(command: &str, exchange: &str, routing_key: &str) -> Span {
    tracing::info_span!(
        "call",
        otel.name = %format_args!("call {command}"),
        otel.kind = "client",
        otel.status_code = Empty,
        "messaging.system" = "rabbitmq",
        "messaging.operation.type" = "send",
        "messaging.operation.name" = "call",
        "messaging.destination.name" = exchange,
        "messaging.rabbitmq.destination.routing_key" = routing_key,
        "postage.name" = command,
        "postage.category" = "rpc",
        "postage.attempts" = Empty,
        "postage.outcome" = Empty,
    )
}

/// Records how what `span` covers ended; an outcome other than `ok` marks it an error.
pub(crate) fn outcome(span: &Span, field: &'static str, outcome: &str, ok: bool) {
    if span.is_disabled() {
        return;
    }
    span.record(field, outcome);
    span.record("otel.status_code", if ok { "OK" } else { "ERROR" });
}
