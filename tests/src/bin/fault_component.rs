//! A component for the network fault tests, run inside a network namespace or behind the
//! fault relay (its link from `POSTAGE_HOST`, `POSTAGE_PORT` and `POSTAGE_HEARTBEAT`):
//!
//! - `fault_component worker NAME [quorum]`: a processor with retries on the durable queue
//!   NAME (a quorum queue with `quorum`; exchange NAME, key `work`); prints `handled ID`
//!   for each job `{"id": ID}` it handles (every seventh job fails its first attempt and is
//!   retried; a job with `"hold_ms": MS` is held that long first, when first delivered, as
//!   a handler past the broker's consumer timeout would);
//! - `fault_component server NAME`: answers `echo` calls on queue NAME (exchange NAME, key
//!   `echo`) with their parameter;
//! - `fault_component caller NAME COUNT [IN_FLIGHT [PAUSE_MS]]`: calls `echo` on exchange
//!   NAME, key `echo`, COUNT times with IN_FLIGHT calls in flight (64 by default), each
//!   call at most 3 s an attempt and one retry, each caller pausing PAUSE_MS between its
//!   calls; prints `answered I MS` or `failed I MS ERROR` for each, then `calls done`;
//! - `fault_component publisher NAME COUNT [FIRST [PAUSE_MS]]`: publishes `work` jobs
//!   FIRST..FIRST+COUNT (from 0 by default) to exchange NAME, key `work`, persistent and
//!   confirmed, one at a time, PAUSE_MS apart, each tried until the broker confirms it;
//!   prints `confirmed ID` for each, then `published`;
//! - `fault_component client NAME`: the simple client's server of target NAME, answering
//!   each call with its body;
//! - `fault_component messenger NAME`: a Messenger receiving from the durable queue
//!   NAME; prints `received ID` for each message, then accepts it;
//! - `fault_component app NAME [GROUP]`: a GenericApplication named NAME, in GROUP;
//! - `fault_component dialling NAME US`: four connections named NAME dialled on tasks of
//!   their own, the program ending US microseconds later, most likely while they are
//!   being opened; prints nothing;
//! - `fault_component ordered NAME`: a processor on the durable single-active-consumer
//!   queue NAME (exchange NAME, key `step`), 8 steps at once in order per key; for each
//!   `step` `{"key": K, "seq": S}` it sleeps 0-5 ms at random and prints `handled K S`.
//!
//! Each prints `ready` once it serves, and `link STATE MS` whenever its connection's state
//! changes (MS since it started). A COUNT of 0 means until standard input closes: the
//! calls in flight end, a job being published is tried until then (`unconfirmed ID` when
//! it never was), and the closing line comes as with a count.

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use postage_app::GenericApplication;
use postage_core::client::{Request, Target, Transport};
use postage_core::messenger::Messenger;
use postage_core::{
    Connection, Exchange, Fingerprint, HandlerError, LinkState, Metadata, Processor, Producer,
    Queue, RetryPolicy, RpcOptions, processor,
};
use serde::Deserialize;

#[derive(Deserialize)]
struct Job {
    id: u64,
    #[serde(default)]
    hold_ms: u64,
}

struct Worker;

#[processor]
impl Worker {
    #[message_handler("command", "work")]
    async fn work(&self, job: Job, metadata: &Metadata) -> Result<(), HandlerError> {
        if job.hold_ms > 0 && metadata.attempt() == 1 && !metadata.redelivered() {
            tokio::time::sleep(Duration::from_millis(job.hold_ms)).await;
        }
        if job.id.is_multiple_of(7) && metadata.attempt() == 1 {
            return Err(HandlerError::error("every seventh job fails once"));
        }
        say(format!("handled {}", job.id));
        Ok(())
    }
}

#[derive(Deserialize)]
struct Step {
    key: u64,
    seq: u64,
}

struct Steps;

#[processor]
impl Steps {
    #[message_handler("command", "step")]
    async fn step(&self, step: Step) {
        tokio::time::sleep(Duration::from_micros(fastrand::u64(0..=5_000))).await;
        say(format!("handled {} {}", step.key, step.seq));
    }
}

struct Echo;

#[processor]
impl Echo {
    #[rpc_handler("command", "echo")]
    fn echo(&self, value: u64) -> u64 {
        value
    }
}

/// One line on standard output, at once.
fn say(line: impl std::fmt::Display) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Set once standard input closes, when a COUNT of 0 said to run until then.
fn stop_on_eof() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    std::thread::spawn(move || {
        let mut sink = [0u8; 64];
        while std::io::stdin().read(&mut sink).is_ok_and(|n| n > 0) {}
        flag.store(true, Ordering::SeqCst);
    });
    stop
}

