//! An RPC call in flight: sent, sent again after a timeout or a lost send, its answer
//! (and its progress beats) awaited on the producer's reply queue or one of its own.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::types::ShortString;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use super::call::Waiter;
use super::options::{DEFAULT_ANSWER_WITHIN, OnProgress, RpcOptions};
use crate::connection::ChannelLease;
use crate::deadline::instant_after;
use crate::error::{Error, Result};
use crate::producer::{Producer, Publish};
use crate::rpc::{Destination, Heard, ReplyQueue, progress, start_reply_consumer};
use crate::telemetry::{current_deadline, span, with_deadline};
use crate::wire::json;
use crate::wire::{Message, RpcResult};

/// The pause before a call whose send was lost with its connection is sent again: time
/// for lapin to see the loss, so the next send waits for the new channel.
const RESEND_PAUSE: Duration = Duration::from_millis(50);

/// How many progress beats a call keeps unread; more are dropped until it reads them.
const BEATS_KEPT: usize = 64;

/// An RPC call already sent, whose answer is awaited with [`PendingCall::result`] or
/// [`PendingCall::value`]. Dropping it forgets the call.
#[derive(Debug)]
pub struct PendingCall {
    producer: Producer,
    // A caller may hold thousands of calls in flight: their parts are allocated to size.
    names: Names,
    /// Kept to send the call again.
    body: Box<[u8]>,
    /// Shared with the waiter table's key.
    correlation_id: Arc<str>,
    receiver: oneshot::Receiver<Heard>,
    timeout: Duration,
    max_retry: u32,
    /// How many times the call was sent, and when the last send stops waiting.
    attempts: u32,
    deadline: tokio::time::Instant,
    /// The deadline of the handler run the call was made in: no attempt waits past it.
    inherited: Option<tokio::time::Instant>,
    /// The call's span, from its first send to its answer.
    span: tracing::Span,
    /// When it was first sent.
    started: tokio::time::Instant,
    /// The answer consumer the call was last sent for.
    epoch: u64,
    /// Where the call went, as the caller remembers destinations.
    destination: Destination,
    /// Its progress beats, when it asked for them (boxed: a call that has none, the
    /// usual, stays small).
    progress: Option<Box<Beats>>,
    /// Where its answers come back.
    replies: CallReplies,
}

/// The progress beats of a call that asked for them.
#[derive(Debug)]
struct Beats {
    /// How often the server beats.
    interval: Duration,
    /// When the call stops waiting for its answer, however its beats come.
    limit: tokio::time::Instant,
    /// Given to the call's waiter on the shared reply queue.
    sender: mpsc::Sender<Vec<u8>>,
    /// `None` while the call waits on it.
    receiver: Option<mpsc::Receiver<Vec<u8>>>,
    on_progress: Option<OnProgress>,
}

/// Where a call's answers come back.
#[derive(Debug)]
enum CallReplies {
    /// The producer's shared reply queue, matched by correlation id.
    Shared,
    /// A queue of the call's own, once declared (boxed: a call that has none, the
    /// usual, stays small).
    Own(Option<Box<OwnReplies>>),
}

/// A call's command, exchange and routing key, in one allocation.
#[derive(Debug)]
struct Names {
    text: Box<str>,
    /// Where the command ends, and where the exchange's name does.
    ends: (usize, usize),
}

impl Names {
    fn new(command: &str, exchange: &str, routing_key: &str) -> Self {
        let ends = (command.len(), command.len() + exchange.len());
        Self {
            text: [command, exchange, routing_key].concat().into(),
            ends,
        }
    }

    fn command(&self) -> &str {
        &self.text[..self.ends.0]
    }

    fn exchange(&self) -> &str {
        &self.text[self.ends.0..self.ends.1]
    }

    fn routing_key(&self) -> &str {
        &self.text[self.ends.1..]
    }
}

/// A call's own reply queue: consumed on a channel of its own, closed (and the queue,
/// auto-delete, gone) with the call.
#[derive(Debug)]
struct OwnReplies {
    address: ShortString,
    answers: lapin::Consumer,
    _channel: ChannelLease,
}

