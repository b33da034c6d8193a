//! What every figure shares: the connections of each side, and the broker objects the
//! figures declare, fill and delete (never measured).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use postage_core::lapin::options::{
    BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions, QueuePurgeOptions,
};
use postage_core::lapin::types::{AMQPValue, FieldTable};
use postage_core::lapin::{self, BasicProperties, ExchangeKind};
use postage_core::{Config, Connection, Exchange, Queue};
use postage_tests::bench::{
    RawFingerprint, Reading, broker_url, command_body, raw_lapin_properties,
};

use crate::raw_amqprs::Amqprs;

/// Prefetch of every consumer, on every side.
pub(crate) const PREFETCH: u16 = 100;
/// The batch-acking raw consumers acknowledge with `multiple` every this many messages.
pub(crate) const ACK_BATCH: usize = PREFETCH as usize / 2;
/// Queues delete themselves after this long unused, should a run be interrupted.
pub(crate) const EXPIRES_MS: i64 = 120_000;
pub(crate) const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// How the raw consumers acknowledge: each message, or every [`ACK_BATCH`] with `multiple`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Acks {
    Each,
    Batch,
}

pub(crate) struct Bench {
    /// Postage's side: one connection for components, one for callers.
    pub(crate) postage: Connection,
    pub(crate) postage_callers: Connection,
    /// The raw lapin side, alike.
    pub(crate) lapin: lapin::Connection,
    pub(crate) lapin_callers: lapin::Connection,
    /// The raw amqprs side, alike.
    pub(crate) amqprs: Amqprs,
    /// Declares, fills and deletes queues; never measured.
    admin: lapin::Channel,
    pub(crate) fingerprint: Arc<RawFingerprint>,
    names: AtomicUsize,
}

impl Bench {
    pub(crate) async fn connect() -> Self {
        let url = broker_url();
        let config = Config::from_url(&url).expect("a valid POSTAGE_URL");
        let postage = Connection::connect(&config)
            .await
            .expect("the broker from scripts/broker.sh answers");
        let postage_callers = Connection::connect(&config).await.expect("a connection");
        let lapin = lapin::Connection::connect(&url, raw_lapin_properties())
            .await
            .expect("a lapin connection");
        let lapin_callers = lapin::Connection::connect(&url, raw_lapin_properties())
            .await
            .expect("a lapin connection");
        let admin = lapin.create_channel().await.expect("a channel");
        Self {
            postage,
            postage_callers,
            lapin,
            lapin_callers,
            amqprs: Amqprs::connect(&url).await,
            admin,
            fingerprint: Arc::new(RawFingerprint::new("bench")),
            names: AtomicUsize::new(0),
        }
    }

    pub(crate) async fn close(self) {
        let _ = self.postage.close().await;
        let _ = self.postage_callers.close().await;
        let _ = self.lapin.close(200, "bench done".into()).await;
        let _ = self.lapin_callers.close(200, "bench done".into()).await;
        self.amqprs.close().await;
    }

    pub(crate) fn name(&self, what: &str) -> String {
        format!(
            "bench-{what}-{}-{}",
            std::process::id(),
            self.names.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// A fresh direct exchange (auto-delete) and a queue bound to it with `key`.
    pub(crate) async fn topology(&self, what: &str, key: &str) -> (Exchange, Queue) {
        let exchange = Exchange::named(self.name(what))
            .durable(false)
            .auto_delete(true);
        let queue = self.queue_on(&exchange, what, key).await;
        (exchange, queue)
    }

    /// A fresh queue bound to `exchange` (declared if need be) with `key`: durable, as
    /// RabbitMQ 4 wants a shared queue, with transient messages.
    pub(crate) async fn queue_on(&self, exchange: &Exchange, what: &str, key: &str) -> Queue {
        let queue = Queue::new(self.name(what))
            .durable(true)
            .argument("x-expires", EXPIRES_MS);
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
        let mut arguments = FieldTable::default();
        arguments.insert("x-expires".into(), AMQPValue::LongLongInt(EXPIRES_MS));
        self.admin
            .queue_declare(
                queue.name().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                arguments,
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
        queue
    }

    pub(crate) async fn delete(&self, queue: &Queue) {
        self.admin
            .queue_delete(queue.name().into(), QueueDeleteOptions::default())
            .await
            .expect("queue deleted");
    }

    pub(crate) async fn purge(&self, queue: &Queue) {
        self.admin
            .queue_purge(queue.name().into(), QueuePurgeOptions::default())
            .await
            .expect("queue purged");
    }

    /// Puts `count` command messages with a payload of about `size` bytes in `queue`,
    /// unmeasured, and waits until all are in.
    pub(crate) async fn fill(
        &self,
        exchange: &Exchange,
        key: &str,
        queue: &Queue,
        count: usize,
        size: usize,
    ) {
        self.fill_keyed(exchange, key, queue, count, size, 1).await;
    }

    /// Like [`fill`](Self::fill), the readings from `sensors` sensors in turn.
    pub(crate) async fn fill_keyed(
        &self,
        exchange: &Exchange,
        key: &str,
        queue: &Queue,
        count: usize,
        size: usize,
        sensors: usize,
    ) {
        let mut reading = Reading::sized(0, size);
        for seq in 0..count {
            reading.seq = seq as u64;
            if sensors > 1 {
                reading.sensor = format!("sensor-{}", seq % sensors);
            }
            let body = command_body(&self.fingerprint, "message", "reading", &reading);
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
        while self.depth(queue).await < count {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// How many messages `queue` holds.
    async fn depth(&self, queue: &Queue) -> usize {
        let found = peek(&self.admin, queue.name()).await;
        found.expect("queue found").message_count() as usize
    }

    /// Waits until the queue `name` exists and has a consumer (for 10 s at most); each
    /// look on a channel of its own, which the broker closes while there is no such queue.
    pub(crate) async fn wait_for_consumer(&self, name: &str) {
        for _ in 0..1000 {
            let channel = self.lapin.create_channel().await.expect("a channel");
            if peek(&channel, name)
                .await
                .is_ok_and(|queue| queue.consumer_count() > 0)
            {
                let _ = channel.close(200, "found".into()).await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("nobody consumes {name}");
    }
}

/// The queue `name` as the broker has it (a passive declare), with its counts.
async fn peek(channel: &lapin::Channel, name: &str) -> lapin::Result<lapin::Queue> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(name.into(), passive, FieldTable::default())
        .await
}

pub(crate) fn json_properties() -> BasicProperties {
    BasicProperties::default().with_content_type("application/json".into())
}

/// A payload size as a figure names it.
pub(crate) fn size_name(bytes: usize) -> String {
    match bytes {
        b if b >= 1_000_000 => format!("{} MB", b / 1_000_000),
        b if b >= 1_000 => format!("{} KB", b / 1_000),
        b => format!("{b} B"),
    }
}
