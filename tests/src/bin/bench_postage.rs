//! A small postage component the throughput benchmark starts as a child process, to
//! measure its start-up time and resident memory.
//!
//! Run with: `bench_postage idle|inflight EXCHANGE QUEUE [COUNT]`
//!
//! It connects to `POSTAGE_URL`, runs a processor on an exclusive QUEUE bound to EXCHANGE
//! (with `idle`, COUNT processors, the others on queues of their own), sends itself a
//! `ping` and prints `consuming` when the handler gets it. With `inflight` it then sends
//! COUNT RPC calls nobody answers and prints `inflight` once all are sent. It stops when
//! its standard input closes.

use std::io::Read;
use std::time::Duration;

use postage_core::{
    Config, Connection, Exchange, Processor, Producer, Queue, Route, RpcOptions, processor,
};
use postage_tests::bench::{Reading, Receipt, broker_url};

/// The component: a ping that reports, and an RPC handler like the benchmark's.
struct Component;

#[processor]
impl Component {
    #[message_handler("command", "ping")]
    fn ping(&self, _nothing: serde_json::Value) {
        println!("consuming");
    }

    #[rpc_handler("command", "reading")]
    fn reading(&self, reading: Reading) -> Receipt {
        Receipt {
            seq: reading.seq,
            ok: true,
        }
    }
}

#[tokio::main]
async fn main() -> postage_core::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(mode), Some(exchange), Some(queue)) = (args.next(), args.next(), args.next()) else {
        eprintln!("usage: bench_postage idle|inflight EXCHANGE QUEUE [COUNT]");
        std::process::exit(2);
    };
    let count: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(1);

    let connection = Connection::connect(&Config::from_url(&broker_url())?).await?;
    let exchange = Exchange::named(exchange).durable(false).auto_delete(true);
    let processors = if mode == "idle" { count } else { 1 };
    let mut running = Vec::new();
    for i in 0..processors {
        let (queue, key) = match i {
            0 => (queue.clone(), "ping".to_owned()),
            i => (format!("{queue}-{i}"), format!("ping-{i}")),
        };
        let component = Processor::builder(&connection, Component)
            .bind(exchange.clone(), Queue::new(queue).exclusive(true), key)
            .build()
            .await?;
        running.push((component.handle(), tokio::spawn(component.run())));
    }
    let producer = Producer::builder(&connection)
        .destination(exchange.clone(), "ping")
        .build()
        .await?;
    producer.command("ping", serde_json::json!({})).await?;

    let mut pending = Vec::new();
    if mode == "inflight" {
        // Calls to a queue nobody reads: every one stays in flight.
        let sink = Queue::new(format!("{}-calls", std::process::id())).exclusive(true);
        postage_core::Consumer::builder(&connection)
            .bind(exchange, sink, "calls")
            .build()
            .await?;
        // Postage's retries (4) kept: each call holds its body to send it again.
        let options = RpcOptions::new()
            .route(Route::key("calls"))
            .timeout(Duration::from_secs(600));
        for seq in 0..count {
            let call = producer
                .rpc_deferred("reading", Reading::sample(seq as u64), options.clone())
                .await?;
            pending.push(call);
        }
        println!("inflight {}", pending.len());
    }

    // Until the benchmark closes our standard input.
    let _ = tokio::task::spawn_blocking(|| std::io::stdin().read_to_end(&mut Vec::new())).await;
    drop(pending);
    for (handle, run) in running {
        handle.shutdown();
        let _ = run.await;
    }
    connection.close().await
}
