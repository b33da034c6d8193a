//! What differs between the RabbitMQ versions postage runs on, checked against the broker
//! the suite runs on (`POSTAGE_RABBITMQ`: 3.10, or 4.0 with the denials 4.3 ships): the
//! shape of shared queues, a forced shape the broker refuses, quorum queues without
//! dead-lettering, a consumer the broker times out, and direct reply-to.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postage_core::{
    Config, Connection, Consumer, Error, Exchange, Host, Processor, Producer, Queue, QueueShape,
    ReplyQueue, RpcOptions, processor,
};
use postage_tests::{OwnNode, connect, ctl, exchange, rabbitmq_major, rabbitmqctl, unique};

/// The shape the broker under test accepts: RabbitMQ 4 nodes of the project's scripts refuse
/// transient shared queues unless told to permit them.
fn expected_shape() -> QueueShape {
    let permitted = std::env::var("POSTAGE_RABBITMQ_PERMIT_DEPRECATED").is_ok_and(|v| v == "1");
    if rabbitmq_major() >= 4 && !permitted {
        QueueShape::Durable
    } else {
        QueueShape::Transient
    }
}

/// `name -> (durable, auto_delete, exclusive)` of every queue, read back from the broker.
fn queue_flags(listing: &str, name: &str) -> Option<(bool, bool, bool)> {
    listing.lines().find_map(|line| {
        let fields: Vec<&str> = line.split('\t').collect();
        (fields.first() == Some(&name)).then(|| {
            (
                fields[1] == "true",
                fields[2] == "true",
                fields[3] == "true",
            )
        })
    })
}

#[tokio::test]
async fn shared_queues_take_the_shape_the_broker_accepts_without_costing_the_connection() {
    let connection = connect().await;
    let exchange = exchange("shape");
    let shared = unique("shape-shared");
    let fanout = unique("shape-fanout");
    let mut consumer = Consumer::builder(&connection)
        .bind(exchange.clone(), Queue::new(shared.as_str()), "shared")
        .bind(
            exchange.clone(),
            Queue::new(fanout.as_str()).auto_delete(true),
            "fanout",
        )
        .bind(exchange.clone(), Queue::new(""), "private")
        .build()
        .await
        .expect("a consumer of Postage-shaped queues starts on this broker");
    consumer.start().await.expect("consuming");

    let listing = rabbitmqctl(&["list_queues", "name", "durable", "auto_delete", "exclusive"]);
    let durable = expected_shape() == QueueShape::Durable;
    assert_eq!(
        queue_flags(&listing, &shared),
        Some((durable, false, false)),
        "{listing}"
    );
    assert_eq!(
        queue_flags(&listing, &fanout),
        Some((durable, true, false)),
        "{listing}"
    );
    let private = consumer
        .handle()
        .consumed_queues()
        .into_iter()
        .find(|q| q.starts_with("amq.gen-"));
    let private = private.expect("the server-named queue");
    // A server-named queue is private by nature: exclusive where transient ones are refused.
    assert_eq!(
        queue_flags(&listing, &private),
        Some((false, false, durable)),
        "{listing}"
    );
    // The broker was asked on a connection of its own: the user's was never lost.
    assert_eq!(connection.queue_shape().await, expected_shape());
    assert_eq!(connection.generation(), 0);

    let producer = Producer::builder(&connection)
        .destination(exchange, "shared")
        .build()
        .await
        .unwrap();
    producer
        .command("echo", "through a shaped queue")
        .await
        .unwrap();
    let delivery = postage_tests::next_within(&mut consumer, Duration::from_secs(5))
        .await
        .expect("the message arrives");
    delivery.ack().await.unwrap();
    rabbitmqctl(&["delete_queue", &shared]);
    connection.close().await.unwrap();
}

#[tokio::test]
async fn a_forced_shape_the_broker_refuses_is_one_line_naming_the_queue_and_the_setting() {
    let queue = unique("forced-shape");
    let exchange = exchange("forced-shape");
    let wrong = match expected_shape() {
        // The broker refuses transient shared queues: force them.
        QueueShape::Durable => QueueShape::Transient,
        // The broker takes them, and another component (Python Postage) declared the
        // queue so: force the durable shape beside it.
        QueueShape::Transient => {
            let python = connect().await;
            Consumer::builder(&python)
                .bind(exchange.clone(), Queue::new(queue.as_str()), "k")
                .build()
                .await
                .unwrap();
            python.close().await.unwrap();
            QueueShape::Durable
        }
    };
    let mut config = Config::from_env().unwrap();
    config.queue_shape = Some(wrong);
    let connection = Connection::connect(&config).await.unwrap();
    assert_eq!(
        connection.queue_shape().await,
        wrong,
        "a forced shape is not asked for"
    );
    let error = Consumer::builder(&connection)
        .bind(exchange, Queue::new(queue.as_str()), "k")
        .build()
        .await
        .expect_err("the broker refuses the queue");
    let text = error.to_string();
    assert!(matches!(error, Error::QueueRefused { .. }), "{error:?}");
    assert!(text.contains(&queue), "names the queue: {text}");
    assert!(
        text.contains("POSTAGE_QUEUE_SHAPE"),
        "names the setting: {text}"
    );
    assert!(!text.contains('\n'), "one line: {text}");
    if wrong == QueueShape::Durable {
        rabbitmqctl(&["delete_queue", &queue]);
    }
}

