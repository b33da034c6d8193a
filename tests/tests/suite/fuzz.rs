//! Property tests of the decoding and dispatch path: arbitrary bodies never panic the
//! decoder, valid messages round-trip, and a processor fed random bodies through the real
//! broker rejects what it must and keeps serving. Case counts are bounded for CI
//! (`PROPTEST_CASES` raises them).

use std::time::Duration;

use postage_core::lapin::BasicProperties;
use postage_core::lapin::options::BasicPublishOptions;
use postage_core::{
    Category, Config, Consumer, Error, Fingerprint, HandlerError, Message, Processor, Producer,
    Queue, ReplyQueue, RpcResult, processor,
};
use postage_tests::{connect, exchange, next_within, unique};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

/// Any JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{0,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A body close to a Postage message: right keys, any values, some keys dropped.
fn near_message() -> impl Strategy<Value = Value> {
    (
        prop_oneof![Just(json!("command")), Just(json!("status")), any_json()],
        prop_oneof![Just(json!("sum")), Just(json!("echo")), any_json()],
        prop_oneof![Just(json!("message")), Just(json!("rpc")), any_json()],
        prop_oneof![Just(json!({"parameters": {"a": 1, "b": 2}})), any_json()],
        prop::collection::vec(any::<bool>(), 4),
    )
        .prop_map(|(kind, name, category, content, keep)| {
            let mut body = Map::new();
            for (i, (key, value)) in [
                ("type", kind),
                ("name", name),
                ("category", category),
                ("content", content),
            ]
            .into_iter()
            .enumerate()
            {
                if keep[i] {
                    body.insert(key.to_owned(), value);
                }
            }
            Value::Object(body)
        })
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::with_cases(512)
    })]

    #[test]
    fn decoding_any_bytes_never_panics(body in prop::collection::vec(any::<u8>(), 0..256)) {
        match Message::from_json(&body) {
            Ok(message) => prop_assert!(message.content.is_object()),
            Err(Error::MalformedMessage(reason)) => prop_assert!(!reason.is_empty()),
            Err(other) => prop_assert!(false, "unexpected error {other:?}"),
        }
    }

    #[test]
    fn near_messages_are_accepted_exactly_when_well_formed(body in near_message()) {
        let bytes = serde_json::to_vec(&body).unwrap();
        let well_formed = body.get("type").is_some_and(Value::is_string)
            && body.get("name").is_some_and(Value::is_string)
            && body.get("category").and_then(Value::as_str).is_some_and(|c| c == "message" || c == "rpc")
            && body.get("content").is_none_or(Value::is_object);
        let decoded = Message::from_json(&bytes);
        prop_assert_eq!(decoded.is_ok(), well_formed, "{}", body);
        if let Ok(message) = decoded {
            // Typed payload access fails cleanly, never panics.
            let _ = message.parameters::<Vec<String>>();
            let _ = message.parameters::<Value>();
            let _ = message.to_result();
        }
    }

    #[test]
    fn messages_round_trip(name in ".{0,20}", parameters in any_json(), rpc in any::<bool>(), pid in "[0-9]{1,7}") {
        let message = if rpc { Message::rpc_command(&name, &parameters) } else { Message::command(&name, &parameters) }
            .unwrap()
            .with_fingerprint(Fingerprint::new("p", "t").with_pid(pid));
        let decoded = Message::from_json(&message.to_json().unwrap()).unwrap();
        prop_assert_eq!(decoded.category, if rpc { Category::Rpc } else { Category::Message });
        prop_assert_eq!(&decoded, &message);
    }

    #[test]
    fn result_contents_always_read_as_a_result(content in any_json()) {
        let result = RpcResult::from_content(&content);
        // Whatever came in, it reads as one of the three shapes and writes back as one.
        prop_assert!(RpcResult::from_content(&result.to_content()) == result);
    }

    #[test]
    fn urls_never_leak_their_password(rest in ".{0,30}", scheme in prop_oneof![Just("amqp"), Just("amqps"), Just("http"), Just("")]) {
        let url = format!("{scheme}://user:s3cr3t-pw@{rest}");
        match Config::from_url(&url) {
            Ok(config) => {
                let shown = format!("{config:?}");
                prop_assert!(!shown.contains("s3cr3t-pw"));
            }
            Err(error) => {
                prop_assert!(!error.to_string().contains("s3cr3t-pw"));
                let shown = format!("{error:?}");
                prop_assert!(!shown.contains("s3cr3t-pw"));
            }
        }
    }
}

