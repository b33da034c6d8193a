//! RPC round trips: one call at a time or many in flight, over direct reply-to and over a
//! private reply queue, each side's caller against its own server; and postage's server
//! against kanin's, driven by the same raw lapin caller.

use std::hint::black_box;
use std::sync::Arc;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use postage_core::{
    Exchange, Fingerprint, Processor, ProcessorHandle, Producer, Queue, ReplyQueue, RpcOptions,
    processor,
};
use postage_tests::bench::{Reading, Receipt, broker_url};

use crate::kanin_server::Kanin;
use crate::raw_lapin::{self, Encoding};
use crate::report::{Meter, Sample, format_value, median, rate_figure, rates, rounds};
use crate::setup::{Bench, PREFETCH, size_name};
use crate::{Plan, raw_amqprs};

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

/// One server a side, each on a queue of its own bound to one exchange with the side's
/// name.
struct Servers {
    exchange: Exchange,
    queues: Vec<Queue>,
    postage: ProcessorHandle,
    postage_task: tokio::task::JoinHandle<postage_core::Result<postage_core::Exit>>,
    lapin: raw_lapin::Server,
    amqprs: raw_amqprs::Server,
}

/// The callers of one reply mode, a side each.
struct Callers {
    postage: Producer,
    lapin: raw_lapin::Caller,
    amqprs: raw_amqprs::Caller,
}

impl Bench {
    async fn servers(&self) -> Servers {
        let exchange = Exchange::named(self.name("rpc"))
            .durable(false)
            .auto_delete(true);
        let queue = |side: &'static str| self.queue_on(&exchange, "rpc", side);
        let (p, l, a) = (
            queue("postage").await,
            queue("lapin").await,
            queue("amqprs").await,
        );
        let processor = Processor::builder(&self.postage, Echo)
            .bind(exchange.clone(), p.clone(), "postage")
            .prefetch(PREFETCH)
            .build()
            .await
            .expect("a processor");
        let postage = processor.handle();
        let postage_task = tokio::spawn(processor.run());
        let lapin = raw_lapin::Server::start(&self.lapin, &l, Arc::clone(&self.fingerprint)).await;
        let amqprs = self.amqprs.server(&a, Arc::clone(&self.fingerprint)).await;
        Servers {
            exchange,
            queues: vec![p, l, a],
            postage,
            postage_task,
            lapin,
            amqprs,
        }
    }

