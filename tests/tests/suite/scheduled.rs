//! Scheduled messages against the real broker: `command_after` and `command_at` reach the
//! exchange and routing key they are addressed to once their delay ends (from 100 ms; an
//! hour read back from the broker's delay queue, not waited for), and a scheduled message
//! outlives its sender and a restart of the broker.

use std::time::{Duration, Instant, SystemTime};

use postage_core::lapin::options::{
    BasicGetOptions, BasicNackOptions, ExchangeDeleteOptions, QueueDeleteOptions,
};
use postage_core::{Config, Connection, Consumer, Error, Exchange, Host, Producer, Queue};
use postage_tests::{
    OwnNode, connect, ctl, exchange, next_within, rabbitmqctl, start_app, test_node, unique,
};

/// The own node of the broker-restart test.
const RESTART_NODE: (&str, u16, u16) = ("postage-sched-1", 5851, 25851);

/// Deletes what scheduling declared for `exchange` on the node `node`: the delay queues
/// and their fanout exchanges `postage.scheduled.<exchange>.*`, which stay when unused.
async fn delete_scheduled(connection: &Connection, node: &str, exchange: &Exchange) {
    let prefix = format!("postage.scheduled.{}.", exchange.name());
    let queues = ctl(
        node,
        &["list_queues", "name", "--no-table-headers", "--silent"],
    );
    let channel = connection.open_channel().await.unwrap();
    for queue in queues
        .lines()
        .map(str::trim)
        .filter(|q| q.starts_with(&prefix))
    {
        channel
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await
            .unwrap();
        channel
            .exchange_delete(queue.into(), ExchangeDeleteOptions::default())
            .await
            .unwrap();
    }
    let _ = channel.close(200, "cleaned up".into()).await;
}

/// A consumer of a queue of its own bound to `exchange` with `key`.
async fn consumer(connection: &Connection, exchange: &Exchange, key: &str) -> Consumer {
    let consumer = Consumer::builder(connection)
        .bind(
            exchange.clone(),
            Queue::new(unique("sched")).auto_delete(true),
            key,
        )
        .build()
        .await
        .unwrap();
    consumer.start().await.unwrap();
    consumer
}

/// The command parameters of the next delivery within `wait`, acknowledged, and when it
/// came.
async fn next_text(consumer: &mut Consumer, wait: Duration) -> Option<(String, Instant)> {
    let delivery = next_within(consumer, wait).await?;
    let came = Instant::now();
    let text = delivery.message().unwrap().parameters::<String>().unwrap();
    delivery.ack().await.unwrap();
    Some((text, came))
}

#[tokio::test]
async fn a_command_after_a_delay_reaches_its_routing_key_once_its_delay_ends() {
    let connection = connect().await;
    let exchange = exchange("sched");
    let mut addressed = consumer(&connection, &exchange, "addressed").await;
    let mut other = consumer(&connection, &exchange, "other").await;
    let producer = Producer::builder(&connection)
        .destination(exchange.clone(), "addressed")
        .reliable(true)
        .build()
        .await
        .unwrap();

    // Sent in the reverse of their order of arrival, each timed from its own sending
    // (the first into a delay queue declares it: a quorum queue takes a while).
    let mut sent = Vec::new();
    for (text, ms) in [("third", 1200), ("second", 500), ("first", 100), ("now", 0)] {
        let start = Instant::now();
        producer
            .command_after(Duration::from_millis(ms), "echo", text)
            .await
            .unwrap();
        sent.push((text, ms, start, Instant::now()));
    }

    let mut arrived = Vec::new();
    while let Some((text, came)) = next_text(&mut addressed, Duration::from_secs(5)).await {
        arrived.push((text, came));
        if arrived.len() == 4 {
            break;
        }
    }
    let mut texts: Vec<&str> = arrived.iter().map(|(text, _)| text.as_str()).collect();
    texts.sort_unstable();
    assert_eq!(texts, ["first", "now", "second", "third"], "each came once");
    for (text, ms, start, done) in sent {
        let came = arrived.iter().find(|(t, _)| t == text).unwrap().1;
        let wanted = Duration::from_millis(ms);
        let after = came.duration_since(start);
        assert!(
            after >= wanted,
            "{text} came {after:?} after it was sent, before its delay of {ms} ms"
        );
        // Due within 100 ms plus the broker's expiry rounding (measured here: a few ms);
        // a second's slack for a loaded machine.
        let late = came.duration_since(done);
        assert!(
            late <= wanted + Duration::from_secs(1),
            "{text} came {late:?} after its publish, past its delay of {ms} ms"
        );
        println!(
            "scheduled {ms} ms: came {:?} after it was sent (its publish took {:?})",
            came.duration_since(done),
            done.duration_since(start)
        );
    }
    assert!(
        next_within(&mut other, Duration::from_millis(300))
            .await
            .is_none(),
        "a scheduled message reached another routing key"
    );
    delete_scheduled(&connection, &test_node(), &exchange).await;
}

