//! Processor dispatch: queues filled beforehand, read by postage processors and by raw
//! consumers acking each message or in batches; one queue or many in one process.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures_util::future::join_all;
use postage_core::{Exchange, Processor, ProcessorBuilder, Queue, processor};
use postage_tests::bench::Reading;
use tokio::sync::Notify;

use crate::report::{Meter, Sample, rate_figure, rounds, summary};
use crate::setup::{ACK_BATCH, Acks, Bench, PREFETCH, size_name};
use crate::{Plan, raw_lapin};

/// A component whose handler decodes each reading and counts it, with the others of
/// its run.
#[derive(Clone)]
struct Sink {
    seen: Arc<AtomicUsize>,
    target: usize,
    done: Arc<Notify>,
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

impl Bench {
    /// One queue, payloads of `size`: postage against raw consumers acking in batches and
    /// acking each.
    pub(crate) async fn dispatch(&self, plan: Plan, size: usize) {
        let (exchange, queue) = self.topology("dispatch", "reading-0").await;
        let queues = [queue];
        let count = plan.count(plan.dispatch, size);
        let sides = [
            "postage",
            "lapin batch",
            "amqprs batch",
            "lapin each",
            "amqprs each",
        ];
        let runs = rounds(plan, &sides, async |side, warm_up| {
            let n = if warm_up { count / 4 } else { count }.max(1);
            self.fill_all(&exchange, &queues, n, size).await;
            match side {
                0 => self.postage_dispatch(&exchange, &queues, n, |b| b).await,
                1 => raw_lapin::dispatch(&self.lapin, &queues, n, Acks::Batch).await,
                2 => self.amqprs.dispatch(&queues, n, Acks::Batch).await,
                3 => raw_lapin::dispatch(&self.lapin, &queues, n, Acks::Each).await,
                _ => self.amqprs.dispatch(&queues, n, Acks::Each).await,
            }
        })
        .await;
        let name = format!("dispatch {}", size_name(size));
        let (postage, batch, each) = (&runs[0], &runs[1..3], &runs[3..5]);
        let with = |others: &[Vec<Sample>]| {
            let mut all = vec![postage.clone()];
            all.extend_from_slice(others);
            all
        };
        rate_figure(
            plan,
            &format!("{name} vs acking in batches"),
            "msg/s",
            &["postage", "lapin", "amqprs"],
            &with(batch),
        );
        rate_figure(
            plan,
            &format!("{name} vs acking each"),
            "msg/s",
            &["postage", "lapin", "amqprs"],
            &with(each),
        );
        if plan.diag && size == plan.sizes[0] {
            self.ladder(plan, &exchange, &queues[0], &runs[0], &runs[1])
                .await;
        }
        self.delete(&queues[0]).await;
    }

    /// `processors` queues of one exchange, a processor (or raw consumer) each, all in
    /// this process; the raw consumers ack in batches.
    pub(crate) async fn dispatch_many(&self, plan: Plan, processors: usize) {
        let exchange = Exchange::named(self.name("many"))
            .durable(false)
            .auto_delete(true);
        let mut queues = Vec::new();
        for i in 0..processors {
            queues.push(
                self.queue_on(&exchange, "many", &format!("reading-{i}"))
                    .await,
            );
        }
        let size = plan.sizes[0];
        let each = (plan.dispatch / processors).max(1);
        let sides = ["postage", "lapin", "amqprs"];
        let runs = rounds(plan, &sides, async |side, warm_up| {
            let n = if warm_up { each / 4 } else { each }.max(1);
            self.fill_all(&exchange, &queues, n, size).await;
            match side {
                0 => self.postage_dispatch(&exchange, &queues, n, |b| b).await,
                1 => raw_lapin::dispatch(&self.lapin, &queues, n, Acks::Batch).await,
                _ => self.amqprs.dispatch(&queues, n, Acks::Batch).await,
            }
        })
        .await;
        let name = format!(
            "dispatch {}, {processors} processors in one process vs acking in batches",
            size_name(size)
        );
        rate_figure(plan, &name, "msg/s", &sides, &runs);
        for queue in &queues {
            self.delete(queue).await;
        }
    }

