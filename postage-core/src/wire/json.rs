//! Postage's JSON bodies written straight from borrowed parts, RPC answers read straight
//! into the caller's type, and messages read with their content kept as text: what
//! [`Message::to_json`](crate::Message::to_json) and
//! [`Message::from_json`](crate::Message::from_json) give, without a `serde_json::Value`
//! tree, a copied fingerprint or a second decoding pass in between. Used only with the
//! default [`JsonEncoder`](crate::JsonEncoder).

use serde::de::{DeserializeOwned, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::wire::{COMMAND, Category, Message, NONE, RESULT, RpcResult, VERSION};
use crate::wire::{Content, Fingerprint};

/// A command as [`Message::command`](crate::Message::command) builds it, borrowed.
#[derive(Serialize)]
struct Command<'a, P: ?Sized> {
    #[serde(rename = "type")]
    kind: &'static str,
    name: &'a str,
    category: Category,
    version: &'static str,
    fingerprint: &'a Fingerprint,
    content: Parameters<'a, P>,
    #[serde(rename = "_reserved")]
    reserved: Empty,
}

#[derive(Serialize)]
struct Parameters<'a, P: ?Sized> {
    parameters: &'a P,
}

#[derive(Serialize)]
struct Empty {}

/// The body of command `name` of `category` carrying `parameters`, stamped with
/// `fingerprint`, in a buffer of `capacity` bytes to start with. Objects keep the field
/// order of their types (a `Value` would sort them); JSON readers do not mind.
pub(crate) fn command<P: Serialize + ?Sized>(
    name: &str,
    category: Category,
    fingerprint: &Fingerprint,
    parameters: &P,
    capacity: usize,
) -> Result<Vec<u8>> {
    let mut body = Vec::with_capacity(capacity.max(128));
    let command = Command {
        kind: COMMAND,
        name,
        category,
        version: VERSION,
        fingerprint,
        content: Parameters { parameters },
        reserved: Empty {},
    };
    serde_json::to_writer(&mut body, &command).map_err(|source| Error::Payload {
        what: format!("parameters of command {name:?}"),
        source,
    })?;
    Ok(body)
}

/// A result message as [`Message::result`](crate::Message::result) builds it, borrowed.
#[derive(Serialize)]
struct ResultMessage<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    name: &'static str,
    category: Category,
    version: &'static str,
    fingerprint: &'a Fingerprint,
    content: ResultContent<'a>,
    #[serde(rename = "_reserved")]
    reserved: Empty,
}

/// [`RpcResult::to_content`], borrowed.
#[derive(Serialize)]
struct ResultContent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    value: Option<ResultValue<'a>>,
    message: &'a str,
}

#[derive(Serialize)]
#[serde(untagged)]
enum ResultValue<'a> {
    Value(&'a Value),
    Text(&'a str),
}

/// The body of the result message answering an RPC call, stamped with `fingerprint`.
pub(crate) fn result(result: &RpcResult, fingerprint: &Fingerprint) -> Result<Vec<u8>> {
    let content = match result {
        RpcResult::Success { value, message } => ResultContent {
            kind: "success",
            value: Some(ResultValue::Value(value)),
            message,
        },
        RpcResult::Error { message } => ResultContent {
            kind: "error",
            value: None,
            message,
        },
        RpcResult::Exception { kind, message } => ResultContent {
            kind: "exception",
            value: Some(ResultValue::Text(kind)),
            message,
        },
    };
    let message = ResultMessage {
        kind: RESULT,
        name: NONE,
        category: Category::Message,
        version: VERSION,
        fingerprint,
        content,
        reserved: Empty {},
    };
    serde_json::to_vec(&message).map_err(|source| Error::Payload {
        what: "an RPC answer".into(),
        source,
    })
}

/// A success answer whose value is a `T`. The envelope's `type` and `name` must be text
/// and its `category` known, as [`Message::from_json`](crate::Message::from_json) asks;
/// other keys are skipped.
#[derive(Deserialize)]
#[serde(bound(deserialize = "T: Deserialize<'de>"))]
struct Answer<T> {
    #[serde(rename = "type")]
    _kind: Text,
    #[serde(rename = "name")]
    _name: Text,
    #[serde(rename = "category")]
    _category: Category,
    content: Success<T>,
}

#[derive(Deserialize)]
#[serde(bound(deserialize = "T: Deserialize<'de>"))]
struct Success<T> {
    #[serde(rename = "type")]
    _kind: SuccessTag,
    /// Required even when `T` is an `Option`: a success without a value is malformed.
    #[serde(deserialize_with = "present")]
    value: T,
}

#[derive(Deserialize)]
enum SuccessTag {
    #[serde(rename = "success")]
    Success,
}

fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> std::result::Result<T, D::Error> {
    T::deserialize(deserializer)
}

/// Any JSON string, read without keeping it.
struct Text;

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct TextVisitor;
        impl Visitor<'_> for TextVisitor {
            type Value = Text;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, _: &str) -> std::result::Result<Text, E> {
                Ok(Text)
            }
        }
        deserializer.deserialize_str(TextVisitor)
    }
}

