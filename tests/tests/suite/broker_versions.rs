//! What differs between the RabbitMQ versions postage runs on, checked against the broker
//! the suite runs on (`POSTAGE_RABBITMQ`: 3.10; 4.0 with transient non-exclusive queues
//! denied by hand; 4.3.6 with its own defaults): the shape of shared queues, a forced
//! shape the broker refuses, quorum queues without dead-lettering and at their delivery
//! limit, consumer timeouts and `x-consumer-timeout`, global QoS, `frame_max`, and direct
//! reply-to. Each test asserts what each of the three does.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postage_core::{
    Config, Connection, Consumer, Disposition, Error, Exchange, HandlerError, Host, Metadata,
    Processor, Producer, Queue, QueueShape, ReplyQueue, RpcOptions, processor,
};
use postage_tests::{
    OwnNode, connect, ctl, exchange, rabbitmq_major, rabbitmq_version, rabbitmqctl,
    transient_queues_denied, unique,
};

/// The shape the broker under test accepts: transient shared queues unless it denies them
/// (4.0 as the project's scripts run it; 4.3.6 permits them by default).
fn expected_shape() -> QueueShape {
    if transient_queues_denied() {
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

/// The first delivery of "slow" takes longer than the consumer timeout (`pause`); the
/// rest are quick.
struct Slow {
    seen: Arc<Mutex<Vec<(String, bool)>>>,
    pause: Duration,
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
        self.seen.lock().unwrap().push((id, metadata.redelivered()));
        if slow {
            tokio::time::sleep(self.pause).await;
        }
    }
}

/// Runs a [`Slow`] processor on `queue` of the timeout node until "slow" was handled
/// twice or 8 s passed (its first handling takes 5 s, or 3 s with a handler timeout of
/// 4 s and a prefetch of 1), then until "next" was handled too; returns what was handled,
/// in order, and checks that one consumer reads the queue after.
async fn handled_around_a_timeout(
    connection: &Connection,
    queue: Queue,
    handler_timeout: Option<Duration>,
) -> Vec<(String, bool)> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let exchange = exchange("timeout");
    let name = queue.name().to_owned();
    let pause = Duration::from_secs(if handler_timeout.is_some() { 3 } else { 5 });
    let slow = Slow {
        seen: seen.clone(),
        pause,
    };
    let mut builder = Processor::builder(connection, slow).bind(exchange.clone(), queue, "work");
    if let Some(timeout) = handler_timeout {
        builder = builder.handler_timeout(timeout).prefetch(1);
    }
    let processor = builder.build().await.unwrap();
    let stop = processor.handle();
    let running = tokio::spawn(processor.run());
    let producer = Producer::builder(connection)
        .destination(exchange, "work")
        .build()
        .await
        .unwrap();
    producer.command("work", "slow").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(8);
    while Instant::now() < deadline && seen.lock().unwrap().len() < 2 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    producer.command("work", "next").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && !seen.lock().unwrap().iter().any(|(id, _)| id == "next") {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let handled = seen.lock().unwrap().clone();
    assert!(
        handled.iter().any(|(id, _)| id == "next"),
        "serves after the timeout: {handled:?}"
    );
    // A consumer the broker cancelled is moved to a new channel: give the last move, if
    // one is under way, a moment.
    let (node, _, _) = TIMEOUT_NODE;
    let deadline = Instant::now() + Duration::from_secs(5);
    let one = format!("{name}\t1\n");
    let mut consumers = ctl(node, &["list_queues", "name", "consumers"]);
    while !consumers.contains(&one) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        consumers = ctl(node, &["list_queues", "name", "consumers"]);
    }
    assert!(
        consumers.contains(&one),
        "one consumer of {name}: {consumers}"
    );
    stop.shutdown();
    let _ = running.await;
    ctl(node, &["delete_queue", &name]);
    handled
}

