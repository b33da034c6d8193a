//! Running a component: a processor consumes its queues and dispatches each message to
//! the handlers its `#[processor]` impl blocks registered, per the Postage wire contract.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use lapin::options::BasicPublishOptions;
use tokio::sync::Notify;

use crate::connection::Connection;
use crate::consumer::{Consumer, ConsumerBuilder, ConsumerHandle, Delivery};
use crate::error::{Error, Result};
use crate::handler::{
    BoxFuture, Filtered, HandlerCall, HandlerRegistration, Metadata, Outcome, Reply, ReplySender,
};
use crate::rpc::ReturnAddress;
use crate::topology::Exchange;
use crate::topology::Queue;
use crate::wire::Fingerprint;
use crate::wire::json;
use crate::wire::{COMMAND, Category, Message, RpcResult};
use crate::wire::{Encoder, JsonEncoder};

mod acks;

use acks::Acks;

/// Why [`Processor::run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Exit {
    /// A `quit` command arrived.
    Quit,
    /// [`ProcessorHandle::shutdown`] was called.
    Shutdown,
    /// The broker cancelled the consumer or closed its channel.
    ConsumerClosed,
}

/// Stops a running processor from elsewhere: it stops taking deliveries, finishes the
/// handlers in flight, and [`Processor::run`] returns [`Exit::Shutdown`].
#[derive(Debug, Clone)]
pub struct ProcessorHandle {
    stop: Arc<Stop>,
}

impl ProcessorHandle {
    /// Asks the processor to stop.
    pub fn shutdown(&self) {
        self.stop.requested.store(true, Ordering::SeqCst);
        self.stop.wake.notify_one();
    }
}

/// A stop request: a flag read between deliveries, and a wake-up for a waiting loop.
#[derive(Debug, Default)]
struct Stop {
    requested: AtomicBool,
    wake: Notify,
}

/// Configures a [`Processor`]; made by [`Processor::builder`].
#[derive(Debug)]
pub struct ProcessorBuilder<P> {
    connection: Connection,
    state: P,
    more_handlers: Vec<HandlerSet>,
    consumer: ConsumerBuilder,
    prefetch: u16,
    concurrency: usize,
    limits: Limits,
    fingerprint: Option<Fingerprint>,
    encoder: Arc<dyn Encoder>,
    /// The default JSON encoder: answers are written straight from their parts.
    plain_json: bool,
}

/// Who may send the control commands, how big a body may be, and how a stop goes.
#[derive(Debug, Clone)]
struct Limits {
    control: ControlPolicy,
    max_body: usize,
    stop_on_signals: bool,
    shutdown_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            control: ControlPolicy::Anyone,
            max_body: DEFAULT_MAX_BODY,
            stop_on_signals: false,
            shutdown_timeout: Duration::from_secs(30),
        }
    }
}

/// Who may send `quit` and `restart` (and, in a GenericApplication, `join_group` and
/// `leave_group`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlPolicy {
    /// Nobody: the commands are ignored (not even acknowledged as control commands;
    /// handlers of the same name still run).
    Off,
    /// Any sender.
    Anyone,
    /// Only messages whose AMQP `user_id` (which RabbitMQ validates against the sender's
    /// login) is one of these; others are acknowledged, ignored and logged.
    Users(Vec<String>),
}

impl ControlPolicy {
    /// Whether a message sent with `user_id` may control the component.
    pub fn allows(&self, user_id: Option<&str>) -> bool {
        match self {
            Self::Off => false,
            Self::Anyone => true,
            Self::Users(users) => user_id.is_some_and(|id| users.iter().any(|u| u == id)),
        }
    }
}

/// A processor's prefetch unless set.
const DEFAULT_PREFETCH: u16 = 10;

/// The largest body a processor accepts by default: 16 MiB.
pub const DEFAULT_MAX_BODY: usize = 16 * 1024 * 1024;

