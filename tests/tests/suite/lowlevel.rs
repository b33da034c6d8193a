//! Low-level access (what Python amqplib's users do) against the real broker: polling
//! with explicit acknowledgement, cancelling consumers by tag, headers and encodings,
//! server-named queues, the `amq.*` exchanges, and a close that flushes every publish.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use postage_core::lapin::options::QueueDeclareOptions;
use postage_core::lapin::types::{AMQPValue, FieldTable, LongString};
use postage_core::{
    Connection, Error, Queue,
    channel::{Channel, Envelope, Incoming, Subscription},
};
use postage_tests::{connect, unique};

const PATIENCE: Duration = Duration::from_secs(30);

/// A queue the broker names, gone when the test's connection closes.
async fn private_queue(channel: &Channel) -> String {
    let name = channel
        .declare_queue(&Queue::new("").exclusive(true))
        .await
        .unwrap();
    assert!(name.starts_with("amq.gen-"), "server-named: {name}");
    name
}

/// How many messages wait in `queue`, asked on a channel of its own.
async fn depth(connection: &Connection, queue: &str) -> u32 {
    let channel = connection.open_channel().await.unwrap();
    let declared = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let _ = channel.close(200, "counted".into()).await;
    declared.message_count()
}

async fn next(subscription: &mut Subscription) -> Incoming {
    tokio::time::timeout(PATIENCE, subscription.next())
        .await
        .expect("a message arrives")
        .expect("the consumer is open")
        .unwrap()
}

#[tokio::test]
async fn polling_get_with_explicit_ack() {
    let connection = connect().await;
    let channel = Channel::open(&connection).await.unwrap();
    let queue = private_queue(&channel).await;
    for text in ["one", "two"] {
        channel
            .publish("", &queue, Envelope::text(text))
            .await
            .unwrap();
    }
    channel.flush().await.unwrap();

    let first = channel.get(&queue).await.unwrap().expect("a message");
    assert_eq!(first.text().unwrap(), "one");
    assert_eq!(first.consumer_tag(), None);
    first.ack().await.unwrap();

    let second = channel.get(&queue).await.unwrap().expect("a message");
    assert_eq!(second.text().unwrap(), "two");
    assert!(!second.redelivered());
    second.reject(true).await.unwrap(); // back to the queue

    let again = channel
        .get(&queue)
        .await
        .unwrap()
        .expect("the requeued message");
    assert_eq!(again.text().unwrap(), "two");
    assert!(again.redelivered());
    again.ack().await.unwrap();

    assert!(channel.get(&queue).await.unwrap().is_none(), "empty now");
    channel.close().await.unwrap();
    connection.close().await.unwrap();
}

#[tokio::test]
async fn a_consumer_is_cancelled_by_its_tag() {
    let connection = connect().await;
    let channel = Channel::open(&connection).await.unwrap();
    let queue = private_queue(&channel).await;

    // A tag of our choosing.
    let mut mine = channel.consume(&queue, "mytag").await.unwrap();
    assert_eq!(mine.tag(), "mytag");
    channel
        .publish("", &queue, Envelope::text("a"))
        .await
        .unwrap();
    let message = next(&mut mine).await;
    assert_eq!(message.text().unwrap(), "a");
    assert_eq!(message.consumer_tag(), Some("mytag"));
    message.ack().await.unwrap();
    channel.cancel("mytag").await.unwrap();
    assert!(
        tokio::time::timeout(PATIENCE, mine.next())
            .await
            .expect("the subscription ends")
            .is_none()
    );

    // With the consumer gone, a new message stays in the queue.
    channel
        .publish("", &queue, Envelope::text("b"))
        .await
        .unwrap();
    channel.flush().await.unwrap();
    assert_eq!(depth(&connection, &queue).await, 1);

    // A tag the broker picks, cancelled through the message that carries it.
    let mut theirs = channel.consume(&queue, "").await.unwrap();
    assert!(theirs.tag().starts_with("amq.ctag-"), "{}", theirs.tag());
    let message = next(&mut theirs).await;
    assert_eq!(message.text().unwrap(), "b");
    message.ack().await.unwrap();
    channel
        .cancel(message.consumer_tag().expect("a consumed message"))
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(PATIENCE, theirs.next())
            .await
            .expect("the subscription ends")
            .is_none()
    );

    channel.close().await.unwrap();
    connection.close().await.unwrap();
}

#[tokio::test]
async fn headers_and_content_encoding_round_trip() {
    let connection = connect().await;
    let channel = Channel::open(&connection).await.unwrap();
    let queue = private_queue(&channel).await;
    let mut nested = FieldTable::default();
    nested.insert("inner".into(), AMQPValue::Boolean(true));
    let gzip_body = vec![0x1f, 0x8b, 0x08, 0x00];
    channel
        .publish(
            "",
            &queue,
            Envelope::text("fancy")
                .header("foo", 7)
                .header("bar", "baz")
                .header("big", 1_i64 << 40)
                .header("nested", nested.clone()),
        )
        .await
        .unwrap();
    channel
        .publish(
            "",
            &queue,
            Envelope::new(gzip_body.clone())
                .content_type("application/octet-stream")
                .content_encoding("gzip"),
        )
        .await
        .unwrap();

    let mut subscription = channel.consume(&queue, "").await.unwrap();
    let text = next(&mut subscription).await;
    assert_eq!(text.text().unwrap(), "fancy");
    assert_eq!(text.content_type(), Some("text/plain"));
    assert_eq!(text.content_encoding(), Some("utf-8"));
    assert_eq!(text.header("foo"), Some(&AMQPValue::LongInt(7)));
    assert_eq!(text.header_str("bar"), Some("baz"));
    assert_eq!(
        text.header("bar"),
        Some(&AMQPValue::LongString(LongString::from("baz")))
    );
    assert_eq!(text.header("big"), Some(&AMQPValue::LongLongInt(1 << 40)));
    assert_eq!(text.header("nested"), Some(&AMQPValue::FieldTable(nested)));
    assert_eq!(text.header("absent"), None);
    text.ack().await.unwrap();

    let binary = next(&mut subscription).await;
    assert_eq!(binary.body(), gzip_body.as_slice());
    assert_eq!(binary.content_encoding(), Some("gzip"));
    assert!(binary.headers().is_none());
    binary.ack().await.unwrap();

    channel.close().await.unwrap();
    connection.close().await.unwrap();
}

