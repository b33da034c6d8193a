//! The baselines written by hand in raw lapin: a publisher, a consumer, an RPC server and
//! an RPC caller, sending and reading the very bodies postage does.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;

use futures_util::StreamExt;
use futures_util::future::join_all;
use postage_core::lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ExchangeDeclareOptions, QueueDeclareOptions,
};
use postage_core::lapin::types::{FieldTable, ShortString};
use postage_core::lapin::{self, ExchangeKind};
use postage_core::{Exchange, Queue, ReplyQueue};
use postage_tests::bench::{
    RawFingerprint, Reading, Receipt, command_body, read_command, read_success, success_body,
};
use prost::Message as _;

use crate::kanin_server::{EchoRequest, EchoResponse};
use crate::report::{Meter, Sample};
use crate::setup::{ACK_BATCH, Acks, DIRECT_REPLY_TO, PREFETCH, json_properties};

/// Publishes `n` readings of about `size` bytes, timed to a final round trip on the same
/// channel (a passive declare, which the broker answers after the publishes before it).
pub(crate) async fn publish(
    channel: &lapin::Channel,
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
                exchange.name().into(),
                key.into(),
                BasicPublishOptions::default(),
                &body,
                json_properties(),
            )
            .await
            .expect("published");
    }
    round_trip(channel, exchange).await;
    start.stop(n)
}

/// One round trip that queues behind everything sent on `channel` before.
pub(crate) async fn round_trip(channel: &lapin::Channel, exchange: &Exchange) {
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

/// A channel with the benchmark's prefetch, for a consumer.
pub(crate) async fn consumer_channel(connection: &lapin::Connection) -> lapin::Channel {
    let channel = connection.create_channel().await.expect("a channel");
    channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await
        .expect("prefetch set");
    channel
}

/// Consumes `queue` on `channel`, with acknowledgements.
pub(crate) async fn consume(channel: &lapin::Channel, queue: &str) -> lapin::Consumer {
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
pub(crate) async fn ack_up_to(channel: &lapin::Channel, tag: u64) {
    channel
        .basic_ack(tag, BasicAckOptions { multiple: true })
        .await
        .expect("acked");
}

/// Reads `each` readings from every one of `queues`, one consumer and channel a queue,
/// all on this task; timed from the first consume to the last acknowledgement.
pub(crate) async fn dispatch(
    connection: &lapin::Connection,
    queues: &[Queue],
    each: usize,
    acks: Acks,
) -> Sample {
    let mut channels = Vec::new();
    for _ in queues {
        channels.push(consumer_channel(connection).await);
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
        let _ = channel.close(200, "done".into()).await;
    }
    sample
}

async fn consume_n(channel: &lapin::Channel, queue: &Queue, n: usize, acks: Acks) {
    let mut deliveries = consume(channel, queue.name()).await;
    let mut seen = 0;
    while let Some(delivery) = deliveries.next().await {
        let delivery = delivery.expect("a delivery");
        let message = read_command::<Reading>(&delivery.data).expect("a reading");
        black_box(&message);
        seen += 1;
        match acks {
            Acks::Each => {
                let acked = delivery.acker.ack(BasicAckOptions::default()).await;
                acked.expect("acked");
            }
            Acks::Batch if seen % ACK_BATCH == 0 || seen == n => {
                let acked = delivery.acker.ack(BasicAckOptions { multiple: true }).await;
                acked.expect("acked");
            }
            Acks::Batch => {}
        }
        if seen == n {
            break;
        }
    }
    channel
        .basic_cancel(deliveries.tag(), BasicCancelOptions::default())
        .await
        .expect("cancelled");
}

/// The raw RPC server: answers each reading on its queue with a receipt, acknowledging
/// each request after its answer.
pub(crate) struct Server {
    channel: lapin::Channel,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    pub(crate) async fn start(
        connection: &lapin::Connection,
        queue: &Queue,
        fingerprint: Arc<RawFingerprint>,
    ) -> Self {
        let channel = consumer_channel(connection).await;
        let mut requests = consume(&channel, queue.name()).await;
        let server = channel.clone();
        let task = tokio::spawn(async move {
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
                let acked = delivery.acker.ack(BasicAckOptions::default()).await;
                if acked.is_err() {
                    break;
                }
            }
        });
        Self { channel, task }
    }

    pub(crate) async fn stop(self) {
        let _ = self.channel.close(200, "done".into()).await;
        let _ = self.task.await;
    }
}

/// How a caller writes its requests and reads its answers: Postage's JSON, or kanin's
/// protobuf.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Encoding {
    Json,
    Protobuf,
}

/// RPC calls written by hand in lapin: publish with `reply_to` and a correlation id, read
/// the answers from one consumer.
pub(crate) struct Caller {
    channel: lapin::Channel,
    replies: lapin::Consumer,
    reply_to: ShortString,
    exchange: ShortString,
    prefix: String,
    fingerprint: Arc<RawFingerprint>,
    encoding: Encoding,
}

impl Caller {
    pub(crate) async fn new(
        connection: &lapin::Connection,
        exchange: &str,
        mode: ReplyQueue,
        prefix: String,
        fingerprint: Arc<RawFingerprint>,
        encoding: Encoding,
    ) -> Self {
        let channel = connection.create_channel().await.expect("a channel");
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
        Self {
            channel,
            replies,
            reply_to,
            exchange: exchange.into(),
            prefix,
            fingerprint,
            encoding,
        }
    }

    async fn call(&self, key: &str, id: String, reading: &Reading) {
        let body = match self.encoding {
            Encoding::Json => command_body(&self.fingerprint, "rpc", "reading", reading),
            Encoding::Protobuf => EchoRequest {
                seq: reading.seq,
                note: reading.note.clone(),
            }
            .encode_to_vec(),
        };
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

    /// The sequence number an answer carries.
    fn answered(&self, body: &[u8]) -> u64 {
        match self.encoding {
            Encoding::Json => read_success::<Receipt>(body).expect("a success").seq,
            Encoding::Protobuf => EchoResponse::decode(body).expect("an answer").seq,
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
                in_flight.insert(id.clone(), sent as u64);
                reading.seq = sent as u64;
                self.call(key, id, &reading).await;
                sent += 1;
            }
            let reply = self
                .replies
                .next()
                .await
                .expect("replies keep coming")
                .expect("a reply");
            let seq = reply
                .properties
                .correlation_id()
                .as_ref()
                .and_then(|id| in_flight.remove(id.as_str()));
            if let Some(seq) = seq {
                assert_eq!(self.answered(&reply.data), seq);
                answered += 1;
            }
        }
        start.stop(n)
    }

    pub(crate) async fn close(self) {
        let _ = self.channel.close(200, "done".into()).await;
    }
}
