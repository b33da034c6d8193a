//! Real faults against the real broker: connections closed by the broker twenty times
//! during traffic, and a broker restart during 10,000 confirmed messages. Each test
//! prints its figures (sent, handled, duplicated, lost, recovery time).
//!
//! These tests act on the whole local broker, so they run one at a time, and in a test
//! binary of their own (cargo runs test binaries one after another).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postage_app::GenericApplication;
use postage_core::{
    Connection, Exchange, Exit, Fingerprint, Processor, ProcessorHandle, Producer, Queue, Route,
    RpcOptions, processor,
};
use postage_tests::{connect, consumers_of, rabbitmqctl, start_app, test_node, unique};
use serde_json::{Value, json};

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Records every `count` it handles.
struct Counter {
    seen: Mutex<Vec<u64>>,
}

#[processor]
impl Counter {
    #[message_handler("command", "count")]
    fn count(&self, n: u64) {
        self.seen.lock().unwrap().push(n);
    }

    #[rpc_handler("command", "echo")]
    fn echo(&self, value: Value) -> Value {
        value
    }

    #[rpc_handler("command", "slow")]
    async fn slow(&self, millis: u64) -> u64 {
        tokio::time::sleep(Duration::from_millis(millis)).await;
        millis
    }
}

/// Records the `hello`s a GenericApplication gets.
struct Hellos {
    seen: Arc<Mutex<Vec<String>>>,
}

#[processor]
impl Hellos {
    #[message_handler("command", "hello")]
    fn hello(&self, text: String) {
        self.seen.lock().unwrap().push(text);
    }
}