impl<P: Send + Sync + 'static> ProcessorBuilder<P> {
    /// Binds `queue` to `exchange` with `routing_key`.
    #[must_use]
    pub fn bind(
        mut self,
        exchange: Exchange,
        queue: impl Into<Queue>,
        routing_key: impl Into<String>,
    ) -> Self {
        self.consumer = self.consumer.bind(exchange, queue, routing_key);
        self
    }

    /// Binds several (queue, routing key) pairs to one exchange (Postage's `eqk`).
    #[must_use]
    pub fn bindings<Q: Into<Queue>, K: Into<String>>(
        mut self,
        exchange: Exchange,
        pairs: impl IntoIterator<Item = (Q, K)>,
    ) -> Self {
        self.consumer = self.consumer.bindings(exchange, pairs);
        self
    }

    /// How many unacknowledged messages the broker may hand over at once (default 10).
    /// Acknowledgements go out in batches of up to half of it, and at once whenever the
    /// queues are quiet.
    #[must_use]
    pub fn prefetch(mut self, prefetch: u16) -> Self {
        self.consumer = self.consumer.prefetch(prefetch);
        self.prefetch = prefetch;
        self
    }

    /// How many messages may be in their handlers at once (default 1: one at a time, in
    /// order). Handlers take turns on the processor's task, as async code does: one that
    /// computes for long should hand the work to `tokio::task::spawn_blocking`.
    #[must_use]
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// Also serves the handlers of `other`'s `#[processor]` impls on this processor's
    /// queues, with `other` as their `&self`: how a component adds its own handlers to a
    /// ready-made one (a GenericApplication, say) without copying its code.
    #[must_use]
    pub fn handlers<Q: Send + Sync + 'static>(mut self, other: Q) -> Self {
        self.more_handlers.push(HandlerSet::of(Arc::new(other)));
        self
    }

    /// Whether the built-in `quit` and `restart` commands are served (default: yes).
    #[must_use]
    pub fn control_commands(mut self, enabled: bool) -> Self {
        self.limits.control = if enabled {
            ControlPolicy::Anyone
        } else {
            ControlPolicy::Off
        };
        self
    }

    /// Sets who may send the control commands (see [`ControlPolicy`]).
    #[must_use]
    pub fn control_policy(mut self, policy: ControlPolicy) -> Self {
        self.limits.control = policy;
        self
    }

    /// The largest body accepted (default [`DEFAULT_MAX_BODY`]); a bigger one is rejected
    /// unread, with a log line.
    #[must_use]
    pub fn max_body_size(mut self, bytes: usize) -> Self {
        self.limits.max_body = bytes;
        self
    }

    /// Stops the processor on SIGTERM or SIGINT as [`ProcessorHandle::shutdown`] does.
    #[must_use]
    pub fn stop_on_signals(mut self, enabled: bool) -> Self {
        self.limits.stop_on_signals = enabled;
        self
    }

    /// How long a stop waits for the handlers in flight (default 30 s); deliveries whose
    /// handlers have not finished by then are left unacknowledged, so the broker delivers
    /// them again.
    #[must_use]
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.limits.shutdown_timeout = timeout;
        self
    }

    /// The fingerprint stamped on RPC answers (default: this process, no name).
    #[must_use]
    pub fn fingerprint(mut self, fingerprint: Fingerprint) -> Self {
        self.fingerprint = Some(fingerprint);
        self
    }

    /// Replaces the JSON encoder.
    #[must_use]
    pub fn encoder(mut self, encoder: impl Encoder + Clone) -> Self {
        self.consumer = self.consumer.encoder(encoder.clone());
        self.encoder = Arc::new(encoder);
        self.plain_json = false;
        self
    }

    /// Collects the handlers registered for `P` (an error names both places of two RPC
    /// handlers for one command), then declares and binds the queues.
    pub async fn build(self) -> Result<Processor<P>> {
        let state = Arc::new(self.state);
        let mut sets = vec![HandlerSet::of(Arc::clone(&state))];
        sets.extend(self.more_handlers);
        let table = HandlerTable::new(&sets)?;
        let consumer = self.consumer.build().await?;
        Ok(Processor {
            connection: self.connection,
            shared: Arc::new(Shared {
                state,
                table,
                consumer: consumer.handle(),
                encoder: self.encoder,
                plain_json: self.plain_json,
                fingerprint: Arc::new(self.fingerprint.unwrap_or_default()),
            }),
            consumer,
            prefetch: self.prefetch,
            concurrency: self.concurrency,
            limits: self.limits,
            stop: Arc::default(),
        })
    }
}

