//! Sending messages: a producer with default destinations, per-call overrides, and typed
//! command APIs.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lapin::BasicProperties;
use lapin::options::ConfirmSelectOptions;
use lapin::types::ShortString;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::connection::supervisor::{Member, Reconciling};
use crate::connection::{ChannelLease, Connection, LiveChannel};
use crate::error::{Error, Result};
use crate::rpc::ReplyQueue;
use crate::sync::Locked;

mod api;
mod call;
mod options;
mod pending;
mod publish;
mod recording;
mod route;
mod schedule;

pub(crate) use self::call::RpcState;
pub(crate) use self::options::RpcSettings;
pub use self::options::{DEFAULT_ANSWER_WITHIN, RpcOptions};
pub use self::pending::PendingCall;
pub(crate) use self::publish::Publish;
pub use self::recording::{RECORDING_LIMIT, Recording, Sent};
pub use self::route::Route;
use crate::telemetry::Telemetry;
use crate::topology::Exchange;
use crate::wire::Fingerprint;
use crate::wire::json;
use crate::wire::{Category, Message};
use crate::wire::{Encoder, JsonEncoder};

/// How long a publish (and, in reliable mode, its confirm) may take by default before it
/// fails: [`Error::Blocked`] under a broker's resource alarm, else [`Error::Timeout`].
pub const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);

/// Publishes Postage messages, stamped with its fingerprint, to default (exchange,
/// routing key) pairs or to a [`Route`] given per call. Clones share one channel.
///
/// ```no_run
/// use postage_core::{Connection, Exchange, Fingerprint, Producer, Route};
///
/// const ECHO: Exchange = Exchange::new("echo-exchange");
///
/// # async fn demo() -> postage_core::Result<()> {
/// let connection = Connection::from_env().await?;
/// let producer = Producer::builder(&connection)
///     .destination(ECHO, "echo-rk")
///     .fingerprint(Fingerprint::new("echo_send", "application"))
///     .build()
///     .await?;
/// producer.command("echo", "A test message").await?;
/// producer.command_to(Route::key("echo-fanout-rk"), "echo", "to everyone").await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Producer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Where its messages go.
    sink: Sink,
    /// The login sent as every message's `user_id`.
    user: ShortString,
    /// Debug mode: every message sent is logged.
    debug: bool,
    destinations: Vec<(Exchange, String)>,
    fingerprint: Fingerprint,
    encoder: Arc<dyn Encoder>,
    /// The encoder is the default JSON one: bodies are written straight from their parts.
    /// The size of the last body written from its parts, to size the next buffer.
    last_body: AtomicUsize,
    reliable: bool,
    persistent: bool,
    publish_timeout: Duration,
    declared: Locked<HashSet<String>>,
    pub(crate) rpc: RpcState,
}

/// Where a producer's messages go: to RabbitMQ, or into a [`Recording`] for a test.
#[derive(Debug)]
enum Sink {
    Broker(Broker),
    Recording(Recording),
}

/// A producer's link to RabbitMQ.
#[derive(Debug)]
struct Broker {
    connection: Connection,
    /// The connection the channel is on: `connection`'s publishing one (see
    /// [`Config::publishing_connection`](crate::Config::publishing_connection)).
    link: Connection,
    /// The channel it publishes on (a channel lost on a live connection is reopened by
    /// the next publish, one lost with its connection by the supervisor as well).
    live: LiveChannel<Arc<ChannelLease>>,
}

/// Configures a [`Producer`]; made by [`Producer::builder`].
#[derive(Debug)]
pub struct ProducerBuilder {
    target: Target,
    destinations: Vec<(Exchange, String)>,
    fingerprint: Option<Fingerprint>,
    encoder: Arc<dyn Encoder>,
    reliable: bool,
    persistent: bool,
    publish_timeout: Duration,
    rpc: RpcSettings,
}

/// What a builder builds a producer for.
#[derive(Debug)]
enum Target {
    Connection(Connection),
    Recording(Recording),
}

impl ProducerBuilder {
    /// Adds a default destination: every message sent with [`Route::Default`] goes to each.
    /// The first one's exchange is also the exchange of [`Route::Key`] and of RPC calls.
    #[must_use]
    pub fn destination(mut self, exchange: Exchange, routing_key: impl Into<String>) -> Self {
        self.destinations.push((exchange, routing_key.into()));
        self
    }

