//! Producer and consumer against the real broker: default destinations, per-call
//! routes, shared and private queues, run-time bindings, reliable publishing.

use std::time::Duration;

use postage_core::channel::Channel;
use postage_core::{Consumer, Error, Fingerprint, Message, Producer, Queue, Route};
use postage_tests::{binding_keys, connect, drain, exchange, next_within, unique};
use serde_json::json;

const QUIET: Duration = Duration::from_millis(400);

fn private(prefix: &str) -> Queue {
    Queue::new(unique(prefix)).auto_delete(true)
}

#[tokio::test]
async fn default_destinations_each_get_the_command() {
    let connection = connect().await;
    let (first, second) = (exchange("dest-a"), exchange("dest-b"));
    let mut consumer = Consumer::builder(&connection)
        .bind(first.clone(), private("qa"), "key-a")
        .bind(second.clone(), private("qb"), "key-b")
        .build()
        .await
        .unwrap();
    consumer.start().await.unwrap();
    let producer = Producer::builder(&connection)
        .destination(first.clone(), "key-a")
        .destination(second.clone(), "key-b")
        .fingerprint(Fingerprint::new("sender", "test"))
        .build()
        .await
        .unwrap();

    producer.command("echo", "to both").await.unwrap();
    let mut routes = Vec::new();
    while let Some(delivery) = next_within(&mut consumer, QUIET).await {
        let message = delivery.message().unwrap();
        assert_eq!(message.parameters::<String>().unwrap(), "to both");
        assert_eq!(message.fingerprint.name, "sender");
        routes.push((
            delivery.exchange().to_owned(),
            delivery.routing_key().to_owned(),
        ));
        delivery.ack().await.unwrap();
    }
    routes.sort();
    assert_eq!(
        routes,
        vec![
            (first.name().to_owned(), "key-a".to_owned()),
            (second.name().to_owned(), "key-b".to_owned())
        ]
    );
}

#[tokio::test]
async fn key_and_pairs_overrides_reach_only_their_targets() {
    let connection = connect().await;
    let (main, other) = (exchange("ovr-main"), exchange("ovr-other"));
    let (q_default, q_key, q_other) = (private("default"), private("key"), private("other"));
    let mut by_queue = Vec::new();
    for (ex, queue, key) in [
        (&main, &q_default, "default"),
        (&main, &q_key, "special"),
        (&other, &q_other, "elsewhere"),
    ] {
        let consumer = Consumer::builder(&connection)
            .bind(ex.clone(), queue.clone(), key)
            .build()
            .await
            .unwrap();
        consumer.start().await.unwrap();
        by_queue.push(consumer);
    }
    let producer = Producer::builder(&connection)
        .destination(main.clone(), "default")
        .build()
        .await
        .unwrap();

    producer
        .command_to(Route::key("special"), "echo", "by key")
        .await
        .unwrap();
    producer
        .command_to(
            Route::pairs([(other.clone(), "elsewhere")]),
            "echo",
            "by pairs",
        )
        .await
        .unwrap();
    producer.command("echo", "by default").await.unwrap();

    let mut seen = Vec::new();
    for consumer in &mut by_queue {
        seen.push(drain(consumer, QUIET).await);
    }
    assert_eq!(
        seen,
        vec![vec!["by default"], vec!["by key"], vec!["by pairs"]]
    );
}