/// A component: a value whose `#[processor]` impl blocks declare handlers, consuming its
/// queues. Several processors run side by side on one runtime with `tokio::join!`.
///
/// ```no_run
/// use postage_core::{processor, Connection, Exchange, HandlerError, Processor};
///
/// const ECHO: Exchange = Exchange::new("echo-exchange");
///
/// struct Echo;
///
/// #[processor]
/// impl Echo {
///     #[message_handler("command", "echo")]
///     fn echo(&self, text: String) {
///         println!("{text}");
///     }
///
///     #[rpc_handler("command", "upper")]
///     async fn upper(&self, text: String) -> Result<String, HandlerError> {
///         Ok(text.to_uppercase())
///     }
/// }
///
/// # async fn demo() -> postage_core::Result<()> {
/// let connection = Connection::from_env().await?;
/// let echo = Processor::builder(&connection, Echo)
///     .bind(ECHO, "echo-queue", "echo-rk")
///     .build()
///     .await?;
/// echo.run().await?; // until a `quit` command
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Processor<P> {
    connection: Connection,
    shared: Arc<Shared<P>>,
    consumer: Consumer,
    prefetch: u16,
    concurrency: usize,
    limits: Limits,
    stop: Arc<Stop>,
}

#[derive(Debug)]
struct Shared<P> {
    state: Arc<P>,
    table: HandlerTable,
    /// Answers go out on the consumer's live channel.
    consumer: ConsumerHandle,
    encoder: Arc<dyn Encoder>,
    plain_json: bool,
    fingerprint: Arc<Fingerprint>,
}

/// What the loop does with one delivery before handing it to the handlers.
enum Control {
    Quit,
    Restart,
}

