//! Postage beside raw lapin, against the local broker: publish rate, processor dispatch
//! rate, RPC round trips (sequential and 64 in flight, over direct reply-to and over a
//! private reply queue), resident memory, and time from process start to consuming.
//!
//! Run with: cargo bench -p postage-tests --bench throughput
//!
//! Each figure is printed as
//! `<figure>: postage <value> <unit> | lapin <value> <unit> | ratio <postage/lapin>`,
//! the median of several runs (the first line says how many), postage and lapin taking
//! turns to go first. Both sides run in this process (components and callers on separate
//! connections), except memory and start-up, measured on child components
//! (`bench_postage`, `bench_lapin`). `POSTAGE_BENCH_QUICK=1` makes a smoke run: a few
//! hundred messages, one run. `POSTAGE_URL` names another broker.
//!
//! While working on a figure: `POSTAGE_BENCH_ONLY=publish,dispatch,rpc,process` runs some
//! groups only; `POSTAGE_BENCH_SIDE=postage` (or `lapin`) one side only, for a profiler;
//! `POSTAGE_BENCH_DIAG=1` adds `#` lines: CPU time per operation, each RPC client against
//! the other side's server, a raw client with a reply task of its own, a ladder of
//! hand-written consumers from raw lapin to the processor, and lapin's memory when told
//! the frame size.
//!
//! Spans cost nothing without a subscriber, the default here. With the `otel` feature
//! (on by default in this crate; `--no-default-features` leaves OpenTelemetry out of the
//! build), `POSTAGE_BENCH_TRACE=otel` records every span as an OpenTelemetry span, with
//! trace context in every message, through a provider that exports nowhere: the cost of
//! tracing itself.

use std::collections::HashMap;
use std::hint::black_box;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use postage_core::lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
    QueuePurgeOptions,
};
use postage_core::lapin::types::{AMQPValue, FieldTable, ShortString};
use postage_core::lapin::{self, BasicProperties, ConnectionProperties, ExchangeKind};
use postage_core::{
    Config, Connection, Exchange, Fingerprint, Processor, Producer, Queue, ReplyQueue, RpcOptions,
    processor,
};
use postage_tests::bench::{
    RawFingerprint, Reading, Receipt, broker_url, command_body, read_command, read_success,
    resident_bytes, success_body,
};
use tokio::sync::Notify;

/// Prefetch of every consumer, postage and lapin alike.
const PREFETCH: u16 = 100;
/// The batch-acking raw consumer acknowledges with `multiple` every this many messages.
const ACK_BATCH: usize = PREFETCH as usize / 2;
/// Calls in flight in the pipelined RPC figure.
const WINDOW: usize = 64;
/// Queues delete themselves after this long unused, should a run be interrupted.
const EXPIRES_MS: i64 = 120_000;
const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// How much work each figure does.
#[derive(Debug, Clone, Copy)]
struct Plan {
    quick: bool,
    /// `POSTAGE_BENCH_DIAG=1`: also run each RPC client against the other's server.
    diag: bool,
    runs: usize,
    publish: usize,
    dispatch: usize,
    rpc_sequential: usize,
    rpc_pipelined: usize,
    in_flight: usize,
}

impl Plan {
    fn from_env() -> Self {
        let set = |name| std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0");
        let (quick, diag) = (set("POSTAGE_BENCH_QUICK"), set("POSTAGE_BENCH_DIAG"));
        if quick {
            Self {
                quick,
                diag,
                runs: 1,
                publish: 300,
                dispatch: 300,
                rpc_sequential: 200,
                rpc_pipelined: 300,
                in_flight: 300,
            }
        } else {
            Self {
                quick,
                diag,
                runs: 5,
                publish: 30_000,
                dispatch: 20_000,
                rpc_sequential: 3_000,
                rpc_pipelined: 15_000,
                in_flight: 10_000,
            }
        }
    }
}

/// With `POSTAGE_BENCH_TRACE=otel`, records every span as an OpenTelemetry span, and
/// says so in the first line; the provider is kept until the end.
#[cfg(feature = "otel")]
fn tracing_setting() -> (
    &'static str,
    Option<opentelemetry_sdk::trace::SdkTracerProvider>,
) {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::prelude::*;
    if std::env::var("POSTAGE_BENCH_TRACE").as_deref() != Ok("otel") {
        return ("no subscriber", None);
    }
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("bench")))
        .init();
    ("OpenTelemetry spans of every operation", Some(provider))
}

#[cfg(not(feature = "otel"))]
fn tracing_setting() -> (&'static str, Option<()>) {
    ("no subscriber, no otel feature", None)
}

fn main() {
    let plan = Plan::from_env();
    let (tracing, _provider) = tracing_setting();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    println!(
        "# postage vs raw lapin {}, broker {}: medians of {} run(s){}; prefetch {PREFETCH}; tracing: {tracing}",
        env!("CARGO_PKG_VERSION"),
        redacted(&broker_url()),
        plan.runs,
        if plan.quick { " (quick smoke run)" } else { "" },
    );
    let only = std::env::var("POSTAGE_BENCH_ONLY").unwrap_or_default();
    let wanted = |group: &str| only.is_empty() || only.split(',').any(|g| g.trim() == group);
    runtime.block_on(async {
        let bench = Bench::connect().await;
        if wanted("publish") {
            bench.publish(plan).await;
        }
        if wanted("dispatch") {
            bench.dispatch(plan).await;
        }
        if wanted("rpc") {
            for mode in [ReplyQueue::DirectReplyTo, ReplyQueue::Private] {
                bench.rpc(plan, mode, Calls::Sequential).await;
            }
            for mode in [ReplyQueue::DirectReplyTo, ReplyQueue::Private] {
                bench.rpc(plan, mode, Calls::Pipelined).await;
            }
        }
        bench.close().await;
    });
    drop(runtime);
    if wanted("process") {
        processes(plan);
    }
}