#[tokio::test]
async fn shared_queue_splits_private_queues_copy() {
    let connection = connect().await;
    let ex = exchange("share");
    let shared = Queue::new(unique("shared")).auto_delete(true);
    let mut sharing = Vec::new();
    let mut copying = Vec::new();
    for _ in 0..2 {
        let c = Consumer::builder(&connection)
            .bind(ex.clone(), shared.clone(), "rr")
            .bind(ex.clone(), private("own"), "fanout")
            .prefetch(1)
            .build()
            .await
            .unwrap();
        c.start().await.unwrap();
        sharing.push(c);
    }
    let producer = Producer::builder(&connection)
        .destination(ex.clone(), "rr")
        .build()
        .await
        .unwrap();
    for i in 0..10 {
        producer.command("echo", format!("rr {i}")).await.unwrap();
        producer
            .command_to(Route::key("fanout"), "echo", format!("all {i}"))
            .await
            .unwrap();
    }
    for consumer in &mut sharing {
        copying.push(drain(consumer, QUIET).await);
    }
    let round_robin: Vec<usize> = copying
        .iter()
        .map(|seen| seen.iter().filter(|s| s.starts_with("rr")).count())
        .collect();
    let fanout: Vec<usize> = copying
        .iter()
        .map(|seen| seen.iter().filter(|s| s.starts_with("all")).count())
        .collect();
    assert_eq!(
        round_robin.iter().sum::<usize>(),
        10,
        "each shared message once"
    );
    assert!(
        round_robin.iter().all(|&n| n > 0),
        "both share: {round_robin:?}"
    );
    assert_eq!(
        fanout,
        vec![10, 10],
        "each private queue gets every message"
    );
}

#[tokio::test]
async fn bind_and_unbind_at_run_time() {
    let connection = connect().await;
    let ex = exchange("rebind");
    let queue = private("rebind");
    let mut consumer = Consumer::builder(&connection)
        .bind(ex.clone(), queue.clone(), "first")
        .build()
        .await
        .unwrap();
    consumer.start().await.unwrap();
    assert_eq!(binding_keys(ex.name(), queue.name()), vec!["first"]);

    consumer.bind(&ex, &queue, "second").await.unwrap();
    assert_eq!(
        binding_keys(ex.name(), queue.name()),
        vec!["first", "second"]
    );
    let producer = Producer::builder(&connection)
        .destination(ex.clone(), "second")
        .build()
        .await
        .unwrap();
    producer.command("echo", "via second").await.unwrap();
    assert_eq!(drain(&mut consumer, QUIET).await, vec!["via second"]);

    consumer.unbind(&ex, queue.name(), "first").await.unwrap();
    assert_eq!(binding_keys(ex.name(), queue.name()), vec!["second"]);
    assert_eq!(consumer.bindings().len(), 1);

    // A queue bound while consuming is consumed too.
    let late = private("late");
    consumer.bind(&ex, &late, "third").await.unwrap();
    producer
        .command_to(Route::key("third"), "echo", "via third")
        .await
        .unwrap();
    assert_eq!(drain(&mut consumer, QUIET).await, vec!["via third"]);
}

#[tokio::test]
async fn status_generic_and_forwarded_messages() {
    let connection = connect().await;
    let ex = exchange("kinds");
    let mut consumer = Consumer::builder(&connection)
        .bind(ex.clone(), private("kinds"), "k")
        .build()
        .await
        .unwrap();
    consumer.start().await.unwrap();
    let producer = Producer::builder(&connection)
        .destination(ex.clone(), "k")
        .fingerprint(Fingerprint::new("me", "test"))
        .build()
        .await
        .unwrap();
    producer.status(Route::Default, "online").await.unwrap();
    producer
        .generic(
            Route::Default,
            vec![json!(1)],
            json!({"x": 2}).as_object().unwrap().clone(),
        )
        .await
        .unwrap();
    let original = Message::command("relay", "hop")
        .unwrap()
        .with_fingerprint(Fingerprint::new("origin", "test"));
    producer.forward(&original, &Route::Default).await.unwrap();

    let mut got = Vec::new();
    while let Some(delivery) = next_within(&mut consumer, QUIET).await {
        assert_eq!(
            delivery
                .properties()
                .content_type()
                .as_ref()
                .map(|c| c.as_str()),
            Some("application/json")
        );
        got.push(delivery.message().unwrap());
        delivery.ack().await.unwrap();
    }
    assert_eq!(got.len(), 3);
    assert_eq!(
        (
            got[0].kind.as_str(),
            got[0].name.as_str(),
            got[0].fingerprint.name.as_str()
        ),
        ("status", "online", "me")
    );
    assert_eq!(got[1].content, json!({"args": [1], "kwds": {"x": 2}}));
    assert_eq!(
        got[2], original,
        "forwarded unchanged, its own fingerprint kept"
    );
}