impl<P: Send + Sync + 'static> Processor<P> {
    /// Starts configuring a processor with state `state` on `connection`.
    pub fn builder(connection: &Connection, state: P) -> ProcessorBuilder<P> {
        ProcessorBuilder {
            connection: connection.clone(),
            state,
            more_handlers: Vec::new(),
            consumer: Consumer::builder(connection).prefetch(DEFAULT_PREFETCH),
            prefetch: DEFAULT_PREFETCH,
            concurrency: 1,
            limits: Limits::default(),
            fingerprint: None,
            encoder: Arc::new(JsonEncoder),
            plain_json: true,
        }
    }

    /// A handle that stops [`Processor::run`] from another task.
    pub fn handle(&self) -> ProcessorHandle {
        ProcessorHandle {
            stop: Arc::clone(&self.stop),
        }
    }

    /// The processor's consumer: bind and unbind queues at run time through it.
    pub fn consumer(&self) -> &Consumer {
        &self.consumer
    }

    /// The processor's state.
    pub fn state(&self) -> &Arc<P> {
        &self.shared.state
    }

    /// Every message this processor answers to (its handlers', built-ins left out).
    pub fn handlers(&self) -> Vec<HandlerInfo> {
        self.shared.table.describe()
    }

    /// Consumes and dispatches until a `quit` command, a shutdown through a
    /// [`ProcessorHandle`], or the end of the consumer; then finishes the handlers in
    /// flight and returns. A `restart` command replaces the process with a new run of the
    /// same executable and arguments (same pid) and so never returns.
    pub async fn run(mut self) -> Result<Exit> {
        self.consumer.start().await?;
        if self.limits.stop_on_signals {
            watch_signals(self.handle())?;
        }
        let (shared, stop) = (Arc::clone(&self.shared), Arc::clone(&self.stop));
        // With prefetch 0 (no limit) acknowledgements wait for a quiet queue or 100 more.
        let mut acks = Acks::new(match self.prefetch {
            0 => 100,
            prefetch => usize::from(prefetch / 2),
        });
        // The handlers in flight run on this task: no task and no wake-up per message.
        let mut running = FuturesUnordered::new();
        let mut control = None;
        let exit = loop {
            // What finished is settled first, without waiting.
            while let Some(Some((ticket, ok))) = running.next().now_or_never() {
                acks.finish(ticket, ok).await;
            }
            if stop.requested.load(Ordering::Relaxed) {
                break Exit::Shutdown;
            }
            let free = running.len() < self.concurrency;
            // A delivery ready now is taken at once; before waiting for one, what
            // finished is acknowledged.
            let ready = if free {
                self.consumer.next().now_or_never()
            } else {
                None
            };
            let next = match ready {
                Some(next) => next,
                None => {
                    if free {
                        acks.flush(true).await;
                    }
                    tokio::select! {
                        biased;
                        () = stop.wake.notified() => break Exit::Shutdown,
                        Some((ticket, ok)) = running.next(), if !running.is_empty() => {
                            acks.finish(ticket, ok).await;
                            continue;
                        }
                        next = self.consumer.next(), if free => next,
                    }
                }
            };
            let delivery = match next {
                Some(Ok(delivery)) => delivery,
                Some(Err(error)) => {
                    tracing::error!(%error, "consumer failed");
                    break Exit::ConsumerClosed;
                }
                None => break Exit::ConsumerClosed,
            };
            let Some(ticket) = acks.start(&delivery) else {
                tracing::debug!(
                    queue = delivery.queue(),
                    "skipping a delivery of a lost channel; the broker delivers it again"
                );
                continue;
            };
            let Some(message) = self.admit(&delivery) else {
                acks.finish(ticket, false).await;
                continue;
            };
            if let Some(command) = control_command(&message) {
                let user = delivery.properties().user_id().as_ref().map(|u| u.as_str());
                if self.limits.control.allows(user) {
                    acks.finish(ticket, true).await;
                    control = Some(command);
                    break Exit::Quit;
                }
                if self.limits.control != ControlPolicy::Off {
                    tracing::warn!(command = %message.name, user = user.unwrap_or("<none>"), "ignoring a control command from a sender not allowed to send it");
                    acks.finish(ticket, true).await;
                    continue;
                }
            }
            let shared = &*shared;
            running.push(async move { (ticket, shared.dispatch(&delivery, message).await) });
        };
        self.consumer.stop().await?;
        // Deliveries received but not started go straight back to their queue.
        for delivery in self.consumer.take_buffered() {
            if let Err(error) = delivery.reject(true).await {
                tracing::warn!(%error, "could not hand a delivery back");
            }
        }
        let finished = tokio::time::timeout(self.limits.shutdown_timeout, async {
            while let Some((ticket, ok)) = running.next().await {
                acks.finish(ticket, ok).await;
            }
        })
        .await;
        if finished.is_err() {
            tracing::warn!(
                left = running.len(),
                "handlers still running at the shutdown timeout; their messages will be delivered again"
            );
        }
        drop(running);
        acks.flush(true).await;
        self.consumer.close().await?;
        if let Some(Control::Restart) = control {
            restart(&self.connection).await;
        }
        tracing::info!(?exit, "processor stopped");
        Ok(exit)
    }

    /// Decodes a delivery, or says with a log line why it must be rejected: too big, a
    /// content type of another encoding, not a message.
    fn admit(&self, delivery: &Delivery) -> Option<Message> {
        let why = if delivery.body().len() > self.limits.max_body {
            Some(format!(
                "body of {} bytes exceeds the limit of {}",
                delivery.body().len(),
                self.limits.max_body
            ))
        } else {
            match delivery.properties().content_type() {
                Some(kind) if kind.as_str() != self.shared.encoder.content_type() => Some(format!(
                    "content type {:?} is not {:?}",
                    kind.as_str(),
                    self.shared.encoder.content_type()
                )),
                _ => None,
            }
        };
        let message = match why {
            Some(why) => Err(why),
            None => delivery.message().map_err(|e| e.to_string()),
        };
        match message {
            Ok(message) => {
                if self.connection.config().debug {
                    tracing::info!(queue = delivery.queue(), routing_key = delivery.routing_key(), kind = %message.kind, name = %message.name, category = message.category.as_str(), sender = %message.fingerprint.name, content = %message.content, "<-- received");
                }
                Some(message)
            }
            Err(reason) => {
                tracing::warn!(queue = delivery.queue(), routing_key = delivery.routing_key(), %reason, "rejecting a delivery");
                None
            }
        }
    }
}

