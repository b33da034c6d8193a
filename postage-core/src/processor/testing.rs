//! [`TestProcessor`]: a processor's handlers without a broker, through the same dispatch.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::Shared;
use super::builder::Parts;
use super::copies::Copies;
use super::retry::{Resolved, RetryPolicy, Target, Verdict};
use super::table::HandlerSet;
use crate::error::Result;
use crate::handler::{Disposition, Metadata};
use crate::producer::Recording;
use crate::wire::{Message, RpcResult};

/// What a processor did with one message: what becomes of it, why, and the RPC answer
/// it sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Handled {
    /// What becomes of the message: acknowledged, rejected (dead-lettered), requeued, or
    /// retried after the delay its retry would wait.
    pub disposition: Disposition,
    /// Why, when it is not acknowledged.
    pub reason: Option<String>,
    /// The answer sent to an RPC call.
    pub answer: Option<RpcResult>,
}

/// A processor's handlers, fed messages in a unit test without RabbitMQ, as nameko's
/// `worker_factory` or FastStream's `TestRabbitBroker` do. A message goes through what
/// a running processor does with a delivery (decoding, the handlers' filters, dispatch
/// by type and name, the error-to-answer mapping, the retry policy and timeouts) and
/// the test gets back its [`Handled`].
///
/// ```
/// use postage_core::testing::TestProcessor;
/// use postage_core::{Disposition, HandlerError, Message, processor};
///
/// struct Stock;
///
/// #[processor]
/// impl Stock {
///     #[rpc_handler("command", "reserve")]
///     fn reserve(&self, quantity: u32) -> Result<u32, HandlerError> {
///         if quantity > 10 {
///             return Err(HandlerError::error("not enough stock"));
///         }
///         Ok(10 - quantity)
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> postage_core::Result<()> {
/// let stock = TestProcessor::new(Stock)?;
/// assert_eq!(stock.call::<u32>("reserve", 3).await?, 7);
/// let handled = stock.send(Message::rpc_command("reserve", 30)?).await;
/// assert_eq!(handled.disposition, Disposition::Ack);
/// assert_eq!(handled.answer, Some(postage_core::RpcResult::error("not enough stock")));
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct TestProcessor<P> {
    shared: Shared<P>,
    /// Where its answers go.
    answers: Recording,
    /// One message at a time, so each gets its own answer back.
    turn: tokio::sync::Mutex<()>,
}

/// Configures a [`TestProcessor`] as a [`ProcessorBuilder`](super::ProcessorBuilder)
/// configures a processor; made by [`TestProcessor::builder`].
#[derive(Debug)]
pub struct TestProcessorBuilder<P> {
    parts: Parts<P>,
}

impl<P: Send + Sync + 'static> TestProcessor<P> {
    /// The handlers of `state`'s `#[processor]` impls, with the defaults; fails as
    /// [`ProcessorBuilder::build`](super::ProcessorBuilder::build) does (on two RPC
    /// handlers for one command, on a handler that takes a state: give it with
    /// [`builder`](Self::builder)).
    pub fn new(state: P) -> Result<Self> {
        Self::builder(state).build()
    }

    /// Starts configuring a test processor with state `state`.
    pub fn builder(state: P) -> TestProcessorBuilder<P> {
        TestProcessorBuilder {
            parts: Parts::new(state),
        }
    }

    /// The processor's state, to look at what the handlers did.
    pub fn state(&self) -> &P {
        &self.shared.state
    }

    /// Handles `message` as if delivered on a queue, first attempt, no sender named.
    pub async fn send(&self, message: Message) -> Handled {
        self.send_with(message, Metadata::default()).await
    }

    /// Handles `message` delivered with `metadata` (its `attempt`, `user_id`, headers...;
    /// an RPC call without `reply_to` gets one).
    pub async fn send_with(&self, message: Message, mut metadata: Metadata) -> Handled {
        let attempt = metadata.attempt().max(1);
        metadata = metadata.with_attempt(attempt);
        if message.category == crate::wire::Category::Rpc && metadata.reply_to().is_none() {
            metadata = metadata.with_reply_to("test-reply");
        }
        let _turn = self.turn.lock().await;
        let verdict = self.shared.dispatch_with(message, metadata, None).await;
        self.handled(verdict, attempt)
    }

    /// Handles a raw body, such as Python Postage writes, with `metadata`: one that does
    /// not decode is rejected, as a running processor rejects it.
    pub async fn send_body(&self, body: &[u8], metadata: Metadata) -> Handled {
        match self.shared.encoder.decode(body) {
            Ok(message) => self.send_with(message, metadata).await,
            Err(error) => self.handled(Verdict::Reject(error.to_string()), 1),
        }
    }

    /// Calls RPC command `name` and decodes a success into `T`; an error or exception
    /// answer is [`Error::RemoteError`](crate::Error::RemoteError) or
    /// [`Error::RemoteException`](crate::Error::RemoteException), as from a producer.
    pub async fn call<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
        parameters: impl Serialize,
    ) -> Result<T> {
        let handled = self.send(Message::rpc_command(name, parameters)?).await;
        let answer = handled
            .answer
            .unwrap_or_else(|| RpcResult::error(handled.reason.unwrap_or_default()));
        answer.into_value(name)
    }

    fn handled(&self, verdict: Verdict, attempt: u32) -> Handled {
        let answer = self
            .answers
            .take()
            .pop()
            .map(|sent| sent.message.to_result());
        let (disposition, reason) = match self.shared.resolve(verdict, attempt) {
            Resolved::Ack | Resolved::Expired => (Disposition::Ack, None),
            Resolved::Requeue => (Disposition::Requeue, None),
            Resolved::Reject(reason) | Resolved::Move(Target::Dead, reason) => {
                (Disposition::Reject, Some(reason))
            }
            Resolved::Move(Target::Delay { delay, .. }, reason) => {
                (Disposition::Retry(Some(delay)), Some(reason))
            }
        };
        Handled {
            disposition,
            reason,
            answer,
        }
    }
}