struct Adder;

#[derive(serde::Deserialize)]
struct Sum {
    a: i64,
    b: i64,
}

#[processor]
impl Adder {
    #[rpc_handler("command", "sum")]
    fn sum(&self, sum: Sum) -> Result<i64, HandlerError> {
        sum.a
            .checked_add(sum.b)
            .ok_or_else(|| HandlerError::error("overflow"))
    }

    #[message_handler("command", "echo")]
    fn echo(&self, _text: String) {}
}

#[tokio::test(flavor = "multi_thread")]
async fn a_processor_fed_random_bodies_keeps_serving() {
    let bodies: Vec<Vec<u8>> = {
        use proptest::strategy::ValueTree;
        use proptest::test_runner::TestRunner;
        let mut runner = TestRunner::deterministic();
        let strategy = prop_oneof![
            near_message().prop_map(|v| serde_json::to_vec(&v).unwrap()),
            prop::collection::vec(any::<u8>(), 0..64),
        ];
        (0..300)
            .map(|_| strategy.new_tree(&mut runner).unwrap().current())
            .collect()
    };
    let connection = connect().await;
    let ex = exchange("fuzz");
    let dead_letters = exchange("fuzz-dead");
    let mut dead = Consumer::builder(&connection)
        .bind(
            dead_letters.clone(),
            Queue::new(unique("fuzz-dlq")).auto_delete(true),
            "dead",
        )
        .prefetch(500)
        .build()
        .await
        .unwrap();
    dead.start().await.unwrap();
    let queue = Queue::new(unique("fuzz-q"))
        .auto_delete(true)
        .dead_letter(&dead_letters, "dead");
    let processor = Processor::builder(&connection, Adder)
        .bind(ex.clone(), queue, "fuzz")
        .prefetch(50)
        .build()
        .await
        .unwrap();
    let handle = processor.handle();
    let running = tokio::spawn(processor.run());
    let producer = Producer::builder(&connection)
        .destination(ex.clone(), "fuzz")
        .reply_queue(ReplyQueue::DirectReplyTo)
        .build()
        .await
        .unwrap();
    let reply_to = "amq.rabbitmq.reply-to";
    // The direct reply-to needs a consumer on the publishing channel: start it with one call.
    assert_eq!(
        producer
            .call::<i64>("sum", json!({"a": 1, "b": 1}))
            .await
            .unwrap(),
        2
    );
    for (i, body) in bodies.iter().enumerate() {
        let mut properties = BasicProperties::default();
        if i % 2 == 0 {
            properties = properties.with_reply_to(reply_to.into());
        }
        producer
            .channel()
            .expect("a producer on a connection")
            .basic_publish(
                ex.name().into(),
                "fuzz".into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .unwrap();
    }
    let mut rejected = 0;
    while next_within(&mut dead, Duration::from_millis(700))
        .await
        .is_some()
    {
        rejected += 1;
    }
    eprintln!("{} random bodies, {rejected} rejected", bodies.len());
    assert!(rejected > 0 && rejected <= bodies.len());
    assert_eq!(
        producer
            .call::<i64>("sum", json!({"a": 20, "b": 22}))
            .await
            .unwrap(),
        42,
        "still serving"
    );
    assert!(!running.is_finished());
    handle.shutdown();
    running.await.unwrap().unwrap();
}