/// The one message waiting in `queue`, taken and requeued: its expiration and routing key.
async fn waiting(connection: &Connection, queue: &str) -> (String, String) {
    let channel = connection.open_channel().await.unwrap();
    let message = channel
        .basic_get(queue.into(), BasicGetOptions::default())
        .await
        .unwrap()
        .expect("a message waits in the delay queue");
    let expiration = message
        .delivery
        .properties
        .expiration()
        .as_ref()
        .expect("an expiration")
        .to_string();
    let key = message.delivery.routing_key.to_string();
    message
        .delivery
        .acker
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
        .unwrap();
    (expiration, key)
}

#[tokio::test]
async fn an_hour_waits_in_a_durable_delay_queue_that_dead_letters_to_its_exchange() {
    let connection = connect().await;
    let exchange = exchange("sched-hour");
    let _addressed = consumer(&connection, &exchange, "later").await;
    let producer = Producer::builder(&connection)
        .destination(exchange.clone(), "later")
        .reliable(true)
        .build()
        .await
        .unwrap();

    producer
        .command_after(Duration::from_secs(3600), "echo", "in an hour")
        .await
        .unwrap();
    // An hour waits in the ladder's 4000 s step, its own expiration an hour.
    let queue = format!("postage.scheduled.{}.4000s", exchange.name());
    let (expiration, key) = waiting(&connection, &queue).await;
    assert_eq!(expiration, "3600000");
    assert_eq!(key, "later");
    let listing = rabbitmqctl(&["list_queues", "name", "durable", "type", "arguments"]);
    let line = listing
        .lines()
        .find(|line| line.starts_with(&format!("{queue}\t")))
        .unwrap_or_else(|| panic!("{queue} listed:\n{listing}"));
    assert!(line.contains("\ttrue\t"), "durable: {line}");
    assert!(line.contains("quorum"), "a quorum queue: {line}");
    assert!(line.contains("4000000"), "its TTL is its tier: {line}");
    assert!(
        line.contains(exchange.name()),
        "dead-letters to the exchange: {line}"
    );
    assert!(line.contains("at-least-once"), "at least once: {line}");
    assert!(
        !line.contains("x-dead-letter-routing-key"),
        "keeps the message's own key: {line}"
    );
    assert!(!line.contains("x-expires"), "no queue TTL: {line}");

    // At a time an hour away: the same queue, the time left as its expiration.
    let at = SystemTime::now() + Duration::from_secs(3600);
    producer.command_at(at, "echo", "at a time").await.unwrap();
    let channel = connection.open_channel().await.unwrap();
    let first = channel
        .basic_get(queue.as_str().into(), BasicGetOptions::default())
        .await
        .unwrap()
        .unwrap();
    let second = channel
        .basic_get(queue.as_str().into(), BasicGetOptions::default())
        .await
        .unwrap()
        .expect("the second scheduled message waits in the same queue");
    let left: u64 = second
        .delivery
        .properties
        .expiration()
        .as_ref()
        .unwrap()
        .as_str()
        .parse()
        .unwrap();
    assert!(
        (3_595_000..=3_600_000).contains(&left),
        "an hour from now: {left} ms"
    );
    assert_eq!(second.delivery.properties.delivery_mode(), &Some(2));
    drop((first, second));
    channel.close(200, "done".into()).await.unwrap();

    // Past what a delay queue holds: refused, nothing sent.
    let refused = producer
        .command_after(Duration::from_secs(50 * 86_400), "echo", "too late")
        .await;
    assert!(
        matches!(refused, Err(Error::InvalidConfig { .. })),
        "{refused:?}"
    );
    delete_scheduled(&connection, &test_node(), &exchange).await;
}

