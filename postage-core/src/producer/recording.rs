//! A recording producer: code that sends, tested without a broker. What it publishes is
//! kept, decoded, in a [`Recording`], and its RPC calls get the answers the test set.

use std::collections::HashMap;
use std::sync::Arc;

use lapin::BasicProperties;
use serde::Serialize;

use super::{Producer, ProducerBuilder, Target};
use crate::error::{Error, Result};
use crate::sync::Locked;
use crate::wire::{COMMAND, Category, Message, RpcResult};

/// How many messages a [`Recording`] holds; a publish beyond fails, so a test that
/// forgets to [`take`](Recording::take) them does not grow without bound.
pub const RECORDING_LIMIT: usize = 100_000;

/// One message a recording producer published.
#[derive(Debug, Clone, PartialEq)]
pub struct Sent {
    /// The exchange it went to (`""` for the default exchange, as RPC answers do).
    pub exchange: String,
    /// Its routing key.
    pub routing_key: String,
    /// The message, decoded again from the body the producer wrote.
    pub message: Message,
}

/// What recording producers sent, and the answers their RPC calls get: for unit tests of
/// code that sends, as a [`TestProcessor`](crate::testing::TestProcessor) is for code
/// that handles. Producers from [`Recording::builder`] are configured as any (default
/// destinations, fingerprint, encoder) and behave as one on a connection, except that
/// nothing leaves the process. Clones share the record.
///
/// ```
/// use postage_core::testing::Recording;
/// use postage_core::{Exchange, Route};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> postage_core::Result<()> {
/// let recording = Recording::new();
/// recording.answer("reserve", 7)?;
/// let producer = recording
///     .builder()
///     .destination(Exchange::new("stock-exchange"), "stock")
///     .build()
///     .await?;
///
/// producer.command("restock", ("sku-1", 5)).await?;
/// let left: u32 = producer.call("reserve", 3).await?;
///
/// assert_eq!(left, 7);
/// let sent = recording.take();
/// assert_eq!(sent.len(), 2);
/// assert_eq!((sent[0].routing_key.as_str(), sent[0].message.name.as_str()), ("stock", "restock"));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct Recording {
    inner: Arc<Recorded>,
}

#[derive(Debug, Default)]
struct Recorded {
    sent: Locked<Vec<Sent>>,
    answers: Locked<HashMap<String, RpcResult>>,
}

impl Recording {
    /// An empty recording; its RPC calls get an error answer until one is set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Configures a producer that records here instead of publishing.
    pub fn builder(&self) -> ProducerBuilder {
        ProducerBuilder::new(Target::Recording(self.clone()))
    }

    /// Every call of RPC command `command` gets a success carrying `value`.
    pub fn answer(&self, command: &str, value: impl Serialize) -> Result<()> {
        self.answer_with(command, RpcResult::success(value)?);
        Ok(())
    }

    /// Every call of RPC command `command` gets `result` (an error or exception too).
    pub fn answer_with(&self, command: &str, result: RpcResult) {
        self.inner.answers.with(|answers| {
            answers.insert(command.to_owned(), result);
        });
    }

    /// What was sent so far, in order.
    pub fn sent(&self) -> Vec<Sent> {
        self.inner.sent.with(|sent| sent.clone())
    }

    /// What was sent so far, in order, leaving the recording empty.
    pub fn take(&self) -> Vec<Sent> {
        self.inner.sent.with(std::mem::take)
    }

    /// A producer with the defaults that records here, built at once.
    pub(crate) fn producer(&self) -> Producer {
        self.builder().recorded(self.clone())
    }

    /// The login a recording producer names as the `user_id` of what it sends.
    pub(super) fn user(&self) -> &'static str {
        "guest"
    }

    /// The answer set for `command`, if any.
    pub(super) fn answer_of(&self, command: &str) -> Option<RpcResult> {
        self.inner
            .answers
            .with(|answers| answers.get(command).cloned())
    }

    /// Keeps what `producer` publishes, and answers it when it is an RPC call.
    pub(super) fn record(
        &self,
        producer: &Producer,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: &BasicProperties,
    ) -> Result<()> {
        let message = producer.encoder().decode(body)?;
        let call = (message.category == Category::Rpc && message.kind == COMMAND)
            .then(|| message.name.clone());
        self.inner.sent.with(|sent| {
            if sent.len() >= RECORDING_LIMIT {
                return Err(Error::config(
                    "recording",
                    format!("holds {RECORDING_LIMIT} messages already: take them out"),
                ));
            }
            sent.push(Sent {
                exchange: exchange.to_owned(),
                routing_key: routing_key.to_owned(),
                message,
            });
            Ok(())
        })?;
        let (Some(name), Some(id)) = (call, properties.correlation_id()) else {
            return Ok(());
        };
        let answer = self.answer_of(&name).unwrap_or_else(|| {
            RpcResult::error(format!(
                "the recording has no answer for command {name:?}: set one with Recording::answer"
            ))
        });
        let body = producer.encoder().encode(&Message::result(&answer))?;
        producer.answer_recorded(id.as_str(), body);
        Ok(())
    }
}