/// Shuts the processor down on the first SIGTERM or SIGINT.
fn watch_signals(handle: ProcessorHandle) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let listen = |kind: SignalKind| {
        signal(kind)
            .map_err(|e| Error::config("stop_on_signals", format!("cannot listen to signals: {e}")))
    };
    let (mut term, mut int) = (
        listen(SignalKind::terminate())?,
        listen(SignalKind::interrupt())?,
    );
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping"),
            _ = int.recv() => tracing::info!("SIGINT: stopping"),
        }
        handle.shutdown();
    });
    Ok(())
}

fn control_command(message: &Message) -> Option<Control> {
    if message.category != Category::Message || message.kind != COMMAND {
        return None;
    }
    match message.name.as_str() {
        "quit" => Some(Control::Quit),
        "restart" => Some(Control::Restart),
        _ => None,
    }
}

/// Replaces the process with a new run of the same program and arguments.
async fn restart(connection: &Connection) {
    let _ = connection.close().await;
    let program = std::env::current_exe()
        .map(|p| {
            let text = p.to_string_lossy();
            text.strip_suffix(" (deleted)")
                .map_or(p.clone(), Into::into)
        })
        .unwrap_or_default();
    let to_c = |s: &std::ffi::OsStr| std::ffi::CString::new(s.as_encoded_bytes().to_vec()).ok();
    let args: Option<Vec<_>> = std::env::args_os().map(|a| to_c(&a)).collect();
    match (to_c(program.as_os_str()), args) {
        (Some(program), Some(args)) => {
            tracing::info!(program = ?program, "restarting");
            let Err(error) = nix::unistd::execv(&program, &args);
            tracing::error!(%error, "restart failed");
        }
        _ => tracing::error!("restart failed: the program path or an argument holds a NUL byte"),
    }
}

fn metadata(delivery: &Delivery) -> Metadata {
    let properties = delivery.properties();
    Metadata {
        queue: delivery.queue().to_owned(),
        exchange: delivery.exchange().to_owned(),
        routing_key: delivery.routing_key().to_owned(),
        redelivered: delivery.redelivered(),
        headers: properties.headers().clone().unwrap_or_default(),
        reply_to: properties.reply_to().as_ref().map(ToString::to_string),
        correlation_id: properties
            .correlation_id()
            .as_ref()
            .map(ToString::to_string),
        user_id: properties.user_id().as_ref().map(ToString::to_string),
    }
}

