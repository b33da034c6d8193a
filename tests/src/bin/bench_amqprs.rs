//! The raw amqprs twin of `bench_postage`: the same component written by hand, a
//! baseline of the benchmark's start-up and memory figures.
//!
//! Run with: `bench_amqprs idle|inflight EXCHANGE QUEUE [COUNT]` (COUNT: consumers when
//! idle, calls in flight otherwise).

use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, Mutex};

use amqprs::BasicProperties;
use amqprs::channel::{
    BasicAckArguments, BasicConsumeArguments, BasicPublishArguments, BasicQosArguments,
    ExchangeDeclareArguments, QueueBindArguments, QueueDeclareArguments,
};
use amqprs::connection::Connection;
use postage_tests::bench::{
    RawFingerprint, Reading, Receipt, amqprs_arguments, broker_url, command_body, read_command,
    success_body,
};
use tokio::sync::oneshot;

type Waiters = Arc<Mutex<HashMap<String, oneshot::Sender<Vec<u8>>>>>;
type Error = Box<dyn std::error::Error>;

fn json() -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json")
        .finish()
}

fn exclusive(queue: &str) -> QueueDeclareArguments {
    QueueDeclareArguments::new(queue).exclusive(true).finish()
}

/// One consumer on a channel of its own, on an exclusive `queue` bound with `key`:
/// a ping that reports, and an RPC handler like the benchmark's.
async fn component(
    connection: &Connection,
    exchange: &str,
    queue: &str,
    key: &str,
    fingerprint: Arc<RawFingerprint>,
) -> Result<tokio::task::JoinHandle<()>, Error> {
    let channel = connection.open_channel(None).await?;
    channel
        .basic_qos(BasicQosArguments::new(0, 10, false))
        .await?;
    channel.queue_declare(exclusive(queue)).await?;
    channel
        .queue_bind(QueueBindArguments::new(queue, exchange, key))
        .await?;
    let (_, mut deliveries) = channel
        .basic_consume_rx(
            BasicConsumeArguments::new(queue, "")
                .manual_ack(true)
                .finish(),
        )
        .await?;
    Ok(tokio::spawn(async move {
        while let Some(delivery) = deliveries.recv().await {
            let (Some(deliver), Some(properties), Some(body)) = (
                delivery.deliver,
                delivery.basic_properties,
                delivery.content,
            ) else {
                continue;
            };
            if let Ok(message) = read_command::<serde_json::Value>(&body) {
                if message.name == "ping" {
                    println!("consuming");
                } else if let (Ok(reading), Some(reply_to)) = (
                    serde_json::from_value::<Reading>(message.content.parameters),
                    properties.reply_to(),
                ) {
                    let receipt = Receipt {
                        seq: reading.seq,
                        ok: true,
                    };
                    let mut answer = BasicProperties::default();
                    answer.with_content_type("application/json");
                    if let Some(id) = properties.correlation_id() {
                        answer.with_correlation_id(id);
                    }
                    let _ = channel
                        .basic_publish(
                            answer,
                            success_body(&fingerprint, &receipt),
                            BasicPublishArguments::new("", reply_to),
                        )
                        .await;
                }
            }
            let _ = channel
                .basic_ack(BasicAckArguments::new(deliver.delivery_tag(), false))
                .await;
        }
    }))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let (Some(mode), Some(exchange), Some(queue)) = (args.next(), args.next(), args.next()) else {
        eprintln!("usage: bench_amqprs idle|inflight EXCHANGE QUEUE [COUNT]");
        std::process::exit(2);
    };
    let count: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(1);
    let fingerprint = Arc::new(RawFingerprint::new("bench"));

    let connection = Connection::open(&amqprs_arguments(&broker_url())).await?;
    let admin = connection.open_channel(None).await?;
    admin
        .exchange_declare(
            ExchangeDeclareArguments::new(&exchange, "direct")
                .auto_delete(true)
                .finish(),
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

    let publisher = connection.open_channel(None).await?;
    publisher
        .basic_publish(
            json(),
            command_body(&fingerprint, "message", "ping", &serde_json::json!({})),
            BasicPublishArguments::new(&exchange, "ping"),
        )
        .await?;

    let mut pending = Vec::new();
    if mode == "inflight" {
        // Calls to a queue nobody reads: every one stays in flight.
        let sink = format!("{}-calls", std::process::id());
        publisher.queue_declare(exclusive(&sink)).await?;
        publisher
            .queue_bind(QueueBindArguments::new(&sink, &exchange, "calls"))
            .await?;
        let waiters: Waiters = Arc::default();
        let (_, mut replies) = publisher
            .basic_consume_rx(
                BasicConsumeArguments::new("amq.rabbitmq.reply-to", "")
                    .manual_ack(false)
                    .finish(),
            )
            .await?;
        let dispatch = Arc::clone(&waiters);
        tokio::spawn(async move {
            while let Some(reply) = replies.recv().await {
                let waiter = reply
                    .basic_properties
                    .as_ref()
                    .and_then(|p| p.correlation_id())
                    .and_then(|id| dispatch.lock().ok()?.remove(id.as_str()));
                if let (Some(waiter), Some(body)) = (waiter, reply.content) {
                    let _ = waiter.send(body);
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
            let properties = BasicProperties::default()
                .with_content_type("application/json")
                .with_reply_to("amq.rabbitmq.reply-to")
                .with_correlation_id(&id)
                .finish();
            publisher
                .basic_publish(
                    properties,
                    body,
                    BasicPublishArguments::new(&exchange, "calls"),
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
    // Its channels' tasks were stopped: the close may find them gone.
    let _ = connection.close().await;
    Ok(())
}