impl PendingCall {
    /// A call of `name` to `exchange` with `routing_key`, its request `body`, not sent
    /// yet.
    pub(super) fn new(
        producer: &Producer,
        name: &str,
        exchange: &str,
        routing_key: &str,
        body: Vec<u8>,
        options: &RpcOptions,
    ) -> Self {
        let state = producer.rpc_state();
        let destination = Destination::new(exchange, routing_key);
        let id = state.replies.waiters.next_id();
        // Registered for its answer by `send`.
        let (_, receiver) = oneshot::channel();
        let timeout = options.timeout.unwrap_or(state.settings.timeout);
        let progress = options.progress.map(|interval| {
            let (sender, receiver) = mpsc::channel(BEATS_KEPT);
            Box::new(Beats {
                interval,
                limit: instant_after(options.answer_within.unwrap_or(DEFAULT_ANSWER_WITHIN)),
                sender,
                receiver: Some(receiver),
                on_progress: options.on_progress.clone(),
            })
        });
        Self {
            producer: producer.clone(),
            names: Names::new(name, exchange, routing_key),
            body: body.into_boxed_slice(),
            correlation_id: id,
            receiver,
            timeout,
            max_retry: options.max_retry.unwrap_or(state.settings.max_retry),
            attempts: 1,
            deadline: instant_after(timeout),
            inherited: current_deadline(),
            span: span::call(name, exchange, routing_key),
            started: tokio::time::Instant::now(),
            epoch: 0,
            destination,
            progress,
            replies: if producer.recording().is_none()
                && (options.reply_queue.unwrap_or(state.settings.reply_queue)
                    == ReplyQueue::PerCall
                    || state.replies.destinations.needs_own_queue(destination))
            {
                CallReplies::Own(None)
            } else {
                CallReplies::Shared
            },
        }
    }

    /// The call, sent once.
    pub(super) async fn sent(mut self) -> Result<Self> {
        let span = self.span.clone();
        if let Err(error) = self.send().instrument(span).await {
            self.conclude("failed");
            return Err(error);
        }
        Ok(self)
    }
}

impl PendingCall {
    /// Sends the call (again), waiting for its answer on the producer's answer consumer.
    async fn send(&mut self) -> Result<()> {
        // One deadline for the attempt: starting the answer consumer, the request's
        // publish and its confirm count against it, so a call under a resource alarm (when
        // lapin writes nothing at all) ends in time too.
        let started = tokio::time::Instant::now();
        let ends = instant_after(self.timeout);
        self.deadline = match self.inherited {
            Some(inherited) => inherited.min(ends),
            None => ends,
        };
        if self.deadline <= started {
            return Err(self.timed_out());
        }
        let deadline = self.deadline;
        let sending = async {
            loop {
                match self.send_now().await {
                    // Lost with its connection, perhaps before lapin saw the loss: sent
                    // again once the producer's channel is back, within the deadline.
                    Err(error) if error.is_link_loss() => {
                        tracing::debug!(%error, command = %self.names.command(), "RPC send lost with its connection; sending again");
                        tokio::time::sleep(RESEND_PAUSE).await;
                    }
                    sent => return sent,
                }
            }
        };
        match tokio::time::timeout_at(deadline, sending).await {
            Ok(sent) => sent,
            Err(_) => Err(self.producer.overdue(
                format!(
                    "sending RPC {:?} to routing key {:?}",
                    self.names.command(),
                    self.names.routing_key()
                ),
                started.elapsed(),
            )),
        }
    }

    async fn send_now(&mut self) -> Result<()> {
        let reply_to = match &mut self.replies {
            CallReplies::Own(own) => {
                let lost = own
                    .as_ref()
                    .is_some_and(|o| !o._channel.status().connected());
                if own.is_none() || lost {
                    let connection = self.producer.link()?;
                    let channel = connection.lease_channel().await?;
                    let (address, answers) =
                        start_reply_consumer(connection, &channel, ReplyQueue::PerCall).await?;
                    *own = Some(Box::new(OwnReplies {
                        address,
                        answers,
                        _channel: channel,
                    }));
                }
                own.as_ref().map(|o| o.address.clone()).unwrap_or_default()
            }
            CallReplies::Shared => {
                let (reply_to, epoch) = self.producer.reply_address().await?;
                self.epoch = epoch;
                self.wait_again();
                reply_to
            }
        };
        let properties = self
            .producer
            .properties()
            .with_reply_to(reply_to)
            .with_correlation_id(self.correlation_id.as_ref().into());
        let properties = match &self.progress {
            // The handler's deadline is the answer's, not the next beat's.
            Some(beats) => progress::ask(
                with_deadline(properties, self.capped(beats.limit)),
                beats.interval,
            ),
            None => with_deadline(properties, self.deadline),
        };
        // Bounded by `send`'s deadline.
        let publish = Publish::new(
            self.names.exchange(),
            self.names.routing_key(),
            &self.body,
            properties,
        );
        self.producer
            .send_unbounded(publish.mandatory(self.producer.reliable()))
            .await?;
        let replies = &self.producer.rpc_state().replies;
        // Replaced while this was sent: its answer cannot come, so the waiter goes and
        // the call is sent again when awaited.
        if matches!(self.replies, CallReplies::Shared) && replies.epoch() != self.epoch {
            replies.waiters.forget(&self.correlation_id);
        }
        Ok(())
    }