/// What the broker does with a delivery left unacknowledged past its consumer timeout
/// (2 s on the test's node): RabbitMQ 3.10 and 4.0 close the channel, whatever the queue
/// type; 4.3 no longer times out deliveries of classic queues at all, and on quorum
/// queues cancels the consumer (`basic.cancel`, leaving the channel open and the
/// cancelled consumer attached until its deliveries are settled) and returns the
/// message. Postage consumes again on a new channel either way, and the message is
/// handled again, redelivered, by one consumer.
///
/// A processor whose handlers can hold a delivery longer than the broker's consumer
/// timeout (as postage is told it: `Config::consumer_timeout`) is warned about at start,
/// naming both; on a quorum queue it asks for `x-consumer-timeout` above its handlers'
/// timeout, which 4.3 honours (the slow delivery is handled once) and 3.10 and 4.0 ignore.
#[tokio::test(flavor = "current_thread")]
async fn a_consumer_the_broker_times_out_is_consumed_again_and_the_message_handled() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let (name, port, dist) = TIMEOUT_NODE;
    let _node = OwnNode::start(name, port, dist, "consumer_timeout = 2000\n");
    // 3.10 and 4.0 check for timed-out deliveries on each channel's tick (60 s by default).
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
        consumer_timeout: Duration::from_secs(2),
        ..Config::default()
    };
    let connection = Connection::connect(&config).await.unwrap();
    let slow = ("slow".to_owned(), false);
    let again = ("slow".to_owned(), true);
    let next = ("next".to_owned(), false);

    let classic = Queue::new(unique("timeout-classic")).durable(true);
    let handled = handled_around_a_timeout(&connection, classic, None).await;
    if rabbitmq_version() >= (4, 3) {
        assert_eq!(handled, [slow.clone(), next.clone()], "no timeout on 4.3");
    } else {
        assert_eq!(handled[..2], [slow.clone(), again.clone()], "{handled:?}");
    }

    let quorum = Queue::new(unique("timeout-quorum")).quorum();
    let handled = handled_around_a_timeout(&connection, quorum, None).await;
    assert_eq!(handled[..2], [slow.clone(), again.clone()], "{handled:?}");
    let text = logs.text();
    assert!(
        text.contains("a handler without a timeout can hold a delivery past the broker's consumer timeout of 2 s"),
        "{text}"
    );

    let asking = Queue::new(unique("timeout-asking")).quorum();
    let handled = handled_around_a_timeout(&connection, asking, Some(Duration::from_secs(4))).await;
    let text = logs.text();
    assert!(
        text.contains("unacknowledged for 4 s")
            && text.contains("consumer timeout of 2 s")
            && text.contains("ask RabbitMQ 4.3 for 34 s"),
        "{text}"
    );
    if rabbitmq_version() >= (4, 3) {
        assert_eq!(handled, [slow, next], "x-consumer-timeout honoured");
    } else {
        assert_eq!(handled[..2], [slow, again], "{handled:?}");
    }
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

/// An integer header the broker sets on a delivery, as a number.
fn count_header(metadata: &Metadata, key: &str) -> Option<i64> {
    use postage_core::lapin::types::AMQPValue;
    match metadata.header(key)? {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortShortInt(n) => Some(i64::from(*n)),
        _ => None,
    }
}

/// The broker's counters on one delivery: `x-delivery-count`, `x-acquired-count`.
type Counters = (Option<i64>, Option<i64>);

/// Hands every delivery back to its queue (postage's `Requeue`: `basic.reject` with
/// requeue), noting the broker's counters.
struct Requeuer {
    seen: Arc<Mutex<Vec<Counters>>>,
}

#[processor]
impl Requeuer {
    #[message_handler("command", "again")]
    fn again(&self, _id: String, metadata: &Metadata) -> Result<Disposition, HandlerError> {
        self.seen.lock().unwrap().push((
            count_header(metadata, "x-delivery-count"),
            count_header(metadata, "x-acquired-count"),
        ));
        Ok(Disposition::Requeue)
    }
}

/// Runs a [`Requeuer`] on `queue` (dead-lettering to `dead`) with one message until no
/// delivery came for a second, or 40 came; returns the counters of each delivery.
async fn requeued(connection: &Connection, queue: Queue) -> Vec<Counters> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let exchange = exchange("limit");
    let processor = Processor::builder(connection, Requeuer { seen: seen.clone() })
        .bind(exchange.clone(), queue, "again")
        .build()
        .await
        .unwrap();
    let stop = processor.handle();
    let running = tokio::spawn(processor.run());
    Producer::builder(connection)
        .destination(exchange, "again")
        .build()
        .await
        .unwrap()
        .command("again", "poison")
        .await
        .unwrap();
    let mut last = (Instant::now(), 0);
    let started = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = seen.lock().unwrap().len();
        if now != last.1 {
            last = (Instant::now(), now);
        }
        let quiet = now > 0 && last.0.elapsed() > Duration::from_secs(1);
        if quiet || now >= 40 || started.elapsed() > Duration::from_secs(20) {
            break;
        }
    }
    stop.shutdown();
    let _ = running.await;
    seen.lock().unwrap().clone()
}

