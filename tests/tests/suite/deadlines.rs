//! Deadlines end to end: an RPC request carries the time its caller stops waiting; one
//! that reaches its handler after that is acknowledged and not run, and the calls a
//! handler makes wait no longer than what is left of its own.

use std::sync::Mutex;
use std::time::Duration;

use postage_core::{
    Config, Connection, Deadline, Error, Exchange, Processor, Producer, Queue, RpcOptions,
    processor,
};
use postage_tests::{
    connect, exchange, fetch, message_counts, sample, test_node, unique, with_metrics,
};

/// Runs one request at a time, each busy for as long as it asks.
#[derive(Default)]
struct Busy {
    ran: Mutex<Vec<String>>,
}

#[processor]
impl Busy {
    #[rpc_handler("command", "busy")]
    async fn busy(&self, job: (String, u64)) -> String {
        let (label, ms) = job;
        if let Ok(mut ran) = self.ran.lock() {
            ran.push(label.clone());
        }
        tokio::time::sleep(Duration::from_millis(ms)).await;
        label
    }

    /// What is left of this handler's deadline, in milliseconds.
    #[rpc_handler("command", "left")]
    fn left(&self, deadline: Deadline) -> Option<u64> {
        deadline.remaining().map(|left| left.as_millis() as u64)
    }
}

/// Asks `Busy` how long it has, from a handler of its own.
struct Relay {
    calls: Producer,
}

#[processor]
impl Relay {
    /// Its own time left, and what the handler it calls was given.
    #[rpc_handler("command", "relay")]
    async fn relay(&self, deadline: Deadline) -> Result<(u64, Option<u64>), String> {
        let mine = deadline
            .remaining()
            .map_or(0, |left| left.as_millis() as u64);
        let theirs: Option<u64> = self
            .calls
            .call("left", ())
            .await
            .map_err(|e| e.to_string())?;
        Ok((mine, theirs))
    }
}

#[tokio::test]
async fn a_request_that_arrives_after_its_deadline_is_not_run() {
    postage_tests::init_tracing();
    let connection = Connection::connect(&with_metrics(Config::from_env().unwrap()))
        .await
        .unwrap();
    let exchange = exchange("deadline");
    let queue = unique("deadline");
    let busy = Processor::builder(&connection, Busy::default())
        .bind(
            exchange.clone(),
            Queue::new(queue.as_str()).auto_delete(true),
            "busy",
        )
        .prefetch(10)
        .concurrency(1)
        .build()
        .await
        .unwrap();
    let (state, stop) = (std::sync::Arc::clone(busy.state()), busy.handle());
    let running = tokio::spawn(busy.run());
    let caller = Producer::builder(&connection)
        .destination(exchange, "busy")
        .build()
        .await
        .unwrap();

    // The handler is busy for 2 s with the first request; the second has 1 s.
    let first = caller
        .rpc_deferred(
            "busy",
            ("first", 2000u64),
            RpcOptions::new().timeout(Duration::from_secs(10)),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let late = caller
        .call_with::<String>(
            "busy",
            ("late", 0u64),
            RpcOptions::new()
                .timeout(Duration::from_secs(1))
                .max_retry(0),
        )
        .await;
    assert!(
        matches!(late, Err(Error::RpcTimeout { .. })),
        "the late request's caller gave up: {late:?}"
    );
    assert_eq!(first.value::<String>().await.unwrap(), "first");
    // Past the first one, the late request was taken (acknowledged), never run.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(*state.ran.lock().unwrap(), ["first"]);
    assert_eq!(message_counts(&test_node(), &queue), (0, 0));
    let (_, text) = fetch(connection.metrics_address().unwrap(), "/metrics").await;
    let expired = [("queue", queue.as_str()), ("disposition", "expired")];
    assert_eq!(
        sample(&text, "postage_deliveries_total", &expired),
        Some(1.0),
        "{text}"
    );

    stop.shutdown();
    running.await.unwrap().unwrap();
    connection.close().await.unwrap();
}

#[tokio::test]
async fn a_call_made_in_a_handler_inherits_what_is_left_of_its_deadline() {
    let connection = connect().await;
    let exchange: Exchange = exchange("inherit");
    let busy = Processor::builder(&connection, Busy::default())
        .bind(
            exchange.clone(),
            Queue::new(unique("inherit-busy")).auto_delete(true),
            "busy",
        )
        .build()
        .await
        .unwrap();
    let calls = Producer::builder(&connection)
        .destination(exchange.clone(), "busy")
        .build()
        .await
        .unwrap();
    let relay = Processor::builder(&connection, Relay { calls })
        .bind(
            exchange.clone(),
            Queue::new(unique("inherit-relay")).auto_delete(true),
            "relay",
        )
        .build()
        .await
        .unwrap();
    let (stop_busy, stop_relay) = (busy.handle(), relay.handle());
    let (running_busy, running_relay) = (tokio::spawn(busy.run()), tokio::spawn(relay.run()));
    let caller = Producer::builder(&connection)
        .destination(exchange, "relay")
        .build()
        .await
        .unwrap();

    let (mine, theirs): (u64, Option<u64>) = caller
        .call_with(
            "relay",
            (),
            RpcOptions::new().timeout(Duration::from_secs(3)),
        )
        .await
        .unwrap();
    // The relay had its caller's 3 s, less the trip; the handler it called had what was
    // left of that, not the 30 s a call waits by default.
    assert!((1..=3000).contains(&mine), "the relay had {mine} ms");
    let theirs = theirs.expect("the called handler has a deadline");
    assert!(
        theirs <= mine && theirs > 0,
        "the called handler had {theirs} ms of the relay's {mine} ms"
    );

    stop_busy.shutdown();
    stop_relay.shutdown();
    running_busy.await.unwrap().unwrap();
    running_relay.await.unwrap().unwrap();
    connection.close().await.unwrap();
}

/// `Duration::MAX` is how a caller says "no limit": the call goes, with no deadline the
/// broker or the server would act on, and is answered.
#[tokio::test]
async fn a_call_with_no_limit_is_answered() {
    let connection = postage_tests::connect().await;
    let exchange = exchange("nolimit");
    let busy = Processor::builder(&connection, Busy::default())
        .bind(
            exchange.clone(),
            Queue::new(unique("nolimit")).auto_delete(true),
            "busy",
        )
        .build()
        .await
        .unwrap();
    let stop = busy.handle();
    let running = tokio::spawn(busy.run());
    let caller = Producer::builder(&connection)
        .destination(exchange, "busy")
        .build()
        .await
        .unwrap();
    let answer = caller
        .call_with::<String>(
            "busy",
            ("unbounded", 0u64),
            RpcOptions::new().timeout(Duration::MAX),
        )
        .await;
    assert_eq!(answer.unwrap(), "unbounded");
    stop.shutdown();
    running.await.unwrap().unwrap();
    connection.close().await.unwrap();
}
