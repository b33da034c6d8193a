//! A memory alarm, for real, on a node of the test's own: RabbitMQ blocks every publishing
//! connection; each publish and call must end within its bound with an error that names
//! the alarm (the `postage` tool with its timeout exit code), the connection must say it
//! is blocked, and once the alarm clears everything works again without a restart.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use postage_core::{
    Config, Connection, Error, Exchange, Host, LinkState, Processor, Producer, Queue, RpcOptions,
    processor,
};
use postage_tests::{OwnNode, binary, ctl, message_counts, unique};
use tokio::task::JoinHandle;

/// (name, AMQP port, distribution port) of the node the alarm is raised on.
const NODE: (&str, u16, u16) = ("postage-alarm", 5731, 25731);

/// The node of the test whose consumers acknowledge through an alarm.
const ACKING_NODE: (&str, u16, u16) = ("postage-alarm-acks", 5732, 25732);

struct Doubler;

#[processor]
impl Doubler {
    #[rpc_handler("command", "double")]
    async fn double(&self, n: i64) -> i64 {
        n * 2
    }
}

fn config() -> Config {
    config_for(NODE.1)
}

fn config_for(port: u16) -> Config {
    Config {
        hosts: vec![Host {
            name: "127.0.0.1".into(),
            port,
        }],
        ..Config::default()
    }
}

/// The node of the test whose publisher offers far more than its connection's backlog.
const BACKLOG_NODE: (&str, u16, u16) = ("postage-alarm-backlog", 5733, 25733);

/// Handles `work` messages and, as a component in a pipeline does, publishes a note of
/// each downstream, on the same connection; a publish the alarm holds back fails after
/// its bound and the work counts as done all the same.
struct Forwarder {
    downstream: Producer,
    handled: AtomicUsize,
}

#[processor]
impl Forwarder {
    #[message_handler("command", "work")]
    async fn work(&self, n: u64) {
        let _ = self.downstream.command("noted", n).await;
        self.handled.fetch_add(1, Ordering::SeqCst);
    }
}

/// Waits up to `wait` for the connection's state to satisfy `want`.
async fn state_within(connection: &Connection, wait: Duration, want: impl Fn(&LinkState) -> bool) {
    let mut states = connection.watch_state();
    let reached = tokio::time::timeout(wait, states.wait_for(|state| want(state))).await;
    assert!(reached.is_ok(), "state now {:?}", connection.state());
}