/// Quorum queues and a message handed back for ever: RabbitMQ 4 sets a delivery limit of
/// 20 by default and counts every return (`basic.reject` with requeue included), so the
/// 21st delivery is the last and the message is dead-lettered; 3.10 sets none, and the
/// message comes back for as long as it is handed back (postage's `Requeue` loops there
/// unless the queue has `.delivery_limit(n)`, which every version honours). 4.3 also
/// tells each delivery how often it was acquired (`x-acquired-count`).
#[tokio::test]
async fn a_quorum_queue_ends_a_requeue_loop_at_its_delivery_limit() {
    let connection = connect().await;
    let dead_exchange = Exchange::new("amq.direct");
    let dead = unique("limit-dead");
    let dead_queue = Queue::new(dead.as_str()).durable(true);
    Consumer::builder(&connection)
        .bind(dead_exchange.clone(), dead_queue, dead.as_str())
        .build()
        .await
        .unwrap();
    let node = postage_tests::test_node();

    let default = unique("limit-default");
    let queue = Queue::new(default.as_str())
        .quorum()
        .dead_letter(&dead_exchange, &dead);
    let seen = requeued(&connection, queue).await;
    if rabbitmq_major() >= 4 {
        assert_eq!(
            seen.len(),
            21,
            "the first delivery and 20 returns: {seen:?}"
        );
        assert_eq!(
            postage_tests::message_counts(&node, &dead),
            (1, 0),
            "dead-lettered"
        );
        let acquired = if rabbitmq_version() >= (4, 3) {
            Some(20)
        } else {
            None
        };
        assert_eq!(seen[20], (Some(20), acquired), "{seen:?}");
        assert_eq!(seen[0].0, None, "{seen:?}");
    } else {
        assert!(seen.len() >= 40, "no default limit on 3.10: {seen:?}");
        assert_eq!(seen[..2], [(None, None), (Some(1), None)], "{seen:?}");
        assert_eq!(postage_tests::message_counts(&node, &dead), (0, 0));
    }
    rabbitmqctl(&["delete_queue", &default]);

    let limited = unique("limit-3");
    let queue = Queue::new(limited.as_str())
        .quorum()
        .delivery_limit(3)
        .dead_letter(&dead_exchange, &dead);
    let seen = requeued(&connection, queue).await;
    assert_eq!(seen.len(), 4, "the first delivery and 3 returns: {seen:?}");
    let expected_dead = if rabbitmq_major() >= 4 { 2 } else { 1 };
    assert_eq!(
        postage_tests::message_counts(&node, &dead),
        (expected_dead, 0)
    );
    rabbitmqctl(&["delete_queue", &limited]);
    rabbitmqctl(&["delete_queue", &dead]);
    connection.close().await.unwrap();
}

