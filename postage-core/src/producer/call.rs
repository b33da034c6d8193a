//! RPC calls from a producer: many calls in flight on one channel, each matched to its
//! answer by correlation id through the RPC engine, the answers coming back over
//! RabbitMQ's direct reply-to, a private reply queue, or a queue per call (see
//! [`ReplyQueue`]).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::types::ShortString;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use crate::connection::ChannelLease;
use crate::deadline::instant_after;
use crate::error::{Error, Result};
use crate::producer::{Producer, Publish, Route};
use crate::rpc::{Destination, Heard, Replies, ReplyQueue, progress, start_reply_consumer};
use crate::telemetry::{current_deadline, span, with_deadline};
use crate::topology::Exchange;
use crate::wire::json;
use crate::wire::{Category, Message, RpcResult};

/// The pause before a call whose send was lost with its connection is sent again: time
/// for lapin to see the loss, so the next send waits for the new channel.
const RESEND_PAUSE: Duration = Duration::from_millis(50);

/// How long an RPC call waits and how often it is re-sent.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RpcSettings {
    pub(crate) timeout: Duration,
    pub(crate) max_retry: u32,
    pub(crate) reply_queue: ReplyQueue,
}

impl Default for RpcSettings {
    /// Postage's defaults: 30 s, re-sent up to 4 times; answers over a private queue.
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            max_retry: 4,
            reply_queue: ReplyQueue::default(),
        }
    }
}

/// A call waiting for its answer on the shared reply queue.
#[derive(Debug)]
struct Waiter {
    /// The reply consumer (its epoch) the call was last sent for.
    epoch: u64,
    /// Where the call went.
    destination: Destination,
    answer: oneshot::Sender<Heard>,
    /// Where its progress beats go, when it asked for them.
    beats: Option<mpsc::Sender<Vec<u8>>>,
}

impl crate::rpc::Waiter for Waiter {
    fn epoch(&self) -> u64 {
        self.epoch
    }

    fn destination(&self) -> Option<Destination> {
        Some(self.destination)
    }

    fn hear(self, heard: Heard) {
        let _ = self.answer.send(heard);
    }

    fn progress(&self, body: Vec<u8>) {
        // A beat the call has no room for tells nothing the ones waiting do not.
        if let Some(beats) = &self.beats {
            let _ = beats.try_send(body);
        }
    }
}

/// A producer's RPC settings and its calls in flight, whose answers come on a reply
/// consumer started with the first call.
#[derive(Debug)]
pub(crate) struct RpcState {
    pub(crate) settings: RpcSettings,
    replies: Replies<Waiter>,
}

impl RpcState {
    pub(crate) fn new(settings: RpcSettings) -> Self {
        Self {
            settings,
            replies: Replies::new(settings.reply_queue),
        }
    }
}

/// Per-call RPC settings: route, timeout and retries, each defaulting to the producer's;
/// progress beats for a long call.
#[derive(Debug, Clone, Default)]
pub struct RpcOptions {
    route: Option<Route>,
    timeout: Option<Duration>,
    max_retry: Option<u32>,
    reply_queue: Option<ReplyQueue>,
    progress: Option<Duration>,
    answer_within: Option<Duration>,
    on_progress: Option<OnProgress>,
}

/// How long a call that asked for progress beats waits for its answer at most, unless
/// [`RpcOptions::answer_within`] says.
pub const DEFAULT_ANSWER_WITHIN: Duration = Duration::from_secs(3600);

/// How many progress beats a call keeps unread; more are dropped until it reads them.
const BEATS_KEPT: usize = 64;

/// What a call does with each progress value.
#[derive(Clone)]
struct OnProgress(Arc<dyn Fn(serde_json::Value) + Send + Sync>);

impl std::fmt::Debug for OnProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnProgress(..)")
    }
}

impl RpcOptions {
    /// The producer's defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sends the call along `route`; only its first (exchange, key) pair is used.
    #[must_use]
    pub fn route(mut self, route: Route) -> Self {
        self.route = Some(route);
        self
    }

    /// Sends the call with routing key `key` on the producer's first exchange.
    #[must_use]
    pub fn key(self, key: impl Into<String>) -> Self {
        self.route(Route::Key(key.into()))
    }

    /// How long each attempt waits for the answer (Postage: 30 s).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Where this call's answer comes back, instead of the producer's
    /// [`ReplyQueue`]. Python Postage 1.x receivers, which answer without a correlation
    /// id, need nothing set: a call to one is sent again on a queue of its own, and the
    /// producer calls it so from then on.
    #[must_use]
    pub fn reply_queue(mut self, reply_queue: ReplyQueue) -> Self {
        self.reply_queue = Some(reply_queue);
        self
    }

    /// How many times the call is re-sent after a timeout (Postage: 4).
    #[must_use]
    pub fn max_retry(mut self, max_retry: u32) -> Self {
        self.max_retry = Some(max_retry);
        self
    }