#[tokio::test]
async fn rejected_messages_come_back_only_when_requeued() {
    let connection = connect().await;
    let ex = exchange("reject");
    let mut consumer = Consumer::builder(&connection)
        .bind(ex.clone(), private("reject"), "k")
        .build()
        .await
        .unwrap();
    consumer.start().await.unwrap();
    let producer = Producer::builder(&connection)
        .destination(ex.clone(), "k")
        .build()
        .await
        .unwrap();
    producer.command("echo", "again").await.unwrap();

    let first = next_within(&mut consumer, QUIET).await.expect("delivered");
    assert!(!first.redelivered());
    first.reject(true).await.unwrap();
    let second = next_within(&mut consumer, QUIET).await.expect("requeued");
    assert!(second.redelivered());
    second.reject(false).await.unwrap();
    assert!(
        next_within(&mut consumer, QUIET).await.is_none(),
        "dropped for good"
    );
}

#[tokio::test]
async fn reliable_producer_reports_unroutable_messages() {
    let connection = connect().await;
    let ex = exchange("reliable");
    let mut consumer = Consumer::builder(&connection)
        .bind(ex.clone(), private("reliable"), "bound")
        .build()
        .await
        .unwrap();
    let producer = Producer::builder(&connection)
        .destination(ex.clone(), "bound")
        .reliable(true)
        .build()
        .await
        .unwrap();
    producer.command("echo", "routed").await.expect("confirmed");
    let error = producer
        .command_to(Route::key("nobody"), "echo", "lost")
        .await
        .expect_err("no queue has this key");
    assert!(
        matches!(&error, Error::Unroutable { routing_key, .. } if routing_key == "nobody"),
        "{error}"
    );
    consumer.start().await.unwrap();
    assert_eq!(drain(&mut consumer, QUIET).await, vec!["routed"]);
}

/// An encoder of one's own: Postage messages as JSON inside a one-byte envelope, with a
/// content type of its own.
#[derive(Debug, Clone, Copy)]
struct Enveloped;

impl postage_core::Encoder for Enveloped {
    fn content_type(&self) -> &str {
        "application/x-enveloped"
    }

    fn encode(&self, message: &Message) -> postage_core::Result<Vec<u8>> {
        let mut body = vec![b'E'];
        body.extend(message.to_json()?);
        Ok(body)
    }

    fn decode(&self, body: &[u8]) -> postage_core::Result<Message> {
        match body.split_first() {
            Some((b'E', rest)) => Message::from_json(rest),
            _ => Err(Error::MalformedMessage("no envelope".into())),
        }
    }
}

#[tokio::test]
async fn a_custom_encoder_replaces_json() {
    let connection = connect().await;
    let ex = exchange("encoder");
    let mut consumer = Consumer::builder(&connection)
        .bind(ex.clone(), private("encoder"), "k")
        .encoder(Enveloped)
        .build()
        .await
        .unwrap();
    consumer.start().await.unwrap();
    let producer = Producer::builder(&connection)
        .destination(ex.clone(), "k")
        .encoder(Enveloped)
        .build()
        .await
        .unwrap();
    producer.command("echo", "wrapped").await.unwrap();
    let delivery = next_within(&mut consumer, QUIET).await.expect("delivered");
    assert_eq!(delivery.body()[0], b'E');
    assert_eq!(
        delivery
            .properties()
            .content_type()
            .as_ref()
            .map(|c| c.as_str()),
        Some("application/x-enveloped")
    );
    assert_eq!(
        delivery.message().unwrap().parameters::<String>().unwrap(),
        "wrapped"
    );
    delivery.ack().await.unwrap();
}