/// Sends `count` messages numbered from 0 until `stop`, each confirmed; a publish that
/// fails (the connection went away under it) is sent again once the producer recovered.
/// Returns how many were confirmed.
async fn send_until(
    producer: Producer,
    stop: Arc<AtomicBool>,
    limit: u64,
    retries: Arc<AtomicU64>,
) -> u64 {
    let mut n = 0;
    while n < limit && !stop.load(Ordering::SeqCst) {
        match producer.command("count", n).await {
            Ok(()) => n += 1,
            Err(_) => {
                retries.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    n
}

/// Waits until every number below `sent` was handled; returns (handled, distinct
/// confirmed ones handled). A publish the connection loss cut short before its confirm
/// (the sender's last, when it stops then) may have reached the queue all the same:
/// at least once, so it is handled but not counted.
async fn wait_handled(counter: &Counter, sent: u64, patience: Duration) -> (usize, usize) {
    let start = Instant::now();
    loop {
        let seen = counter.seen.lock().unwrap().clone();
        let distinct: BTreeSet<u64> = seen.iter().copied().filter(|n| *n < sent).collect();
        let complete = (0..sent).all(|n| distinct.contains(&n));
        if complete || start.elapsed() > patience {
            return (seen.len(), distinct.len());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn reliable_producer(connection: &Connection, exchange: Exchange, key: &str) -> Producer {
    Producer::builder(connection)
        .destination(exchange, key)
        .reliable(true)
        .persistent(true)
        .rpc_defaults(Duration::from_secs(2), 5)
        .build()
        .await
        .expect("producer")
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_connection_closes_during_traffic_lose_nothing() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let (serving, sending) = (connect().await, connect().await);
    let exchange = Exchange::named(unique("closes"));
    let queue = unique("closes-q");
    let processor = Processor::builder(
        &serving,
        Counter {
            seen: Mutex::new(Vec::new()),
        },
    )
    .bind(exchange.clone(), Queue::new(queue.clone()), "count")
    .prefetch(50)
    .build()
    .await
    .unwrap();
    let counter = Arc::clone(processor.state());
    let handle = processor.handle();
    let running = tokio::spawn(processor.run());

    // A GenericApplication that joins a group at run time, before the faults.
    let name = unique("rejoin");
    let hellos = Arc::new(Mutex::new(Vec::new()));
    let app = GenericApplication::builder(
        &serving,
        Fingerprint::new(&name, "application").with_pid(unique("pid")),
    )
    .handlers(Hellos {
        seen: Arc::clone(&hellos),
    })
    .stop_on_signals(false)
    .build()
    .await
    .unwrap();
    let uid = app.addresses().uid().name().to_owned();
    let app_handle = app.handle();
    let app_running = tokio::spawn(app.run());
    let producer = reliable_producer(&sending, exchange.clone(), "count").await;
    let to_apps =
        reliable_producer(&sending, postage_app::GENERIC_APPLICATION_EXCHANGE, &uid).await;
    to_apps
        .command("join_group", json!({"group_name": "night"}))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let consumers_before = consumers_of(&queue);

    let stop = Arc::new(AtomicBool::new(false));
    let retries = Arc::new(AtomicU64::new(0));
    let sender = tokio::spawn(send_until(
        producer.clone(),
        Arc::clone(&stop),
        u64::MAX,
        Arc::clone(&retries),
    ));
    let mut recoveries = Vec::new();
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let generation = serving.generation();
        // Notes when the serving connection goes down.
        let link = serving.lapin();
        let lost = tokio::spawn(async move {
            while link.status().connected() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Instant::now()
        });
        tokio::task::spawn_blocking(|| rabbitmqctl(&["close_all_connections", "fault test"]))
            .await
            .unwrap();
        let lost = lost.await.unwrap();
        // Serving again: reconnected, and a message handled after that.
        while serving.generation() == generation && lost.elapsed() < Duration::from_secs(15) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let before = counter.seen.lock().unwrap().len();
        while counter.seen.lock().unwrap().len() == before
            && lost.elapsed() < Duration::from_secs(15)
        {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        recoveries.push(lost.elapsed());
    }
    stop.store(true, Ordering::SeqCst);
    let sent = sender.await.unwrap();
    let (handled, distinct) = wait_handled(&counter, sent, Duration::from_secs(30)).await;
    recoveries.sort();
    eprintln!(
        "20 closes: sent {sent} confirmed, handled {handled}, distinct {distinct}, duplicates {}, lost {}, publish retries {}, serving again after the close: median {:?} max {:?}",
        handled - distinct,
        sent as usize - distinct.min(sent as usize),
        retries.load(Ordering::SeqCst),
        recoveries[recoveries.len() / 2],
        recoveries[recoveries.len() - 1]
    );
    assert_eq!(distinct as u64, sent, "every confirmed message handled");
    assert_eq!(
        consumers_of(&queue),
        consumers_before,
        "recovery never stacks consumers"
    );
    assert_eq!(consumers_before, Some(1));

    // The group joined at run time still reaches the application, both keys.
    to_apps
        .command_to(Route::key(format!("{name}#night")), "hello", "fanout")
        .await
        .unwrap();
    to_apps
        .command_to(
            Route::key(format!("{name}#night/rr")),
            "hello",
            "round robin",
        )
        .await
        .unwrap();
    let start = Instant::now();
    while hellos.lock().unwrap().len() < 2 && start.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut got = hellos.lock().unwrap().clone();
    got.sort();
    assert_eq!(got, vec!["fanout", "round robin"]);
    // RPC works again too.
    let answer: Value = producer
        .call_with("echo", "still here", RpcOptions::new())
        .await
        .unwrap();
    assert_eq!(answer, json!("still here"));

    handle.shutdown();
    app_handle.shutdown();
    running.await.unwrap().unwrap();
    app_running.await.unwrap().unwrap();
    rabbitmqctl(&["delete_queue", &queue]);
    rabbitmqctl(&["delete_queue", &format!("{name}#night")]);
}

#[tokio::test(flavor = "multi_thread")]
async fn broker_restart_during_ten_thousand_confirmed_messages_loses_nothing() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let (serving, sending) = (connect().await, connect().await);
    let exchange = Exchange::named(unique("restart"));
    let queue = unique("restart-q");
    let processor = Processor::builder(
        &serving,
        Counter {
            seen: Mutex::new(Vec::new()),
        },
    )
    .bind(
        exchange.clone(),
        Queue::new(queue.clone()).durable(true),
        "count",
    )
    .prefetch(100)
    .build()
    .await
    .unwrap();
    let counter = Arc::clone(processor.state());
    let handle = processor.handle();
    let running = tokio::spawn(processor.run());
    let producer = reliable_producer(&sending, exchange.clone(), "count").await;

    const SENT: u64 = 10_000;
    let stop = Arc::new(AtomicBool::new(false));
    let retries = Arc::new(AtomicU64::new(0));
    let sender = tokio::spawn(send_until(
        producer.clone(),
        stop,
        SENT,
        Arc::clone(&retries),
    ));
    while counter.seen.lock().unwrap().len() < 2_000 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::task::spawn_blocking(|| {
        rabbitmqctl(&["stop_app"]);
        start_app(&test_node());
    })
    .await
    .unwrap();
    let answering = Instant::now();
    let before = counter.seen.lock().unwrap().len();
    while counter.seen.lock().unwrap().len() == before
        && answering.elapsed() < Duration::from_secs(30)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let recovery = answering.elapsed();
    let sent = tokio::time::timeout(Duration::from_secs(120), sender)
        .await
        .expect("the sender finishes")
        .unwrap();
    let (handled, distinct) = wait_handled(&counter, sent, Duration::from_secs(60)).await;
    eprintln!(
        "broker restart: sent {sent} confirmed, handled {handled}, distinct {distinct}, duplicates {}, lost {}, publish retries {}, serving again {recovery:?} after the broker answered",
        handled - distinct,
        sent as usize - distinct.min(sent as usize),
        retries.load(Ordering::SeqCst)
    );
    assert_eq!(sent, SENT);
    assert_eq!(
        distinct as u64, SENT,
        "every confirmed message handled at least once"
    );
    let answer: Value = producer.call("echo", "after the restart").await.unwrap();
    assert_eq!(
        answer,
        json!("after the restart"),
        "serving without a restart of its own"
    );
    handle.shutdown();
    running.await.unwrap().unwrap();
    rabbitmqctl(&["delete_queue", &queue]);
}

/// A running [`Counter`] processor on an exchange and queue of its own, bound with key
/// `rpc`; returns them with its handle and task.
async fn serve_rpc(
    connection: &Connection,
    prefix: &str,
) -> (
    Exchange,
    String,
    ProcessorHandle,
    tokio::task::JoinHandle<postage_core::Result<Exit>>,
) {
    let exchange = Exchange::named(unique(prefix));
    let queue = unique(&format!("{prefix}-q"));
    let processor = Processor::builder(
        connection,
        Counter {
            seen: Mutex::new(Vec::new()),
        },
    )
    .bind(exchange.clone(), Queue::new(queue.clone()), "rpc")
    .build()
    .await
    .unwrap();
    let handle = processor.handle();
    (exchange, queue, handle, tokio::spawn(processor.run()))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_rpc_in_flight_when_the_connection_drops_is_answered_never_hangs() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let (serving, calling) = (connect().await, connect().await);
    let (exchange, queue, handle, running) = serve_rpc(&serving, "inflight").await;
    let producer = reliable_producer(&calling, exchange, "rpc").await;
    let started = Instant::now();
    let call = tokio::spawn({
        let producer = producer.clone();
        async move { producer.call::<u64>("slow", 800).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    tokio::task::spawn_blocking(|| rabbitmqctl(&["close_all_connections", "fault test"]))
        .await
        .unwrap();
    // Timeout 2 s, 5 retries (reliable_producer): the bound is 12 s; it must end well before.
    let answer = tokio::time::timeout(Duration::from_secs(15), call)
        .await
        .expect("the call never hangs")
        .unwrap();
    eprintln!(
        "RPC in flight across a connection close: {answer:?} after {:?}",
        started.elapsed()
    );
    assert_eq!(answer.expect("sent again and answered"), 800);
    handle.shutdown();
    running.await.unwrap().unwrap();
    rabbitmqctl(&["delete_queue", &queue]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deferred_call_nobody_awaits_across_a_drop_is_sent_again_without_its_timeout() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let (serving, calling) = (connect().await, connect().await);
    let (exchange, queue, handle, running) = serve_rpc(&serving, "deferred").await;
    // One retry after a long timeout: were the call sent again only when its attempt timed
    // out, its answer would take 20 s.
    let producer = Producer::builder(&calling)
        .destination(exchange, "rpc")
        .rpc_defaults(Duration::from_secs(20), 1)
        .build()
        .await
        .unwrap();
    let deferred = producer
        .rpc_deferred("slow", 500, RpcOptions::new())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    tokio::task::spawn_blocking(|| rabbitmqctl(&["close_all_connections", "fault test"]))
        .await
        .unwrap();
    // Another call, made while the deferred one is not awaited, recovers the producer and
    // starts a new answer consumer; the deferred call's answer was bound for the old one.
    let started = Instant::now();
    let echoed: Value = producer.call("echo", json!("after")).await.unwrap();
    assert_eq!(echoed, json!("after"));
    let answer = tokio::time::timeout(Duration::from_secs(10), deferred.value::<u64>())
        .await
        .expect("sent again at once, not after its 20 s timeout");
    eprintln!(
        "deferred RPC across a connection close: {answer:?} {:?} after the close",
        started.elapsed()
    );
    assert_eq!(answer.unwrap(), 500);
    handle.shutdown();
    running.await.unwrap().unwrap();
    rabbitmqctl(&["delete_queue", &queue]);
}
