//! Postage messages: the JSON body every component sends and reads.
//!
//! The shapes are those of the wire contract with Python Postage: an object with `type`,
//! `name`, `category`, `version`, `fingerprint`, `content` and `_reserved`, where the
//! content depends on the kind of message.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::error::{Error, Result};
use crate::wire::{Content, Fingerprint, content, json};

/// The message format version Postage 1.x writes.
pub const VERSION: &str = "2";

/// Fire-and-forget or RPC: the `category` of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Category {
    /// Fire-and-forget: every matching handler runs, nobody answers.
    Message,
    /// A call: one handler runs and answers on the request's `reply_to` queue.
    Rpc,
}

impl Category {
    /// The name used on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Message => "message",
            Self::Rpc => "rpc",
        }
    }
}

/// The `type` of a command message.
pub const COMMAND: &str = "command";
/// The `type` of a status message.
pub const STATUS: &str = "status";
/// The `type` of an RPC result message.
pub const RESULT: &str = "result";
/// The `type` and `name` of a generic message.
pub const NONE: &str = "none";

/// One Postage message, as it travels in an AMQP body.
///
/// Build one with [`Message::command`], [`Message::rpc_command`], [`Message::status`],
/// [`Message::result`] or [`Message::generic`]; read its payload with
/// [`Message::parameters`] or [`Message::content_as`]. Unknown keys a sender adds are
/// ignored. A message read from a body keeps its content as the JSON text it came in
/// (see [`Content`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// The message type: `command`, `status`, `result`, `none`, or one of your own.
    #[serde(rename = "type")]
    pub kind: String,
    /// The command name, the status itself, or `none`.
    pub name: String,
    /// Fire-and-forget or RPC.
    pub category: Category,
    /// The format version; Postage 1.x writes `"2"`.
    #[serde(default = "version")]
    pub version: String,
    /// Who sent the message.
    #[serde(default = "Fingerprint::blank")]
    pub fingerprint: Fingerprint,
    /// The payload; its shape depends on the kind of message. Reads as a
    /// `serde_json::Value`.
    #[serde(default = "empty_content")]
    pub content: Content,
    /// Reserved for future use; Postage 1.x sends it empty.
    #[serde(rename = "_reserved", default)]
    pub reserved: Map<String, Value>,
}

fn version() -> String {
    VERSION.to_owned()
}

fn empty_object() -> Value {
    Value::Object(Map::new())
}

fn empty_content() -> Content {
    empty_object().into()
}

impl Message {
    /// A message of any type, name and category with the given content, and a blank
    /// fingerprint (a producer fills in its own when it sends).
    pub fn new(
        kind: impl Into<String>,
        name: impl Into<String>,
        category: Category,
        content: Value,
    ) -> Self {
        Self {
            kind: kind.into(),
            name: name.into(),
            category,
            version: version(),
            fingerprint: Fingerprint::blank(),
            content: content.into(),
            reserved: Map::new(),
        }
    }

    /// A fire-and-forget command `name` whose content is `{"parameters": parameters}`.
    pub fn command(name: impl Into<String>, parameters: impl Serialize) -> Result<Self> {
        Self::with_parameters(name.into(), Category::Message, parameters)
    }

    /// An RPC command `name` whose content is `{"parameters": parameters}`.
    pub fn rpc_command(name: impl Into<String>, parameters: impl Serialize) -> Result<Self> {
        Self::with_parameters(name.into(), Category::Rpc, parameters)
    }

    fn with_parameters(
        name: String,
        category: Category,
        parameters: impl Serialize,
    ) -> Result<Self> {
        let parameters = serde_json::to_value(parameters).map_err(|source| Error::Payload {
            what: format!("parameters of command {name:?}"),
            source,
        })?;
        Ok(Self::new(
            COMMAND,
            name,
            category,
            json!({ "parameters": parameters }),
        ))
    }

    /// A status message carrying `status` as its name, with empty content.
    pub fn status(status: impl Into<String>) -> Self {
        Self::new(STATUS, status, Category::Message, empty_object())
    }

    /// The result message that answers an RPC call.
    pub fn result(result: &RpcResult) -> Self {
        Self::new(RESULT, NONE, Category::Message, result.to_content())
    }

    /// A generic message (type and name `none`) carrying positional and keyword
    /// arguments; each key is written only when it is not empty, as Postage does.
    pub fn generic(args: Vec<Value>, kwds: Map<String, Value>) -> Self {
        let mut content = Map::new();
        if !args.is_empty() {
            content.insert("args".to_owned(), Value::Array(args));
        }
        if !kwds.is_empty() {
            content.insert("kwds".to_owned(), Value::Object(kwds));
        }
        Self::new(NONE, NONE, Category::Message, Value::Object(content))
    }

    /// Sets the fingerprint.
    #[must_use]
    pub fn with_fingerprint(mut self, fingerprint: Fingerprint) -> Self {
        self.fingerprint = fingerprint;
        self
    }

    /// The raw `parameters` of a command, `null` when there are none.
    pub fn raw_parameters(&self) -> &Value {
        self.content.get("parameters").unwrap_or(&Value::Null)
    }