    /// Sets the fingerprint stamped on every message (default: this process, no name).
    #[must_use]
    pub fn fingerprint(mut self, fingerprint: Fingerprint) -> Self {
        self.fingerprint = Some(fingerprint);
        self
    }

    /// Replaces the JSON encoder.
    #[must_use]
    pub fn encoder(mut self, encoder: impl Encoder) -> Self {
        self.encoder = Arc::new(encoder);
        self
    }

    /// Reliable mode: every publish is `mandatory` and waits for the broker's publisher
    /// confirm, so a message no queue takes is [`Error::Unroutable`] and one the broker
    /// could not store is [`Error::PublishRefused`], instead of a silent loss. Off by
    /// default (fire-and-forget, as Postage).
    #[must_use]
    pub fn reliable(mut self, reliable: bool) -> Self {
        self.reliable = reliable;
        self
    }

    /// Marks every message persistent (AMQP delivery mode 2), so a durable queue keeps it
    /// through a broker restart. Off by default, as in Postage.
    #[must_use]
    pub fn persistent(mut self, persistent: bool) -> Self {
        self.persistent = persistent;
        self
    }

    /// Bounds each publish, with its confirm in reliable mode (default
    /// [`DEFAULT_PUBLISH_TIMEOUT`]): one the broker does not take in time fails with
    /// [`Error::Blocked`] while a resource alarm blocks the connection, else
    /// [`Error::Timeout`]. An RPC call's request is bounded by the call's timeout instead.
    #[must_use]
    pub fn publish_timeout(mut self, timeout: Duration) -> Self {
        self.publish_timeout = timeout;
        self
    }

    /// Sets the RPC defaults: how long to wait for each attempt and how many times to
    /// re-send (Postage: 30 s and 4).
    #[must_use]
    pub fn rpc_defaults(mut self, timeout: std::time::Duration, max_retry: u32) -> Self {
        self.rpc.timeout = timeout;
        self.rpc.max_retry = max_retry;
        self
    }

    /// Where RPC answers come back: a private reply queue declared once, with the first
    /// call (the default), or RabbitMQ's direct reply-to. See [`ReplyQueue`].
    #[must_use]
    pub fn reply_queue(mut self, reply_queue: ReplyQueue) -> Self {
        self.rpc.reply_queue = reply_queue;
        self
    }

    /// Opens the producer's channel and declares its default exchanges, within the
    /// publish timeout (under a resource alarm lapin writes nothing: [`Error::Blocked`]).
    /// A recording producer ([`Recording::builder`]) is built at once.
    pub async fn build(self) -> Result<Producer> {
        let connection = match &self.target {
            Target::Connection(connection) => connection.clone(),
            Target::Recording(recording) => {
                let recording = recording.clone();
                return Ok(self.recorded(recording));
            }
        };
        let timeout = self.publish_timeout;
        match tokio::time::timeout(timeout, self.build_now(connection.clone())).await {
            Ok(built) => built,
            Err(_) => Err(connection.overdue("opening a producer's channel".into(), timeout)),
        }
    }

    async fn build_now(self, connection: Connection) -> Result<Producer> {
        let link = connection.publishing().await?;
        let live = LiveChannel::open({
            let (link, reliable) = (link.clone(), self.reliable);
            move || open(link.clone(), reliable)
        })
        .await?;
        let (user, debug) = (
            ShortString::from(connection.config().user.as_str()),
            connection.config().debug,
        );
        let generations = link.watch_generation();
        let sink = Sink::Broker(Broker {
            connection,
            link,
            live,
        });
        let producer = self.producer(sink, user, debug);
        LiveChannel::kept(&producer.inner, generations, |inner: &Inner| {
            inner.broker().map(|broker| &broker.live)
        });
        for (exchange, _) in &producer.inner.destinations {
            producer.ensure_declared(exchange).await?;
        }
        Ok(producer)
    }

    /// A producer that records into `recording`, built at once.
    fn recorded(self, recording: Recording) -> Producer {
        let user = ShortString::from(recording.user());
        self.producer(Sink::Recording(recording), user, false)
    }