    /// A long call that shows it is alive: the call asks its server (in the header
    /// [`PROGRESS_HEADER`](crate::PROGRESS_HEADER); nothing changes for a caller that
    /// does not ask, a Python Postage one included) for a progress beat every `interval`
    /// while the handler runs. The call's timeout then bounds the wait for the first beat
    /// (or the answer); after each beat the call waits at most two intervals for the
    /// next, and for the answer at most [`RpcOptions::answer_within`] in all (default
    /// [`DEFAULT_ANSWER_WITHIN`], an hour), which is also the handler's deadline. So a
    /// ten-minute handler is not cut off by a 30 s timeout, and a server killed mid-call
    /// is noticed an interval after its last beat was due, not at the end of the timeout:
    /// the call is then sent again as after a timeout, up to its retries. A server that
    /// does not know beats (Python Postage) sends none: the call times out as any other.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use postage_core::{Connection, Exchange, Producer, RpcOptions};
    ///
    /// const REPORTS: Exchange = Exchange::new("reports-exchange");
    ///
    /// # async fn demo() -> postage_core::Result<()> {
    /// let connection = Connection::from_env().await?;
    /// let producer = Producer::builder(&connection)
    ///     .destination(REPORTS, "reports")
    ///     .build()
    ///     .await?;
    /// let options = RpcOptions::new()
    ///     .timeout(Duration::from_secs(30))
    ///     .progress(Duration::from_secs(5))
    ///     .answer_within(Duration::from_secs(20 * 60))
    ///     .on_progress(|value| println!("progress: {value}"));
    /// let report: String = producer.call_with("build_report", 300, options).await?;
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn progress(mut self, interval: Duration) -> Self {
        self.progress = Some(interval.max(crate::rpc::progress::MIN_BEAT));
        self
    }

    /// How long a call with [`RpcOptions::progress`] waits for its answer in all,
    /// however long its beats keep coming.
    #[must_use]
    pub fn answer_within(mut self, limit: Duration) -> Self {
        self.answer_within = Some(limit);
        self
    }

    /// Runs `on_progress` with each beat of a call with [`RpcOptions::progress`], as it
    /// comes: the value the handler gave [`Reply::progress`](crate::Reply::progress), or
    /// `null` for a plain beat. It runs on the task awaiting the answer: keep it short.
    #[must_use]
    pub fn on_progress(
        mut self,
        on_progress: impl Fn(serde_json::Value) + Send + Sync + 'static,
    ) -> Self {
        self.on_progress = Some(OnProgress(Arc::new(on_progress)));
        self
    }
}

impl Producer {
    /// Calls the RPC command `name` with `parameters` and returns the answer as Postage
    /// does: a success, error or exception result; after the last retry an exception of
    /// kind `TimeoutError`.
    pub async fn rpc(&self, name: &str, parameters: impl Serialize) -> Result<RpcResult> {
        self.rpc_with(name, parameters, RpcOptions::new()).await
    }

    /// [`Producer::rpc`] with per-call options.
    pub async fn rpc_with(
        &self,
        name: &str,
        parameters: impl Serialize,
        options: RpcOptions,
    ) -> Result<RpcResult> {
        match self
            .rpc_deferred(name, parameters, options)
            .await?
            .result()
            .await
        {
            Err(Error::RpcTimeout {
                attempts, timeout, ..
            }) => Ok(RpcResult::exception(
                "TimeoutError",
                format!("no answer in {attempts} attempts of {timeout:?}"),
            )),
            other => other,
        }
    }

    /// Calls `name` and decodes a success into `T`; an error or exception result is
    /// [`Error::RemoteError`] or [`Error::RemoteException`], no answer [`Error::RpcTimeout`].
    pub async fn call<T: DeserializeOwned>(
        &self,
        name: &str,
        parameters: impl Serialize,
    ) -> Result<T> {
        self.call_with(name, parameters, RpcOptions::new()).await
    }

    /// [`Producer::call`] with per-call options.
    pub async fn call_with<T: DeserializeOwned>(
        &self,
        name: &str,
        parameters: impl Serialize,
        options: RpcOptions,
    ) -> Result<T> {
        self.rpc_deferred(name, parameters, options)
            .await?
            .value()
            .await
    }

    /// Sends the call now and returns a [`PendingCall`] to await the answer later
    /// (Postage's `_queue_only`).
    pub async fn rpc_deferred(
        &self,
        name: &str,
        parameters: impl Serialize,
        options: RpcOptions,
    ) -> Result<PendingCall> {
        let state = self.rpc_state();
        let (exchange, routing_key, body) =
            self.request(name, parameters, &options.route.unwrap_or_default())?;
        let exchange = exchange.name().to_owned();
        let destination = Destination::new(&exchange, &routing_key);
        let id = state.replies.waiters.next_id();
        // Registered for its answer by `send`.
        let (_, receiver) = oneshot::channel();
        let timeout = options.timeout.unwrap_or(state.settings.timeout);
        let span = span::call(name, &exchange, &routing_key);
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
        let mut call = PendingCall {
            producer: self.clone(),
            names: Names::new(name, &exchange, &routing_key),
            body: body.into_boxed_slice(),
            correlation_id: id,
            receiver,
            timeout,
            max_retry: options.max_retry.unwrap_or(state.settings.max_retry),
            attempts: 1,
            deadline: instant_after(timeout),
            inherited: current_deadline(),
            span,
            started: tokio::time::Instant::now(),
            epoch: 0,
            destination,
            progress,
            replies: if self.recording().is_none()
                && (options.reply_queue.unwrap_or(state.settings.reply_queue)
                    == ReplyQueue::PerCall
                    || state.replies.destinations.needs_own_queue(destination))
            {
                CallReplies::Own(None)
            } else {
                CallReplies::Shared
            },
        };
        let span = call.span.clone();
        if let Err(error) = call.send().instrument(span).await {
            call.conclude("failed");
            return Err(error);
        }
        Ok(call)
    }
}

