//! Queued publishes (`ConnectionProperties::with_queued_publishes`) and the I/O loop as a
//! task (`with_io_loop_task`), against a broker: `AMQP_ADDR`, default amqp://127.0.0.1:5672/%2f.
//!
//! The memory alarm tests need a broker node of their own, whose alarm they raise:
//! `LAPIN_ALARM_AMQP_ADDR` (its URI) and `LAPIN_ALARM_CTL` (a command running its
//! `rabbitmqctl`, to which `set_vm_memory_high_watermark 0.00001` or `0.4` is appended,
//! e.g. `rabbitmqctl -n alarm@localhost`). Without them, they say so and pass.
use async_rs::Runtime;
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, options::*, types::FieldTable,
};
use std::{
    process::Command,
    time::{Duration, Instant},
};

const MESSAGES: usize = 10_000;

fn addr() -> String {
    std::env::var("AMQP_ADDR").unwrap_or_else(|_| "amqp://127.0.0.1:5672/%2f".into())
}

/// A name of the test's own, so tests can run in parallel and leave nothing behind.
fn name(test: &str) -> String {
    format!("lapin-queued-{test}-{}", std::process::id())
}

fn queued(high_water_mark: usize) -> ConnectionProperties {
    ConnectionProperties::default()
        .with_io_loop_task(true)
        .with_queued_publishes(high_water_mark)
}

async fn connect(addr: &str, properties: ConnectionProperties) -> Connection {
    let runtime = Runtime::tokio_with_handle(tokio::runtime::Handle::current());
    Connection::connect_with_runtime(addr, properties, runtime)
        .await
        .expect("connection")
}

async fn declare(channel: &Channel, queue: &str) {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("queue.declare");
}

/// The queue's ready messages, as the broker counts them.
async fn ready(channel: &Channel, queue: &str) -> u32 {
    let options = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.into(), options, FieldTable::default())
        .await
        .expect("passive queue.declare")
        .message_count()
}

/// Waits up to 10 s for the queue to hold `expected` ready messages; returns the last count.
async fn wait_for_ready(channel: &Channel, queue: &str, expected: u32) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let count = ready(channel, queue).await;
        if count == expected || Instant::now() > deadline {
            return count;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn publish(channel: &Channel, queue: &str, payload: &[u8]) -> lapin::PublisherConfirm {
    channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            payload,
            BasicProperties::default(),
        )
        .await
        .expect("basic.publish")
}