    fn producer(self, sink: Sink, user: ShortString, debug: bool) -> Producer {
        Producer {
            inner: Arc::new(Inner {
                sink,
                user,
                debug,
                destinations: self.destinations,
                fingerprint: self.fingerprint.unwrap_or_default(),
                encoder: self.encoder,
                last_body: AtomicUsize::new(0),
                reliable: self.reliable,
                persistent: self.persistent,
                publish_timeout: self.publish_timeout,
                declared: Locked::new(HashSet::new()),
                rpc: RpcState::new(self.rpc),
            }),
        }
    }
}

impl ProducerBuilder {
    fn new(target: Target) -> Self {
        Self {
            target,
            destinations: Vec::new(),
            fingerprint: None,
            encoder: Arc::new(JsonEncoder),
            reliable: false,
            persistent: false,
            publish_timeout: DEFAULT_PUBLISH_TIMEOUT,
            rpc: RpcSettings::default(),
        }
    }
}

impl Producer {
    /// Starts configuring a producer on `connection`.
    pub fn builder(connection: &Connection) -> ProducerBuilder {
        ProducerBuilder::new(Target::Connection(connection.clone()))
    }

    /// Sends the command `name` with `parameters` to every default destination.
    pub async fn command(&self, name: &str, parameters: impl Serialize) -> Result<()> {
        self.send_command(&Route::Default, name, parameters).await
    }

    /// Sends the command `name` with `parameters` along `route`.
    pub async fn command_to(
        &self,
        route: Route,
        name: &str,
        parameters: impl Serialize,
    ) -> Result<()> {
        self.send_command(&route, name, parameters).await
    }

    async fn send_command(
        &self,
        route: &Route,
        name: &str,
        parameters: impl Serialize,
    ) -> Result<()> {
        if self.plain_json() {
            let body = self.command_body(name, Category::Message, &parameters)?;
            return self.send_body(&body, route, None).await;
        }
        self.publish(Message::command(name, parameters)?, route)
            .await
    }

    /// Sends a status message along `route`.
    pub async fn status(&self, route: Route, status: &str) -> Result<()> {
        self.publish(Message::status(status), &route).await
    }

    /// Sends a generic message (Postage's `producer.message(*args, **kwds)`) along `route`.
    pub async fn generic(
        &self,
        route: Route,
        args: Vec<Value>,
        kwds: Map<String, Value>,
    ) -> Result<()> {
        self.publish(Message::generic(args, kwds), &route).await
    }

    /// Stamps `message` with this producer's fingerprint and sends it along `route`.
    pub async fn publish(&self, message: Message, route: &Route) -> Result<()> {
        let message = message.with_fingerprint(self.inner.fingerprint.clone());
        self.forward(&message, route).await
    }

    /// Sends an already-built message unchanged, its fingerprint included.
    pub async fn forward(&self, message: &Message, route: &Route) -> Result<()> {
        let body = self.inner.encoder.encode(message)?;
        self.send_body(&body, route, Some(message)).await
    }

    /// Sends `body`, already encoded (with this producer's encoder), to the existing
    /// exchange `exchange` with `routing_key`, under `message_id` rather than a fresh id:
    /// how an outbox's relay sends a message it stored, so that every sending of it,
    /// after a crash or an outage too, carries the id its receivers' inboxes know it by.
    /// The exchange is not declared. A reliable producer waits for the broker's confirm.
    pub async fn publish_encoded(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        message_id: &str,
    ) -> Result<()> {
        let properties = self.properties().with_message_id(message_id.into());
        let publish = Publish::new(exchange, routing_key, body, properties);
        self.send(publish.mandatory(self.inner.reliable)).await
    }

    /// Publishes `body` along `route`; `message`, when given, is what debug mode traces.
    async fn send_body(&self, body: &[u8], route: &Route, message: Option<&Message>) -> Result<()> {
        let properties = self.properties();
        let debug = self.inner.debug;
        for (exchange, key) in self.resolve(route)?.iter() {
            self.ensure_declared(exchange).await?;
            if debug && let Some(message) = message {
                tracing::info!(exchange = exchange.name(), routing_key = %key, kind = %message.kind, name = %message.name, category = message.category.as_str(), content = %message.content, "--> publish");
            }
            let publish = Publish::new(exchange.name(), key, body, properties.clone());
            self.send(publish.mandatory(self.inner.reliable)).await?;
        }
        Ok(())
    }