impl Producer {
    /// The exchange, routing key and body of a call of `name` along `route`.
    fn request(
        &self,
        name: &str,
        parameters: impl Serialize,
        route: &Route,
    ) -> Result<(Exchange, String, Vec<u8>)> {
        let (exchange, routing_key) = self
            .resolve(route)?
            .first()
            .map(|(e, k)| (e.clone(), k.clone()))
            .ok_or_else(|| Error::config("route", "an RPC route needs one (exchange, key) pair"))?;
        let body = if self.plain_json() {
            self.command_body(name, Category::Rpc, &parameters)?
        } else {
            let message = Message::rpc_command(name, parameters)?
                .with_fingerprint(self.fingerprint().clone());
            if self.debug() {
                tracing::info!(exchange = %exchange.name(), routing_key = %routing_key, name, content = %message.content, "--> RPC call");
            }
            self.encoder().encode(&message)?
        };
        Ok((exchange, routing_key, body))
    }

    /// Calls `name` on every component `route` reaches (a fanout key runs the handler on
    /// each) and collects their answers for `wait`, or, with `after_first`, until that
    /// long after the first one. The answers come on a reply queue of the call's own (as
    /// [`ReplyQueue::PerCall`]), so answers without a correlation id count too. Sending
    /// counts against `wait`; under a resource alarm the call fails with
    /// [`Error::Blocked`]. A reliable producer reports a route no queue takes as
    /// [`Error::Unroutable`].
    pub async fn gather(
        &self,
        name: &str,
        parameters: impl Serialize,
        route: &Route,
        wait: Duration,
        after_first: Option<Duration>,
    ) -> Result<Vec<RpcResult>> {
        let (exchange, routing_key, body) = self.request(name, parameters, route)?;
        let id = self.rpc_state().replies.waiters.next_id();
        if let Some(recording) = self.recording() {
            let properties = self.properties().with_correlation_id(id.as_ref().into());
            let publish = Publish::new(exchange.name(), &routing_key, &body, properties);
            self.send_unbounded(publish.mandatory(true)).await?;
            return Ok(recording.answer_of(name).into_iter().collect());
        }
        let link = self.link()?;
        let asked = async {
            self.ensure_declared(&exchange).await?;
            let channel = link.lease_channel().await?;
            let (address, answers) =
                start_reply_consumer(link, &channel, ReplyQueue::PerCall).await?;
            let properties = self
                .properties()
                .with_reply_to(address)
                .with_correlation_id(id.as_ref().into());
            let publish = Publish::new(exchange.name(), &routing_key, &body, properties);
            self.send_unbounded(publish.mandatory(true)).await?;
            Ok::<_, Error>((channel, answers))
        };
        let Ok(asked) = tokio::time::timeout(wait, asked).await else {
            return Err(self.overdue(
                format!("calling {name:?} on routing key {routing_key:?}"),
                wait,
            ));
        };
        let (_channel, mut answers) = asked?;
        let mut found = Vec::new();
        let mut deadline = instant_after(wait);
        while let Ok(Some(Ok(delivery))) = tokio::time::timeout_at(deadline, answers.next()).await {
            match self.encoder().decode(&delivery.data) {
                Ok(answer) => found.push(answer.to_result()),
                Err(error) => tracing::warn!(%error, name, "ignoring a malformed answer"),
            }
            if let Some(grace) = after_first
                && found.len() == 1
            {
                deadline = deadline.min(instant_after(grace));
            }
        }
        Ok(found)
    }
}

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

impl Producer {
    /// The `reply_to` address of this producer's calls and the epoch of the answer
    /// consumer behind it, starting that consumer on the live channel when it is not
    /// running there yet.
    async fn reply_address(&self) -> Result<(ShortString, u64)> {
        if self.recording().is_some() {
            return Ok((ShortString::from("postage.recording"), 0));
        }
        let channel = self.live_channel().await?;
        self.rpc_state()
            .replies
            .address(self.link()?, &channel)
            .await
    }
}

impl Producer {
    /// Hands a recorded call's answer to the call waiting for it.
    pub(super) fn answer_recorded(&self, correlation_id: &str, body: Vec<u8>) {
        self.rpc_state().replies.hand(correlation_id, body);
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