/// The broker URL without its password.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://…{}", &url[..scheme], &url[at..]),
        _ => url.to_owned(),
    }
}

// ---------------------------------------------------------------------------------------
// Reporting

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn format_value(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

/// Prints one figure line from the runs of each side.
fn figure(name: &str, unit: &str, postage: Vec<f64>, lapin: Vec<f64>) {
    let (postage, lapin) = (median(postage), median(lapin));
    println!(
        "{name}: postage {} {unit} | lapin {} {unit} | ratio {:.2}",
        format_value(postage),
        format_value(lapin),
        postage / lapin
    );
}

/// One measured run: its rate, and the CPU time the bench process (client and server
/// alike, every thread) spent per operation.
#[derive(Debug, Clone, Copy)]
struct Sample {
    rate: f64,
    cpu_us: f64,
}

/// Measures one run: wall time and the process's CPU time.
struct Meter {
    wall: Instant,
    cpu: Duration,
}

impl Meter {
    fn start() -> Self {
        Self {
            wall: Instant::now(),
            cpu: process_cpu(),
        }
    }

    fn stop(self, count: usize) -> Sample {
        let wall = self.wall.elapsed();
        let cpu = process_cpu().saturating_sub(self.cpu);
        Sample {
            rate: count as f64 / wall.as_secs_f64(),
            cpu_us: cpu.as_secs_f64() * 1e6 / count as f64,
        }
    }
}

/// CPU time of every thread of this process so far (`/proc/self/task/*/schedstat`).
fn process_cpu() -> Duration {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Duration::ZERO;
    };
    let nanos: u64 = tasks
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(nanos)
}

fn rates(samples: &[Sample]) -> Vec<f64> {
    samples.iter().map(|s| s.rate).collect()
}

/// With `POSTAGE_BENCH_DIAG`: the CPU cost per operation behind a figure.
fn cpu_line(plan: Plan, name: &str, postage: &[Sample], lapin: &[Sample]) {
    if plan.diag {
        let cpu = |s: &[Sample]| median(s.iter().map(|s| s.cpu_us).collect());
        let (p, l) = (cpu(postage), cpu(lapin));
        println!(
            "# cpu {name}: postage {p:.1} µs/op | lapin {l:.1} µs/op | ratio {:.2} (bench process, every thread, client and server)",
            p / l
        );
    }
}

/// Runs `postage` and `lapin` `runs` times each, taking turns to go first, after one
/// shorter warm-up of each (unless quick); returns their rates.
async fn alternate<P, L>(plan: Plan, mut postage: P, mut lapin: L) -> (Vec<Sample>, Vec<Sample>)
where
    P: AsyncFnMut(bool) -> Sample,
    L: AsyncFnMut(bool) -> Sample,
{
    // For profiling one side alone: POSTAGE_BENCH_SIDE=postage or lapin.
    let side = std::env::var("POSTAGE_BENCH_SIDE").unwrap_or_default();
    let (run_postage, run_lapin) = (side != "lapin", side != "postage");
    if !plan.quick {
        if run_postage {
            postage(true).await;
        }
        if run_lapin {
            lapin(true).await;
        }
    }
    let (mut p, mut l) = (Vec::new(), Vec::new());
    for run in 0..plan.runs {
        if run % 2 == 1 && run_lapin {
            l.push(lapin(false).await);
        }
        if run_postage {
            p.push(postage(false).await);
        }
        if run % 2 == 0 && run_lapin {
            l.push(lapin(false).await);
        }
    }
    (p, l)
}

// ---------------------------------------------------------------------------------------
// Shared set-up

struct Bench {
    /// Postage's side: one connection for components, one for callers.
    postage: Connection,
    postage_callers: Connection,
    /// The raw side, alike.
    lapin: lapin::Connection,
    lapin_callers: lapin::Connection,
    /// Declares, fills and deletes queues; never measured.
    admin: lapin::Channel,
    fingerprint: Arc<RawFingerprint>,
    names: AtomicUsize,
}

impl Bench {
    async fn connect() -> Self {
        let url = broker_url();
        let config = Config::from_url(&url).expect("a valid POSTAGE_URL");
        let postage = Connection::connect(&config)
            .await
            .expect("the broker from scripts/broker.sh answers");
        let postage_callers = Connection::connect(&config).await.expect("a connection");
        let lapin = lapin::Connection::connect(&url, ConnectionProperties::default())
            .await
            .expect("a lapin connection");
        let lapin_callers = lapin::Connection::connect(&url, ConnectionProperties::default())
            .await
            .expect("a lapin connection");
        let admin = lapin.create_channel().await.expect("a channel");
        Self {
            postage,
            postage_callers,
            lapin,
            lapin_callers,
            admin,
            fingerprint: Arc::new(RawFingerprint::new("bench")),
            names: AtomicUsize::new(0),
        }
    }

    async fn close(self) {
        let _ = self.postage.close().await;
        let _ = self.postage_callers.close().await;
        let _ = self.lapin.close(200, "bench done".into()).await;
        let _ = self.lapin_callers.close(200, "bench done".into()).await;
    }