    /// The `parameters` of a command decoded into `T`.
    pub fn parameters<T: DeserializeOwned>(&self) -> Result<T> {
        self.content
            .decode(Some("parameters"))
            .map_err(|source| Error::Payload {
                what: format!("parameters of {} {:?}", self.kind, self.name),
                source,
            })
    }

    /// The whole `content` decoded into `T`.
    pub fn content_as<T: DeserializeOwned>(&self) -> Result<T> {
        self.content.decode(None).map_err(|source| Error::Payload {
            what: format!("content of {} {:?}", self.kind, self.name),
            source,
        })
    }

    /// Reads this message as the answer to an RPC call. A content that is not one of the
    /// three result shapes becomes an error result, as Postage does ("Malformed reply").
    pub fn to_result(&self) -> RpcResult {
        RpcResult::from_content(&self.content)
    }

    /// Reads a body as a Postage message. Anything that is not a JSON object with string
    /// `type` and `name`, a known `category` and an object `content` is refused with a
    /// reason. The content is kept as its text, unless the body holds a value a
    /// `serde_json::Value` might not (nested very deep, a number past an `f64`): such a
    /// body is read into a `Value` at once, and refused if it does not read.
    pub fn from_json(body: &[u8]) -> Result<Self> {
        let text = std::str::from_utf8(body)
            .map_err(|e| Error::MalformedMessage(format!("body is not UTF-8 text: {e}")))?;
        let read = if content::fits(body) {
            json::received(text)
        } else {
            serde_json::from_str(text)
        };
        let message: Self =
            read.map_err(|e| Error::MalformedMessage(format!("not a Postage message: {e}")))?;
        if !message.content.is_object() {
            return Err(Error::MalformedMessage(format!(
                "content of {} {:?} is not an object",
                message.kind, message.name
            )));
        }
        Ok(message)
    }

    /// Writes the message as the JSON body Postage sends.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(|source| Error::Payload {
            what: format!("{} {:?}", self.kind, self.name),
            source,
        })
    }
}

/// The answer to an RPC call: Postage's success, error and exception results.
#[derive(Debug, Clone, PartialEq)]
pub enum RpcResult {
    /// The call worked; `value` is what it returned.
    Success {
        /// The returned value.
        value: Value,
        /// A description, often empty.
        message: String,
    },
    /// The call failed in a way its author foresaw.
    Error {
        /// What went wrong.
        message: String,
    },
    /// The handler failed unexpectedly (an exception in Python, an error or panic here).
    Exception {
        /// The kind of failure, such as `TimeoutError` or `ValueError`.
        kind: String,
        /// What went wrong.
        message: String,
    },
}

impl RpcResult {
    /// A success carrying `value`.
    pub fn success(value: impl Serialize) -> Result<Self> {
        let value = serde_json::to_value(value).map_err(|source| Error::Payload {
            what: "RPC result value".to_owned(),
            source,
        })?;
        Ok(Self::Success {
            value,
            message: String::new(),
        })
    }

    /// An error result with a message.
    pub fn error(message: impl Into<String>) -> Self {
        Self::Error {
            message: message.into(),
        }
    }

    /// An exception result naming the kind of failure.
    pub fn exception(kind: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Exception {
            kind: kind.into(),
            message: message.into(),
        }
    }

    /// True for a success.
    pub fn is_success(&self) -> bool {
        matches!(self, Self::Success { .. })
    }

    /// The answer to `command` as a caller takes it: a success's value decoded into `T`,
    /// an error [`Error::RemoteError`], an exception [`Error::RemoteException`].
    pub fn into_value<T: serde::de::DeserializeOwned>(self, command: &str) -> Result<T> {
        let command = command.to_owned();
        match self {
            Self::Success { value, .. } => {
                T::deserialize(&value).map_err(|source| Error::Payload {
                    what: format!("answer to {command:?}"),
                    source,
                })
            }
            Self::Error { message } => Err(Error::RemoteError { command, message }),
            Self::Exception { kind, message } => Err(Error::RemoteException {
                command,
                kind,
                message,
            }),
        }
    }

    /// The result as the `content` object of a result message.
    pub fn to_content(&self) -> Value {
        match self {
            Self::Success { value, message } => {
                json!({ "type": "success", "value": value, "message": message })
            }
            Self::Error { message } => {
                json!({ "type": "error", "value": null, "message": message })
            }
            Self::Exception { kind, message } => {
                json!({ "type": "exception", "value": kind, "message": message })
            }
        }
    }

    /// Reads a result message's content; anything else is an error result saying
    /// "Malformed reply".
    pub fn from_content(content: &Value) -> Self {
        let text = |key: &str| content.get(key).and_then(Value::as_str).map(str::to_owned);
        let parsed = match content.get("type").and_then(Value::as_str) {
            Some("success") => content.get("value").map(|value| Self::Success {
                value: value.clone(),
                message: text("message").unwrap_or_default(),
            }),
            Some("error") => text("message").map(|message| Self::Error { message }),
            Some("exception") => text("value").map(|kind| Self::Exception {
                kind,
                message: text("message").unwrap_or_default(),
            }),
            _ => None,
        };
        parsed.unwrap_or_else(|| Self::error(format!("Malformed reply {content}")))
    }
}