/// A writer for log lines that a test reads back.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_quorum_queue_without_dead_lettering_is_warned_about_at_start() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let connection = connect().await;
    let exchange = exchange("quorum-warning");
    let bare = unique("quorum-bare");
    let lettered = unique("quorum-lettered");
    let dead = Exchange::new("amq.direct");
    Consumer::builder(&connection)
        .bind(exchange.clone(), Queue::new(bare.as_str()).quorum(), "bare")
        .bind(
            exchange,
            Queue::new(lettered.as_str())
                .quorum()
                .dead_letter(&dead, "dead"),
            "lettered",
        )
        .build()
        .await
        .unwrap();
    let text = logs.text();
    let warnings: Vec<&str> = text.lines().filter(|l| l.contains("dead-letter")).collect();
    assert_eq!(
        warnings.len(),
        1,
        "one warning, for the queue without: {text}"
    );
    assert!(
        warnings[0].contains("WARN") && warnings[0].contains(&bare),
        "{text}"
    );
    rabbitmqctl(&["delete_queue", &bare]);
    rabbitmqctl(&["delete_queue", &lettered]);
    connection.close().await.unwrap();
}

/// A node of the test's own with a consumer timeout of 2 s, checked every half second.
const TIMEOUT_NODE: (&str, u16, u16) = ("postage-timeout", 5721, 25721);

/// The first delivery of "slow" takes longer than the consumer timeout; the rest are quick.
struct Slow {
    seen: Arc<Mutex<Vec<(String, bool)>>>,
}

#[processor]
impl Slow {
    #[message_handler("command", "work")]
    async fn work(&self, id: String, metadata: &postage_core::Metadata) {
        let first = !self
            .seen
            .lock()
            .unwrap()
            .iter()
            .any(|(seen, _)| *seen == id);
        let slow = first && id == "slow";
        self.seen.lock().unwrap().push((id, metadata.redelivered));
        if slow {
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    }
}

#[tokio::test]
async fn a_consumer_the_broker_times_out_is_consumed_again_and_the_message_handled() {
    let (name, port, dist) = TIMEOUT_NODE;
    let _node = OwnNode::start(name, port, dist, "consumer_timeout = 2000\n");
    // The broker checks for timed-out deliveries on each channel's tick (60 s by default).
    ctl(
        name,
        &[
            "eval",
            "application:set_env(rabbit, channel_tick_interval, 500).",
        ],
    );

    let config = Config {
        hosts: vec![Host {
            name: "127.0.0.1".into(),
            port,
        }],
        ..Config::default()
    };
    let connection = Connection::connect(&config).await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let exchange = exchange("timeout");
    let queue = unique("timeout");
    let processor = Processor::builder(&connection, Slow { seen: seen.clone() })
        .bind(
            exchange.clone(),
            Queue::new(queue.as_str()).durable(true),
            "work",
        )
        .build()
        .await
        .unwrap();
    let stop = processor.handle();
    let running = tokio::spawn(processor.run());
    let producer = Producer::builder(&connection)
        .destination(exchange, "work")
        .build()
        .await
        .unwrap();
    producer.command("work", "slow").await.unwrap();

    // The broker gives up on the first delivery after 2 s (4.0 closes the channel, 4.3.7
    // cancels the consumer): the message comes again, on a new consumer.
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && seen.lock().unwrap().len() < 2 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let handled = seen.lock().unwrap().clone();
    assert!(
        handled.len() >= 2,
        "handled again after the timeout: {handled:?}"
    );
    assert_eq!(handled[1], ("slow".to_owned(), true), "{handled:?}");

    // And it serves on, with one consumer.
    producer.command("work", "next").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && !seen.lock().unwrap().iter().any(|(id, _)| id == "next") {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        seen.lock().unwrap().iter().any(|(id, _)| id == "next"),
        "serves after the timeout"
    );
    let consumers = ctl(name, &["list_queues", "name", "consumers"]);
    assert!(
        consumers.contains(&format!("{queue}\t1")),
        "one consumer: {consumers}"
    );
    stop.shutdown();
    let _ = running.await;
    connection.close().await.unwrap();
}

/// Answers after a pause, so a caller can be gone by then.
struct Echo;

#[processor]
impl Echo {
    #[rpc_handler("command", "echo")]
    async fn echo(&self, text: String) -> String {
        tokio::time::sleep(Duration::from_millis(300)).await;
        text
    }
}

#[tokio::test]
async fn direct_reply_to_answers_and_an_answer_to_a_caller_gone_harms_nothing() {
    let server = connect().await;
    let exchange = exchange("direct-reply");
    let processor = Processor::builder(&server, Echo)
        .bind(
            exchange.clone(),
            Queue::new(unique("direct-reply")).auto_delete(true),
            "echo",
        )
        .build()
        .await
        .unwrap();
    let stop = processor.handle();
    let running = tokio::spawn(processor.run());
    let caller = |connection: &Connection| {
        Producer::builder(connection)
            .destination(exchange.clone(), "echo")
            .reply_queue(ReplyQueue::DirectReplyTo)
            .build()
    };

    // A caller that leaves before its answer: from RabbitMQ 4.2 a mandatory publish to its
    // address would count as routed; postage answers without `mandatory` on every version,
    // and the answer is simply dropped.
    let gone = connect().await;
    let pending = caller(&gone)
        .await
        .unwrap()
        .rpc_deferred("echo", "nobody waits", RpcOptions::new())
        .await
        .unwrap();
    gone.close().await.unwrap();
    drop(pending);

    let client = connect().await;
    let producer = caller(&client).await.unwrap();
    for text in ["first", "second"] {
        let answer: String = producer.call("echo", text).await.unwrap();
        assert_eq!(answer, text);
    }
    stop.shutdown();
    running.await.unwrap().unwrap();
    client.close().await.unwrap();
    server.close().await.unwrap();
}
