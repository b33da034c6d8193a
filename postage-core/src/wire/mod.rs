//! The wire format shared with Python Postage: [`Message`]s with their [`Fingerprint`],
//! and the [`Encoder`] that turns them into AMQP bodies and back.
//!
//! Everything here is plain data and pure functions, with no broker in sight; the
//! contract it follows is `postage-wire.md`.

pub(crate) mod content;
mod encoder;
mod fingerprint;
pub(crate) mod json;
mod message;

pub use self::content::Content;
pub use self::encoder::{Encoder, JsonEncoder};
pub use self::fingerprint::Fingerprint;
pub use self::message::{COMMAND, Category, Message, NONE, RESULT, RpcResult, STATUS, VERSION};