#[tokio::test]
async fn a_memory_alarm_bounds_publishes_and_calls_and_everything_works_after_it_clears() {
    let (name, port, dist) = NODE;
    let _node = OwnNode::start(name, port, dist, "");

    let server = Connection::connect(&config()).await.unwrap();
    // Durable, as the `postage` tool declares its exchange (the node is wiped at start).
    let exchange = Exchange::named(unique("alarm"));
    let key = unique("alarm");
    let doubler = Processor::builder(&server, Doubler)
        .bind(
            exchange.clone(),
            Queue::new(unique("alarm")).auto_delete(true),
            key.as_str(),
        )
        .build()
        .await
        .unwrap();
    let stop = doubler.handle();
    let running = tokio::spawn(doubler.run());

    let client = Connection::connect(&config()).await.unwrap();
    let bound = Duration::from_secs(2);
    let producer = Producer::builder(&client)
        .destination(exchange.clone(), key.as_str())
        .reliable(true)
        .publish_timeout(bound)
        .rpc_defaults(bound, 0)
        .build()
        .await
        .unwrap();
    let four: i64 = producer.call("double", 2).await.unwrap();
    assert_eq!(four, 4);
    assert_eq!(client.state(), LinkState::Connected);

    ctl(name, &["set_vm_memory_high_watermark", "0.0000001"]);

    // A publish waits at most its bound, then names the alarm.
    let sent = Instant::now();
    let refused = producer.command("double", 1).await.expect_err("blocked");
    let waited = sent.elapsed();
    assert!(matches!(refused, Error::Blocked { .. }), "{refused:?}");
    assert!(refused.to_string().contains("alarm"), "{refused}");
    assert!(waited < bound + Duration::from_secs(2), "waited {waited:?}");
    assert!(matches!(client.state(), LinkState::Blocked { .. }));

    // So does a call: its one deadline covers the request's publish and confirm.
    let called = Instant::now();
    let failed = producer
        .call::<i64>("double", 3)
        .await
        .expect_err("no answer under the alarm");
    let waited = called.elapsed();
    assert!(matches!(failed, Error::Blocked { .. }), "{failed:?}");
    assert!(waited < bound + Duration::from_secs(2), "waited {waited:?}");

    // And the `postage` tool exits with its timeout code.
    let url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    let tool = Instant::now();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(binary("postage"))
            .args([
                "rpc",
                "--url",
                &url,
                "--exchange",
                exchange.name(),
                "--timeout",
                "2",
            ])
            .args([key.as_str(), "double", "--params", "5"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("alarm"), "{stderr}");
    assert!(
        tool.elapsed() < Duration::from_secs(8),
        "took {:?}",
        tool.elapsed()
    );

    // The alarm clears: the same producer works again, nothing restarted.
    ctl(name, &["set_vm_memory_high_watermark", "0.4"]);
    state_within(&client, Duration::from_secs(15), |s| {
        *s == LinkState::Connected
    })
    .await;
    let options = RpcOptions::new().timeout(Duration::from_secs(5));
    let fourteen: i64 = producer.call_with("double", 7, options).await.unwrap();
    assert_eq!(fourteen, 14);

    stop.shutdown();
    running.await.unwrap().unwrap();
    client.close().await.unwrap();
    server.close().await.unwrap();
}

#[tokio::test]
async fn consumers_keep_acknowledging_through_a_memory_alarm() {
    let (name, port, dist) = ACKING_NODE;
    let _node = OwnNode::start(name, port, dist, "");
    let exchange = Exchange::named(unique("alarm-acks"));
    let queue = unique("alarm-acks");

    // 50 messages wait in the queue before the alarm.
    let client = Connection::connect(&config_for(port)).await.unwrap();
    let producer = Producer::builder(&client)
        .destination(exchange.clone(), "work")
        .reliable(true)
        .build()
        .await
        .unwrap();
    let filling = postage_core::Consumer::builder(&client)
        .bind(exchange.clone(), Queue::new(queue.as_str()), "work")
        .build()
        .await
        .unwrap();
    for n in 0..50u64 {
        producer.command("work", n).await.unwrap();
    }
    filling.close().await.unwrap();
    assert_eq!(message_counts(name, &queue), (50, 0));

    // The component's connection and its downstream producer, opened before the alarm:
    // opened under it, the producer once waited past its 300 ms for its channel in CI.
    let server = Connection::connect(&config_for(port)).await.unwrap();
    let downstream = Producer::builder(&server)
        .destination(Exchange::named(unique("alarm-notes")), "noted")
        .publish_timeout(Duration::from_millis(300))
        .build()
        .await
        .unwrap();

    ctl(name, &["set_vm_memory_high_watermark", "0.0000001"]);

    // The component starts under the alarm: it reads the queue and publishes downstream
    // on its connection, which the alarm blocks.
    let forwarder = Processor::builder(
        &server,
        Forwarder {
            downstream,
            handled: AtomicUsize::new(0),
        },
    )
    .bind(exchange, Queue::new(queue.as_str()), "work")
    .prefetch(10)
    .concurrency(10)
    .build()
    .await
    .unwrap();
    let (state, stop) = (Arc::clone(forwarder.state()), forwarder.handle());
    let running: JoinHandle<_> = tokio::spawn(forwarder.run());

    // Every message is handled and acknowledged while the alarm lasts.
    let mut drained = false;
    for _ in 0..100 {
        if state.handled.load(Ordering::SeqCst) >= 50 && message_counts(name, &queue) == (0, 0) {
            drained = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (ready, unacked) = message_counts(name, &queue);
    assert!(
        drained,
        "under the alarm {} handled, {ready} ready and {unacked} unacknowledged: the \
         acknowledgements did not get through",
        state.handled.load(Ordering::SeqCst)
    );
    assert!(
        matches!(server.state(), LinkState::Blocked { .. }),
        "the publishing side is blocked: {:?}",
        server.state()
    );

    ctl(name, &["set_vm_memory_high_watermark", "0.4"]);
    stop.shutdown();
    running.await.unwrap().unwrap();
    server.close().await.unwrap();
    client.close().await.unwrap();
}

/// Resident memory of this process, in bytes.
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// Under a memory alarm a fire-and-forget producer's publishes queue on its connection
/// up to the backlog bound (256 KiB, `connection/dial.rs`) and return; past it they
/// wait, and end with `Error::Blocked` within their timeout, leaving nothing queued: 64 tasks offering 1 MiB
/// messages for 4 s (some 800 MiB) leave resident memory within the bound plus a message
/// a task and a constant. Once the alarm clears, exactly what returned `Ok` goes out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_an_alarm_publishes_queue_up_to_the_backlog_bound_and_the_rest_fail_unsent() {
    let (name, port, dist) = BACKLOG_NODE;
    let _node = OwnNode::start(name, port, dist, "");
    let exchange = Exchange::named(unique("alarm-backlog"));
    let queue = unique("alarm-backlog");
    let client = Connection::connect(&config_for(port)).await.unwrap();
    let declaring = postage_core::Consumer::builder(&client)
        .bind(exchange.clone(), Queue::new(queue.as_str()), "big")
        .build()
        .await
        .unwrap();
    declaring.close().await.unwrap();
    let timeout = Duration::from_millis(300);
    let producer = Producer::builder(&client)
        .destination(exchange.clone(), "big")
        .publish_timeout(timeout)
        .build()
        .await
        .unwrap();
    producer
        .publish_encoded(exchange.name(), "big", b"before", "m0")
        .await
        .unwrap();

    ctl(name, &["set_vm_memory_high_watermark", "0.0000001"]);
    let before = resident_bytes();
    let payload: Arc<[u8]> = vec![b'x'; 1 << 20].into();
    let until = Instant::now() + Duration::from_secs(4);
    let offering: Vec<JoinHandle<(u32, u32, Duration)>> = (0..64)
        .map(|task| {
            let (producer, payload, exchange) =
                (producer.clone(), Arc::clone(&payload), exchange.clone());
            tokio::spawn(async move {
                let (mut queued, mut refused, mut longest) = (0, 0, Duration::ZERO);
                let mut n = 0;
                while Instant::now() < until {
                    n += 1;
                    let began = Instant::now();
                    let id = format!("m{task}-{n}");
                    match producer
                        .publish_encoded(exchange.name(), "big", &payload, &id)
                        .await
                    {
                        Ok(()) => queued += 1,
                        Err(Error::Blocked { .. }) => refused += 1,
                        Err(other) => panic!("a publish under the alarm failed otherwise: {other}"),
                    }
                    longest = longest.max(began.elapsed());
                }
                (queued, refused, longest)
            })
        })
        .collect();
    let (mut queued, mut refused, mut longest) = (0, 0, Duration::ZERO);
    for task in offering {
        let (q, r, l) = task.await.unwrap();
        queued += q;
        refused += r;
        longest = longest.max(l);
    }
    let grown = resident_bytes().saturating_sub(before);
    eprintln!(
        "under the alarm: {queued} MiB queued, {refused} publishes refused, the longest \
         {longest:?}, resident memory grew {} MiB",
        grown >> 20
    );
    assert!(
        (1..=1 + 64 + 1).contains(&queued),
        "publishes queued under the alarm up to the bound: {queued}"
    );
    assert!(refused > 200, "the rest wait and fail: {refused}");
    assert!(
        longest < timeout + Duration::from_secs(1),
        "each ends within its timeout: {longest:?}"
    );
    assert!(
        grown < 200 << 20,
        "resident memory grew {} MiB for {} MiB offered",
        grown >> 20,
        queued + refused
    );

    ctl(name, &["set_vm_memory_high_watermark", "0.4"]);
    let expected = u64::from(queued) + 1;
    let mut ready = 0;
    for _ in 0..50 {
        ready = message_counts(name, &queue).0;
        if ready >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    ready = ready.max(message_counts(name, &queue).0);
    assert_eq!(
        ready, expected,
        "what returned Ok goes out once the alarm clears, and nothing else"
    );
    client.close().await.unwrap();
}