impl<P: Send + Sync + 'static> Shared<P> {
    /// Runs the handlers for a delivery; false when it must be rejected.
    async fn dispatch(&self, delivery: &Delivery, message: Message) -> bool {
        let metadata = metadata(delivery);
        match message.category {
            Category::Message => self.dispatch_message(message, metadata).await,
            Category::Rpc => self.dispatch_rpc(message, metadata).await,
        }
    }

    /// Runs every handler for the message, each on the message decoded once (the last
    /// one takes it, the others a copy); false when one failed or a filter rejected.
    async fn dispatch_message(&self, message: Message, metadata: Metadata) -> bool {
        let mut ok = true;
        let handlers = self.table.message_handlers(&message.kind, &message.name);
        let Some((last, others)) = handlers.split_last() else {
            return true;
        };
        for entry in others {
            ok &= self
                .run_message(entry, message.clone(), metadata.clone())
                .await;
        }
        self.run_message(last, message, metadata).await && ok
    }

    /// Runs one message handler through its filters; false when it failed or a filter
    /// rejected the message.
    async fn run_message(&self, entry: &Entry, message: Message, metadata: Metadata) -> bool {
        let handler = entry.registration;
        let copy = match filter(handler, message) {
            None => return true,
            Some(Err(())) => return false,
            Some(Ok(copy)) => copy,
        };
        let call = HandlerCall {
            message: copy,
            metadata,
            reply: None,
        };
        match self.call(entry, call).await {
            Outcome::Failed(reason) => {
                tracing::warn!(handler = handler.method, at = handler.location, kind = handler.kind, name = handler.name, %reason, "message handler failed; rejecting");
                false
            }
            Outcome::Done | Outcome::Answer(_) | Outcome::Replied => true,
        }
    }

    /// Runs the RPC handler and answers; false when the delivery must be rejected.
    async fn dispatch_rpc(&self, message: Message, metadata: Metadata) -> bool {
        if message.kind != COMMAND {
            return true;
        }
        let Some(entry) = self.table.rpc_handler(&message.name) else {
            tracing::debug!(name = %message.name, "no RPC handler; acknowledging");
            return true;
        };
        let handler = entry.registration;
        let Some(reply_to) = metadata.reply_to.clone() else {
            tracing::warn!(handler = handler.method, name = %message.name, "rejecting an RPC call without reply_to");
            return false;
        };
        let copy = match filter(handler, message) {
            None => return true,
            Some(Err(())) => return false,
            Some(Ok(copy)) => copy,
        };
        let sent = Arc::new(AtomicBool::new(false));
        let sender: Arc<dyn ReplySender> = Arc::new(ChannelReply {
            channel: self.consumer.live_channel(),
            to: ReturnAddress::new(reply_to, metadata.correlation_id.as_deref()),
            encoder: (!self.plain_json).then(|| Arc::clone(&self.encoder)),
            fingerprint: Arc::clone(&self.fingerprint),
        });
        let reply = Reply {
            sender: Arc::clone(&sender),
            sent: Arc::clone(&sent),
        };
        let call = HandlerCall {
            message: copy,
            metadata,
            reply: Some(reply),
        };
        let answer = match self.call(entry, call).await {
            Outcome::Answer(result) => result,
            Outcome::Replied | Outcome::Done => {
                RpcResult::error("the handler finished without replying")
            }
            Outcome::Failed(reason) => {
                tracing::warn!(handler = handler.method, at = handler.location, name = handler.name, %reason, "RPC handler failed; answering with an exception");
                RpcResult::exception("HandlerFailed", reason)
            }
        };
        let ok = !matches!(answer, RpcResult::Exception { .. });
        // An answer the handler already sent through its Reply stands.
        if !sent.swap(true, Ordering::SeqCst)
            && let Err(error) = sender.send(answer).await
        {
            tracing::warn!(%error, name = handler.name, "could not send the RPC answer");
        }
        ok
    }

    /// Calls one handler; a panic becomes a failure (answered with an exception in RPC).
    async fn call(&self, entry: &Entry, call: HandlerCall) -> Outcome {
        let handler = entry.registration;
        let rpc = call.reply.is_some();
        match AssertUnwindSafe((handler.call)(Arc::clone(&entry.state), call))
            .catch_unwind()
            .await
        {
            Ok(outcome) => outcome,
            Err(panic) => {
                let text = panic
                    .downcast_ref::<&str>()
                    .map(ToString::to_string)
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "panic".to_owned());
                tracing::error!(handler = handler.method, at = handler.location, panic = %text, "handler panicked");
                if rpc {
                    Outcome::Answer(RpcResult::exception("Panic", text))
                } else {
                    Outcome::Failed(format!("panicked: {text}"))
                }
            }
        }
    }
}

/// Runs the handler's filters: `None` to skip, `Some(Err)` to reject.
fn filter(handler: &HandlerRegistration, mut message: Message) -> Option<Result<Message, ()>> {
    for filter in handler.filters {
        match filter(message) {
            Filtered::Pass(next) => message = next,
            Filtered::Skip => return None,
            Filtered::Reject(reason) => {
                tracing::warn!(handler = handler.method, %reason, "a filter rejected the message");
                return Some(Err(()));
            }
        }
    }
    Some(Ok(message))
}

/// Publishes an RPC answer to the caller's `reply_to` queue through the default exchange.
#[derive(Debug)]
struct ChannelReply {
    channel: lapin::Channel,
    to: ReturnAddress,
    /// `None` for the default JSON encoder.
    encoder: Option<Arc<dyn Encoder>>,
    fingerprint: Arc<Fingerprint>,
}

