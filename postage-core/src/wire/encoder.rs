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

    /// Whether this is Postage's own JSON, which postage then writes straight from a
    /// message's parts and reads a success straight into its type, skipping the
    /// [`Message`] in between. Only [`JsonEncoder`] says yes; an encoder of your own
    /// keeps the default.
    #[doc(hidden)]
    fn is_postage_json(&self) -> bool {
        false
    }
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

    fn is_postage_json(&self) -> bool {
        true
    }
}
