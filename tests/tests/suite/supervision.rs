//! What supervised recovery must guarantee, with real faults on real brokers: a two-minute
//! outage served through by every kind of component, recoveries interrupted again and
//! again that leave one consumer per queue, a refused declaration that costs no call and
//! no delivery, and a late answer without correlation id that never reaches a later call.
//!
//! The outage and the interruptions act on nodes of their own (`outage`, `interrupt`);
//! the other two run on the shared broker and disturb nothing else.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use postage_app::{
    Addresses, DISCOVERY_EXCHANGE, GENERIC_APPLICATION_EXCHANGE, GenericApplication,
};
use postage_core::lapin::options::{
    BasicPublishOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueDeleteOptions,
};
use postage_core::lapin::types::FieldTable;
use postage_core::lapin::{BasicProperties, ExchangeKind};
use postage_core::{
    Config, Connection, Consumer, Error, Exchange, Fingerprint, Host, Processor, Producer, Queue,
    Route, RpcOptions,
    channel::{Channel, DeliveryStatus, Envelope},
    client::{Request, Target, Transport},
    messenger::Messenger,
    processor,
};
use postage_tests::{OwnNode, connect, ctl, exchange, init_tracing, start_app, unique};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// (name, AMQP port, distribution port) of the node stopped for two minutes.
const OUTAGE: (&str, u16, u16) = ("outage", 5741, 25741);
/// (name, AMQP port, distribution port) of the node whose connections are closed 15 times.
const INTERRUPT: (&str, u16, u16) = ("interrupt", 5751, 25751);

/// How many bursts of 15 connection closes the interrupted-recovery test sends.
const BURSTS: u64 = 8;

/// How long each component may take to serve again once the broker is back.
const BACK_WITHIN: Duration = Duration::from_secs(10);
/// How long a check waits between two attempts.
const RETRY_EVERY: Duration = Duration::from_millis(250);

/// A connection's settings for a node of the test's own on `port` (guest/guest, and every
/// other setting at its default: a connection timeout of 5 s).
fn own_node(port: u16) -> Config {
    Config {
        hosts: vec![Host {
            name: "127.0.0.1".into(),
            port,
        }],
        ..Config::default()
    }
}

/// Answers `echo` with its argument.
struct Echo;

#[processor]
impl Echo {
    #[rpc_handler("command", "echo")]
    fn echo(&self, text: String) -> String {
        text
    }
}

/// Runs `attempt` every [`RETRY_EVERY`] until it succeeds or `deadline` passes; returns how
/// long it took from `since`, or the last failure.
async fn until<F, Fut>(
    since: Instant,
    deadline: Instant,
    mut attempt: F,
) -> Result<Duration, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    loop {
        let failure = match tokio::time::timeout_at(deadline, attempt()).await {
            Ok(Ok(())) => return Ok(since.elapsed()),
            Ok(Err(failure)) => failure,
            Err(_) => "the attempt was still under way at the deadline".to_owned(),
        };
        if Instant::now() + RETRY_EVERY >= deadline {
            return Err(format!("not within {:?}: {failure}", deadline - since));
        }
        tokio::time::sleep(RETRY_EVERY).await;
    }
}

/// A connection to `config`, retried until `deadline`.
async fn connect_until(config: &Config, deadline: Instant) -> Connection {
    loop {
        match Connection::connect(config).await {
            Ok(connection) => return connection,
            Err(error) => {
                assert!(
                    Instant::now() < deadline,
                    "no caller connection to the node: {error}"
                );
                tokio::time::sleep(RETRY_EVERY).await;
            }
        }
    }
}

/// What the outage test calls, to check that each of its four components serves.
struct Outage {
    config: Config,
    exchange: Exchange,
    key: String,
    addresses: Addresses,
    group: String,
    target: Target,
    mailbox: String,
}