    /// A command written straight from its parts (see [`Producer::plain_json`]), in a
    /// buffer sized after the last one: one allocation, little slack.
    pub(crate) fn command_body<P: Serialize + ?Sized>(
        &self,
        name: &str,
        category: Category,
        parameters: &P,
    ) -> Result<Vec<u8>> {
        let last = self.inner.last_body.load(Ordering::Relaxed);
        let capacity = last + last / 8;
        let body = json::command(
            name,
            category,
            &self.inner.fingerprint,
            parameters,
            capacity,
        )?;
        self.inner.last_body.store(body.len(), Ordering::Relaxed);
        Ok(body)
    }

    /// True when bodies may be written straight from their parts: the default JSON
    /// encoder, and no debug mode (which traces each message).
    pub(crate) fn plain_json(&self) -> bool {
        self.inner.encoder.is_postage_json() && !self.inner.debug
    }

    /// The login it names as the `user_id` of what it sends.
    pub(crate) fn user(&self) -> &str {
        self.inner.user.as_str()
    }

    /// Debug mode: every message sent is logged.
    pub(crate) fn debug(&self) -> bool {
        self.inner.debug
    }

    /// The fingerprint this producer stamps on its messages.
    pub fn fingerprint(&self) -> &Fingerprint {
        &self.inner.fingerprint
    }

    /// The producer's channel, for anything postage does not wrap (`None` for a
    /// recording producer). After a reconnection the producer opens a new one with its
    /// next publish; ask again then.
    pub fn channel(&self) -> Option<lapin::Channel> {
        self.inner
            .broker()
            .map(|broker| (*broker.live.current()).clone())
    }

    /// The recording this producer sends into, `None` for one on a connection.
    pub(crate) fn recording(&self) -> Option<&Recording> {
        match &self.inner.sink {
            Sink::Broker(_) => None,
            Sink::Recording(recording) => Some(recording),
        }
    }

    fn broker(&self) -> Result<&Broker> {
        self.inner.broker().ok_or(Error::Closed(
            "a recording producer's channel (it has none)",
        ))
    }

    /// The channel to publish on, reopened (with confirms, exchanges declared again and a
    /// new RPC answer consumer) once the connection is up when it was lost.
    pub(crate) async fn live_channel(&self) -> Result<Arc<ChannelLease>> {
        let (channel, fresh) = self.broker()?.live.renewed().await?;
        if fresh {
            self.inner.declared.with(HashSet::clear);
            tracing::info!("producer channel reopened");
        }
        Ok(channel)
    }

    /// Closes the producer's channel once the broker has taken every message published on
    /// it before the call: a publish returns once queued on its connection, and the
    /// channel's close leaves after what was queued before it, so when this returns every
    /// such message is in its queues. A later publish (of this producer or a clone) opens
    /// another channel.
    pub async fn close(&self) -> Result<()> {
        let Some(broker) = self.inner.broker() else {
            return Ok(());
        };
        let channel = broker.live.current();
        if !channel.status().connected() {
            return Ok(());
        }
        channel
            .close(200, "postage: producer closed".into())
            .await
            .map_err(Error::amqp("closing a producer's channel"))
    }

    /// Whether the producer publishes `mandatory` with confirms.
    pub(crate) fn reliable(&self) -> bool {
        self.inner.reliable
    }

    /// The connection the producer was built on, `None` for a recording producer.
    pub fn connection(&self) -> Option<&Connection> {
        self.inner.broker().map(|broker| &broker.connection)
    }

    /// The metrics endpoint its connection reports to, if any.
    pub(crate) fn telemetry(&self) -> Option<&Telemetry> {
        self.connection()?.telemetry().map(|t| &**t)
    }

    /// The connection its channel is on (the publishing one, unless the configuration
    /// says otherwise).
    pub(crate) fn link(&self) -> Result<&Connection> {
        Ok(&self.broker()?.link)
    }