impl<P: Send + Sync + 'static> TestProcessorBuilder<P> {
    /// Also serves `other`'s handlers, as
    /// [`ProcessorBuilder::handlers`](super::ProcessorBuilder::handlers).
    #[must_use]
    pub fn handlers<Q: Send + Sync + 'static>(mut self, other: Q) -> Self {
        self.parts
            .more_handlers
            .push(HandlerSet::of(Arc::new(other)));
        self
    }

    /// Gives the handlers `value` as a [`State<T>`](crate::State), as
    /// [`ProcessorBuilder::with_state`](super::ProcessorBuilder::with_state).
    #[must_use]
    pub fn with_state<T: Send + Sync + 'static>(mut self, value: T) -> Self {
        self.parts.states.insert(value);
        self
    }

    /// Retries as `policy` says, as [`ProcessorBuilder::retry`](super::ProcessorBuilder::retry).
    #[must_use]
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.parts.retry = Some(policy);
        self
    }

    /// The default disposition of a failure, as
    /// [`ProcessorBuilder::on_failure`](super::ProcessorBuilder::on_failure).
    #[must_use]
    pub fn on_failure(mut self, disposition: Disposition) -> Self {
        self.parts.on_failure = Some(disposition);
        self
    }

    /// Bounds every handler, as
    /// [`ProcessorBuilder::handler_timeout`](super::ProcessorBuilder::handler_timeout).
    #[must_use]
    pub fn handler_timeout(mut self, timeout: Duration) -> Self {
        self.parts.handler_timeout = Some(timeout);
        self
    }

    /// The test processor, made as [`ProcessorBuilder::build`](super::ProcessorBuilder::build)
    /// makes a processor, and failing as it does; its answers and copies are recorded.
    pub fn build(self) -> Result<TestProcessor<P>> {
        let checked = self.parts.check()?;
        let answers = Recording::new();
        Ok(TestProcessor {
            shared: checked.shared(
                answers.producer(),
                Copies::through(answers.producer()),
                None,
            ),
            answers,
            turn: tokio::sync::Mutex::new(()),
        })
    }
}
