//! The wire contract with Python Postage: every message kind written and read exactly as
//! `postage-wire.md` states, compared with JSON literals written from the contract.

use postage_core::{Category, Error, Fingerprint, Message, RpcResult};
use serde_json::{Value, json};

fn fingerprint() -> Fingerprint {
    Fingerprint::new("echo_send", "application")
        .with_pid("4242")
        .with_host("node-1")
        .with_user("alice")
        .with_vhost("/")
}

fn fingerprint_json() -> Value {
    json!({"name": "echo_send", "type": "application", "pid": "4242",
           "host": "node-1", "user": "alice", "vhost": "/"})
}

fn body(kind: &str, name: &str, category: &str, content: Value) -> Value {
    json!({"type": kind, "name": name, "category": category, "version": "2",
           "fingerprint": fingerprint_json(), "content": content, "_reserved": {}})
}

fn round_trip(message: &Message, expected: Value) {
    let bytes = message.to_json().expect("encodes");
    let written: Value = serde_json::from_slice(&bytes).expect("valid JSON");
    assert_eq!(written, expected);
    // Keys in Postage's order, so a person reading both sides sees the same text.
    let text = String::from_utf8(bytes.clone()).expect("UTF-8");
    let order: Vec<usize> = [
        "\"type\"",
        "\"name\"",
        "\"category\"",
        "\"version\"",
        "\"fingerprint\"",
        "\"content\"",
        "\"_reserved\"",
    ]
    .iter()
    .map(|key| text.find(key).expect("key present"))
    .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "key order in {text}");
    assert_eq!(&Message::from_json(&bytes).expect("decodes"), message);
}

#[test]
fn fingerprint_is_an_object_of_strings() {
    assert_eq!(
        serde_json::to_value(fingerprint()).unwrap(),
        fingerprint_json()
    );
}

#[test]
fn fingerprint_collects_the_process_identity() {
    let collected = Fingerprint::new("probe", "test");
    assert_eq!(collected.pid, std::process::id().to_string());
    assert!(!collected.host.is_empty());
    assert!(!collected.user.is_empty());
    assert_eq!(
        Fingerprint::default().name,
        "None",
        "Python writes None for no name"
    );
}

#[test]
fn fingerprint_reads_python_variants() {
    let python =
        json!({"name": "None", "type": "None", "pid": 77, "host": "h", "user": "u", "vhost": "/"});
    let read: Fingerprint = serde_json::from_value(python).unwrap();
    assert_eq!(read.pid, "77");
    assert_eq!(read.name, "None");
    let empty: Fingerprint = serde_json::from_value(json!({})).unwrap();
    assert_eq!(empty, Fingerprint::blank());
}

#[test]
fn command_message() {
    let message = Message::command("echo", "A test message")
        .unwrap()
        .with_fingerprint(fingerprint());
    round_trip(
        &message,
        body(
            "command",
            "echo",
            "message",
            json!({"parameters": "A test message"}),
        ),
    );
    assert_eq!(message.parameters::<String>().unwrap(), "A test message");
}

#[test]
fn command_parameters_may_be_any_json() {
    let message = Message::command("sum", json!({"a": 5, "b": 6}))
        .unwrap()
        .with_fingerprint(fingerprint());
    round_trip(
        &message,
        body(
            "command",
            "sum",
            "message",
            json!({"parameters": {"a": 5, "b": 6}}),
        ),
    );
    let list = Message::command("many", [1, 2, 3])
        .unwrap()
        .with_fingerprint(fingerprint());
    round_trip(
        &list,
        body(
            "command",
            "many",
            "message",
            json!({"parameters": [1, 2, 3]}),
        ),
    );
    let none = Message::command("bare", json!({}))
        .unwrap()
        .with_fingerprint(fingerprint());
    round_trip(
        &none,
        body("command", "bare", "message", json!({"parameters": {}})),
    );
}

#[test]
fn rpc_command_message() {
    let message = Message::rpc_command("echo", "RPC test message")
        .unwrap()
        .with_fingerprint(fingerprint());
    assert_eq!(message.category, Category::Rpc);
    round_trip(
        &message,
        body(
            "command",
            "echo",
            "rpc",
            json!({"parameters": "RPC test message"}),
        ),
    );
}

#[test]
fn status_message() {
    let message = Message::status("online").with_fingerprint(fingerprint());
    round_trip(&message, body("status", "online", "message", json!({})));
}

