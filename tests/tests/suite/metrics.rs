//! The metrics and health endpoint of `Config::metrics`, read over HTTP as Prometheus
//! and a container probe would: counters and histograms say exactly what happened, and
//! readiness follows the broker down and up.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use postage_core::{
    Config, Connection, HandlerError, Host, Metadata, Processor, Producer, Queue, RetryPolicy,
    processor,
};
use postage_tests::{OwnNode, ctl, exchange, fetch, sample, start_app, unique, with_metrics};

/// (name, AMQP port, distribution port) of the node stopped under a component.
const NODE: (&str, u16, u16) = ("postage-ready", 5761, 25761);

#[derive(Default)]
struct Counted {
    bad: AtomicU32,
    flaky: AtomicU32,
}

#[processor]
impl Counted {
    #[rpc_handler("command", "double")]
    fn double(&self, n: i64) -> i64 {
        n * 2
    }

    #[message_handler("command", "bad")]
    fn bad(&self) -> Result<(), HandlerError> {
        self.bad.fetch_add(1, Ordering::SeqCst);
        Err(HandlerError::error("bad on purpose").reject())
    }

    /// Fails its first attempt at each message, then succeeds.
    #[message_handler("command", "flaky")]
    fn flaky(&self, metadata: &Metadata) -> Result<(), String> {
        self.flaky.fetch_add(1, Ordering::SeqCst);
        if metadata.attempt() == 1 {
            return Err("the first attempt fails".into());
        }
        Ok(())
    }
}

#[tokio::test]
async fn the_endpoint_counts_exactly_what_happened() {
    postage_tests::init_tracing();
    let connection = Connection::connect(&with_metrics(Config::from_env().unwrap()))
        .await
        .unwrap();
    let address = connection.metrics_address().expect("an endpoint");
    let exchange = exchange("metrics");
    let queue = unique("metrics");
    let processor = Processor::builder(&connection, Counted::default())
        .bind(
            exchange.clone(),
            Queue::new(queue.as_str()).auto_delete(true),
            "counted",
        )
        .retry(
            RetryPolicy::new()
                .attempts(3)
                .backoff(Duration::from_millis(100), Duration::from_millis(100))
                .dead_letter_queue(false),
        )
        .build()
        .await
        .unwrap();
    let (state, stop) = (Arc::clone(processor.state()), processor.handle());
    let running = tokio::spawn(processor.run());
    let caller = Producer::builder(&connection)
        .destination(exchange, "counted")
        .reliable(true)
        .build()
        .await
        .unwrap();

    for n in 0..5 {
        assert_eq!(caller.call::<i64>("double", n).await.unwrap(), n * 2);
    }
    caller.command("bad", ()).await.unwrap();
    caller.command("bad", ()).await.unwrap();
    caller.command("flaky", ()).await.unwrap();
    for _ in 0..100 {
        if state.bad.load(Ordering::SeqCst) == 2 && state.flaky.load(Ordering::SeqCst) == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The last settlement is counted just after the handler returns.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let (status, text) = fetch(address, "/metrics").await;
    assert_eq!(status, 200);
    let deliveries = |handler: &str, disposition: &str| {
        sample(
            &text,
            "postage_deliveries_total",
            &[
                ("queue", queue.as_str()),
                ("handler", handler),
                ("disposition", disposition),
            ],
        )
    };
    assert_eq!(deliveries("Counted::double", "ack"), Some(5.0), "{text}");
    assert_eq!(deliveries("Counted::bad", "reject"), Some(2.0), "{text}");
    assert_eq!(deliveries("Counted::flaky", "retry"), Some(1.0), "{text}");
    assert_eq!(deliveries("Counted::flaky", "ack"), Some(1.0), "{text}");
    let runs = |handler: &str| {
        sample(
            &text,
            "postage_handler_duration_seconds_count",
            &[("handler", handler)],
        )
    };
    assert_eq!(runs("Counted::double"), Some(5.0));
    assert_eq!(runs("Counted::bad"), Some(2.0));
    assert_eq!(runs("Counted::flaky"), Some(2.0));
    let calls = |outcome: &str| {
        sample(
            &text,
            "postage_rpc_calls_total",
            &[("command", "double"), ("outcome", outcome)],
        )
    };
    assert_eq!(calls("success"), Some(5.0));
    assert_eq!(calls("timeout"), None);
    assert_eq!(
        sample(
            &text,
            "postage_rpc_call_duration_seconds_count",
            &[("command", "double")]
        ),
        Some(5.0)
    );
    assert_eq!(sample(&text, "postage_messages_in_flight", &[]), Some(0.0));
    // The caller's 5 requests and 3 messages, and the copy of the flaky message for its
    // retry, confirmed; the processor's 5 answers, without confirms.
    let publishes = |outcome| sample(&text, "postage_publishes_total", &[("outcome", outcome)]);
    assert_eq!(publishes("confirmed"), Some(9.0), "{text}");
    assert_eq!(publishes("sent"), Some(5.0), "{text}");
    assert_eq!(sample(&text, "postage_reconnects_total", &[]), Some(0.0));
    assert_eq!(
        sample(&text, "postage_connections", &[("state", "connected")]),
        Some(2.0),
        "the connection and its publishing connection"
    );
    assert_eq!(fetch(address, "/health/live").await.0, 200);
    assert_eq!(fetch(address, "/health/ready").await.0, 200);

    stop.shutdown();
    running.await.unwrap().unwrap();
    connection.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_goes_503_while_the_broker_is_stopped_and_200_after() {
    postage_tests::init_tracing();
    let (node, port, dist) = NODE;
    let _node = OwnNode::start(node, port, dist, "");
    let config = with_metrics(Config {
        hosts: vec![Host {
            name: "127.0.0.1".into(),
            port,
        }],
        ..Config::default()
    });
    let connection = Connection::connect(&config).await.unwrap();
    let address = connection.metrics_address().unwrap();
    let processor = Processor::builder(&connection, Counted::default())
        .bind(exchange("ready"), Queue::new(unique("ready")), "counted")
        .build()
        .await
        .unwrap();
    let stop = processor.handle();
    let running = tokio::spawn(processor.run());

    let ready_within = |want: u16| async move {
        let mut last = (0, String::new());
        for _ in 0..150 {
            last = fetch(address, "/health/ready").await;
            if last.0 == want {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("ready did not answer {want} within 30 s; last: {last:?}");
    };
    ready_within(200).await;
    ctl(node, &["stop_app"]);
    let (_, why) = ready_within(503).await;
    assert!(why.contains("reconnecting"), "{why}");
    assert_eq!(
        fetch(address, "/health/live").await.0,
        200,
        "the process still serves"
    );
    tokio::task::spawn_blocking(move || start_app(node))
        .await
        .unwrap();
    ready_within(200).await;
    let (_, text) = fetch(address, "/metrics").await;
    assert!(
        sample(&text, "postage_reconnects_total", &[]).unwrap_or(0.0) >= 1.0,
        "{text}"
    );

    stop.shutdown();
    running.await.unwrap().unwrap();
    connection.close().await.unwrap();
}
