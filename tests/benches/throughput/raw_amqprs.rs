//! The baselines written by hand in raw amqprs, the fastest Rust AMQP client we know: the
//! same publisher, consumer, RPC server and RPC caller as `raw_lapin`'s, on amqprs's own
//! connections.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;

use amqprs::channel::{
    BasicAckArguments, BasicCancelArguments, BasicConsumeArguments, BasicPublishArguments,
    BasicQosArguments, Channel, ExchangeDeclareArguments, QueueDeclareArguments,
};
use amqprs::connection::Connection;
use amqprs::{BasicProperties, channel::ConsumerMessage};
use futures_util::future::join_all;
use postage_core::{Exchange, Queue, ReplyQueue};
use postage_tests::bench::{
    RawFingerprint, Reading, Receipt, amqprs_arguments, command_body, read_command, read_success,
    success_body,
};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::report::{Meter, Sample};
use crate::setup::{ACK_BATCH, Acks, DIRECT_REPLY_TO, PREFETCH};

/// Amqprs's side: one connection for components, one for callers.
pub(crate) struct Amqprs {
    components: Connection,
    callers: Connection,
}

impl Amqprs {
    pub(crate) async fn connect(url: &str) -> Self {
        let arguments = amqprs_arguments(url);
        Self {
            components: Connection::open(&arguments)
                .await
                .expect("an amqprs connection"),
            callers: Connection::open(&arguments)
                .await
                .expect("an amqprs connection"),
        }
    }

    pub(crate) async fn close(self) {
        let _ = self.components.close().await;
        let _ = self.callers.close().await;
    }

    /// A channel of the callers' connection, for a publisher.
    pub(crate) async fn publisher(&self) -> Channel {
        self.callers.open_channel(None).await.expect("a channel")
    }

    /// Reads `each` readings from every one of `queues`, one consumer and channel a
    /// queue, all on this task; timed from the first consume to the last acknowledgement.
    pub(crate) async fn dispatch(&self, queues: &[Queue], each: usize, acks: Acks) -> Sample {
        let mut channels = Vec::new();
        for _ in queues {
            channels.push(consumer_channel(&self.components).await);
        }
        let start = Meter::start();
        join_all(
            channels
                .iter()
                .zip(queues)
                .map(|(channel, queue)| consume_n(channel, queue, each, acks)),
        )
        .await;
        let sample = start.stop(each * queues.len());
        for channel in channels {
            let _ = channel.close().await;
        }
        sample
    }

    pub(crate) async fn server(&self, queue: &Queue, fingerprint: Arc<RawFingerprint>) -> Server {
        Server::start(&self.components, queue, fingerprint).await
    }

    pub(crate) async fn caller(
        &self,
        exchange: &str,
        mode: ReplyQueue,
        prefix: String,
        fingerprint: Arc<RawFingerprint>,
    ) -> Caller {
        Caller::new(&self.callers, exchange, mode, prefix, fingerprint).await
    }
}

fn json_properties() -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json")
        .finish()
}

/// Publishes `n` readings of about `size` bytes, timed to a final round trip on the same
/// channel, as `raw_lapin::publish`.
pub(crate) async fn publish(
    channel: &Channel,
    exchange: &Exchange,
    key: &str,
    fingerprint: &RawFingerprint,
    n: usize,
    size: usize,
) -> Sample {
    let mut reading = Reading::sized(0, size);
    let start = Meter::start();
    for seq in 0..n {
        reading.seq = seq as u64;
        let body = command_body(fingerprint, "message", "reading", &reading);
        channel
            .basic_publish(
                json_properties(),
                body,
                BasicPublishArguments::new(exchange.name(), key),
            )
            .await
            .expect("published");
    }
    channel
        .exchange_declare(
            ExchangeDeclareArguments::new(exchange.name(), "direct")
                .passive(true)
                .finish(),
        )
        .await
        .expect("exchange still there");
    start.stop(n)
}

async fn consumer_channel(connection: &Connection) -> Channel {
    let channel = connection.open_channel(None).await.expect("a channel");
    channel
        .basic_qos(BasicQosArguments::new(0, PREFETCH, false))
        .await
        .expect("prefetch set");
    channel
}

async fn consume(
    channel: &Channel,
    queue: &str,
    manual_ack: bool,
) -> (String, UnboundedReceiver<ConsumerMessage>) {
    channel
        .basic_consume_rx(
            BasicConsumeArguments::new(queue, "")
                .manual_ack(manual_ack)
                .finish(),
        )
        .await
        .expect("consuming")
}