impl Outage {
    /// Checks each component once with callers on a new connection, each check retried
    /// until `deadline`; `round` names the messages. Returns (component, how long it took
    /// from `since`, or why it failed).
    async fn check(
        &self,
        received: &mut mpsc::UnboundedReceiver<String>,
        round: &str,
        since: Instant,
        deadline: Instant,
    ) -> Vec<(&'static str, Result<Duration, String>)> {
        let caller = connect_until(&self.config, deadline).await;
        let once = RpcOptions::new()
            .timeout(Duration::from_secs(1))
            .max_retry(0);

        let processor = async {
            let producer = Producer::builder(&caller)
                .destination(self.exchange.clone(), self.key.as_str())
                .build()
                .await
                .map_err(|e| format!("the caller's producer: {e}"))?;
            let (producer, text, once) = (&producer, &format!("processor {round}"), &once);
            until(since, deadline, || async move {
                match producer
                    .call_with::<String>("echo", text, once.clone())
                    .await
                {
                    Ok(answer) if answer == *text => Ok(()),
                    Ok(answer) => Err(format!("answered {answer:?}")),
                    Err(error) => Err(error.to_string()),
                }
            })
            .await
        };

        let application = async {
            let producer = Producer::builder(&caller)
                .destination(
                    GENERIC_APPLICATION_EXCHANGE,
                    self.addresses.group_rr_key(&self.group),
                )
                .build()
                .await
                .map_err(|e| format!("the caller's producer: {e}"))?;
            let uid = &self.addresses.uid().name().to_owned();
            let (producer, text, once) = (&producer, &format!("application {round}"), &once);
            until(since, deadline, || async move {
                // Its group's shared queue, then its own queue.
                for options in [once.clone(), once.clone().key(uid.as_str())] {
                    match producer.call_with::<String>("echo", text, options).await {
                        Ok(answer) if answer == *text => {}
                        Ok(answer) => return Err(format!("answered {answer:?}")),
                        Err(error) => return Err(error.to_string()),
                    }
                }
                Ok(())
            })
            .await
        };

        let server = async {
            let transport = Transport::new(&caller)
                .await
                .map_err(|e| format!("the caller's transport: {e}"))?
                .with_timeout(Duration::from_secs(1));
            let (transport, body) = (&transport, &json!(format!("server {round}")));
            until(since, deadline, || async move {
                match transport.call::<Value>(&self.target, body).await {
                    Ok(answer) if answer == *body => Ok(()),
                    Ok(answer) => Err(format!("answered {answer}")),
                    Err(error) => Err(error.to_string()),
                }
            })
            .await
        };

        let messenger = async {
            let sender = Messenger::with_connection(&caller)
                .await
                .map_err(|e| format!("the caller's messenger: {e}"))?
                .timeout(Some(Duration::from_secs(1)));
            let address = &format!("amqp://{}/{}", caller.host(), self.mailbox);
            let text = format!("messenger {round}");
            let (sender, sent) = (&sender, &text);
            until(since, deadline, || async move {
                let tracker = sender
                    .put(address, Envelope::text(sent.as_str()))
                    .await
                    .map_err(|e| format!("put: {e}"))?;
                sender.send().await.map_err(|e| format!("send: {e}"))?;
                match tracker.status() {
                    DeliveryStatus::Accepted => Ok(()),
                    status => Err(format!("the broker settled the put as {status:?}")),
                }
            })
            .await?;
            // Put once (the mailbox is durable): now `recv` must hand it over.
            loop {
                match tokio::time::timeout_at(deadline, received.recv()).await {
                    Ok(Some(got)) if got == text => return Ok(since.elapsed()),
                    Ok(Some(_)) => {}
                    Ok(None) => return Err("the receiving task ended".to_owned()),
                    Err(_) => {
                        return Err(format!(
                            "{text:?} was put but not received within {:?}",
                            deadline - since
                        ));
                    }
                }
            }
        };

        let (processor, application, server, messenger) =
            tokio::join!(processor, application, server, messenger);
        let _ = caller.close().await;
        vec![
            ("the processor", processor),
            ("the GenericApplication", application),
            ("the simple-client Server", server),
            ("the Messenger subscription", messenger),
        ]
    }
}

/// Hands every message `messenger` receives to `received`, acknowledged, until `recv`
/// fails.
async fn receive_all(
    messenger: Messenger,
    received: mpsc::UnboundedSender<String>,
) -> postage_core::Result<()> {
    loop {
        let message = messenger.recv().await?;
        let _ = received.send(message.text()?.to_owned());
        message.ack().await?;
    }
}

/// How a serving task ended, or `None` while it still runs (it is aborted then: the test
/// is over).
async fn task_state<T: std::fmt::Debug>(task: JoinHandle<T>) -> Option<String> {
    if !task.is_finished() {
        task.abort();
        return None;
    }
    Some(format!("{:?}", task.await))
}