impl ReplySender for ChannelReply {
    fn send(&self, result: RpcResult) -> BoxFuture<Result<()>> {
        let (body, content_type) = match &self.encoder {
            None => (
                json::result(&result, &self.fingerprint),
                JsonEncoder.content_type(),
            ),
            Some(encoder) => {
                let message =
                    Message::result(&result).with_fingerprint((*self.fingerprint).clone());
                (encoder.encode(&message), encoder.content_type())
            }
        };
        let properties = self.to.properties(content_type);
        let channel = self.channel.clone();
        let reply_to = self.to.reply_to().to_owned();
        Box::pin(async move {
            let body = body?;
            channel
                .basic_publish(
                    "".into(),
                    reply_to.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    properties,
                )
                .await
                .map_err(Error::amqp(format!("answering on {reply_to:?}")))?;
            Ok(())
        })
    }
}

/// One value whose `#[processor]` handlers a processor serves.
#[derive(Debug)]
struct HandlerSet {
    type_id: TypeId,
    state: Arc<dyn Any + Send + Sync>,
}

impl HandlerSet {
    fn of<Q: Send + Sync + 'static>(state: Arc<Q>) -> Self {
        Self {
            type_id: TypeId::of::<Q>(),
            state,
        }
    }
}

/// A registered handler and the value it is a method of.
#[derive(Debug)]
struct Entry {
    registration: &'static HandlerRegistration,
    state: Arc<dyn Any + Send + Sync>,
}

/// The handlers a processor serves, by message.
#[derive(Debug, Default)]
struct HandlerTable {
    /// name -> type -> handlers, for fire-and-forget messages.
    message: HashMap<&'static str, HashMap<&'static str, Vec<Entry>>>,
    /// command name -> handler.
    rpc: HashMap<&'static str, Entry>,
}

impl HandlerTable {
    /// Collects the handlers of every set; two RPC handlers for one command are an error
    /// naming both.
    fn new(sets: &[HandlerSet]) -> Result<Self> {
        let mut table = Self::default();
        for registration in inventory::iter::<HandlerRegistration> {
            let id = (registration.processor)();
            let Some(set) = sets.iter().find(|set| set.type_id == id) else {
                continue;
            };
            let entry = Entry {
                registration,
                state: Arc::clone(&set.state),
            };
            match registration.category {
                Category::Message => table
                    .message
                    .entry(registration.name)
                    .or_default()
                    .entry(registration.kind)
                    .or_default()
                    .push(entry),
                Category::Rpc => {
                    if let Some(first) = table.rpc.insert(registration.name, entry) {
                        let first = first.registration;
                        return Err(Error::DuplicateHandler {
                            processor: registration.processor_name,
                            command: registration.name,
                            first: format!(
                                "{}::{} at {}",
                                first.processor_name, first.method, first.location
                            ),
                            second: format!(
                                "{}::{} at {}",
                                registration.processor_name,
                                registration.method,
                                registration.location
                            ),
                        });
                    }
                }
            }
        }
        Ok(table)
    }

    fn message_handlers(&self, kind: &str, name: &str) -> &[Entry] {
        self.message
            .get(name)
            .and_then(|kinds| kinds.get(kind))
            .map_or(&[], Vec::as_slice)
    }

    fn rpc_handler(&self, name: &str) -> Option<&Entry> {
        self.rpc.get(name)
    }

    /// Every (category, type, name) served, sorted: the processor's message API.
    fn describe(&self) -> Vec<HandlerInfo> {
        let mut handlers: Vec<HandlerInfo> = self
            .message
            .values()
            .flat_map(|kinds| kinds.values().flatten())
            .chain(self.rpc.values())
            .map(|entry| HandlerInfo {
                category: entry.registration.category,
                kind: entry.registration.kind,
                name: entry.registration.name,
            })
            .collect();
        handlers.sort_by_key(|h| (h.category.as_str(), h.kind, h.name));
        handlers.dedup();
        handlers
    }
}

/// One message a processor answers to: its category, type and name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct HandlerInfo {
    /// Fire-and-forget or RPC.
    pub category: Category,
    /// The message type, such as `command`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The message name.
    pub name: &'static str,
}