#[tokio::test]
async fn queue_flags_and_arguments_reach_the_broker() {
    let connection = connect().await;
    let ex = exchange("flags");
    let durable = Queue::new(unique("durable"))
        .durable(true)
        .argument("x-max-length", 7i64);
    let exclusive = Queue::new(unique("exclusive")).exclusive(true);
    let consumer = Consumer::builder(&connection)
        .bind(ex.clone(), durable.clone(), "a")
        .bind(ex.clone(), exclusive.clone(), "b")
        .build()
        .await
        .unwrap();
    let listing = postage_tests::rabbitmqctl(&[
        "list_queues",
        "name",
        "durable",
        "exclusive",
        "auto_delete",
        "arguments",
    ]);
    let row = |name: &str| {
        listing
            .lines()
            .find(|l| l.starts_with(&format!("{name}\t")))
            .unwrap_or_default()
            .to_owned()
    };
    let durable_row = row(durable.name());
    assert!(
        durable_row.starts_with(&format!("{}\ttrue\tfalse\tfalse", durable.name())),
        "{durable_row}"
    );
    assert!(
        durable_row.contains("x-max-length") && durable_row.contains('7'),
        "{durable_row}"
    );
    assert!(
        row(exclusive.name()).starts_with(&format!("{}\tfalse\ttrue\tfalse", exclusive.name())),
        "{listing}"
    );
    // The durable queue outlives the test otherwise.
    consumer
        .channel()
        .queue_delete(durable.name().into(), Default::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_poison_message_stops_at_the_delivery_limit_and_is_dead_lettered() {
    let connection = connect().await;
    let ex = exchange("poison");
    let dead_letters = exchange("poison-dead");
    let mut dead = Consumer::builder(&connection)
        .bind(dead_letters.clone(), private("poison-dlq"), "dead")
        .build()
        .await
        .unwrap();
    dead.start().await.unwrap();
    let queue = Queue::new(unique("poison"))
        .quorum()
        .delivery_limit(2)
        .dead_letter(&dead_letters, "dead");
    let mut consumer = Consumer::builder(&connection)
        .bind(ex.clone(), queue.clone(), "k")
        .build()
        .await
        .unwrap();
    consumer.start().await.unwrap();
    let producer = Producer::builder(&connection)
        .destination(ex.clone(), "k")
        .build()
        .await
        .unwrap();
    producer.command("echo", "always fails").await.unwrap();
    // A consumer that always hands the message back, as a crashing one would.
    let mut deliveries = 0;
    while let Some(delivery) = next_within(&mut consumer, QUIET).await {
        deliveries += 1;
        delivery.reject(true).await.unwrap();
    }
    assert_eq!(
        deliveries, 3,
        "the first delivery and two more, then no loop"
    );
    assert_eq!(drain(&mut dead, QUIET).await, vec!["always fails"]);
    consumer
        .channel()
        .queue_delete(queue.name().into(), Default::default())
        .await
        .unwrap();
}

/// What ends the publishing in [`ten_thousand_publishes_then`].
enum Closing {
    Producer,
    Connection,
}

/// Ten thousand fire-and-forget publishes (each returns once queued on its connection),
/// then at once `closing`: every one of them reaches the queue, the close leaving after
/// them. lapin made a publish wait for its write (0.19, lapin #142) because queued
/// messages were lost on close; the queued path must flush.
async fn ten_thousand_publishes_then(closing: Closing) {
    let reader = connect().await;
    let queue = unique("flushed");
    let channel = Channel::open(&reader).await.unwrap();
    channel
        .declare_queue(&Queue::new(queue.as_str()))
        .await
        .unwrap();
    channel.close().await.unwrap();
    let connection = connect().await;
    let producer = Producer::builder(&connection).build().await.unwrap();
    for n in 0..10_000 {
        producer
            .publish_encoded("", &queue, n.to_string().as_bytes(), &n.to_string())
            .await
            .unwrap();
    }
    match closing {
        Closing::Producer => producer.close().await.unwrap(),
        Closing::Connection => connection.close().await.unwrap(),
    }
    let node = postage_tests::test_node();
    let ready = tokio::task::spawn_blocking(move || {
        let ready = postage_tests::message_counts(&node, &queue).0;
        postage_tests::rabbitmqctl(&["delete_queue", &queue]);
        ready
    })
    .await
    .unwrap();
    assert_eq!(ready, 10_000, "every message queued before the close");
    let _ = connection.close().await;
    reader.close().await.unwrap();
}

#[tokio::test]
async fn a_producer_close_flushes_ten_thousand_publishes() {
    ten_thousand_publishes_then(Closing::Producer).await;
}

#[tokio::test]
async fn a_connection_close_flushes_ten_thousand_publishes() {
    ten_thousand_publishes_then(Closing::Connection).await;
}