/// Prints the connection's state whenever it changes.
fn watch_link(connection: &Connection, started: Instant) {
    let connection = connection.clone();
    tokio::spawn(async move {
        let mut last = None;
        loop {
            let state = match connection.state() {
                LinkState::Connected => "connected",
                LinkState::Blocked { .. } => "blocked",
                LinkState::Reconnecting => "reconnecting",
                _ => "closed",
            };
            if last != Some(state) {
                say(format!("link {state} {}", started.elapsed().as_millis()));
                last = Some(state);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}

#[tokio::main]
async fn main() -> postage_core::Result<()> {
    let started = Instant::now();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (kind, name) = match args.as_slice() {
        [kind, name, ..] => (kind.as_str(), name.clone()),
        _ => panic!("usage: fault_component KIND NAME [COUNT]"),
    };
    let number =
        |i: usize, default: u64| args.get(i).and_then(|n| n.parse().ok()).unwrap_or(default);
    let count = number(2, 0);
    if kind == "dialling" {
        let mut config = postage_core::Config::from_env()?;
        config.connection_name = Some(name);
        for _ in 0..4 {
            let config = config.clone();
            tokio::spawn(async move { Connection::connect(&config).await });
        }
        tokio::time::sleep(Duration::from_micros(count)).await;
        return Ok(());
    }
    // A count of 0: until standard input closes.
    let (count, stop) = if count == 0 {
        (u64::MAX, stop_on_eof())
    } else {
        (count, Arc::new(AtomicBool::new(false)))
    };
    let stopped = move || stop.load(Ordering::SeqCst);
    let connection = Connection::from_env().await?;
    watch_link(&connection, started);
    let exchange = Exchange::named(name.clone());
    match kind {
        "worker" => {
            let queue = Queue::new(name.clone()).durable(true);
            let queue = if args.get(2).is_some_and(|shape| shape == "quorum") {
                queue.quorum()
            } else {
                queue
            };
            let worker = Processor::builder(&connection, Worker)
                .bind(exchange, queue, "work")
                .retry(
                    RetryPolicy::new().backoff(Duration::from_millis(200), Duration::from_secs(1)),
                )
                .concurrency(8)
                .build()
                .await?;
            say("ready");
            worker.run().await?;
        }
        "ordered" => {
            let queue = Queue::new(name.clone())
                .durable(true)
                .single_active_consumer();
            let steps = Processor::builder(&connection, Steps)
                .bind(exchange, queue, "step")
                .concurrency(8)
                .prefetch(32)
                .ordered_by(|message, _| message.raw_parameters()["key"].as_u64())
                .build()
                .await?;
            say("ready");
            steps.run().await?;
        }
        "server" => {
            let server = Processor::builder(&connection, Echo)
                .bind(exchange, Queue::new(name.clone()), "echo")
                .concurrency(64)
                .build()
                .await?;
            say("ready");
            server.run().await?;
        }
        "caller" => {
            let producer = Producer::builder(&connection)
                .destination(exchange, "echo")
                .build()
                .await?;
            say("ready");
            let options = RpcOptions::new()
                .timeout(Duration::from_secs(3))
                .max_retry(1);
            let (in_flight, pause) = (number(3, 64), Duration::from_millis(number(4, 0)));
            let calls = (0..count)
                .map_while(|i| (!stopped()).then_some(i))
                .map(|i| {
                    let (producer, options) = (producer.clone(), options.clone());
                    async move {
                        let began = Instant::now();
                        let answer = producer.call_with::<u64>("echo", i, options).await;
                        let ms = began.elapsed().as_millis();
                        match answer {
                            Ok(_) => say(format!("answered {i} {ms}")),
                            Err(error) => say(format!("failed {i} {ms} {error}")),
                        }
                        tokio::time::sleep(pause).await;
                    }
                });
            futures_util::StreamExt::for_each_concurrent(
                futures_util::stream::iter(calls),
                usize::try_from(in_flight).unwrap_or(64),
                |call| call,
            )
            .await;
            say("calls done");
        }
        "publisher" => {
            let producer = Producer::builder(&connection)
                .destination(exchange, "work")
                .reliable(true)
                .persistent(true)
                .build()
                .await?;
            say("ready");
            let (first, pause) = (number(3, 0), Duration::from_millis(number(4, 0)));
            'jobs: for id in (first..)
                .take_while(|_| !stopped())
                .take(usize::try_from(count).unwrap_or(usize::MAX))
            {
                while producer
                    .command("work", serde_json::json!({ "id": id }))
                    .await
                    .is_err()
                {
                    if stopped() {
                        say(format!("unconfirmed {id}"));
                        break 'jobs;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                say(format!("confirmed {id}"));
                tokio::time::sleep(pause).await;
            }
            say("published");
        }
        "client" => {
            let transport = Transport::new(&connection).await?;
            let server = transport.server(&Target::new(name)).await?;
            say("ready");
            server
                .serve(|request: Request| async move { request.body().clone() })
                .await?;
        }
        "messenger" => {
            let messenger = Messenger::with_connection(&connection).await?;
            let address = format!("amqp://{}/{name}", connection.host());
            messenger
                .subscribe_queue(&address, &Queue::new(name.clone()).durable(true))
                .await?;
            say("ready");
            loop {
                let incoming = messenger.recv().await?;
                match incoming.json::<Job>() {
                    Ok(job) => say(format!("received {}", job.id)),
                    Err(error) => say(format!("unreadable {error}")),
                }
                incoming.ack().await?;
            }
        }
        "app" => {
            let mut app =
                GenericApplication::builder(&connection, Fingerprint::new(&name, "application"))
                    .stop_on_signals(true);
            if let Some(group) = args.get(2) {
                app = app.group(group.clone());
            }
            let app = app.build().await?;
            say("ready");
            app.run().await?;
        }
        other => panic!("unknown kind {other}"),
    }
    connection.close().await
}
