//! Where RPC answers come back to a caller: the reply queue kinds and their consumer.

use lapin::options::BasicConsumeOptions;
use lapin::types::{FieldTable, ShortString};

use crate::connection::Connection;
use crate::error::{Error, Result};
use crate::topology::Queue;

/// The pseudo-queue of RabbitMQ's direct reply-to.
pub(crate) const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// Where a producer's RPC answers come back; set with
/// [`ProducerBuilder::reply_queue`](crate::ProducerBuilder::reply_queue).
///
/// Both are consumed without acknowledgements, so an answer is delivered at most once;
/// a call whose answer is lost is sent again after its timeout. The private queue is the
/// default: the benchmark measured it faster for sequential calls in 11 of 13 runs on
/// RabbitMQ 3.10 (median +7%; see the README's performance section).
///
/// ```
/// use postage_core::ReplyQueue;
///
/// assert_eq!(ReplyQueue::default(), ReplyQueue::Private);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplyQueue {
    /// RabbitMQ's direct reply-to pseudo-queue (`amq.rabbitmq.reply-to`): no queue to
    /// declare, answers go straight to the caller's channel, which must be the one that
    /// published the call; an answer sent after that channel closed is dropped.
    DirectReplyTo,
    /// A private queue the broker names, declared once per producer with its first call
    /// (exclusive, auto-delete: it goes away with the producer's connection) and consumed
    /// without acknowledgements: answers wait in it, on the broker, until the caller
    /// reads them. The default.
    #[default]
    Private,
    /// A queue of its own for each call, as Python Postage 1.x makes them (exclusive,
    /// auto-delete, gone with the call), so an answer that carries no correlation id is
    /// known to answer this call and no other. Not needed to call Python Postage 1.x
    /// receivers: the shared queues find them out and call them so by themselves (README,
    /// "A short tour", RPC). Costs a channel, a declaration and a
    /// consumer per call.
    PerCall,
}

/// Starts consuming the producer's answers, no-ack: direct reply-to on the publishing
/// channel (as RabbitMQ requires), or a private queue declared now. Returns the
/// `reply_to` address for the calls and the consumer.
pub(crate) async fn start_reply_consumer(
    connection: &Connection,
    channel: &lapin::Channel,
    reply_queue: ReplyQueue,
) -> Result<(ShortString, lapin::Consumer)> {
    let queue: ShortString = match reply_queue {
        ReplyQueue::DirectReplyTo => DIRECT_REPLY_TO.into(),
        // Declared on a channel of its own; exclusive queues belong to the connection.
        ReplyQueue::Private | ReplyQueue::PerCall => connection
            .declare_queue(&Queue::new("").exclusive(true).auto_delete(true))
            .await?
            .into(),
    };
    let consumer = channel
        .basic_consume(
            queue.clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                exclusive: reply_queue != ReplyQueue::DirectReplyTo,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(Error::amqp(format!("consuming RPC answers from {queue:?}")))?;
    Ok((queue, consumer))
}