    fn name(&self, what: &str) -> String {
        format!(
            "bench-{what}-{}-{}",
            std::process::id(),
            self.names.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// A fresh direct exchange (auto-delete) and a queue bound to it with `key`.
    async fn topology(&self, what: &str, key: &str) -> (Exchange, Queue) {
        let exchange = Exchange::named(self.name(what))
            .durable(false)
            .auto_delete(true);
        let queue = Queue::new(self.name(what)).argument("x-expires", EXPIRES_MS);
        self.admin
            .exchange_declare(
                exchange.name().into(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions {
                    auto_delete: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("exchange declared");
        self.admin
            .queue_declare(
                queue.name().into(),
                QueueDeclareOptions::default(),
                expires(),
            )
            .await
            .expect("queue declared");
        self.admin
            .queue_bind(
                queue.name().into(),
                exchange.name().into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("queue bound");
        (exchange, queue)
    }

    async fn delete(&self, queue: &Queue) {
        self.admin
            .queue_delete(queue.name().into(), QueueDeleteOptions::default())
            .await
            .expect("queue deleted");
    }

    /// Puts `count` command messages in `queue`, unmeasured, and waits until all are in.
    async fn fill(&self, exchange: &Exchange, key: &str, queue: &Queue, count: usize) {
        for seq in 0..count {
            let body = command_body(
                &self.fingerprint,
                "message",
                "reading",
                &Reading::sample(seq as u64),
            );
            self.admin
                .basic_publish(
                    exchange.name().into(),
                    key.into(),
                    BasicPublishOptions::default(),
                    &body,
                    json_properties(),
                )
                .await
                .expect("published");
        }
        loop {
            let declared = self
                .admin
                .queue_declare(
                    queue.name().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .expect("queue found");
            if declared.message_count() as usize >= count {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

fn expires() -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert("x-expires".into(), AMQPValue::LongLongInt(EXPIRES_MS));
    arguments
}

fn json_properties() -> BasicProperties {
    BasicProperties::default().with_content_type("application/json".into())
}

/// Waits until the broker has handled everything sent on `channel` before: one round trip
/// that queues behind the publishes.
async fn flush(channel: &lapin::Channel, exchange: &Exchange) {
    channel
        .exchange_declare(
            exchange.name().into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                passive: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("exchange still there");
}

// ---------------------------------------------------------------------------------------
// Fire-and-forget publish

impl Bench {
    async fn publish(&self, plan: Plan) {
        let key = "reading";
        let (exchange, queue) = self.topology("publish", key).await;
        let producer = Producer::builder(&self.postage_callers)
            .destination(exchange.clone(), key)
            .fingerprint(Fingerprint::new("bench", "application"))
            .build()
            .await
            .expect("a producer");
        let channel = self
            .lapin_callers
            .create_channel()
            .await
            .expect("a channel");
        let (p, l) = alternate(
            plan,
            async |warm_up| {
                let n = if warm_up {
                    plan.publish / 4
                } else {
                    plan.publish
                };
                let mut reading = Reading::sample(0);
                let start = Meter::start();
                for seq in 0..n {
                    reading.seq = seq as u64;
                    producer
                        .command("reading", &reading)
                        .await
                        .expect("published");
                }
                flush(
                    &producer.channel().expect("a producer on a connection"),
                    &exchange,
                )
                .await;
                let elapsed = start.stop(n);
                self.purge(&queue).await;
                elapsed
            },
            async |warm_up| {
                let n = if warm_up {
                    plan.publish / 4
                } else {
                    plan.publish
                };
                let mut reading = Reading::sample(0);
                let start = Meter::start();
                for seq in 0..n {
                    reading.seq = seq as u64;
                    let body = command_body(&self.fingerprint, "message", "reading", &reading);
                    channel
                        .basic_publish(
                            exchange.name().into(),
                            key.into(),
                            BasicPublishOptions::default(),
                            &body,
                            json_properties(),
                        )
                        .await
                        .expect("published");
                }
                flush(&channel, &exchange).await;
                let elapsed = start.stop(n);
                self.purge(&queue).await;
                elapsed
            },
        )
        .await;
        cpu_line(plan, "publish", &p, &l);
        figure("publish", "msg/s", rates(&p), rates(&l));
        let _ = channel.close(200, "done".into()).await;
        self.delete(&queue).await;
    }

    /// A raw channel with the benchmark's prefetch, for a raw consumer.
    async fn raw_channel(&self) -> lapin::Channel {
        let channel = self.lapin.create_channel().await.expect("a channel");
        channel
            .basic_qos(PREFETCH, BasicQosOptions::default())
            .await
            .expect("prefetch set");
        channel
    }

    async fn purge(&self, queue: &Queue) {
        self.admin
            .queue_purge(queue.name().into(), QueuePurgeOptions::default())
            .await
            .expect("queue purged");
    }
}

// ---------------------------------------------------------------------------------------
// Processor dispatch

/// A component whose handler decodes each reading and counts it.
struct Sink {
    seen: AtomicUsize,
    target: usize,
    done: Notify,
}

#[processor]
impl Sink {
    #[message_handler("command", "reading")]
    fn reading(&self, reading: Reading) {
        black_box(&reading);
        if self.seen.fetch_add(1, Ordering::Relaxed) + 1 == self.target {
            self.done.notify_one();
        }
    }
}

/// The ladder's consumers, each one step from the raw consumer towards the processor.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Stage {
    /// Lapin's stream, decoded as a postage `Message` then the payload from its `Value`,
    /// acks coalesced (`multiple`, at 50 pending or when no delivery is ready).
    MessageDecode,
    /// The same through postage's `Consumer` (its forwarding task and mpsc queue), acks
    /// every 50.
    PostageConsumer,
    /// The same with a task spawned per message under a semaphore of 1, as the processor.
    TaskPerMessage,
    /// The postage `Consumer` with each message acknowledged and awaited, as the
    /// processor, without its task per message.
    AckEach,
}

impl Stage {
    fn describe(self) -> &'static str {
        match self {
            Self::MessageDecode => "A: Message decode, coalesced acks",
            Self::PostageConsumer => "B: A through postage's Consumer",
            Self::TaskPerMessage => "C: B with a task per message",
            Self::AckEach => "D: B acking each",
        }
    }
}

/// `rate, µs CPU` medians of some samples.
fn summary(samples: &[Sample]) -> String {
    let cpu = median(samples.iter().map(|s| s.cpu_us).collect());
    format!("{}, {cpu:.1}", format_value(median(rates(samples))))
}

/// Consumes `queue` on a raw channel, with acknowledgements.
async fn consume(channel: &lapin::Channel, queue: &str) -> lapin::Consumer {
    channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consuming")
}

/// Acknowledges every delivery of `channel` up to `tag`.
async fn ack_up_to(channel: &lapin::Channel, tag: u64) {
    channel
        .basic_ack(tag, BasicAckOptions { multiple: true })
        .await
        .expect("acked");
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Acks {
    Each,
    Batch,
}

impl Bench {
    async fn dispatch(&self, plan: Plan) {
        let key = "reading";
        let (exchange, queue) = self.topology("dispatch", key).await;
        let postage = async |warm_up| {
            let n = if warm_up {
                plan.dispatch / 4
            } else {
                plan.dispatch
            };
            self.fill(&exchange, key, &queue, n).await;
            let sink = Sink {
                seen: AtomicUsize::new(0),
                target: n,
                done: Notify::new(),
            };
            let processor = Processor::builder(&self.postage, sink)
                .bind(exchange.clone(), queue.clone(), key)
                .prefetch(PREFETCH)
                .build()
                .await
                .expect("a processor");
            let (state, handle) = (Arc::clone(processor.state()), processor.handle());
            // Run where the raw consumer runs, on the benchmark's own task, as a
            // component's `main` runs it.
            let start = Meter::start();
            let running = processor.run();
            tokio::pin!(running);
            tokio::select! {
                exit = &mut running => panic!("the processor stopped early: {exit:?}"),
                () = state.done.notified() => {}
            }
            let elapsed = start.stop(n);
            handle.shutdown();
            running.await.expect("the processor ran");
            elapsed
        };
        let mut postage = postage;
        let (p, each) = alternate(plan, &mut postage, async |warm_up| {
            self.raw_dispatch(plan, warm_up, &exchange, key, &queue, Acks::Each)
                .await
        })
        .await;
        let (p2, batch) = alternate(plan, &mut postage, async |warm_up| {
            self.raw_dispatch(plan, warm_up, &exchange, key, &queue, Acks::Batch)
                .await
        })
        .await;
        let all: Vec<Sample> = p.into_iter().chain(p2).collect();
        cpu_line(plan, "dispatch vs lapin acking in batches", &all, &batch);
        cpu_line(plan, "dispatch vs lapin acking each", &all, &each);
        figure(
            "dispatch vs lapin acking in batches",
            "msg/s",
            rates(&all),
            rates(&batch),
        );
        figure(
            "dispatch vs lapin acking each",
            "msg/s",
            rates(&all),
            rates(&each),
        );
        if plan.diag {
            self.ladder(plan, &exchange, key, &queue, &all, &batch)
                .await;
        }
        self.delete(&queue).await;
    }

    /// With `POSTAGE_BENCH_DIAG`: hand-written consumers between the raw one and the
    /// processor, each adding one of the processor's costs, to tell what costs what.
    async fn ladder(
        &self,
        plan: Plan,
        exchange: &Exchange,
        key: &str,
        queue: &Queue,
        processor: &[Sample],
        raw: &[Sample],
    ) {
        let mut line = vec![format!("raw typed decode, batch acks {}", summary(raw))];
        for stage in [
            Stage::MessageDecode,
            Stage::PostageConsumer,
            Stage::TaskPerMessage,
            Stage::AckEach,
        ] {
            let (samples, _) = alternate(
                plan,
                async |warm_up| {
                    self.prototype(plan, warm_up, exchange, key, queue, stage)
                        .await
                },
                async |_| Sample {
                    rate: f64::NAN,
                    cpu_us: f64::NAN,
                },
            )
            .await;
            line.push(format!("{} {}", stage.describe(), summary(&samples)));
        }
        line.push(format!("the processor {}", summary(processor)));
        println!(
            "# ladder dispatch (msg/s, µs CPU/msg): {}",
            line.join(" | ")
        );
    }

    /// One consumer of the ladder over `n` messages; see [`Stage`].
    async fn prototype(
        &self,
        plan: Plan,
        warm_up: bool,
        exchange: &Exchange,
        key: &str,
        queue: &Queue,
        stage: Stage,
    ) -> Sample {
        let n = sized(plan.dispatch, warm_up);
        self.fill(exchange, key, queue, n).await;
        let handle = |body: &[u8]| {
            let message = postage_core::Message::from_json(body).expect("a message");
            let reading: Reading = message.parameters().expect("a reading");
            black_box(&reading);
        };
        if stage == Stage::MessageDecode {
            // Lapin's stream read directly; acks coalesced with `multiple` when 50 are
            // pending or no delivery is ready: what the processor could do.
            let channel = self.raw_channel().await;
            let start = Meter::start();
            let mut deliveries = consume(&channel, queue.name()).await;
            let (mut seen, mut pending, mut last) = (0, 0, 0);
            while seen < n {
                let next = match futures_util::FutureExt::now_or_never(deliveries.next()) {
                    Some(next) => next,
                    None => {
                        if pending > 0 {
                            ack_up_to(&channel, last).await;
                            pending = 0;
                        }
                        deliveries.next().await
                    }
                };
                let delivery = next.expect("deliveries").expect("a delivery");
                handle(&delivery.data);
                seen += 1;
                pending += 1;
                last = delivery.delivery_tag;
                if pending >= ACK_BATCH || seen == n {
                    ack_up_to(&channel, last).await;
                    pending = 0;
                }
            }
            let sample = start.stop(n);
            let _ = channel.close(200, "done".into()).await;
            return sample;
        }
        let mut consumer = postage_core::Consumer::builder(&self.postage)
            .bind(exchange.clone(), queue.clone(), key)
            .prefetch(PREFETCH)
            .build()
            .await
            .expect("a consumer");
        let channel = consumer.channel().clone();
        let start = Meter::start();
        consumer.start().await.expect("consuming");
        let permits = Arc::new(tokio::sync::Semaphore::new(1));
        let mut tasks = tokio::task::JoinSet::new();
        let mut seen = 0;
        while seen < n {
            let permit = Arc::clone(&permits)
                .acquire_owned()
                .await
                .expect("a permit");
            let delivery = consumer
                .next()
                .await
                .expect("deliveries")
                .expect("a delivery");
            seen += 1;
            let tag = delivery.lapin().delivery_tag;
            let batch_done = seen % ACK_BATCH == 0 || seen == n;
            match stage {
                Stage::PostageConsumer => {
                    handle(delivery.body());
                    if batch_done {
                        ack_up_to(&channel, tag).await;
                    }
                }
                Stage::TaskPerMessage => {
                    let channel = channel.clone();
                    tasks.spawn(async move {
                        handle(delivery.body());
                        if batch_done {
                            ack_up_to(&channel, tag).await;
                        }
                        drop(permit);
                    });
                }
                Stage::AckEach | Stage::MessageDecode => {
                    handle(delivery.body());
                    delivery.ack().await.expect("acked");
                }
            }
            while tasks.try_join_next().is_some() {}
        }
        while tasks.join_next().await.is_some() {}
        let sample = start.stop(n);
        consumer.close().await.expect("consumer closed");
        sample
    }

    async fn raw_dispatch(
        &self,
        plan: Plan,
        warm_up: bool,
        exchange: &Exchange,
        key: &str,
        queue: &Queue,
        acks: Acks,
    ) -> Sample {
        let n = if warm_up {
            plan.dispatch / 4
        } else {
            plan.dispatch
        };
        self.fill(exchange, key, queue, n).await;
        let channel = self.raw_channel().await;
        let start = Meter::start();
        let mut deliveries = consume(&channel, queue.name()).await;
        let mut seen = 0;
        while let Some(delivery) = deliveries.next().await {
            let delivery = delivery.expect("a delivery");
            let message = read_command::<Reading>(&delivery.data).expect("a reading");
            black_box(&message);
            seen += 1;
            match acks {
                Acks::Each => {
                    delivery
                        .acker
                        .ack(BasicAckOptions::default())
                        .await
                        .expect("acked");
                }
                Acks::Batch if seen % ACK_BATCH == 0 || seen == n => {
                    delivery
                        .acker
                        .ack(BasicAckOptions { multiple: true })
                        .await
                        .expect("acked");
                }
                Acks::Batch => {}
            }
            if seen == n {
                break;
            }
        }
        let elapsed = start.stop(n);
        channel
            .basic_cancel(deliveries.tag(), BasicCancelOptions::default())
            .await
            .expect("cancelled");
        let _ = channel.close(200, "done".into()).await;
        elapsed
    }
}

// ---------------------------------------------------------------------------------------
// RPC

/// The RPC component: answers each reading with a receipt.
struct Echo;

#[processor]
impl Echo {
    #[rpc_handler("command", "reading")]
    fn reading(&self, reading: Reading) -> Receipt {
        Receipt {
            seq: reading.seq,
            ok: true,
        }
    }
}

/// Two servers on one queue each: the postage processor and its raw lapin twin.
struct Servers {
    exchange: Exchange,
    postage_queue: Queue,
    lapin_queue: Queue,
    postage: postage_core::ProcessorHandle,
    postage_task: tokio::task::JoinHandle<postage_core::Result<postage_core::Exit>>,
    lapin: lapin::Channel,
    lapin_task: tokio::task::JoinHandle<()>,
}

const POSTAGE_KEY: &str = "postage";
const LAPIN_KEY: &str = "lapin";

impl Bench {
    async fn servers(&self) -> Servers {
        let exchange = Exchange::named(self.name("rpc"))
            .durable(false)
            .auto_delete(true);
        let postage_queue = Queue::new(self.name("rpc-postage")).argument("x-expires", EXPIRES_MS);
        let processor = Processor::builder(&self.postage, Echo)
            .bind(exchange.clone(), postage_queue.clone(), POSTAGE_KEY)
            .prefetch(PREFETCH)
            .build()
            .await
            .expect("a processor");
        let postage = processor.handle();
        let postage_task = tokio::spawn(processor.run());

        let (_, lapin_queue) = self.topology_on(&exchange, "rpc-lapin", LAPIN_KEY).await;
        let channel = self.raw_channel().await;
        let mut requests = consume(&channel, lapin_queue.name()).await;
        let server = channel.clone();
        let fingerprint = Arc::clone(&self.fingerprint);
        let lapin_task = tokio::spawn(async move {
            while let Some(Ok(delivery)) = requests.next().await {
                let Ok(request) = read_command::<Reading>(&delivery.data) else {
                    let _ = delivery.acker.reject(Default::default()).await;
                    continue;
                };
                let receipt = Receipt {
                    seq: request.content.parameters.seq,
                    ok: true,
                };
                if let Some(reply_to) = delivery.properties.reply_to() {
                    let mut properties = json_properties();
                    if let Some(id) = delivery.properties.correlation_id() {
                        properties = properties.with_correlation_id(id.clone());
                    }
                    let answered = server
                        .basic_publish(
                            "".into(),
                            reply_to.clone(),
                            BasicPublishOptions::default(),
                            &success_body(&fingerprint, &receipt),
                            properties,
                        )
                        .await;
                    if answered.is_err() {
                        break; // closed at the end of the figure
                    }
                }
                if delivery
                    .acker
                    .ack(BasicAckOptions::default())
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
        Servers {
            exchange,
            postage_queue,
            lapin_queue,
            postage,
            postage_task,
            lapin: channel,
            lapin_task,
        }
    }

    /// A queue bound to an existing exchange.
    async fn topology_on(&self, exchange: &Exchange, what: &str, key: &str) -> (String, Queue) {
        let queue = Queue::new(self.name(what)).argument("x-expires", EXPIRES_MS);
        self.admin
            .exchange_declare(
                exchange.name().into(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions {
                    auto_delete: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("exchange declared");
        self.admin
            .queue_declare(
                queue.name().into(),
                QueueDeclareOptions::default(),
                expires(),
            )
            .await
            .expect("queue declared");
        self.admin
            .queue_bind(
                queue.name().into(),
                exchange.name().into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("queue bound");
        (key.to_owned(), queue)
    }

    async fn stop(&self, servers: Servers) {
        servers.postage.shutdown();
        servers
            .postage_task
            .await
            .expect("the processor task")
            .expect("the processor ran");
        let _ = servers.lapin.close(200, "done".into()).await;
        let _ = servers.lapin_task.await;
        self.delete(&servers.postage_queue).await;
        self.delete(&servers.lapin_queue).await;
    }

    async fn producer(&self, exchange: &Exchange, mode: ReplyQueue, key: &str) -> Producer {
        Producer::builder(&self.postage_callers)
            .destination(exchange.clone(), key)
            .fingerprint(Fingerprint::new("bench", "application"))
            .reply_queue(mode)
            .build()
            .await
            .expect("a producer")
    }

    /// A raw caller: a channel, its reply consumer and the `reply_to` address.
    async fn raw_caller(&self, exchange: &Exchange, mode: ReplyQueue) -> RawCaller {
        let channel = self
            .lapin_callers
            .create_channel()
            .await
            .expect("a channel");
        let reply_to: ShortString = match mode {
            ReplyQueue::Private => channel
                .queue_declare(
                    "".into(),
                    QueueDeclareOptions {
                        exclusive: true,
                        auto_delete: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .expect("reply queue declared")
                .name()
                .clone(),
            _ => DIRECT_REPLY_TO.into(),
        };
        let replies = channel
            .basic_consume(
                reply_to.clone(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("consuming replies");
        RawCaller {
            channel,
            replies,
            reply_to,
            exchange: exchange.name().into(),
            prefix: self.name("call"),
            fingerprint: Arc::clone(&self.fingerprint),
        }
    }

    /// RPC, one call at a time or [`WINDOW`] in flight: postage against its processor,
    /// lapin against its raw server; with `POSTAGE_BENCH_DIAG` also each client against
    /// the other's server, and a raw client with a reply task of its own.
    async fn rpc(&self, plan: Plan, mode: ReplyQueue, calls: Calls) {
        let servers = self.servers().await;
        let producer = self.producer(&servers.exchange, mode, POSTAGE_KEY).await;
        let mut raw = self.raw_caller(&servers.exchange, mode).await;
        let (n, name) = match calls {
            Calls::Sequential => (plan.rpc_sequential, "rpc sequential".to_owned()),
            Calls::Pipelined => (plan.rpc_pipelined, format!("rpc {WINDOW} in flight")),
        };
        let size = |warm_up| sized(n, warm_up);
        let (p, l) = alternate(
            plan,
            async |warm_up| postage_calls(&producer, calls, size(warm_up)).await,
            async |warm_up| raw.calls(LAPIN_KEY, calls, size(warm_up)).await,
        )
        .await;
        let name = format!("{name}, {}", mode_name(mode));
        if plan.diag {
            let crossed = self.producer(&servers.exchange, mode, LAPIN_KEY).await;
            let (pc, lc) = alternate(
                plan,
                async |warm_up| postage_calls(&crossed, calls, size(warm_up)).await,
                async |warm_up| raw.calls(POSTAGE_KEY, calls, size(warm_up)).await,
            )
            .await;
            diagnose(&name, "calls/s", [&p, &l, &pc, &lc]);
            let hop = self.raw_caller(&servers.exchange, mode).await.dispatched();
            let (h, l2) = alternate(
                plan,
                async |warm_up| hop.calls(calls, size(warm_up)).await,
                async |warm_up| raw.calls(LAPIN_KEY, calls, size(warm_up)).await,
            )
            .await;
            println!(
                "# hop {name}: lapin with a reply task {} | lapin {}",
                summary(&h),
                summary(&l2)
            );
        }
        cpu_line(plan, &name, &p, &l);
        figure(&name, "calls/s", rates(&p), rates(&l));
        raw.close().await;
        drop(producer);
        self.stop(servers).await;
    }
}

/// How an RPC figure calls: one at a time, or [`WINDOW`] in flight.
#[derive(Debug, Clone, Copy)]
enum Calls {
    Sequential,
    Pipelined,
}

async fn postage_calls(producer: &Producer, calls: Calls, n: usize) -> Sample {
    match calls {
        Calls::Sequential => postage_sequential(producer, n).await,
        Calls::Pipelined => postage_pipelined(producer, n).await,
    }
}

/// A raw caller whose answers come through a task of their own and a oneshot per call.
struct Dispatched {
    caller: RawCaller,
    waiters: Arc<std::sync::Mutex<HashMap<String, tokio::sync::oneshot::Sender<Vec<u8>>>>>,
}

impl RawCaller {
    fn dispatched(self) -> Dispatched {
        let waiters: Arc<std::sync::Mutex<HashMap<String, tokio::sync::oneshot::Sender<Vec<u8>>>>> =
            Arc::default();
        let mut stream = self.replies.clone();
        let to = Arc::clone(&waiters);
        tokio::spawn(async move {
            while let Some(Ok(reply)) = stream.next().await {
                let waiter = reply
                    .properties
                    .correlation_id()
                    .as_ref()
                    .and_then(|id| to.lock().ok()?.remove(id.as_str()));
                if let Some(waiter) = waiter {
                    let _ = waiter.send(reply.data);
                }
            }
        });
        Dispatched {
            caller: self,
            waiters,
        }
    }
}

impl Dispatched {
    async fn one(&self, seq: u64) -> tokio::sync::oneshot::Receiver<Vec<u8>> {
        let id = format!("{}.{seq}", self.caller.prefix);
        let (sender, receiver) = tokio::sync::oneshot::channel();
        self.waiters
            .lock()
            .expect("waiters")
            .insert(id.clone(), sender);
        self.caller.call(LAPIN_KEY, id, &Reading::sample(seq)).await;
        receiver
    }

    async fn calls(&self, calls: Calls, n: usize) -> Sample {
        match calls {
            Calls::Sequential => self.sequential(n).await,
            Calls::Pipelined => self.pipelined(n).await,
        }
    }

    async fn sequential(&self, n: usize) -> Sample {
        let start = Meter::start();
        for seq in 0..n {
            let body = self.one(seq as u64).await.await.expect("an answer");
            let receipt: Receipt = read_success(&body).expect("a success");
            assert_eq!(receipt.seq, seq as u64);
        }
        start.stop(n)
    }

    async fn pipelined(&self, n: usize) -> Sample {
        let start = Meter::start();
        let mut in_flight = FuturesUnordered::new();
        let (mut sent, mut answered) = (0, 0);
        while answered < n {
            while sent < n && in_flight.len() < WINDOW {
                in_flight.push(self.one(sent as u64).await);
                sent += 1;
            }
            if let Some(body) = in_flight.next().await {
                let receipt: Receipt = read_success(&body.expect("an answer")).expect("a success");
                black_box(receipt);
                answered += 1;
            }
        }
        start.stop(n)
    }
}

/// A quarter of `n` for a warm-up.
fn sized(n: usize, warm_up: bool) -> usize {
    if warm_up { n / 4 } else { n }
}

/// With `POSTAGE_BENCH_DIAG`: which side of an RPC figure costs what, from the runs of
/// postage→postage, lapin→lapin, postage client→lapin server, lapin client→postage server.
fn diagnose(name: &str, unit: &str, runs: [&Vec<Sample>; 4]) {
    let [pp, ll, pl, lp] = runs.map(|r| median(rates(r)));
    println!(
        "# diag {name} ({unit}): postage→postage {} | lapin→lapin {} | postage client→lapin server {} ({:.2}) | lapin client→postage server {} ({:.2})",
        format_value(pp),
        format_value(ll),
        format_value(pl),
        pl / ll,
        format_value(lp),
        lp / ll,
    );
}

/// `n` calls one after the other through postage.
async fn postage_sequential(producer: &Producer, n: usize) -> Sample {
    let mut reading = Reading::sample(0);
    let start = Meter::start();
    for seq in 0..n {
        reading.seq = seq as u64;
        let receipt: Receipt = producer.call("reading", &reading).await.expect("answered");
        assert_eq!(receipt.seq, reading.seq);
    }
    start.stop(n)
}

/// `n` calls through postage, [`WINDOW`] in flight, from one task.
async fn postage_pipelined(producer: &Producer, n: usize) -> Sample {
    let start = Meter::start();
    let mut in_flight = FuturesUnordered::new();
    let (mut sent, mut answered) = (0, 0);
    while answered < n {
        while sent < n && in_flight.len() < WINDOW {
            let call = producer
                .rpc_deferred("reading", Reading::sample(sent as u64), RpcOptions::new())
                .await
                .expect("call sent");
            in_flight.push(call.value::<Receipt>());
            sent += 1;
        }
        if let Some(receipt) = in_flight.next().await {
            black_box(receipt.expect("answered"));
            answered += 1;
        }
    }
    start.stop(n)
}

/// RPC calls written by hand in lapin: publish with `reply_to` and a correlation id, read
/// the answers from one consumer.
struct RawCaller {
    channel: lapin::Channel,
    replies: lapin::Consumer,
    reply_to: ShortString,
    exchange: ShortString,
    prefix: String,
    fingerprint: Arc<RawFingerprint>,
}

impl RawCaller {
    async fn call(&self, key: &str, id: String, reading: &Reading) {
        let body = command_body(&self.fingerprint, "rpc", "reading", reading);
        self.channel
            .basic_publish(
                self.exchange.clone(),
                key.into(),
                BasicPublishOptions::default(),
                &body,
                json_properties()
                    .with_reply_to(self.reply_to.clone())
                    .with_correlation_id(id.into()),
            )
            .await
            .expect("call sent");
    }

    async fn reply(&mut self) -> lapin::message::Delivery {
        self.replies
            .next()
            .await
            .expect("replies keep coming")
            .expect("a reply")
    }

    /// `n` calls one after the other to the server bound with `key`.
    async fn calls(&mut self, key: &str, calls: Calls, n: usize) -> Sample {
        match calls {
            Calls::Sequential => self.sequential(key, n).await,
            Calls::Pipelined => self.pipelined(key, n).await,
        }
    }

    async fn sequential(&mut self, key: &str, n: usize) -> Sample {
        let mut reading = Reading::sample(0);
        let start = Meter::start();
        for seq in 0..n {
            reading.seq = seq as u64;
            let id = format!("{}.{seq}", self.prefix);
            self.call(key, id.clone(), &reading).await;
            loop {
                let reply = self.reply().await;
                let answers_it = reply
                    .properties
                    .correlation_id()
                    .as_ref()
                    .map(ShortString::as_str)
                    == Some(id.as_str());
                if answers_it {
                    let receipt: Receipt = read_success(&reply.data).expect("a success");
                    assert_eq!(receipt.seq, reading.seq);
                    break;
                }
            }
        }
        start.stop(n)
    }

    /// `n` calls to the server bound with `key`, [`WINDOW`] in flight.
    async fn pipelined(&mut self, key: &str, n: usize) -> Sample {
        let start = Meter::start();
        let mut in_flight: HashMap<String, u64> = HashMap::with_capacity(WINDOW);
        let (mut sent, mut answered) = (0, 0);
        while answered < n {
            while sent < n && in_flight.len() < WINDOW {
                let id = format!("{}.{sent}", self.prefix);
                in_flight.insert(id.clone(), sent as u64);
                self.call(key, id, &Reading::sample(sent as u64)).await;
                sent += 1;
            }
            let reply = self.reply().await;
            let seq = reply
                .properties
                .correlation_id()
                .as_ref()
                .and_then(|id| in_flight.remove(id.as_str()));
            if let Some(seq) = seq {
                let receipt: Receipt = read_success(&reply.data).expect("a success");
                assert_eq!(receipt.seq, seq);
                answered += 1;
            }
        }
        start.stop(n)
    }

    async fn close(self) {
        let _ = self.channel.close(200, "done".into()).await;
    }
}

fn mode_name(mode: ReplyQueue) -> &'static str {
    match mode {
        ReplyQueue::Private => "private reply queue",
        _ => "direct reply-to",
    }
}

// ---------------------------------------------------------------------------------------
// Child processes: start-up time and resident memory

/// One run of a child component: how long until it consumed, and its resident memory
/// once idle or once its calls are in flight.
struct ChildRun {
    to_consuming: Duration,
    resident: u64,
}

fn run_child(program: &str, mode: &str, calls: usize, settle: Duration) -> ChildRun {
    run_child_at(&broker_url(), program, mode, calls, settle)
}

fn run_child_at(url: &str, program: &str, mode: &str, calls: usize, settle: Duration) -> ChildRun {
    let exchange = format!("bench-child-{}-{}", std::process::id(), next_child());
    let queue = format!("{exchange}-q");
    let start = Instant::now();
    let mut child = Command::new(program)
        .args([mode, &exchange, &queue, &calls.to_string()])
        .env("POSTAGE_URL", url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the child component starts");
    let mut lines = BufReader::new(child.stdout.take().expect("its stdout")).lines();
    let mut next_line = |what: &str| -> String {
        lines
            .next()
            .and_then(Result::ok)
            .unwrap_or_else(|| panic!("{program} printed no {what} line"))
    };
    let first = next_line("consuming");
    let to_consuming = start.elapsed();
    assert_eq!(first, "consuming", "{program}: unexpected output");
    if mode == "inflight" {
        let line = next_line("inflight");
        assert!(
            line.starts_with("inflight"),
            "{program}: unexpected output {line:?}"
        );
    }
    std::thread::sleep(settle);
    let resident = resident_bytes(child.id()).expect("the child's VmRSS");
    stop_child(child);
    ChildRun {
        to_consuming,
        resident,
    }
}

/// Numbers the children, for names of their own.
fn next_child() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Closes the child's standard input (it then stops cleanly) and waits for it; kills it
/// after 10 s.
fn stop_child(mut child: Child) {
    drop(child.stdin.take());
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn processes(plan: Plan) {
    const POSTAGE: &str = env!("CARGO_BIN_EXE_bench_postage");
    const LAPIN: &str = env!("CARGO_BIN_EXE_bench_lapin");
    let settle = if plan.quick {
        Duration::from_millis(100)
    } else {
        Duration::from_millis(500)
    };
    let runs = if plan.quick { 1 } else { plan.runs };
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);

    let (mut p_idle, mut l_idle, mut p_start, mut l_start) = (vec![], vec![], vec![], vec![]);
    if !plan.quick {
        // Warm the page cache and the broker.
        run_child(POSTAGE, "idle", 0, Duration::ZERO);
        run_child(LAPIN, "idle", 0, Duration::ZERO);
    }
    for run in 0..runs {
        let order = if run % 2 == 0 {
            [POSTAGE, LAPIN]
        } else {
            [LAPIN, POSTAGE]
        };
        for program in order {
            let child = run_child(program, "idle", 0, settle);
            let ms = child.to_consuming.as_secs_f64() * 1000.0;
            if program == POSTAGE {
                p_idle.push(mib(child.resident));
                p_start.push(ms);
            } else {
                l_idle.push(mib(child.resident));
                l_start.push(ms);
            }
        }
    }
    let (mut p_busy, mut l_busy) = (vec![], vec![]);
    for run in 0..runs {
        let order = if run % 2 == 0 {
            [POSTAGE, LAPIN]
        } else {
            [LAPIN, POSTAGE]
        };
        for program in order {
            let child = run_child(program, "inflight", plan.in_flight, settle);
            if program == POSTAGE {
                p_busy.push(mib(child.resident));
            } else {
                l_busy.push(mib(child.resident));
            }
        }
    }
    figure(
        "memory of an idle component (child process)",
        "MiB",
        p_idle,
        l_idle,
    );
    figure(
        &format!(
            "memory with {} calls in flight (child process)",
            plan.in_flight
        ),
        "MiB",
        p_busy,
        l_busy,
    );
    figure("start to consuming (child process)", "ms", p_start, l_start);
    if plan.diag {
        // Lapin sizes its two socket buffers at 32 frames; told the frame size up front it
        // allocates them once, untouched, instead of growing (and zeroing) them after the
        // handshake.
        let url = format!("{}?frame_max=131072", broker_url());
        let idle: Vec<f64> = (0..runs)
            .map(|_| mib(run_child_at(&url, LAPIN, "idle", 0, settle).resident))
            .collect();
        println!(
            "# diag memory of an idle component: lapin with frame_max=131072 in its URL {:.1} MiB",
            median(idle)
        );
    }
}