#[tokio::test]
async fn server_named_queues_receive_from_the_amq_exchanges() {
    let connection = connect().await;
    let channel = Channel::open(&connection).await.unwrap();
    let direct_key = unique("direct");
    let topic_key = unique("topic");
    let direct = private_queue(&channel).await;
    let topic = private_queue(&channel).await;
    let fanout = private_queue(&channel).await;
    channel
        .bind(&direct, "amq.direct", &direct_key)
        .await
        .unwrap();
    channel
        .bind(&topic, "amq.topic", &format!("{topic_key}.*"))
        .await
        .unwrap();
    channel.bind(&fanout, "amq.fanout", "").await.unwrap();

    for (exchange, key, text) in [
        ("amq.direct", direct_key.clone(), "by key"),
        ("amq.topic", format!("{topic_key}.eu"), "by pattern"),
        ("amq.fanout", String::new(), topic_key.as_str()),
    ] {
        let tracker = channel
            .publish(exchange, &key, Envelope::text(text).mandatory(true))
            .await
            .unwrap();
        assert_eq!(
            tracker.settled().await,
            postage_core::channel::DeliveryStatus::Accepted
        );
    }

    let mut by_key = channel.consume(&direct, "").await.unwrap();
    let message = next(&mut by_key).await;
    assert_eq!(
        (
            message.exchange(),
            message.routing_key(),
            message.text().unwrap()
        ),
        ("amq.direct", direct_key.as_str(), "by key")
    );
    message.ack().await.unwrap();

    let mut by_pattern = channel.consume(&topic, "").await.unwrap();
    let message = next(&mut by_pattern).await;
    assert_eq!(message.exchange(), "amq.topic");
    assert_eq!(message.text().unwrap(), "by pattern");
    message.ack().await.unwrap();

    // amq.fanout is shared by the whole broker: skip what other programs sent there.
    let mut everything = channel.consume(&fanout, "").await.unwrap();
    loop {
        let message = next(&mut everything).await;
        message.ack().await.unwrap();
        if message.exchange() == "amq.fanout" && message.text().ok() == Some(topic_key.as_str()) {
            break;
        }
    }

    channel.close().await.unwrap();
    connection.close().await.unwrap();
}

#[tokio::test]
async fn close_flushes_ten_thousand_publishes() {
    let connection = connect().await;
    let channel = Channel::open(&connection).await.unwrap();
    let queue = private_queue(&channel).await;
    // Fire and forget: each publish returns once written, its confirm not awaited.
    for n in 0..10_000 {
        channel
            .publish("", &queue, Envelope::text(n.to_string()))
            .await
            .unwrap();
    }
    channel.close().await.unwrap();
    assert_eq!(depth(&connection, &queue).await, 10_000);
    assert!(matches!(
        channel.publish("", &queue, Envelope::text("late")).await,
        Err(Error::Closed(_))
    ));
    connection.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_waits_for_publishes_in_flight_on_other_tasks() {
    let connection = connect().await;
    let channel = Channel::open(&connection).await.unwrap();
    let queue = private_queue(&channel).await;
    let published = Arc::new(AtomicUsize::new(0));
    let mut publishers = Vec::new();
    for _ in 0..10 {
        let (channel, queue, published) = (channel.clone(), queue.clone(), Arc::clone(&published));
        publishers.push(tokio::spawn(async move {
            let (mut sent, mut refused) = (0u32, 0u32);
            for n in 0..1_000 {
                match channel
                    .publish("", &queue, Envelope::text(n.to_string()))
                    .await
                {
                    Ok(_) => {
                        sent += 1;
                        published.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(Error::Closed(_)) => refused += 1,
                    Err(other) => panic!("a publish failed otherwise: {other}"),
                }
            }
            (sent, refused)
        }));
    }
    // Close while the ten tasks are publishing.
    while published.load(Ordering::Relaxed) < 1_000 {
        tokio::task::yield_now().await;
    }
    channel.close().await.unwrap();

    let (mut sent, mut refused) = (0, 0);
    for publisher in publishers {
        let (s, r) = publisher.await.unwrap();
        sent += s;
        refused += r;
    }
    assert_eq!(sent + refused, 10_000);
    // Every publish that succeeded is in the queue; the others were told it was closed.
    assert_eq!(depth(&connection, &queue).await, sent);
    connection.close().await.unwrap();
}

#[tokio::test]
async fn the_lapin_channel_is_there_for_the_rest() {
    let connection = connect().await;
    let channel = Channel::open(&connection).await.unwrap();
    let queue = private_queue(&channel).await;
    channel
        .publish("", &queue, Envelope::text("x"))
        .await
        .unwrap();
    channel.flush().await.unwrap();
    // Something postage does not wrap: purge.
    let purged = channel
        .lapin()
        .queue_purge(queue.as_str().into(), Default::default())
        .await
        .unwrap();
    assert_eq!(purged, 1);
    channel.close().await.unwrap();
    connection.close().await.unwrap();
}
