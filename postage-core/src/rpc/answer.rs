//! The answering side: where an answer goes and what it carries.

use lapin::BasicProperties;
use lapin::types::ShortString;

/// Where the answer to a request goes: the default exchange with the request's
/// `reply_to` as routing key, with the request's correlation id copied when it has one
/// (the wire contract; Python Postage 1.x callers send none).
#[derive(Debug, Clone)]
pub(crate) struct ReturnAddress {
    reply_to: String,
    correlation_id: Option<ShortString>,
}

impl ReturnAddress {
    /// The return address of a request with these properties; `None` when it asks for
    /// no answer.
    pub(crate) fn of(request: &BasicProperties) -> Option<Self> {
        Some(Self {
            reply_to: request.reply_to().as_ref()?.to_string(),
            correlation_id: request.correlation_id().clone(),
        })
    }

    /// The return address `reply_to`, with `correlation_id` when the request had one.
    pub(crate) fn new(reply_to: String, correlation_id: Option<&str>) -> Self {
        Self {
            reply_to,
            correlation_id: correlation_id.map(Into::into),
        }
    }

    /// The routing key of the answer on the default exchange.
    pub(crate) fn reply_to(&self) -> &str {
        &self.reply_to
    }

    /// The answer's properties: its content type and the request's correlation id.
    pub(crate) fn properties(&self, content_type: &str) -> BasicProperties {
        let properties = BasicProperties::default().with_content_type(content_type.into());
        match &self.correlation_id {
            Some(id) => properties.with_correlation_id(id.clone()),
            None => properties,
        }
    }
}
