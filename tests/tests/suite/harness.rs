//! The test harness (`postage_core::testing`) against what it stands for: fed the same
//! messages, a `TestProcessor` answers and settles as a processor on the broker does.

use std::time::Duration;

use postage_core::lapin::types::{AMQPValue, FieldTable};
use postage_core::testing::TestProcessor;
use postage_core::{
    Disposition, Filtered, HandlerError, Message, Metadata, Processor, Producer, Queue,
    RetryPolicy, RpcResult, processor,
};
use postage_tests::{connect, exchange, unique};
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
struct Restock {
    sku: String,
    n: u32,
}

fn needs_user(message: Message, metadata: &Metadata) -> Filtered {
    match metadata.user_id {
        Some(_) => Filtered::Pass(message),
        None => Filtered::Reject("no user_id".into()),
    }
}

struct Shop;

#[processor]
impl Shop {
    #[rpc_handler("command", "price")]
    fn price(&self, sku: String) -> Result<u32, HandlerError> {
        match sku.as_str() {
            "apple" => Ok(3),
            other => Err(HandlerError::error(format!("no such sku {other}"))),
        }
    }

    #[rpc_handler("command", "boom")]
    fn boom(&self, _sku: String) -> Result<u32, std::io::Error> {
        Err(std::io::Error::other("the till is on fire"))
    }

    #[message_handler("command", "restock", filter = needs_user)]
    fn restock(&self, restock: Restock) -> Result<(), HandlerError> {
        if restock.n == 0 {
            return Err(HandlerError::error(format!(
                "nothing to restock of {}",
                restock.sku
            )));
        }
        Ok(())
    }
}

/// Handlers added to another processor's, as `ProcessorBuilder::handlers` adds them.
struct Clerk;

#[processor]
impl Clerk {
    #[rpc_handler("command", "hours")]
    fn hours(&self, _day: String) -> &'static str {
        "9-17"
    }
}

fn with_user() -> Metadata {
    Metadata {
        user_id: Some("guest".into()),
        ..Metadata::default()
    }
}

#[tokio::test]
async fn a_test_processor_settles_and_answers_without_a_broker() {
    let shop = TestProcessor::new(Shop).unwrap().retry(
        RetryPolicy::new()
            .backoff(Duration::from_secs(1), Duration::from_secs(60))
            .jitter(0.0),
    );
    assert_eq!(shop.call::<u32>("price", "apple").await.unwrap(), 3);
    let unknown = shop
        .send(Message::rpc_command("price", "pear").unwrap())
        .await;
    assert_eq!(unknown.answer, Some(RpcResult::error("no such sku pear")));
    assert_eq!(unknown.disposition, Disposition::Ack);
    let typo = shop
        .send(Message::rpc_command("prize", "apple").unwrap())
        .await;
    assert!(
        matches!(&typo.answer, Some(RpcResult::Error { message }) if message.contains("\"prize\"")),
        "{typo:?}"
    );

    let restock = |n: u32| Message::command("restock", json!({"sku": "apple", "n": n})).unwrap();
    assert_eq!(
        shop.send_with(restock(5), with_user()).await.disposition,
        Disposition::Ack
    );
    let retried = shop.send_with(restock(0), with_user()).await;
    assert_eq!(
        retried.disposition,
        Disposition::Retry(Some(Duration::from_secs(1)))
    );
    let last = shop
        .send_with(
            restock(0),
            Metadata {
                attempt: 3,
                ..with_user()
            },
        )
        .await;
    assert_eq!(last.disposition, Disposition::Reject);
    assert_eq!(
        last.reason.as_deref(),
        Some("nothing to restock of apple (attempt 3, the last)")
    );
    let anonymous = shop.send(restock(5)).await;
    assert_eq!(anonymous.disposition, Disposition::Reject);
    assert_eq!(anonymous.reason.as_deref(), Some("no user_id"));
    let bad = shop
        .send_with(
            Message::command("restock", json!({"sku": 1})).unwrap(),
            with_user(),
        )
        .await;
    assert_eq!(
        bad.disposition,
        Disposition::Reject,
        "bad input is not retried"
    );

    // Bodies as Python Postage writes them.
    let python = br#"{"type": "command", "name": "restock", "category": "message", "version": "2", "fingerprint": {}, "content": {"parameters": {"sku": "pear", "n": 2}}}"#;
    assert_eq!(
        shop.send_body(python, with_user()).await.disposition,
        Disposition::Ack
    );
    let garbage = shop.send_body(b"{not json", with_user()).await;
    assert_eq!(garbage.disposition, Disposition::Reject);

    // Another value's handlers served beside the processor's own.
    let both = TestProcessor::new(Shop).unwrap().handlers(Clerk).unwrap();
    assert_eq!(
        both.call::<String>("hours", "monday").await.unwrap(),
        "9-17"
    );
    assert_eq!(both.call::<u32>("price", "apple").await.unwrap(), 3);
}

#[tokio::test]
async fn a_test_processor_answers_as_the_processor_on_the_broker() {
    let connection = connect().await;
    let ex = exchange("harness");
    let processor = Processor::builder(&connection, Shop)
        .bind(
            ex.clone(),
            Queue::new(unique("harness-q")).auto_delete(true),
            "shop",
        )
        .build()
        .await
        .unwrap();
    let handle = processor.handle();
    let running = tokio::spawn(processor.run());
    let producer = Producer::builder(&connection)
        .destination(ex, "shop")
        .rpc_defaults(Duration::from_secs(5), 0)
        .build()
        .await
        .unwrap();
    let shop = TestProcessor::new(Shop).unwrap();
    for (command, sku) in [
        ("price", "apple"),
        ("price", "pear"),
        ("boom", "x"),
        ("prize", "x"),
    ] {
        let on_broker = producer
            .rpc_deferred(command, sku, postage_core::RpcOptions::new())
            .await
            .unwrap()
            .result()
            .await
            .unwrap();
        let in_test = shop
            .send(Message::rpc_command(command, sku).unwrap())
            .await
            .answer
            .expect("an answer");
        assert_eq!(in_test, on_broker, "{command} {sku}");
    }
    // The metadata a test gives is what a handler would see.
    let mut headers = FieldTable::default();
    headers.insert("x-trace".into(), AMQPValue::LongString("t".into()));
    let traced = Metadata {
        headers,
        ..with_user()
    };
    let handled = shop
        .send_with(
            Message::command("restock", json!({"sku": "apple", "n": 1})).unwrap(),
            traced,
        )
        .await;
    assert_eq!(handled.disposition, Disposition::Ack);
    handle.shutdown();
    running.await.unwrap().unwrap();
}