/// The value of a success answer, when `body` is one whose value is a `T`; `None` for
/// anything else (an error or exception result, another shape, a malformed body), which
/// the caller then reads the general way to say what it is.
pub(crate) fn success<T: DeserializeOwned>(body: &[u8]) -> Option<T> {
    serde_json::from_slice::<Answer<T>>(body)
        .ok()
        .map(|answer| answer.content.value)
}

/// A [`Message`] as it arrives, its content borrowed as text: the same keys and
/// defaults as `Message`'s own.
#[derive(Deserialize)]
struct Received<'a> {
    #[serde(rename = "type")]
    kind: String,
    name: String,
    category: Category,
    #[serde(default = "version")]
    version: String,
    #[serde(default = "Fingerprint::blank")]
    fingerprint: Fingerprint,
    /// `Some` whenever the key is there, `null` included (which is not an object).
    #[serde(borrow, default, deserialize_with = "some")]
    content: Option<&'a RawValue>,
    #[serde(rename = "_reserved", default)]
    reserved: Map<String, Value>,
}

/// Reads `text` as a message whose content is kept as its text; the body must be one
/// that [`fits`](super::content::fits), so the content reads into a `Value` when asked.
pub(crate) fn received(text: &str) -> serde_json::Result<Message> {
    let received: Received<'_> = serde_json::from_str(text)?;
    Ok(Message {
        kind: received.kind,
        name: received.name,
        category: received.category,
        version: received.version,
        fingerprint: received.fingerprint,
        content: match received.content {
            Some(content) => Content::received(content.get()),
            None => Value::Object(Map::new()).into(),
        },
        reserved: received.reserved,
    })
}

fn version() -> String {
    VERSION.to_owned()
}

fn some<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> std::result::Result<Option<T>, D::Error> {
    T::deserialize(deserializer).map(Some)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::wire::{Message, RpcResult};

    #[test]
    fn command_body_reads_back_as_the_message_would_be() {
        let fingerprint = Fingerprint::new("sender", "application");
        let parameters = json!({"b": [1, 2.5, null], "a": "text \"quoted\""});
        let body = command("sum", Category::Rpc, &fingerprint, &parameters, 0).unwrap();
        let expected = Message::rpc_command("sum", &parameters)
            .unwrap()
            .with_fingerprint(fingerprint);
        assert_eq!(Message::from_json(&body).unwrap(), expected);
        let expected_bytes: serde_json::Value =
            serde_json::from_slice(&expected.to_json().unwrap()).unwrap();
        let bytes: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(bytes, expected_bytes);
    }

    #[test]
    fn command_body_fails_like_message_command() {
        let mut bad = std::collections::HashMap::new();
        bad.insert(vec![1u8], 1);
        let error = command("x", Category::Message, &Fingerprint::blank(), &bad, 0).unwrap_err();
        assert!(matches!(error, Error::Payload { .. }), "{error:?}");
        assert!(Message::command("x", &bad).is_err());
    }

    fn answer(result: &RpcResult) -> Vec<u8> {
        Message::result(result).to_json().unwrap()
    }

    #[test]
    fn result_body_reads_back_as_the_message_would_be() {
        let fingerprint = Fingerprint::new("server", "application");
        for result in [
            RpcResult::success(json!({"b": [1, 2.5], "a": null})).unwrap(),
            RpcResult::error("no such thing"),
            RpcResult::exception("ValueError", "bad \"input\""),
        ] {
            let body = super::result(&result, &fingerprint).unwrap();
            let expected = Message::result(&result).with_fingerprint(fingerprint.clone());
            assert_eq!(Message::from_json(&body).unwrap(), expected);
            let bytes: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let expected_bytes: serde_json::Value =
                serde_json::from_slice(&expected.to_json().unwrap()).unwrap();
            assert_eq!(bytes, expected_bytes);
        }
    }

    #[test]
    fn success_reads_only_successes_of_the_type() {
        let ok = answer(&RpcResult::success(42).unwrap());
        assert_eq!(success::<i64>(&ok), Some(42));
        assert_eq!(success::<String>(&ok), None);
        assert_eq!(success::<i64>(&answer(&RpcResult::error("no"))), None);
        assert_eq!(
            success::<i64>(&answer(&RpcResult::exception("ValueError", "no"))),
            None
        );
        let null = answer(&RpcResult::success(()).unwrap());
        assert_eq!(success::<Option<i64>>(&null), Some(None));
    }

    #[test]
    fn success_refuses_what_the_general_path_refuses() {
        let no_value = br#"{"type":"result","name":"none","category":"message","content":{"type":"success","message":""}}"#;
        assert_eq!(success::<Option<i64>>(no_value), None);
        let no_name =
            br#"{"type":"result","category":"message","content":{"type":"success","value":1}}"#;
        assert_eq!(success::<i64>(no_name), None);
        let bad_category = br#"{"type":"result","name":"none","category":"other","content":{"type":"success","value":1}}"#;
        assert_eq!(success::<i64>(bad_category), None);
        assert_eq!(success::<i64>(b"not json"), None);
        // Python Postage's answers carry extra keys and a fingerprint.
        let python = br#"{"type":"result","name":"none","category":"message","version":"2","fingerprint":{"name":"None","type":"None","pid":123,"host":"h","user":"u","vhost":"/"},"content":{"type":"success","value":[1,2],"message":""},"_reserved":{}}"#;
        assert_eq!(success::<Vec<i64>>(python), Some(vec![1, 2]));
    }
}