    /// The correlation id the call was sent with.
    pub fn correlation_id(&self) -> &str {
        &self.correlation_id
    }

    /// Waits for the answer and reads it as Postage does: a success, error or exception
    /// result. Each attempt waits the call's timeout; then the call is sent again, up to
    /// its retry count. A body that is not a Postage message is logged and skipped.
    pub async fn result(mut self) -> Result<RpcResult> {
        let span = self.span.clone();
        let result = async {
            loop {
                let body = self.next_body().await?;
                if let Some(message) = self.read(&body) {
                    return Ok(message.to_result());
                }
            }
        }
        .instrument(span)
        .await;
        self.conclude(match &result {
            Ok(RpcResult::Success { .. }) => "success",
            Ok(RpcResult::Error { .. }) => "error",
            Ok(RpcResult::Exception { .. }) => "exception",
            Err(error) => failure(error),
        });
        result
    }

    /// Waits for the answer, as [`PendingCall::result`], and decodes a success into `T`.
    pub async fn value<T: DeserializeOwned>(mut self) -> Result<T> {
        let span = self.span.clone();
        let value = async {
            let plain_json = self.producer.encodes_json();
            let result = loop {
                let body = self.next_body().await?;
                // The common case in one pass: a success whose value is a `T`.
                if plain_json && let Some(value) = json::success::<T>(&body) {
                    return Ok(value);
                }
                if let Some(message) = self.read(&body) {
                    break message.to_result();
                }
            };
            result.into_value(self.names.command())
        }
        .instrument(span)
        .await;
        self.conclude(match &value {
            Ok(_) => "success",
            Err(error) => failure(error),
        });
        value
    }

    /// Records how the call ended, and after how many attempts.
    fn conclude(&self, outcome: &'static str) {
        if let Some(telemetry) = self.producer.telemetry() {
            telemetry
                .metrics
                .call(self.names.command(), outcome, self.started.elapsed());
        }
        if self.span.is_disabled() {
            return;
        }
        self.span.record("postage.attempts", self.attempts);
        span::outcome(&self.span, "postage.outcome", outcome, outcome == "success");
    }

    /// The error of a call whose attempts, or whose caller's deadline, ran out.
    fn timed_out(&self) -> Error {
        Error::RpcTimeout {
            command: self.names.command().to_owned(),
            routing_key: self.names.routing_key().to_owned(),
            attempts: self.attempts,
            timeout: self.timeout,
        }
    }

    /// The next answer's body, sending the call again after a timeout or when the answer
    /// consumer was lost with its channel, up to the retry count.
    async fn next_body(&mut self) -> Result<Vec<u8>> {
        loop {
            let deadline = self.deadline;
            let mut beats = self.progress.as_mut().and_then(|p| p.receiver.take());
            let heard = tokio::time::timeout_at(deadline, async {
                match beats.as_mut() {
                    Some(beats) => tokio::select! {
                        biased;
                        heard = self.answer() => heard,
                        Some(body) = beats.recv() => Heard::Progress(body),
                    },
                    None => self.answer().await,
                }
            })
            .await;
            if let Some(progress) = self.progress.as_mut() {
                progress.receiver = beats;
            }
            match heard {
                Ok(Heard::Answer(body)) => return Ok(body),
                Ok(Heard::Progress(body)) => self.beat(&body),
                Ok(Heard::SendAlone) => {
                    tracing::debug!(command = %self.names.command(), "RPC sent again on a reply queue of its own");
                    self.replies = CallReplies::Own(None);
                    self.send().await?;
                }
                // The answer consumer ended with its channel: wait for the producer to
                // recover, then send again.
                Ok(Heard::Lost) if self.attempts <= self.max_retry => {
                    tracing::debug!(command = %self.names.command(), attempts = self.attempts, "RPC answer consumer lost; sending again");
                    self.attempts += 1;
                    self.send().await?;
                }
                Ok(Heard::Lost) => return Err(Error::Closed("the producer's reply consumer")),
                Err(_) if self.attempts <= self.max_retry && !self.inherited_passed() => {
                    tracing::debug!(command = %self.names.command(), attempts = self.attempts, "RPC timed out; sending again");
                    // Its answer may have come without a correlation id, from a queue
                    // consumed by Python and postage receivers alike.
                    if matches!(self.replies, CallReplies::Shared)
                        && self.producer.rpc_state().replies.destinations.is_mixed()
                    {
                        self.replies = CallReplies::Own(None);
                    }
                    self.attempts += 1;
                    self.send().await?;
                }
                Err(_) => return Err(self.timed_out()),
            }
        }
    }