/// A processor, a GenericApplication, a simple-client server and a messenger subscription
/// on one node, each on its own task: the broker stops for two minutes (`stop_app`), comes
/// back, and within 10 s each serves again on the task it ran on from the start.
#[tokio::test(flavor = "multi_thread")]
async fn a_two_minute_outage_is_served_through() {
    init_tracing();
    let (node, port, dist) = OUTAGE;
    let _node = OwnNode::start(node, port, dist, "");
    let config = own_node(port);
    let serving = Connection::connect(&config).await.unwrap();

    // (a) A processor with an RPC handler, on an exchange, queue and key of its own.
    let (exchange, key) = (Exchange::named(unique("outage")), unique("outage-key"));
    let processor = Processor::builder(&serving, Echo)
        .bind(
            exchange.clone(),
            Queue::new(unique("outage-q")),
            key.as_str(),
        )
        .build()
        .await
        .unwrap();
    let processor_handle = processor.handle();
    let processor_task = tokio::spawn(processor.run());

    // (b) A GenericApplication in a group, with the same RPC handler.
    let group = "night".to_owned();
    let app = GenericApplication::builder(
        &serving,
        Fingerprint::new(unique("outage-app"), "application").with_pid(unique("pid")),
    )
    .group(group.as_str())
    .handlers(Echo)
    .stop_on_signals(false)
    .build()
    .await
    .unwrap();
    let outage = Outage {
        config: config.clone(),
        exchange,
        key,
        addresses: app.addresses().clone(),
        group,
        target: Target::with_queue(Queue::new(unique("outage-target"))),
        mailbox: unique("outage-mailbox"),
    };
    let app_handle = app.handle();
    let app_task = tokio::spawn(app.run());

    // (c) A simple-client server answering each call with its body.
    let transport = Transport::new(&serving).await.unwrap();
    let server = transport.server(&outage.target).await.unwrap();
    let server_handle = server.handle();
    let server_task = tokio::spawn(server.serve(|request: Request| {
        let body = request.body().clone();
        async move { body }
    }));

    // (d) A messenger subscribed to a durable queue (it must exist; it survives the stop).
    let declaring = Channel::open(&serving).await.unwrap();
    declaring
        .declare_queue(&Queue::new(outage.mailbox.as_str()).durable(true))
        .await
        .unwrap();
    declaring.close().await.unwrap();
    let messenger = Messenger::with_connection(&serving).await.unwrap();
    messenger
        .subscribe(&format!("amqp://{}/{}", serving.host(), outage.mailbox))
        .await
        .unwrap();
    let (received_sender, mut received) = mpsc::unbounded_channel();
    let messenger_task = tokio::spawn(receive_all(messenger, received_sender));

    // Warm-up: each answers once.
    let started = Instant::now();
    let warm = outage
        .check(&mut received, "before", started, started + BACK_WITHIN)
        .await;
    for (component, result) in &warm {
        assert!(
            result.is_ok(),
            "warm-up: {component} does not serve: {result:?}"
        );
    }

    // Two minutes without a broker.
    tokio::task::spawn_blocking(move || ctl(node, &["stop_app"]))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(120)).await;
    tokio::task::spawn_blocking(move || start_app(node))
        .await
        .unwrap();
    let back = Instant::now();

    let after = outage
        .check(&mut received, "after", back, back + BACK_WITHIN)
        .await;
    eprintln!("after a two-minute outage, serving again (from start_app): {after:?}");
    let mut failures: Vec<String> = after
        .iter()
        .filter_map(|(component, result)| {
            result
                .as_ref()
                .err()
                .map(|why| format!("{component} does not serve again: {why}"))
        })
        .collect();
    for (component, ended) in [
        ("the processor", task_state(processor_task).await),
        ("the GenericApplication", task_state(app_task).await),
        ("the simple-client Server", task_state(server_task).await),
        (
            "the Messenger subscription",
            task_state(messenger_task).await,
        ),
    ] {
        if let Some(ended) = ended {
            failures.push(format!("{component}'s serving task ended: {ended}"));
        }
    }
    processor_handle.shutdown();
    app_handle.shutdown();
    server_handle.shutdown();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Records the `hello`s an application gets.
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

/// `queue -> consumers` of every queue on `node`, and the listing itself.
fn consumers_on(node: &str) -> (HashMap<String, u32>, String) {
    let listing = ctl(node, &["list_queues", "name", "consumers"]);
    let consumers = listing
        .lines()
        .filter_map(|line| {
            let (name, count) = line.split_once('\t')?;
            Some((name.to_owned(), count.trim().parse().ok()?))
        })
        .collect();
    (consumers, listing)
}

