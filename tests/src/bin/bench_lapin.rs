//! The raw lapin twin of `bench_postage`: the same component written by hand, a
//! baseline of the benchmark's start-up and memory figures.
//!
//! Run with: `bench_lapin idle|inflight EXCHANGE QUEUE [COUNT]` (COUNT: consumers when
//! idle, calls in flight otherwise).

use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use postage_core::lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use postage_core::lapin::types::FieldTable;
use postage_core::lapin::{self, BasicProperties, ExchangeKind};
use postage_tests::bench::{
    RawFingerprint, Reading, Receipt, broker_url, command_body, raw_lapin_properties, read_command,
    success_body,
};
use tokio::sync::oneshot;

type Waiters = Arc<Mutex<HashMap<String, oneshot::Sender<Vec<u8>>>>>;

const EXCLUSIVE: QueueDeclareOptions = QueueDeclareOptions {
    passive: false,
    durable: false,
    exclusive: true,
    auto_delete: false,
    nowait: false,
};

fn json() -> BasicProperties {
    BasicProperties::default().with_content_type("application/json".into())
}

/// One consumer on a channel of its own, on an exclusive `queue` bound with `key`:
/// a ping that reports, and an RPC handler like the benchmark's.
async fn component(
    connection: &lapin::Connection,
    exchange: &str,
    queue: &str,
    key: &str,
    fingerprint: Arc<RawFingerprint>,
) -> Result<tokio::task::JoinHandle<()>, lapin::Error> {
    let channel = connection.create_channel().await?;
    channel.basic_qos(10, BasicQosOptions::default()).await?;
    channel
        .queue_declare(queue.into(), EXCLUSIVE, FieldTable::default())
        .await?;
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut deliveries = channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(tokio::spawn(async move {
        while let Some(Ok(delivery)) = deliveries.next().await {
            if let Ok(message) = read_command::<serde_json::Value>(&delivery.data) {
                if message.name == "ping" {
                    println!("consuming");
                } else if let (Ok(reading), Some(reply_to)) = (
                    serde_json::from_value::<Reading>(message.content.parameters),
                    delivery.properties.reply_to(),
                ) {
                    let receipt = Receipt {
                        seq: reading.seq,
                        ok: true,
                    };
                    let mut properties = json();
                    if let Some(id) = delivery.properties.correlation_id() {
                        properties = properties.with_correlation_id(id.clone());
                    }
                    let _ = channel
                        .basic_publish(
                            "".into(),
                            reply_to.clone(),
                            BasicPublishOptions::default(),
                            &success_body(&fingerprint, &receipt),
                            properties,
                        )
                        .await;
                }
            }
            let _ = delivery.acker.ack(BasicAckOptions::default()).await;
        }
    }))
}

#[tokio::main]
async fn main() -> Result<(), lapin::Error> {
    let mut args = std::env::args().skip(1);
    let (Some(mode), Some(exchange), Some(queue)) = (args.next(), args.next(), args.next()) else {
        eprintln!("usage: bench_lapin idle|inflight EXCHANGE QUEUE [COUNT]");
        std::process::exit(2);
    };
    let count: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(1);
    let fingerprint = Arc::new(RawFingerprint::new("bench"));

    let connection = lapin::Connection::connect(&broker_url(), raw_lapin_properties()).await?;
    let admin = connection.create_channel().await?;
    let exchange_options = ExchangeDeclareOptions {
        auto_delete: true,
        ..ExchangeDeclareOptions::default()
    };
    admin
        .exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Direct,
            exchange_options,
            FieldTable::default(),
        )
        .await?;
    let consumers = if mode == "idle" { count } else { 1 };
    let mut servers = Vec::new();
    for i in 0..consumers {
        let (queue, key) = match i {
            0 => (queue.clone(), "ping".to_owned()),
            i => (format!("{queue}-{i}"), format!("ping-{i}")),
        };
        servers.push(
            component(
                &connection,
                &exchange,
                &queue,
                &key,
                Arc::clone(&fingerprint),
            )
            .await?,
        );
    }

    let publisher = connection.create_channel().await?;
    publisher
        .basic_publish(
            exchange.as_str().into(),
            "ping".into(),
            BasicPublishOptions::default(),
            &command_body(&fingerprint, "message", "ping", &serde_json::json!({})),
            json(),
        )
        .await?;

    let mut pending = Vec::new();
    if mode == "inflight" {
        // Calls to a queue nobody reads: every one stays in flight.
        let sink = format!("{}-calls", std::process::id());
        publisher
            .queue_declare(sink.as_str().into(), EXCLUSIVE, FieldTable::default())
            .await?;
        publisher
            .queue_bind(
                sink.as_str().into(),
                exchange.as_str().into(),
                "calls".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let waiters: Waiters = Arc::default();
        let mut replies = publisher
            .basic_consume(
                "amq.rabbitmq.reply-to".into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        let dispatch = Arc::clone(&waiters);
        tokio::spawn(async move {
            while let Some(Ok(reply)) = replies.next().await {
                let waiter = reply
                    .properties
                    .correlation_id()
                    .as_ref()
                    .and_then(|id| dispatch.lock().ok()?.remove(id.as_str()));
                if let Some(waiter) = waiter {
                    let _ = waiter.send(reply.data);
                }
            }
        });
        for seq in 0..count {
            let id = format!("{}.{seq}", std::process::id());
            let (sender, receiver) = oneshot::channel();
            if let Ok(mut waiting) = waiters.lock() {
                waiting.insert(id.clone(), sender);
            }
            let body = command_body(&fingerprint, "rpc", "reading", &Reading::sample(seq as u64));
            publisher
                .basic_publish(
                    exchange.as_str().into(),
                    "calls".into(),
                    BasicPublishOptions::default(),
                    &body,
                    json()
                        .with_reply_to("amq.rabbitmq.reply-to".into())
                        .with_correlation_id(id.into()),
                )
                .await?;
            pending.push(receiver);
        }
        println!("inflight {}", pending.len());
    }

    // Until the benchmark closes our standard input.
    let _ = tokio::task::spawn_blocking(|| std::io::stdin().read_to_end(&mut Vec::new())).await;
    drop(pending);
    for server in servers {
        server.abort();
    }
    connection.close(200, "bench done".into()).await
}