    /// A beat came: the call waits two intervals more for the next (within its answer's
    /// limit), and hands its value on.
    fn beat(&mut self, body: &[u8]) {
        let Some(beats) = &self.progress else {
            return;
        };
        let next = instant_after(beats.interval * 2).min(beats.limit);
        self.deadline = self.capped(next);
        if let Some(on_progress) = &beats.on_progress {
            let value = serde_json::from_slice(body).unwrap_or(serde_json::Value::Null);
            (on_progress.0)(value);
        }
    }

    /// `at`, or the deadline of the handler run the call was made in if that is sooner.
    fn capped(&self, at: tokio::time::Instant) -> tokio::time::Instant {
        self.inherited.map_or(at, |inherited| inherited.min(at))
    }

    /// True once the deadline of the handler run the call was made in has passed.
    fn inherited_passed(&self) -> bool {
        self.inherited
            .is_some_and(|at| at <= tokio::time::Instant::now())
    }

    /// Waits for this call's answer, reading the producer's answers for every call while
    /// no other call does.
    async fn answer(&mut self) -> Heard {
        // A queue of its own: whatever comes there answers this call, correlated or not.
        if let CallReplies::Own(Some(own)) = &mut self.replies {
            let Some(Ok(delivery)) = own.answers.next().await else {
                return Heard::Lost;
            };
            if progress::is_beat(&delivery.properties) {
                return Heard::Progress(delivery.data);
            }
            let destinations = &self.producer.rpc_state().replies.destinations;
            if delivery.properties.correlation_id().is_some() {
                destinations.answered_correlated(self.destination);
            } else if destinations.answered_uncorrelated(self.destination) {
                tracing::info!(
                    exchange = %self.names.exchange(),
                    routing_key = %self.names.routing_key(),
                    "this destination answers RPC calls without a correlation id (Python \
                     Postage 1.x receivers do): its calls get a reply queue of their own"
                );
            }
            return Heard::Answer(delivery.data);
        }
        self.producer
            .rpc_state()
            .replies
            .wait(&mut self.receiver)
            .await
    }

    /// Decodes an answer; one that is not a Postage message is logged, and the call
    /// waits on for another.
    fn read(&mut self, body: &[u8]) -> Option<Message> {
        match self.producer.encoder().decode(body) {
            Ok(message) => Some(message),
            Err(error) => {
                tracing::warn!(command = %self.names.command(), %error, "dropping a malformed RPC answer");
                self.wait_again();
                None
            }
        }
    }

    /// Registers the call for its next answer, as sent for the consumer of `self.epoch`.
    fn wait_again(&mut self) {
        if matches!(self.replies, CallReplies::Own(_)) {
            return;
        }
        let (answer, receiver) = oneshot::channel();
        let waiter = Waiter {
            epoch: self.epoch,
            destination: self.destination,
            answer,
            beats: self.progress.as_ref().map(|p| p.sender.clone()),
        };
        // A call with beats waits for its answer until its limit, past many deadlines.
        let until = match &self.progress {
            Some(beats) => self.capped(beats.limit),
            None => self.deadline,
        };
        self.producer
            .rpc_state()
            .replies
            .waiters
            .wait(&self.correlation_id, until, waiter);
        self.receiver = receiver;
    }
}

impl Drop for PendingCall {
    fn drop(&mut self) {
        self.producer
            .rpc_state()
            .replies
            .waiters
            .forget(&self.correlation_id);
    }
}

/// How a call that failed with `error` ended, as spans and metrics name it.
fn failure(error: &Error) -> &'static str {
    match error {
        Error::RemoteError { .. } => "error",
        Error::RemoteException { .. } => "exception",
        Error::RpcTimeout { .. } => "timeout",
        _ => "failed",
    }
}

#[cfg(test)]
mod tests {
    use super::Names;

    #[test]
    fn names_give_back_each_part() {
        let names = Names::new("echo", "", "rpc.échos");
        assert_eq!(
            (names.command(), names.exchange(), names.routing_key()),
            ("echo", "", "rpc.échos")
        );
        let names = Names::new("", "postage-exchange", "");
        assert_eq!(
            (names.command(), names.exchange(), names.routing_key()),
            ("", "postage-exchange", "")
        );
    }
}