    /// One queue of readings from 64 sensors, at concurrency 8: a processor ordered by
    /// sensor (each sensor's readings one after another, in order) against the same
    /// processor unordered; the handler only decodes, so the figure is what the ordering
    /// itself costs.
    pub(crate) async fn dispatch_ordered(&self, plan: Plan) {
        const KEYS: usize = 64;
        const CONCURRENCY: usize = 8;
        let (exchange, queue) = self.topology("ordered", "reading-0").await;
        let queues = [queue];
        let size = plan.sizes[0];
        let sides = ["ordered", "unordered"];
        let runs = rounds(plan, &sides, async |side, warm_up| {
            let n = if warm_up {
                plan.dispatch / 4
            } else {
                plan.dispatch
            }
            .max(1);
            self.fill_keyed(&exchange, "reading-0", &queues[0], n, size, KEYS)
                .await;
            match side {
                0 => {
                    self.postage_dispatch(&exchange, &queues, n, |builder| {
                        builder.concurrency(CONCURRENCY).ordered_by(|message, _| {
                            message.raw_parameters()["sensor"]
                                .as_str()
                                .map(str::to_owned)
                        })
                    })
                    .await
                }
                _ => {
                    self.postage_dispatch(&exchange, &queues, n, |builder| {
                        builder.concurrency(CONCURRENCY)
                    })
                    .await
                }
            }
        })
        .await;
        rate_figure(
            plan,
            &format!(
                "dispatch {}, {KEYS} keys at concurrency {CONCURRENCY}: ordered by key vs unordered",
                size_name(size)
            ),
            "msg/s",
            &sides,
            &runs,
        );
        self.delete(&queues[0]).await;
    }

    /// Fills every queue (bound with `reading-<i>`) with `n` readings.
    async fn fill_all(&self, exchange: &Exchange, queues: &[Queue], n: usize, size: usize) {
        for (i, queue) in queues.iter().enumerate() {
            self.fill(exchange, &format!("reading-{i}"), queue, n, size)
                .await;
        }
    }

    /// A processor on each queue (its builder adjusted by `shape`), all run on this task
    /// (as a component's `main` runs them), until they have handled `each` messages
    /// apiece.
    async fn postage_dispatch(
        &self,
        exchange: &Exchange,
        queues: &[Queue],
        each: usize,
        shape: impl Fn(ProcessorBuilder<Sink>) -> ProcessorBuilder<Sink>,
    ) -> Sample {
        let sink = Sink {
            seen: Arc::default(),
            target: each * queues.len(),
            done: Arc::default(),
        };
        let mut processors = Vec::new();
        for (i, queue) in queues.iter().enumerate() {
            let builder = Processor::builder(&self.postage, sink.clone())
                .bind(exchange.clone(), queue.clone(), format!("reading-{i}"))
                .prefetch(PREFETCH);
            let processor = shape(builder).build().await.expect("a processor");
            processors.push(processor);
        }
        let handles: Vec<_> = processors.iter().map(Processor::handle).collect();
        let start = Meter::start();
        let running = join_all(processors.into_iter().map(Processor::run));
        tokio::pin!(running);
        tokio::select! {
            exits = &mut running => panic!("the processors stopped early: {exits:?}"),
            () = sink.done.notified() => {}
        }
        let sample = start.stop(sink.target);
        for handle in handles {
            handle.shutdown();
        }
        for exit in running.await {
            exit.expect("the processor ran");
        }
        sample
    }
}

// ---------------------------------------------------------------------------------------
// With `POSTAGE_BENCH_DIAG`: the ladder

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

impl Bench {
    /// Hand-written consumers between the raw one and the processor, each adding one of
    /// the processor's costs, to tell what costs what.
    async fn ladder(
        &self,
        plan: Plan,
        exchange: &Exchange,
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
            let runs = rounds(plan, &["postage"], async |_, warm_up| {
                self.prototype(plan, warm_up, exchange, queue, stage).await
            })
            .await;
            line.push(format!("{} {}", stage.describe(), summary(&runs[0])));
        }
        line.push(format!("the processor {}", summary(processor)));
        println!(
            "# ladder dispatch (msg/s, µs CPU/msg): {}",
            line.join(" | ")
        );
    }

    /// One consumer of the ladder; see [`Stage`].
    async fn prototype(
        &self,
        plan: Plan,
        warm_up: bool,
        exchange: &Exchange,
        queue: &Queue,
        stage: Stage,
    ) -> Sample {
        let n = if warm_up {
            plan.dispatch / 4
        } else {
            plan.dispatch
        };
        let key = "reading-0";
        self.fill(exchange, key, queue, n, plan.sizes[0]).await;
        let handle = |body: &[u8]| {
            let message = postage_core::Message::from_json(body).expect("a message");
            let reading: Reading = message.parameters().expect("a reading");
            black_box(&reading);
        };
        if stage == Stage::MessageDecode {
            let channel = raw_lapin::consumer_channel(&self.lapin).await;
            let start = Meter::start();
            let mut deliveries = raw_lapin::consume(&channel, queue.name()).await;
            let (mut seen, mut pending, mut last) = (0, 0, 0);
            while seen < n {
                use futures_util::StreamExt;
                let next = match futures_util::FutureExt::now_or_never(deliveries.next()) {
                    Some(next) => next,
                    None => {
                        if pending > 0 {
                            raw_lapin::ack_up_to(&channel, last).await;
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
                    raw_lapin::ack_up_to(&channel, last).await;
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
                        raw_lapin::ack_up_to(&channel, tag).await;
                    }
                }
                Stage::TaskPerMessage => {
                    let channel = channel.clone();
                    tasks.spawn(async move {
                        handle(delivery.body());
                        if batch_done {
                            raw_lapin::ack_up_to(&channel, tag).await;
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
}