    async fn stop(&self, servers: Servers) {
        servers.postage.shutdown();
        servers
            .postage_task
            .await
            .expect("the processor task")
            .expect("the processor ran");
        servers.lapin.stop().await;
        servers.amqprs.stop().await;
        for queue in &servers.queues {
            self.delete(queue).await;
        }
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

    async fn lapin_caller(
        &self,
        exchange: &Exchange,
        mode: ReplyQueue,
        encoding: Encoding,
    ) -> raw_lapin::Caller {
        raw_lapin::Caller::new(
            &self.lapin_callers,
            exchange.name(),
            mode,
            self.name("call"),
            Arc::clone(&self.fingerprint),
            encoding,
        )
        .await
    }

    async fn callers(&self, exchange: &Exchange, mode: ReplyQueue) -> Callers {
        Callers {
            postage: self.producer(exchange, mode, "postage").await,
            lapin: self.lapin_caller(exchange, mode, Encoding::Json).await,
            amqprs: self
                .amqprs
                .caller(
                    exchange.name(),
                    mode,
                    self.name("call"),
                    Arc::clone(&self.fingerprint),
                )
                .await,
        }
    }

    /// Every RPC figure: each window in flight over both reply modes with small payloads,
    /// then the bigger payloads at 64 in flight, then postage's server against kanin's.
    pub(crate) async fn rpc(&self, plan: Plan) {
        let servers = self.servers().await;
        let small = plan.sizes[0];
        for mode in [ReplyQueue::DirectReplyTo, ReplyQueue::Private] {
            let mut callers = self.callers(&servers.exchange, mode).await;
            for &window in plan.windows {
                self.rpc_figure(plan, &mut callers, &servers, mode, window, small)
                    .await;
            }
            if mode == ReplyQueue::DirectReplyTo {
                for &size in &plan.sizes[1..] {
                    self.rpc_figure(plan, &mut callers, &servers, mode, 64, size)
                        .await;
                }
            }
            callers.lapin.close().await;
            callers.amqprs.close().await;
        }
        self.kanin(plan, &servers, 64).await;
        self.stop(servers).await;
    }

    async fn rpc_figure(
        &self,
        plan: Plan,
        callers: &mut Callers,
        servers: &Servers,
        mode: ReplyQueue,
        window: usize,
        size: usize,
    ) {
        let base = if window == 1 {
            plan.rpc_sequential
        } else {
            plan.rpc_pipelined
        };
        let count = plan.count(base, size);
        let sides = ["postage", "lapin", "amqprs"];
        let runs = rounds(plan, &sides, async |side, warm_up| {
            let n = if warm_up { count / 4 } else { count }.max(1);
            match side {
                0 => postage_calls(&callers.postage, window, n, size).await,
                1 => callers.lapin.calls("lapin", window, n, size).await,
                _ => callers.amqprs.calls("amqprs", window, n, size).await,
            }
        })
        .await;
        let name = format!(
            "rpc {} in flight, {}, {}",
            window,
            size_name(size),
            mode_name(mode)
        );
        if plan.diag {
            let crossed = self.producer(&servers.exchange, mode, "lapin").await;
            let cross = rounds(plan, &sides[..2], async |side, warm_up| {
                let n = if warm_up { count / 4 } else { count }.max(1);
                match side {
                    0 => postage_calls(&crossed, window, n, size).await,
                    _ => callers.lapin.calls("postage", window, n, size).await,
                }
            })
            .await;
            let [pp, ll, pl, lp] =
                [&runs[0], &runs[1], &cross[0], &cross[1]].map(|r| median(rates(r)));
            println!(
                "# diag {name} (calls/s): postage→postage {} | lapin→lapin {} | postage client→lapin server {} ({:.2}) | lapin client→postage server {} ({:.2})",
                format_value(pp),
                format_value(ll),
                format_value(pl),
                pl / ll,
                format_value(lp),
                lp / ll,
            );
        }
        rate_figure(plan, &name, "calls/s", &sides, &runs);
    }

    /// The RPC server alone: postage's processor against kanin's app, both driven by the
    /// same raw lapin caller (JSON to postage, protobuf to kanin), `window` in flight.
    async fn kanin(&self, plan: Plan, servers: &Servers, window: usize) {
        let mode = ReplyQueue::DirectReplyTo;
        let queue = self.name("rpc-kanin");
        let kanin = Kanin::start(&broker_url(), &servers.exchange, &queue, "kanin");
        self.wait_for_consumer(&queue).await;
        let mut to_postage = self
            .lapin_caller(&servers.exchange, mode, Encoding::Json)
            .await;
        let mut to_kanin = self
            .lapin_caller(&servers.exchange, mode, Encoding::Protobuf)
            .await;
        let (count, size) = (plan.rpc_pipelined, plan.sizes[0]);
        let sides = ["postage", "kanin"];
        let runs = rounds(plan, &sides, async |side, warm_up| {
            let n = if warm_up { count / 4 } else { count }.max(1);
            match side {
                0 => to_postage.calls("postage", window, n, size).await,
                _ => to_kanin.calls("kanin", window, n, size).await,
            }
        })
        .await;
        let name = format!(
            "rpc server, {window} in flight from a raw lapin caller, {}",
            mode_name(mode)
        );
        rate_figure(plan, &name, "calls/s", &sides, &runs);
        to_postage.close().await;
        to_kanin.close().await;
        kanin.stop().await;
    }
}

/// `n` calls of about `size` bytes through postage, `window` in flight from one task:
/// one after the other with `call`, else deferred calls.
async fn postage_calls(producer: &Producer, window: usize, n: usize, size: usize) -> Sample {
    let mut reading = Reading::sized(0, size);
    let start = Meter::start();
    if window == 1 {
        for seq in 0..n {
            reading.seq = seq as u64;
            let receipt: Receipt = producer.call("reading", &reading).await.expect("answered");
            assert_eq!(receipt.seq, reading.seq);
        }
        return start.stop(n);
    }
    let mut in_flight = FuturesUnordered::new();
    let (mut sent, mut answered) = (0, 0);
    while answered < n {
        while sent < n && in_flight.len() < window {
            reading.seq = sent as u64;
            let call = producer
                .rpc_deferred("reading", &reading, RpcOptions::new())
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

fn mode_name(mode: ReplyQueue) -> &'static str {
    match mode {
        ReplyQueue::Private => "private reply queue",
        _ => "direct reply-to",
    }
}