/// Whether every queue of `queues` has exactly one consumer.
fn one_each(consumers: &HashMap<String, u32>, queues: &[String]) -> bool {
    queues.iter().all(|q| consumers.get(q) == Some(&1))
}

/// A GenericApplication in three groups has its connection closed by the broker 15
/// times, 50-300 ms apart ([`BURSTS`] times over), so recoveries are cut short again and
/// again: once it settles, every queue it declared has exactly one consumer, and every
/// routing key it listens on reaches it, once.
#[tokio::test(flavor = "multi_thread")]
async fn interrupted_recovery_leaves_one_consumer_per_queue() {
    init_tracing();
    let (node, port, dist) = INTERRUPT;
    let _node = OwnNode::start(node, port, dist, "");
    let config = own_node(port);
    let serving = Connection::connect(&config).await.unwrap();
    let name = unique("interrupt-app");
    let groups = ["a", "b", "c"];
    let hellos = Arc::new(Mutex::new(Vec::new()));
    let mut builder = GenericApplication::builder(
        &serving,
        Fingerprint::new(name.as_str(), "application").with_pid(unique("pid")),
    );
    for group in groups {
        builder = builder.group(group);
    }
    let app = builder
        .handlers(Hellos {
            seen: Arc::clone(&hellos),
        })
        .stop_on_signals(false)
        .build()
        .await
        .unwrap();
    let addresses = app.addresses().clone();
    let handle = app.handle();
    let running = tokio::spawn(app.run());

    let mut queues: Vec<String> = addresses
        .bindings()
        .into_iter()
        .map(|(queue, _)| queue.name().to_owned())
        .chain(
            groups
                .iter()
                .map(|g| addresses.group_queue(g).name().to_owned()),
        )
        .collect();
    queues.sort();
    queues.dedup();
    assert_eq!(queues.len(), 6, "sid, hid, uid and three group queues");
    let consuming = Instant::now();
    while !one_each(&consumers_on(node).0, &queues) {
        assert!(
            consuming.elapsed() < Duration::from_secs(10),
            "before the faults: {}",
            consumers_on(node).1
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let closes = "[begin timer:sleep(50 + rand:uniform(250)), \
         [rabbit_networking:close_connection(P, \"test\") || P <- rabbit_networking:connections()] \
         end || _ <- lists:seq(1, 15)], ok.";
    // A close lands in the few milliseconds a recovery needs only now and then: the
    // burst runs several times, in one go, so the faults cut recoveries short often.
    for _ in 0..BURSTS {
        tokio::task::spawn_blocking(move || ctl(node, &["eval", closes]))
            .await
            .unwrap();
    }
    let reconnections = serving.generation();
    assert!(reconnections >= BURSTS, "the broker closed the connection");

    // Settled: two listings in a row alike with one consumer each, or 20 s.
    let settling = Instant::now();
    let mut last = consumers_on(node);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = consumers_on(node);
        let settled = now.0 == last.0 && one_each(&now.0, &queues);
        last = now;
        if settled || settling.elapsed() > Duration::from_secs(20) {
            break;
        }
    }
    eprintln!(
        "{BURSTS} x 15 closes: {reconnections} reconnections, consumers after {:?}: {:?}",
        settling.elapsed(),
        queues
            .iter()
            .map(|q| (q.as_str(), last.0.get(q)))
            .collect::<Vec<_>>()
    );
    let wrong: Vec<String> = queues
        .iter()
        .filter(|q| last.0.get(*q) != Some(&1))
        .map(|q| format!("{q}: {:?}", last.0.get(q)))
        .collect();
    assert!(
        wrong.is_empty(),
        "queues without exactly one consumer after {reconnections} interrupted recoveries: {wrong:?}\n{}",
        last.1
    );
    assert!(
        !running.is_finished(),
        "the application stopped: {running:?}"
    );

    // Every key it listens on reaches it, once.
    let calling = Connection::connect(&config).await.unwrap();
    let producer = Producer::builder(&calling)
        .destination(GENERIC_APPLICATION_EXCHANGE, name.as_str())
        .reliable(true)
        .build()
        .await
        .unwrap();
    let mut routes: Vec<(String, Route)> = addresses
        .bindings()
        .into_iter()
        .chain(groups.iter().flat_map(|g| addresses.group_bindings(g)))
        .map(|(_, key)| (key.clone(), Route::key(key)))
        .collect();
    routes.push((
        "<discovery fanout>".to_owned(),
        Route::pairs([(DISCOVERY_EXCHANGE, "")]),
    ));
    assert_eq!(routes.len(), 13, "six keys, two per group, discovery");
    let mut unsent = Vec::new();
    for (label, route) in &routes {
        if let Err(error) = producer.command_to(route.clone(), "hello", label).await {
            unsent.push(format!("{label}: {error}"));
        }
    }
    assert!(unsent.is_empty(), "keys that reach no queue: {unsent:?}");
    let sent = Instant::now();
    while hellos.lock().unwrap().len() < routes.len() && sent.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut handled: BTreeMap<String, usize> = BTreeMap::new();
    for text in hellos.lock().unwrap().iter() {
        *handled.entry(text.clone()).or_default() += 1;
    }
    let not_once: Vec<String> = routes
        .iter()
        .filter(|(label, _)| handled.get(label) != Some(&1))
        .map(|(label, _)| {
            format!(
                "{label}: handled {} times",
                handled.get(label).unwrap_or(&0)
            )
        })
        .collect();
    assert!(
        not_once.is_empty(),
        "keys not handled exactly once: {not_once:?}"
    );

    handle.shutdown();
    let _ = tokio::time::timeout(Duration::from_secs(10), running).await;
    let _ = calling.close().await;
}

/// Counts each run of `slow` and each `count`, by argument.
#[derive(Default)]
struct Tally {
    slow_runs: Mutex<BTreeMap<u64, u32>>,
    counted: Mutex<BTreeMap<u64, u32>>,
}

#[processor]
impl Tally {
    #[rpc_handler("command", "slow")]
    async fn slow(&self, n: u64) -> u64 {
        *self.slow_runs.lock().unwrap().entry(n).or_default() += 1;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        n
    }

    #[message_handler("command", "count")]
    fn count(&self, n: u64) {
        *self.counted.lock().unwrap().entry(n).or_default() += 1;
    }
}

/// The arguments of `tally` not seen exactly once in `0..n`.
fn not_once(tally: &BTreeMap<u64, u32>, n: u64) -> Vec<(u64, u32)> {
    (0..n)
        .map(|i| (i, tally.get(&i).copied().unwrap_or(0)))
        .filter(|(_, runs)| *runs != 1)
        .collect()
}

/// While ten calls are in their handler, the broker refuses a declaration of the caller's
/// producer and one of the processor's run-time binds (406: an exchange declared with
/// another type): both report an error, and nothing else notices: each call is answered,
/// each handler ran once, each message was handled once.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_declaration_leaves_calls_and_consumers_untouched() {
    let (serving, calling) = (connect().await, connect().await);
    let ex = exchange("refused");
    // Not auto-delete: what the processor has not acknowledged when it loses its channel
    // stays in the queue, to be delivered again.
    let queue = unique("refused-q");
    let processor = Processor::builder(&serving, Tally::default())
        .bind(ex.clone(), Queue::new(queue.as_str()), "slow")
        .prefetch(50)
        .concurrency(20)
        .build()
        .await
        .unwrap();
    let tally = Arc::clone(processor.state());
    let binder = processor.consumer().handle();
    let stop = processor.handle();
    let running = tokio::spawn(processor.run());

    // The exchange every declaration below gets wrong: fanout, declared as direct.
    let conflicting = unique("refused-fanout");
    let raw = calling.open_channel().await.unwrap();
    raw.exchange_declare(
        conflicting.as_str().into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();

    let producer = Producer::builder(&calling)
        .destination(ex.clone(), "slow")
        .reliable(true)
        .build()
        .await
        .unwrap();
    const MESSAGES: u64 = 20;
    for n in 0..MESSAGES / 2 {
        producer.command("count", n).await.unwrap();
    }
    const CALLS: u64 = 10;
    let calls: Vec<_> = (0..CALLS)
        .map(|i| {
            let producer = producer.clone();
            tokio::spawn(async move {
                let options = RpcOptions::new().timeout(Duration::from_secs(10));
                producer.call_with::<u64>("slow", i, options).await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let refused = producer
        .command_to(
            Route::pairs([(Exchange::named(conflicting.as_str()), "k")]),
            "x",
            1,
        )
        .await;
    assert!(refused.is_err(), "the producer's declaration was refused");
    let refused = binder
        .bind(
            &Exchange::named(conflicting.as_str()),
            &Queue::new(unique("refused-bind")),
            "k",
        )
        .await;
    assert!(refused.is_err(), "the processor's bind was refused");
    let mut failures = Vec::new();
    for n in MESSAGES / 2..MESSAGES {
        if let Err(error) = producer.command("count", n).await {
            failures.push(format!(
                "count({n}) sent after the refusals failed: {error}"
            ));
        }
    }

    let answers = tokio::time::timeout(
        Duration::from_secs(60),
        futures_util::future::join_all(calls),
    )
    .await
    .expect("every call ends within its attempts");
    // Late runs of a delivery sent again land within a handler's time.
    tokio::time::sleep(Duration::from_secs(2)).await;

    for (i, answer) in (0..CALLS).zip(answers) {
        match answer.unwrap() {
            Ok(n) if n == i => {}
            other => failures.push(format!("slow({i}) answered {other:?}")),
        }
    }
    let runs = not_once(&tally.slow_runs.lock().unwrap(), CALLS);
    if !runs.is_empty() {
        failures.push(format!(
            "slow handler runs not exactly once, (argument, runs): {runs:?}"
        ));
    }
    let counted = not_once(&tally.counted.lock().unwrap(), MESSAGES);
    if !counted.is_empty() {
        failures.push(format!(
            "messages not handled exactly once, (n, times): {counted:?}"
        ));
    }
    if running.is_finished() {
        failures.push(format!("the processor stopped: {running:?}"));
    }
    raw.exchange_delete(
        conflicting.as_str().into(),
        ExchangeDeleteOptions::default(),
    )
    .await
    .unwrap();
    stop.shutdown();
    let _ = tokio::time::timeout(Duration::from_secs(10), running).await;
    raw.queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A receiver written as Python Postage writes it (answers on `reply_to` without a
/// correlation id) answers each call after 1.5 s, saying which request it answers: the
/// first call times out after 0.5 s, and its late answer must not be taken by the second
/// call, then the only one waiting.
#[tokio::test(flavor = "multi_thread")]
async fn a_late_uncorrelated_answer_never_reaches_a_later_call() {
    let connection = connect().await;
    let ex = exchange("late");
    let mut python = Consumer::builder(&connection)
        .bind(
            ex.clone(),
            Queue::new(unique("late")).auto_delete(true),
            "py",
        )
        .build()
        .await
        .unwrap();
    python.start().await.unwrap();
    let answerer = connection.open_channel().await.unwrap();
    let receiver = tokio::spawn(async move {
        while let Some(Ok(delivery)) = python.next().await {
            let reply_to = delivery.properties().reply_to().clone().unwrap();
            let asked: String = delivery.message().unwrap().parameters().unwrap();
            delivery.ack().await.unwrap();
            let answerer = answerer.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                let body = json!({
                    "type": "result", "name": "none", "category": "message", "version": "2",
                    "fingerprint": {}, "_reserved": {},
                    "content": {"type": "success", "value": format!("answer to {asked}"), "message": ""},
                });
                answerer
                    .basic_publish(
                        "".into(),
                        reply_to,
                        BasicPublishOptions::default(),
                        &serde_json::to_vec(&body).unwrap(),
                        BasicProperties::default(),
                    )
                    .await
                    .unwrap();
            });
        }
    });
    let producer = Producer::builder(&connection)
        .destination(ex, "py")
        .build()
        .await
        .unwrap();

    let first = producer
        .call_with::<String>(
            "echo",
            "first",
            RpcOptions::new()
                .timeout(Duration::from_millis(500))
                .max_retry(0),
        )
        .await;
    assert!(
        matches!(first, Err(Error::RpcTimeout { .. })),
        "the first call times out: {first:?}"
    );
    let second = tokio::time::timeout(
        Duration::from_secs(10),
        producer.call_with::<String>(
            "echo",
            "second",
            RpcOptions::new()
                .timeout(Duration::from_secs(3))
                .max_retry(0),
        ),
    )
    .await
    .expect("the second call ends within its timeout");
    assert!(
        matches!(&second, Ok(answer) if answer == "answer to second")
            || matches!(second, Err(Error::RpcTimeout { .. })),
        "the second call gets its own answer or none, not {second:?}"
    );
    receiver.abort();
    let _ = connection.close().await;
}