    /// The error of an operation that ran past `bound`: [`Error::Blocked`] under a
    /// resource alarm, else [`Error::Timeout`].
    pub(crate) fn overdue(&self, operation: String, bound: Duration) -> Error {
        match self.inner.broker() {
            Some(broker) => broker.connection.overdue(operation, bound),
            None => Error::Timeout {
                operation,
                timeout: bound,
            },
        }
    }

    pub(crate) fn encoder(&self) -> &dyn Encoder {
        self.inner.encoder.as_ref()
    }

    /// True when the producer encodes with the default JSON encoder.
    pub(crate) fn encodes_json(&self) -> bool {
        self.inner.encoder.is_postage_json()
    }

    pub(crate) fn rpc_state(&self) -> &RpcState {
        &self.inner.rpc
    }

    /// The properties of what the producer publishes: its content type, its login as
    /// `user_id` (which RabbitMQ checks, so a receiver's [`ControlPolicy::Users`] can
    /// trust it), a fresh `message_id` (see [`crate::message_id`]), and persistence when
    /// asked for.
    ///
    /// [`ControlPolicy::Users`]: crate::ControlPolicy::Users
    pub(crate) fn properties(&self) -> BasicProperties {
        let properties = BasicProperties::default()
            .with_content_type(self.inner.encoder.content_type().into())
            .with_user_id(self.inner.user.clone())
            .with_message_id(crate::message_id::generate().into());
        if self.inner.persistent {
            properties.with_delivery_mode(2)
        } else {
            properties
        }
    }

    /// The (exchange, key) pairs a route stands for.
    pub(crate) fn resolve<'a>(
        &'a self,
        route: &'a Route,
    ) -> Result<std::borrow::Cow<'a, [(Exchange, String)]>> {
        use std::borrow::Cow;
        match route {
            Route::Default if self.inner.destinations.is_empty() => Err(Error::config(
                "destination",
                "the producer has no default destination; give a Route::Pairs",
            )),
            Route::Default => Ok(Cow::Borrowed(&self.inner.destinations)),
            Route::Key(key) => match self.inner.destinations.first() {
                Some((exchange, _)) => Ok(Cow::Owned(vec![(exchange.clone(), key.clone())])),
                None => Err(Error::config(
                    "destination",
                    "Route::Key needs a default destination for its exchange",
                )),
            },
            Route::Pairs(pairs) => Ok(Cow::Borrowed(pairs)),
        }
    }

    pub(crate) async fn ensure_declared(&self, exchange: &Exchange) -> Result<()> {
        let known = self
            .inner
            .declared
            .with(|set| set.contains(exchange.name()));
        if !known {
            let Some(broker) = self.inner.broker() else {
                return Ok(());
            };
            broker.connection.declare_exchange(exchange).await?;
            self.inner.declared.with(|set| {
                set.insert(exchange.name().to_owned());
            });
        }
        Ok(())
    }
}

/// A producer is a member of its connection's supervisor: after each reconnection its
/// channel is opened again, with confirms, and its exchanges declared again, before the
/// next publish needs them (which would do the same).
impl Member for Inner {
    fn describe(&self) -> String {
        let exchanges: Vec<&str> = self.destinations.iter().map(|(e, _)| e.name()).collect();
        format!("producer to exchanges {exchanges:?}")
    }

    fn reconcile(self: Arc<Self>) -> Reconciling {
        let producer = Producer { inner: self };
        Box::pin(async move {
            producer.live_channel().await?;
            for (exchange, _) in &producer.inner.destinations {
                producer.ensure_declared(exchange).await?;
            }
            Ok(())
        })
    }
}

impl Inner {
    fn broker(&self) -> Option<&Broker> {
        match &self.sink {
            Sink::Broker(broker) => Some(broker),
            Sink::Recording(_) => None,
        }
    }
}

/// Opens a producer channel on `connection` once it is up, in confirm mode when
/// `reliable`.
async fn open(connection: Connection, reliable: bool) -> Result<Arc<ChannelLease>> {
    connection.wait_reconnected(connection.generation()).await?;
    let channel = connection.lease_channel().await?;
    if reliable {
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(Error::amqp("enabling publisher confirms"))?;
    }
    Ok(Arc::new(channel))
}