async fn delete(channel: &Channel, queue: &str) {
    channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await
        .expect("queue.delete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_publishes_then_channel_close_all_reach_the_queue() {
    let queue = name("channel-close");
    let connection = connect(&addr(), queued(1 << 20)).await;
    let checker = connection.create_channel().await.expect("channel");
    declare(&checker, &queue).await;
    let producer = connection.create_channel().await.expect("channel");
    for _ in 0..MESSAGES {
        drop(publish(&producer, &queue, b"message").await);
    }
    producer
        .close(200, "OK".into())
        .await
        .expect("channel.close");
    assert_eq!(
        wait_for_ready(&checker, &queue, MESSAGES as u32).await,
        MESSAGES as u32
    );
    delete(&checker, &queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_publishes_then_connection_close_all_reach_the_queue() {
    let queue = name("connection-close");
    let checking = connect(&addr(), ConnectionProperties::default()).await;
    let checker = checking.create_channel().await.expect("channel");
    declare(&checker, &queue).await;
    let connection = connect(&addr(), queued(1 << 20)).await;
    let producer = connection.create_channel().await.expect("channel");
    for _ in 0..MESSAGES {
        drop(publish(&producer, &queue, b"message").await);
    }
    connection
        .close(200, "OK".into())
        .await
        .expect("connection.close");
    assert_eq!(
        wait_for_ready(&checker, &queue, MESSAGES as u32).await,
        MESSAGES as u32
    );
    delete(&checker, &queue).await;
}

/// The broker hands a message published before a basic.cancel to the consumer, which
/// holds it unacknowledged; one published after it stays ready in the queue. (100: well
/// within the credit the queue has to deliver to the channel before it waits.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_publishes_are_not_overtaken_by_a_basic_cancel() {
    let queue = name("cancel");
    let connection = connect(&addr(), queued(1 << 20)).await;
    let checker = connection.create_channel().await.expect("channel");
    declare(&checker, &queue).await;
    let channel = connection.create_channel().await.expect("channel");
    let consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "consumer".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("basic.consume");
    for _ in 0..100 {
        drop(publish(&channel, &queue, b"message").await);
    }
    channel
        .basic_cancel("consumer".into(), BasicCancelOptions::default())
        .await
        .expect("basic.cancel");
    // Every message went to the consumer before the cancel: none is ready.
    assert_eq!(ready(&checker, &queue).await, 0);
    drop(consumer);
    channel
        .close(200, "OK".into())
        .await
        .expect("channel.close");
    delete(&checker, &queue).await;
}

/// The alarm node's URI and rabbitmqctl command, when the environment gives them.
fn alarm_node() -> Option<(String, Vec<String>)> {
    let addr = std::env::var("LAPIN_ALARM_AMQP_ADDR").ok()?;
    let ctl = std::env::var("LAPIN_ALARM_CTL").ok()?;
    Some((addr, ctl.split_whitespace().map(String::from).collect()))
}

fn rabbitmqctl(ctl: &[String], args: &[&str]) -> String {
    let output = Command::new(&ctl[0])
        .args(&ctl[1..])
        .args(args)
        .output()
        .expect("rabbitmqctl");
    assert!(output.status.success(), "rabbitmqctl {args:?}: {output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn set_alarm(ctl: &[String], raised: bool) {
    let watermark = if raised { "0.00001" } else { "0.4" };
    rabbitmqctl(ctl, &["set_vm_memory_high_watermark", watermark]);
}

/// Closes the connection named `name` from the broker's side.
fn close_connection(ctl: &[String], name: &str) {
    let connections = rabbitmqctl(ctl, &["list_connections", "pid", "client_properties"]);
    let line = connections
        .lines()
        .find(|line| line.contains(name))
        .expect("the connection in the broker's list");
    let pid = line.split_whitespace().next().expect("its pid");
    rabbitmqctl(ctl, &["close_connection", pid, "closed by the test"]);
}

async fn wait_until_blocked(connection: &Connection, blocked: bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while connection.status().blocked() != blocked {
        assert!(Instant::now() < deadline, "connection.blocked: {blocked}?");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn resident_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|pages| pages.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Through a real memory alarm (one test, as it raises the node's alarm for all):
/// - publishes queued while the connection is blocked go out, and are confirmed, once the
///   alarm clears;
/// - a publisher offering 1 GB queues no more than the high-water mark (and a message):
///   its next publish waits, and times out, and so do the ones after it, none of them
///   queued (what times out never goes out);
/// - the confirms of publishes never written, their connection closed by the broker, are
///   errors, with or without publisher confirms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_memory_alarm() {
    let Some((addr, ctl)) = alarm_node() else {
        eprintln!("LAPIN_ALARM_AMQP_ADDR and LAPIN_ALARM_CTL are not set: skipped");
        return;
    };
    const MARK: usize = 16 << 20;
    const MESSAGE: usize = 1 << 20;
    let (queue, bound_queue) = (name("alarm"), name("alarm-bound"));
    // Opened before the alarm: the broker holds a connection's handshake under it.
    let connection = connect(&addr, queued(1 << 20)).await;
    let bounded = connect(&addr, queued(MARK)).await;
    let closed_name = name("alarm-closed");
    let closed = connect(
        &addr,
        queued(1 << 20).with_connection_name(closed_name.as_str().into()),
    )
    .await;

    let channel = connection.create_channel().await.expect("channel");
    declare(&channel, &queue).await;
    declare(&channel, &bound_queue).await;
    let checking = connect(&addr, ConnectionProperties::default()).await;
    let checker = checking.create_channel().await.expect("channel");
    let publishing = connection.create_channel().await.expect("channel");
    publishing
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    let bounded_channel = bounded.create_channel().await.expect("channel");
    let unconfirmed = closed.create_channel().await.expect("channel");
    let confirmed = closed.create_channel().await.expect("channel");
    confirmed
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");

    set_alarm(&ctl, true);
    let under_the_alarm = async {
        // The broker blocks a connection once it publishes under the alarm.
        let mut confirms = vec![publish(&publishing, &queue, b"during the alarm").await];
        drop(publish(&bounded_channel, &bound_queue, b"").await);
        drop(publish(&unconfirmed, &bound_queue, b"").await);
        for connection in [&connection, &bounded, &closed] {
            wait_until_blocked(connection, true).await;
        }
        // Queued at once, held back while blocked.
        for _ in 1..3 {
            confirms.push(publish(&publishing, &queue, b"during the alarm").await);
        }

        let payload = vec![7; MESSAGE];
        let before = resident_bytes();
        let mut queued = 0;
        for _ in 0..1024 {
            let publish = tokio::time::timeout(
                Duration::from_secs(2),
                publish(&bounded_channel, &bound_queue, &payload),
            );
            match publish.await {
                Ok(confirm) => drop(confirm),
                Err(_elapsed) => break,
            }
            queued += MESSAGE;
        }
        // Given up while they wait for room, these leave nothing queued.
        for _ in 0..5 {
            let publish = tokio::time::timeout(
                Duration::from_millis(300),
                publish(&bounded_channel, &bound_queue, &payload),
            );
            assert!(publish.await.is_err(), "a publish past the mark waits");
        }
        let grown = resident_bytes().saturating_sub(before);

        let mut unwritten = Vec::new();
        for channel in [&unconfirmed, &confirmed] {
            for _ in 0..3 {
                unwritten.push(publish(channel, &queue, b"never written").await);
            }
        }
        close_connection(&ctl, &closed_name);
        for confirm in unwritten {
            let confirmation = tokio::time::timeout(Duration::from_secs(10), confirm)
                .await
                .expect("an unwritten publish's confirm, once its connection closed");
            assert!(
                confirmation.is_err(),
                "an unwritten publish reported {confirmation:?}"
            );
        }
        (confirms, queued, grown)
    };
    let result = tokio::time::timeout(Duration::from_secs(90), under_the_alarm).await;
    set_alarm(&ctl, false);
    let (confirms, queued, grown) = result.expect("the tests under the alarm ended in time");

    eprintln!("queued {queued} bytes under the alarm, resident memory grew {grown} bytes");
    assert!(queued <= MARK + MESSAGE, "queued {queued} bytes");
    assert!(queued + MESSAGE >= MARK, "queued only {queued} bytes");
    assert!(
        grown < MARK + (48 << 20),
        "resident memory grew {grown} bytes"
    );

    wait_until_blocked(&connection, false).await;
    for confirm in confirms {
        let confirmation = tokio::time::timeout(Duration::from_secs(10), confirm)
            .await
            .expect("a confirm once the alarm cleared")
            .expect("a confirm");
        assert!(confirmation.is_ack());
    }
    assert_eq!(wait_for_ready(&checker, &queue, 3).await, 3);
    // The bounded publisher's backlog goes out once the alarm clears: what it queued (not
    // the publishes that timed out waiting for room), and the first, empty messages of it
    // and of the closed connection, read before they were blocked.
    let expected = (queued / MESSAGE) as u32 + 2;
    assert_eq!(
        wait_for_ready(&checker, &bound_queue, expected).await,
        expected
    );
    // And nothing more comes after them.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(ready(&checker, &bound_queue).await, expected);
    delete(&checker, &queue).await;
    delete(&checker, &bound_queue).await;
    bounded.close(200, "OK".into()).await.expect("close");
    connection.close(200, "OK".into()).await.expect("close");
    checking.close(200, "OK".into()).await.expect("close");
}