async fn consume_n(channel: &Channel, queue: &Queue, n: usize, acks: Acks) {
    let (tag, mut deliveries) = consume(channel, queue.name(), true).await;
    let mut seen = 0;
    while let Some(delivery) = deliveries.recv().await {
        let body = delivery.content.expect("a body");
        let message = read_command::<Reading>(&body).expect("a reading");
        black_box(&message);
        seen += 1;
        let tag = delivery.deliver.expect("a deliver frame").delivery_tag();
        match acks {
            Acks::Each => channel
                .basic_ack(BasicAckArguments::new(tag, false))
                .await
                .expect("acked"),
            Acks::Batch if seen % ACK_BATCH == 0 || seen == n => channel
                .basic_ack(BasicAckArguments::new(tag, true))
                .await
                .expect("acked"),
            Acks::Batch => {}
        }
        if seen == n {
            break;
        }
    }
    channel
        .basic_cancel(BasicCancelArguments::new(&tag))
        .await
        .expect("cancelled");
}

/// The raw RPC server, as `raw_lapin::Server`.
pub(crate) struct Server {
    channel: Channel,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(
        connection: &Connection,
        queue: &Queue,
        fingerprint: Arc<RawFingerprint>,
    ) -> Self {
        let channel = consumer_channel(connection).await;
        let (_, mut requests) = consume(&channel, queue.name(), true).await;
        let server = channel.clone();
        let task = tokio::spawn(async move {
            while let Some(delivery) = requests.recv().await {
                let (Some(deliver), Some(properties), Some(body)) = (
                    delivery.deliver,
                    delivery.basic_properties,
                    delivery.content,
                ) else {
                    continue;
                };
                let tag = deliver.delivery_tag();
                let Ok(request) = read_command::<Reading>(&body) else {
                    continue;
                };
                let receipt = Receipt {
                    seq: request.content.parameters.seq,
                    ok: true,
                };
                if let Some(reply_to) = properties.reply_to() {
                    let mut answer = BasicProperties::default();
                    answer.with_content_type("application/json");
                    if let Some(id) = properties.correlation_id() {
                        answer.with_correlation_id(id);
                    }
                    let answered = server
                        .basic_publish(
                            answer,
                            success_body(&fingerprint, &receipt),
                            BasicPublishArguments::new("", reply_to),
                        )
                        .await;
                    if answered.is_err() {
                        break; // closed at the end of the figure
                    }
                }
                if server
                    .basic_ack(BasicAckArguments::new(tag, false))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
        Self { channel, task }
    }

    pub(crate) async fn stop(self) {
        let _ = self.channel.close().await;
        self.task.abort();
        let _ = self.task.await;
    }
}

/// RPC calls written by hand in amqprs, as `raw_lapin::Caller`.
pub(crate) struct Caller {
    channel: Channel,
    replies: UnboundedReceiver<ConsumerMessage>,
    reply_to: String,
    exchange: String,
    prefix: String,
    fingerprint: Arc<RawFingerprint>,
}

impl Caller {
    async fn new(
        connection: &Connection,
        exchange: &str,
        mode: ReplyQueue,
        prefix: String,
        fingerprint: Arc<RawFingerprint>,
    ) -> Self {
        let channel = connection.open_channel(None).await.expect("a channel");
        let reply_to = match mode {
            ReplyQueue::Private => {
                channel
                    .queue_declare(QueueDeclareArguments::exclusive_server_named())
                    .await
                    .expect("reply queue declared")
                    .expect("a queue name")
                    .0
            }
            _ => DIRECT_REPLY_TO.to_owned(),
        };
        let (_, replies) = consume(&channel, &reply_to, false).await;
        Self {
            channel,
            replies,
            reply_to,
            exchange: exchange.to_owned(),
            prefix,
            fingerprint,
        }
    }

    /// `n` calls of about `size` bytes to the server bound with `key`, `window` in
    /// flight.
    pub(crate) async fn calls(
        &mut self,
        key: &str,
        window: usize,
        n: usize,
        size: usize,
    ) -> Sample {
        let mut reading = Reading::sized(0, size);
        let start = Meter::start();
        let mut in_flight: HashMap<String, u64> = HashMap::with_capacity(window);
        let (mut sent, mut answered) = (0, 0);
        while answered < n {
            while sent < n && in_flight.len() < window {
                let id = format!("{}.{sent}", self.prefix);
                reading.seq = sent as u64;
                let body = command_body(&self.fingerprint, "rpc", "reading", &reading);
                let properties = BasicProperties::default()
                    .with_content_type("application/json")
                    .with_reply_to(&self.reply_to)
                    .with_correlation_id(&id)
                    .finish();
                in_flight.insert(id, sent as u64);
                self.channel
                    .basic_publish(
                        properties,
                        body,
                        BasicPublishArguments::new(&self.exchange, key),
                    )
                    .await
                    .expect("call sent");
                sent += 1;
            }
            let reply = self.replies.recv().await.expect("replies keep coming");
            let seq = reply
                .basic_properties
                .as_ref()
                .and_then(|p| p.correlation_id())
                .and_then(|id| in_flight.remove(id.as_str()));
            if let Some(seq) = seq {
                let body = reply.content.expect("a body");
                let receipt: Receipt = read_success(&body).expect("a success");
                assert_eq!(receipt.seq, seq);
                answered += 1;
            }
        }
        start.stop(n)
    }

    pub(crate) async fn close(self) {
        let _ = self.channel.close().await;
    }
}
