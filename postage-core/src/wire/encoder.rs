//! How messages become AMQP bodies and back.

use std::fmt::Debug;

use crate::error::Result;
use crate::wire::Message;

/// Turns messages into bodies and bodies into messages, and names the AMQP
/// `content_type` it writes. Every component of a system must use the same encoding;
/// [`JsonEncoder`] is Postage's and the default.
pub trait Encoder: Debug + Send + Sync + 'static {
    /// The AMQP `content_type` property sent with each body.
    fn content_type(&self) -> &str;

    /// Writes a message as a body.
    fn encode(&self, message: &Message) -> Result<Vec<u8>>;

    /// Reads a body; a body that is not a message is an
    /// [`Error::MalformedMessage`](crate::Error::MalformedMessage).
    fn decode(&self, body: &[u8]) -> Result<Message>;
}

/// Postage's encoding: one JSON object, `application/json`.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonEncoder;

impl Encoder for JsonEncoder {
    fn content_type(&self) -> &str {
        "application/json"
    }

    fn encode(&self, message: &Message) -> Result<Vec<u8>> {
        message.to_json()
    }

    fn decode(&self, body: &[u8]) -> Result<Message> {
        Message::from_json(body)
    }
}
