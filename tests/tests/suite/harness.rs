//! The test harness (`postage_core::testing`) against what it stands for: fed the same
//! messages, a `TestProcessor` answers and settles as a processor on the broker does.

use std::time::Duration;

use postage_core::lapin::types::{AMQPValue, FieldTable};
use postage_core::testing::{Recording, TestProcessor};
use postage_core::{
    Consumer, Disposition, Error, Filtered, HandlerError, Message, Metadata, Processor, Producer,
    Queue, RetryPolicy, Route, RpcResult, State, processor,
};
use postage_tests::{connect, exchange, next_within, unique};
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
struct Restock {
    sku: String,
    n: u32,
}

fn needs_user(message: Message, metadata: &Metadata) -> Filtered {
    match metadata.user_id() {
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
    Metadata::default().with_user_id("guest")
}

#[tokio::test]
async fn a_test_processor_settles_and_answers_without_a_broker() {
    let shop = TestProcessor::builder(Shop)
        .retry(
            RetryPolicy::new()
                .backoff(Duration::from_secs(1), Duration::from_secs(60))
                .jitter(0.0),
        )
        .build()
        .unwrap();
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
        .send_with(restock(0), with_user().with_attempt(3))
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
    let both = TestProcessor::builder(Shop)
        .handlers(Clerk)
        .build()
        .unwrap();
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
    let traced = with_user().with_headers(headers);
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

/// Prices, shared with the handlers as a `State`.
struct Prices(Vec<(&'static str, u32)>);

/// A handler that sends: it asks the stock for what is left and tells the shelf.
#[derive(Debug)]
struct Till {
    stock: Producer,
}

#[processor]
impl Till {
    #[rpc_handler("command", "sell")]
    async fn sell(&self, sku: &str, prices: State<Prices>) -> Result<u32, anyhow::Error> {
        let price = prices
            .0
            .iter()
            .find(|(name, _)| *name == sku)
            .map(|(_, price)| *price)
            .ok_or_else(|| anyhow::anyhow!("no price for {sku}"))?;
        let left: u32 = self.stock.call("take", sku).await?;
        if left < 2 {
            self.stock
                .command_to(Route::key("shelf"), "reorder", sku)
                .await?;
        }
        Ok(price)
    }
}

fn prices() -> Prices {
    Prices(vec![("apple", 3), ("pear", 4)])
}

#[tokio::test]
async fn code_that_sends_is_tested_with_a_recording_producer() {
    let recording = Recording::new();
    recording.answer("take", 1).unwrap();
    let stock = recording
        .builder()
        .destination(postage_core::Exchange::new("stock-exchange"), "stock")
        .build()
        .await
        .unwrap();
    let till = TestProcessor::builder(Till { stock })
        .with_state(prices())
        .build()
        .unwrap();

    assert_eq!(till.call::<u32>("sell", "apple").await.unwrap(), 3);
    let sent = recording.take();
    let what: Vec<(&str, &str, &str)> = sent
        .iter()
        .map(|s| {
            (
                s.exchange.as_str(),
                s.routing_key.as_str(),
                s.message.name.as_str(),
            )
        })
        .collect();
    assert_eq!(
        what,
        [
            ("stock-exchange", "stock", "take"),
            ("stock-exchange", "shelf", "reorder")
        ]
    );
    assert_eq!(sent[1].message.parameters::<String>().unwrap(), "apple");

    // Plenty left: no reorder. An error answer is the handler's error.
    recording.answer("take", 10).unwrap();
    assert_eq!(till.call::<u32>("sell", "pear").await.unwrap(), 4);
    assert_eq!(recording.take().len(), 1);
    recording.answer_with("take", RpcResult::error("the stock room is locked"));
    let failed = till.call::<u32>("sell", "pear").await.unwrap_err();
    assert!(
        failed.to_string().contains("the stock room is locked"),
        "{failed}"
    );
    // No answer set: an error naming the command, at once.
    let unanswered = Recording::new();
    let lonely = unanswered
        .builder()
        .destination(postage_core::Exchange::new("stock-exchange"), "stock")
        .build()
        .await
        .unwrap();
    let error = lonely.call::<u32>("take", "x").await.unwrap_err();
    assert!(error.to_string().contains("\"take\""), "{error}");
    assert!(lonely.connection().is_none() && lonely.channel().is_none());

    // The harness without the state fails to build, as `ProcessorBuilder::build` does.
    let missing = TestProcessor::new(Till { stock: lonely }).unwrap_err();
    let text = missing.to_string();
    assert!(
        text.contains("Till::sell") && text.contains("Prices") && text.contains("with_state"),
        "{text}"
    );
    assert!(
        matches!(missing, Error::InvalidConfig { .. }),
        "{missing:?}"
    );
}

/// A handler that takes its time.
struct Napper;

#[processor]
impl Napper {
    #[rpc_handler("command", "nap")]
    async fn nap(&self, millis: u64) -> u64 {
        tokio::time::sleep(Duration::from_millis(millis)).await;
        millis
    }

    #[rpc_handler("command", "long_nap", timeout = "1ms")]
    async fn long_nap(&self, millis: u64) -> u64 {
        tokio::time::sleep(Duration::from_millis(millis)).await;
        millis
    }
}

#[tokio::test]
async fn a_handler_timeout_of_duration_max_is_no_limit() {
    let napper = TestProcessor::builder(Napper)
        .handler_timeout(Duration::MAX)
        .build()
        .unwrap();
    assert_eq!(napper.call::<u64>("nap", 5).await.unwrap(), 5);
    // A handler's own timeout still bounds it under a processor-wide `Duration::MAX`.
    let late = napper
        .send(Message::rpc_command("long_nap", 200).unwrap())
        .await;
    assert!(
        matches!(late.answer, Some(RpcResult::Exception { .. })),
        "{late:?}"
    );
}

#[tokio::test]
async fn a_recording_producer_records_what_a_producer_puts_on_the_wire() {
    let connection = connect().await;
    let ex = exchange("recorded");
    let mut reader = Consumer::builder(&connection)
        .bind(
            ex.clone(),
            Queue::new(unique("recorded-q")).auto_delete(true),
            "shelf",
        )
        .build()
        .await
        .unwrap();
    reader.start().await.unwrap();
    let real = Producer::builder(&connection)
        .destination(ex.clone(), "shelf")
        .build()
        .await
        .unwrap();
    let recording = Recording::new();
    let recorded = recording
        .builder()
        .destination(ex.clone(), "shelf")
        .build()
        .await
        .unwrap();
    let message = Message::command("restock", json!({"sku": "apple", "n": 2})).unwrap();
    for producer in [&real, &recorded] {
        producer
            .command("restock", json!({"sku": "apple", "n": 2}))
            .await
            .unwrap();
        producer
            .publish(message.clone(), &Route::Default)
            .await
            .unwrap();
        producer.status(Route::Default, "ready").await.unwrap();
    }
    let mut on_wire = Vec::new();
    while let Some(delivery) = next_within(&mut reader, Duration::from_secs(5)).await {
        on_wire.push((
            delivery.exchange().to_owned(),
            delivery.routing_key().to_owned(),
            delivery.message().unwrap(),
        ));
        delivery.ack().await.unwrap();
        if on_wire.len() == 3 {
            break;
        }
    }
    let kept: Vec<_> = recording
        .take()
        .into_iter()
        .map(|sent| (sent.exchange, sent.routing_key, sent.message))
        .collect();
    assert_eq!(kept, on_wire);
}

#[tokio::test]
async fn shared_state_reaches_handlers_and_a_missing_one_fails_the_build() {
    let connection = connect().await;
    let ex = exchange("stated");
    let queue = || Queue::new(unique("stated-q")).auto_delete(true);
    let recording = Recording::new();
    recording.answer("take", 5).unwrap();
    let till = || Till {
        stock: futures_util::FutureExt::now_or_never(
            recording
                .builder()
                .destination(postage_core::Exchange::new("stock-exchange"), "stock")
                .build(),
        )
        .expect("a recording producer is built at once")
        .unwrap(),
    };
    let missing = Processor::builder(&connection, till())
        .bind(ex.clone(), queue(), "till")
        .build()
        .await
        .unwrap_err();
    let text = missing.to_string();
    assert!(
        text.contains("Till::sell") && text.contains("Prices") && text.contains("with_state"),
        "{text}"
    );
    assert!(
        matches!(missing, Error::InvalidConfig { .. }),
        "{missing:?}"
    );

    let processor = Processor::builder(&connection, till())
        .bind(ex.clone(), queue(), "till")
        .with_state(prices())
        .build()
        .await
        .unwrap();
    let handle = processor.handle();
    let running = tokio::spawn(processor.run());
    let caller = Producer::builder(&connection)
        .destination(ex, "till")
        .rpc_defaults(Duration::from_secs(5), 0)
        .build()
        .await
        .unwrap();
    assert_eq!(caller.call::<u32>("sell", "pear").await.unwrap(), 4);
    handle.shutdown();
    running.await.unwrap().unwrap();
}