/// `basic.qos` with `global` (a prefetch for the whole channel): RabbitMQ 3.10 and 4.0
/// honour it; 4.3 denies the deprecated feature `global_qos` by default, still answers
/// `qos-ok`, and applies the prefetch to each consumer instead (logging an error). Postage
/// never asks for it: every prefetch it sets, and the low-level `Channel::qos`, is per
/// consumer.
#[tokio::test]
async fn a_global_prefetch_is_per_consumer_where_global_qos_is_denied() {
    use postage_core::lapin::options::{BasicConsumeOptions, BasicQosOptions};
    use postage_core::lapin::types::FieldTable;
    use postage_core::lapin::{BasicProperties, options::BasicPublishOptions};

    let connection = connect().await;
    let declaring = postage_core::channel::Channel::open(&connection)
        .await
        .unwrap();
    let channel = connection.lapin().create_channel().await.unwrap();
    let mut queues = Vec::new();
    for _ in 0..2 {
        let queue = Queue::new("").exclusive(true);
        let name = declaring.declare_queue(&queue).await.unwrap();
        for _ in 0..3 {
            channel
                .basic_publish(
                    "".into(),
                    name.as_str().into(),
                    BasicPublishOptions::default(),
                    b"x",
                    BasicProperties::default(),
                )
                .await
                .unwrap();
        }
        queues.push(name);
    }
    channel
        .basic_qos(1, BasicQosOptions { global: true })
        .await
        .expect("every version answers qos-ok");
    let mut consumers = Vec::new();
    for name in &queues {
        consumers.push(
            channel
                .basic_consume(
                    name.as_str().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .unwrap(),
        );
    }
    let mut delivered = 0;
    for consumer in &mut consumers {
        while let Ok(Some(Ok(_))) = tokio::time::timeout(
            Duration::from_millis(700),
            futures_util::StreamExt::next(consumer),
        )
        .await
        {
            delivered += 1;
        }
    }
    let expected = if rabbitmq_version() >= (4, 3) { 2 } else { 1 };
    assert_eq!(
        delivered, expected,
        "unacknowledged deliveries under a global prefetch of 1"
    );
    let _ = channel.close(200, "done".into()).await;
    connection.close().await.unwrap();
}

/// A `frame_max` below 8,192: RabbitMQ 3.10 and 4.0 accept it; from 4.1 the broker
/// refuses the connection during the handshake. Postage always proposes 131,072 (the
/// broker's default) and has no setting for it: `POSTAGE_URL`'s `frame_max` is refused
/// at start with one line naming it.
#[tokio::test]
async fn a_frame_max_below_8192_is_refused_from_4_1_and_postage_never_asks_for_one() {
    let config = Config::from_env().unwrap();
    let host = &config.hosts[0];
    let uri = format!(
        "amqp://guest:guest@{}:{}/%2f?frame_max=4096",
        host.name, host.port
    );
    let raw = postage_core::lapin::Connection::connect(
        &uri,
        postage_core::lapin::ConnectionProperties::default(),
    )
    .await;
    if rabbitmq_version() >= (4, 3) {
        assert!(raw.is_err(), "4.3 refuses frame_max 4096");
    } else {
        let raw = raw.expect("3.10 and 4.0 accept frame_max 4096");
        assert_eq!(raw.configuration().frame_max(), 4096);
        let _ = raw.close(200, "done".into()).await;
    }

    let connection = connect().await;
    assert_eq!(connection.lapin().configuration().frame_max(), 131_072);
    connection.close().await.unwrap();
    let error = Config::from_url(&format!(
        "amqp://{}:{}/?frame_max=4096",
        host.name, host.port
    ))
    .expect_err("no frame_max setting");
    let text = error.to_string();
    assert!(text.contains("frame_max") && !text.contains('\n'), "{text}");
}

/// `x-consumer-timeout` as a consumer argument on a classic queue: RabbitMQ 3.10 and 4.0
/// accept it, 4.3 refuses it (406, closing the channel), having no consumer timeouts
/// for classic queues at all. So postage asks for it on quorum queues only.
#[tokio::test]
async fn a_consumer_timeout_argument_on_a_classic_queue_is_refused_from_4_3() {
    use postage_core::lapin::options::BasicConsumeOptions;
    use postage_core::lapin::types::{AMQPValue, FieldTable};

    let connection = connect().await;
    let queue = unique("classic-timeout-arg");
    postage_core::channel::Channel::open(&connection)
        .await
        .unwrap()
        .declare_queue(&Queue::new(queue.as_str()).durable(true))
        .await
        .unwrap();
    let channel = connection.lapin().create_channel().await.unwrap();
    let mut arguments = FieldTable::default();
    arguments.insert("x-consumer-timeout".into(), AMQPValue::LongLongInt(60_000));
    let consumed = channel
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            arguments,
        )
        .await;
    if rabbitmq_version() >= (4, 3) {
        let error = consumed.expect_err("4.3 refuses the argument on a classic queue");
        assert!(error.to_string().contains("x-consumer-timeout"), "{error}");
    } else {
        consumed.expect("3.10 and 4.0 take it");
        let _ = channel.close(200, "done".into()).await;
    }
    rabbitmqctl(&["delete_queue", &queue]);
    connection.close().await.unwrap();
}

/// Direct reply-to as each broker does it: a `mandatory` publish to the address of a
/// caller whose channel is gone. postage never publishes answers `mandatory`, so on every
/// version an answer to a caller that gave up is dropped without an error; this test
/// shows what changed under it (RabbitMQ 4.2 counts such a publish as routed).
#[tokio::test]
async fn a_mandatory_publish_to_a_gone_direct_reply_to_caller() {
    use postage_core::lapin::BasicProperties;
    use postage_core::lapin::Confirmation;
    use postage_core::lapin::options::{
        BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
        QueueDeclareOptions,
    };
    use postage_core::lapin::types::FieldTable;
    let connection = connect().await;
    let requests = unique("directreply");
    let server = connection.open_channel().await.unwrap();
    server
        .queue_declare(
            requests.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    // A caller: consumes direct reply-to, sends one request, then goes.
    let caller = connection.open_channel().await.unwrap();
    let _answers = caller
        .basic_consume(
            "amq.rabbitmq.reply-to".into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    caller
        .basic_publish(
            "".into(),
            requests.as_str().into(),
            BasicPublishOptions::default(),
            b"request",
            BasicProperties::default().with_reply_to("amq.rabbitmq.reply-to".into()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let mut request = None;
    for _ in 0..50 {
        request = server
            .basic_get(requests.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap();
        if request.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reply_to = request
        .expect("the request arrives")
        .properties
        .reply_to()
        .clone()
        .expect("the broker's direct reply-to address");
    caller.close(200, "gone".into()).await.unwrap();

    let answering = connection.open_channel().await.unwrap();
    answering
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let confirmation = answering
        .basic_publish(
            "".into(),
            reply_to,
            BasicPublishOptions {
                mandatory: true,
                immediate: false,
            },
            b"answer",
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let returned = matches!(confirmation, Confirmation::Ack(Some(_)));
    let version = rabbitmq_version();
    assert_eq!(
        returned,
        version < (4, 2),
        "RabbitMQ {version:?}: returned {returned} ({confirmation:?})"
    );
}