#[test]
fn result_messages() {
    let success = Message::result(&RpcResult::success("RPC message received").unwrap())
        .with_fingerprint(fingerprint());
    round_trip(
        &success,
        body(
            "result",
            "none",
            "message",
            json!({"type": "success", "value": "RPC message received", "message": ""}),
        ),
    );
    let error = Message::result(&RpcResult::error("no such file")).with_fingerprint(fingerprint());
    round_trip(
        &error,
        body(
            "result",
            "none",
            "message",
            json!({"type": "error", "value": null, "message": "no such file"}),
        ),
    );
    let exception = Message::result(&RpcResult::exception("ValueError", "bad value"))
        .with_fingerprint(fingerprint());
    round_trip(
        &exception,
        body(
            "result",
            "none",
            "message",
            json!({"type": "exception", "value": "ValueError", "message": "bad value"}),
        ),
    );
    for result in [success, error, exception] {
        assert_eq!(
            Message::result(&result.to_result()),
            result.clone().with_fingerprint(Fingerprint::blank())
        );
    }
}

#[test]
fn generic_message_writes_only_non_empty_keys() {
    let kwds = json!({"values": [1, 2, 3]}).as_object().unwrap().clone();
    let full = Message::generic(vec![json!(1), json!("str")], kwds.clone())
        .with_fingerprint(fingerprint());
    round_trip(
        &full,
        body(
            "none",
            "none",
            "message",
            json!({"args": [1, "str"], "kwds": {"values": [1, 2, 3]}}),
        ),
    );
    let args_only =
        Message::generic(vec![json!(1)], Default::default()).with_fingerprint(fingerprint());
    round_trip(
        &args_only,
        body("none", "none", "message", json!({"args": [1]})),
    );
    let kwds_only = Message::generic(vec![], kwds).with_fingerprint(fingerprint());
    round_trip(
        &kwds_only,
        body(
            "none",
            "none",
            "message",
            json!({"kwds": {"values": [1, 2, 3]}}),
        ),
    );
}

#[test]
fn reads_a_body_as_python_postage_writes_it() {
    // json.dumps output of Postage 1.2.1 for producer.rpc_echo("hi"), with extra keys a
    // later sender might add.
    let python = br#"{"category": "rpc", "fingerprint": {"host": "py-host", "name": "echo_send", "pid": "1234", "type": "application", "user": "bob", "vhost": "/"}, "name": "echo", "content": {"parameters": "hi"}, "version": "2", "_reserved": {"future": 1}, "type": "command", "extra": true}"#;
    let message = Message::from_json(python).unwrap();
    assert_eq!(message.kind, "command");
    assert_eq!(message.category, Category::Rpc);
    assert_eq!(message.fingerprint.host, "py-host");
    assert_eq!(message.parameters::<String>().unwrap(), "hi");
}

#[test]
fn malformed_bodies_are_refused_with_a_reason() {
    let cases: [(&[u8], &str); 7] = [
        (b"\xff\xfe", "UTF-8"),
        (b"not json", "not a Postage message"),
        (b"[1, 2]", "not a Postage message"),
        (br#"{"name": "x", "category": "message"}"#, "type"),
        (
            br#"{"type": "command", "name": "x", "category": "broadcast"}"#,
            "broadcast",
        ),
        (
            br#"{"type": "command", "name": 5, "category": "message"}"#,
            "not a Postage message",
        ),
        (
            br#"{"type": "command", "name": "x", "category": "message", "content": 3}"#,
            "not an object",
        ),
    ];
    for (body, reason) in cases {
        match Message::from_json(body) {
            Err(Error::MalformedMessage(text)) => {
                assert!(text.contains(reason), "{text:?} should say {reason:?}")
            }
            other => panic!("{:?} gave {other:?}", String::from_utf8_lossy(body)),
        }
    }
}

#[test]
fn malformed_reply_becomes_an_error_result() {
    let odd = RpcResult::from_content(&json!({"type": "maybe"}));
    assert!(matches!(odd, RpcResult::Error { message } if message.starts_with("Malformed reply")));
}

#[test]
fn typed_parameters_report_the_decode_error() {
    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Sum {
        a: i64,
        b: i64,
    }
    let message = Message::command("sum", json!({"a": 1})).unwrap();
    let error = message.parameters::<Sum>().unwrap_err();
    assert!(error.to_string().contains("missing field `b`"), "{error}");
}