#[tokio::test]
async fn a_command_at_a_time_past_is_sent_at_once() {
    let connection = connect().await;
    let exchange = exchange("sched-past");
    let mut addressed = consumer(&connection, &exchange, "now").await;
    let producer = Producer::builder(&connection)
        .destination(exchange.clone(), "now")
        .reliable(true)
        .build()
        .await
        .unwrap();
    let soon = SystemTime::now() + Duration::from_millis(300);
    producer.command_at(soon, "echo", "soon").await.unwrap();
    let past = SystemTime::now() - Duration::from_secs(60);
    producer.command_at(past, "echo", "past").await.unwrap();
    let (first, _) = next_text(&mut addressed, Duration::from_secs(5))
        .await
        .unwrap();
    let (second, _) = next_text(&mut addressed, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!([first, second], ["past", "soon"]);
    delete_scheduled(&connection, &test_node(), &exchange).await;
}

#[tokio::test]
async fn a_scheduled_message_outlives_its_sender_and_a_broker_restart() {
    let (name, port, dist) = RESTART_NODE;
    let _node = OwnNode::start(name, port, dist, "");
    let config = Config {
        hosts: vec![Host {
            name: "127.0.0.1".into(),
            port,
        }],
        ..Config::default()
    };
    let exchange = Exchange::named(unique("sched-restart"));
    let queue = Queue::new(unique("sched-restart")).durable(true);

    // The receiver's queue, declared; no receiver runs while the message waits.
    let receiver = Connection::connect(&config).await.unwrap();
    Consumer::builder(&receiver)
        .bind(exchange.clone(), queue.clone(), "key")
        .build()
        .await
        .unwrap();
    receiver.close().await.unwrap();

    // The sender schedules two messages and goes away.
    let sender = Connection::connect(&config).await.unwrap();
    let producer = Producer::builder(&sender)
        .destination(exchange.clone(), "key")
        .reliable(true)
        .build()
        .await
        .unwrap();
    let sent = Instant::now();
    producer
        .command_after(Duration::from_millis(200), "echo", "due while down")
        .await
        .unwrap();
    producer
        .command_after(Duration::from_secs(12), "echo", "due after")
        .await
        .unwrap();
    sender.close().await.unwrap();

    ctl(name, &["stop_app"]);
    std::thread::sleep(Duration::from_secs(1));
    start_app(name);

    let receiver = Connection::connect(&config).await.unwrap();
    let mut consumer = Consumer::builder(&receiver)
        .bind(exchange.clone(), queue, "key")
        .build()
        .await
        .unwrap();
    consumer.start().await.unwrap();
    let mut arrived = Vec::new();
    while let Some((text, came)) = next_text(&mut consumer, Duration::from_secs(30)).await {
        arrived.push((text, came.duration_since(sent)));
        if arrived.len() == 2 {
            break;
        }
    }
    arrived.sort();
    let texts: Vec<&str> = arrived.iter().map(|(text, _)| text.as_str()).collect();
    assert_eq!(texts, ["due after", "due while down"]);
    assert!(arrived[0].1 >= Duration::from_secs(12), "{arrived:?}");
    receiver.close().await.unwrap();
}

#[tokio::test]
async fn postage_send_after_and_at_schedule_from_a_shell() {
    let connection = connect().await;
    let exchange = Exchange::named(unique("sched-cli"));
    let mut addressed = consumer(&connection, &exchange, "cli").await;
    let name = exchange.name().to_owned();
    let sent = Instant::now();
    let outputs = tokio::task::spawn_blocking(move || {
        let run = |when: &[&str], text: &str| {
            std::process::Command::new(postage_tests::binary("postage"))
                .args(["--exchange", &name, "send", "cli", "echo", "--params", text])
                .args(when)
                .output()
                .unwrap()
        };
        [
            run(&["--after", "700ms"], "\"after\""),
            run(&["--at", "2020-01-01T00:00:00Z"], "\"at a time past\""),
        ]
    })
    .await
    .unwrap();
    for output in &outputs {
        assert!(output.status.success(), "{output:?}");
    }
    let said = String::from_utf8_lossy(&outputs[0].stdout);
    assert!(said.contains("scheduled echo to cli in 700ms"), "{said}");
    let (first, _) = next_text(&mut addressed, Duration::from_secs(5))
        .await
        .unwrap();
    let (second, came) = next_text(&mut addressed, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        [first.as_str(), second.as_str()],
        ["at a time past", "after"]
    );
    assert!(came.duration_since(sent) >= Duration::from_millis(700));
    delete_scheduled(&connection, &test_node(), &exchange).await;
    // Durable, as the tool declares it.
    let channel = connection.open_channel().await.unwrap();
    channel
        .exchange_delete(exchange.name().into(), ExchangeDeleteOptions::default())
        .await
        .unwrap();
}
