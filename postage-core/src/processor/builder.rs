//! Configuring a processor.

use std::sync::Arc;
use std::time::Duration;

use super::control::ControlPolicy;
use super::copies::Copies;
use super::ordered::KeyOf;
use super::retry::RetryPolicy;
use super::table::{HandlerSet, HandlerTable};
use super::{Limits, Processor, Shared};
use crate::connection::Connection;
use crate::consumer::{Consumer, ConsumerBuilder};
use crate::error::Result;
use crate::handler::{Disposition, Metadata, States};
use crate::inbox::Inbox;
use crate::producer::Producer;
use crate::telemetry::Telemetry;
use crate::topology::Exchange;
use crate::topology::{Partitions, Queue};
use crate::wire::{Encoder, JsonEncoder};
use crate::wire::{Fingerprint, Message};

/// Configures a [`Processor`]; made by [`Processor::builder`].
#[derive(Debug)]
pub struct ProcessorBuilder<P> {
    connection: Connection,
    parts: Parts<P>,
    consumer: ConsumerBuilder,
    prefetch: u16,
    concurrency: usize,
    ordered: Option<KeyOf>,
    partitions: Option<Partitions>,
    limits: Limits,
}

/// What a processor's handlers run with, whatever brings their messages: collected by a
/// [`ProcessorBuilder`] and by a [`TestProcessor`](crate::testing::TestProcessor)'s
/// builder, and made into the processor's internals by one path for both.
#[derive(Debug)]
pub(super) struct Parts<P> {
    pub(super) state: P,
    pub(super) more_handlers: Vec<HandlerSet>,
    pub(super) fingerprint: Option<Fingerprint>,
    pub(super) encoder: Arc<dyn Encoder>,
    pub(super) retry: Option<RetryPolicy>,
    pub(super) on_failure: Option<Disposition>,
    pub(super) handler_timeout: Option<Duration>,
    pub(super) states: States,
    pub(super) inbox: Option<Arc<dyn Inbox>>,
}

/// [`Parts`] whose handlers were collected and found to have every state they take.
pub(super) struct Checked<P> {
    state: Arc<P>,
    table: HandlerTable,
    fingerprint: Option<Fingerprint>,
    encoder: Arc<dyn Encoder>,
    retry: Option<RetryPolicy>,
    on_failure: Option<Disposition>,
    handler_timeout: Option<Duration>,
    states: States,
    inbox: Option<Arc<dyn Inbox>>,
}

impl<P: Send + Sync + 'static> Parts<P> {
    /// The defaults, serving `state`'s handlers.
    pub(super) fn new(state: P) -> Self {
        Self {
            state,
            more_handlers: Vec::new(),
            fingerprint: None,
            encoder: Arc::new(JsonEncoder),
            retry: None,
            on_failure: None,
            handler_timeout: None,
            states: States::default(),
            inbox: None,
        }
    }

    /// Collects the handlers registered for `P` and the other sets: fails on two RPC
    /// handlers for one command (naming both places), and on a handler that takes a
    /// state it was not given (naming both).
    pub(super) fn check(self) -> Result<Checked<P>> {
        let Self {
            state,
            more_handlers,
            fingerprint,
            encoder,
            retry,
            on_failure,
            handler_timeout,
            states,
            inbox,
        } = self;
        let state = Arc::new(state);
        let mut sets = vec![HandlerSet::of(Arc::clone(&state))];
        sets.extend(more_handlers);
        let table = HandlerTable::new(&sets)?;
        table.check_states(&states)?;
        Ok(Checked {
            state,
            table,
            fingerprint,
            encoder,
            retry,
            on_failure,
            handler_timeout,
            states,
            inbox,
        })
    }
}

impl<P> Checked<P> {
    /// The processor's internals, sending its answers with `answers` and its retry and
    /// dead-letter copies through `copies`.
    pub(super) fn shared(
        self,
        answers: Producer,
        copies: Copies,
        telemetry: Option<Arc<Telemetry>>,
    ) -> Shared<P> {
        Shared {
            state: self.state,
            table: self.table,
            answers,
            copies,
            encoder: self.encoder,
            fingerprint: Arc::new(self.fingerprint.unwrap_or_default()),
            dead_letters: self
                .retry
                .as_ref()
                .is_some_and(RetryPolicy::keeps_dead_letters),
            on_failure: self.on_failure.unwrap_or(match self.retry {
                Some(_) => Disposition::Retry(None),
                None => Disposition::Reject,
            }),
            retry: self.retry.unwrap_or_default(),
            handler_timeout: self.handler_timeout,
            telemetry,
            states: Arc::new(self.states),
            inbox: self.inbox,
        }
    }
}

/// What a processor asks above its handlers' longest hold of a delivery, for the
/// acknowledgement to reach the broker.
const DELIVERY_TIMEOUT_MARGIN: Duration = Duration::from_secs(30);

impl<P> Checked<P> {
    /// The longest a delivery can stay unacknowledged: the longest handler timeout, times
    /// the deliveries the prefetch lets wait for each of `concurrency` handler slots (for
    /// one slot, when ordered: every delivery may have one key); `None` when a handler has
    /// no timeout.
    fn longest_hold(&self, prefetch: u16, concurrency: usize) -> Option<Duration> {
        let mut longest = Duration::ZERO;
        for registration in self.table.registrations() {
            longest = longest.max(registration.timeout.or(self.handler_timeout)?);
        }
        let slots = u32::try_from(concurrency.max(1)).unwrap_or(u32::MAX);
        longest.checked_mul(u32::from(prefetch.max(1)).div_ceil(slots))
    }
}

/// Warns when a delivery can stay unacknowledged longer than the broker allows
/// (`consumer_timeout`): RabbitMQ 3.10 and 4.0 then close the channel, and 4.3 cancels
/// the consumer of a quorum queue (where the processor asks for `x-consumer-timeout`
/// above `hold`, which 4.3 honours), and the message is handled again.
fn warn_past_consumer_timeout(hold: Option<Duration>, consumer_timeout: Duration) {
    let broker = consumer_timeout.as_secs_f64();
    match hold {
        Some(hold) if hold > consumer_timeout => tracing::warn!(
            "a delivery can stay unacknowledged for {:.0} s (the longest handler timeout times \
             the prefetch per handler slot), past the broker's consumer timeout of {broker:.0} s \
             (POSTAGE_CONSUMER_TIMEOUT): RabbitMQ 3.10 and 4.0 would take it back and it would \
             be handled again; quorum queues ask RabbitMQ 4.3 for {:.0} s",
            hold.as_secs_f64(),
            (hold + DELIVERY_TIMEOUT_MARGIN).as_secs_f64()
        ),
        Some(_) => {}
        None => tracing::warn!(
            "a handler without a timeout can hold a delivery past the broker's consumer \
             timeout of {broker:.0} s (POSTAGE_CONSUMER_TIMEOUT), after which it would be \
             handled again; give handlers a timeout (ProcessorBuilder::handler_timeout)"
        ),
    }
}

/// A processor's prefetch unless set.
pub(super) const DEFAULT_PREFETCH: u16 = 10;

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

    /// Runs the messages of one key one after another, in the order they arrived, and
    /// messages of different keys side by side, up to the [`concurrency`](Self::concurrency):
    /// `key` reads a message's key (any hashable value) from the message and its delivery.
    ///
    /// A message whose key has one in its handlers waits for it, in its key's line,
    /// without taking a handler slot; the lines hold at most the
    /// [`prefetch`](Self::prefetch) (the broker hands over no more unacknowledged), or
    /// [`ORDERED_BACKLOG`](super::ORDERED_BACKLOG) with a prefetch of 0, beyond which the
    /// processor takes no more deliveries until one is settled. Bad input has no key: it
    /// is refused at once.
    ///
    /// What the order holds through failures:
    ///
    /// - No message starts while an earlier one of its key is in its handlers or being
    ///   settled (a retry's copy confirmed in its delay queue, a dead letter's in `.dead`).
    /// - A requeue ([`Disposition::Requeue`], a failed inbox commit, a retry copy the
    ///   broker refused) does not go back to the broker, where a later message of its key
    ///   would overtake it: it runs again here after 100 ms, its key held.
    /// - A retry through a delay queue ([`RetryPolicy`](super::RetryPolicy)) takes the
    ///   message out of its place: it comes back at the tail of its queue when its delay
    ///   ends, and runs after the messages of its key that reached the queue before that;
    ///   the messages of its key that were behind it run meanwhile, in their order. Leave
    ///   retries off (or handle failures in the handler) where a key's order must hold
    ///   through a failure.
    /// - A stop lets the handlers in flight finish, then closes the channel without
    ///   cancelling first: every message not started goes back to its queue, in its
    ///   place, before the broker hands the queue to another consumer (see
    ///   [`Queue::single_active_consumer`](crate::Queue::single_active_consumer)). A killed
    ///   process hands back alike: the broker returns what it had not acknowledged.
    ///
    /// Order holds among the deliveries one processor receives: a fleet on one queue
    /// keeps it with a single active consumer, or by partitions
    /// ([`Partitions`](crate::Partitions)).
    ///
    /// ```no_run
    /// use postage_core::{processor, Connection, Exchange, Processor, Queue};
    /// use serde::Deserialize;
    ///
    /// #[derive(Deserialize)]
    /// struct Step {
    ///     key: String,
    ///     seq: u64,
    /// }
    ///
    /// struct Steps;
    ///
    /// #[processor]
    /// impl Steps {
    ///     #[message_handler("command", "step")]
    ///     async fn step(&self, step: Step) {
    ///         println!("key={} seq={}", step.key, step.seq);
    ///     }
    /// }
    ///
    /// # async fn demo() -> postage_core::Result<()> {
    /// let connection = Connection::from_env().await?;
    /// let steps = Processor::builder(&connection, Steps)
    ///     .bind(Exchange::new("steps-exchange"), Queue::new("steps").durable(true), "step")
    ///     .concurrency(8)
    ///     .ordered_by(|message, _metadata| message.raw_parameters()["key"].to_string())
    ///     .build()
    ///     .await?;
    /// steps.run().await?;
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn ordered_by<K: std::hash::Hash>(
        mut self,
        key: impl Fn(&Message, &Metadata) -> K + Send + Sync + 'static,
    ) -> Self {
        self.ordered = Some(KeyOf::new(key));
        self
    }

    /// Reads this instance's share of `partitions` (see [`Partitions`]): the processor
    /// declares the consistent-hash exchange and the partition queues, counts the
    /// instances of its fleet, claims free partitions up to its share (the partitions
    /// divided by the instances, rounded up) and gives up what is above it in order, so
    /// each key's messages keep their order as instances join and leave. With
    /// [`ordered_by`](Self::ordered_by) and a [`concurrency`](Self::concurrency) above 1,
    /// keys of one partition also run side by side, each in order.
    ///
    /// ```no_run
    /// use postage_core::{processor, Connection, Partitions, Processor, Producer, Route};
    ///
    /// struct Steps;
    ///
    /// #[processor]
    /// impl Steps {
    ///     #[message_handler("command", "step")]
    ///     fn step(&self, step: serde_json::Value) {
    ///         println!("{step}");
    ///     }
    /// }
    ///
    /// # async fn demo() -> postage_core::Result<()> {
    /// let connection = Connection::from_env().await?;
    /// let steps = Partitions::new("steps-partitioned", 8);
    /// let worker = Processor::builder(&connection, Steps)
    ///     .partitions(steps.clone())
    ///     .concurrency(8)
    ///     .ordered_by(|_message, metadata| metadata.routing_key().to_owned())
    ///     .build()
    ///     .await?;
    /// let running = tokio::spawn(worker.run());
    ///
    /// // Senders publish with the message's key as routing key.
    /// let producer = Producer::builder(&connection).destination(steps.exchange(), "").build().await?;
    /// producer.command_to(Route::key("order-42"), "step", serde_json::json!({"seq": 1})).await?;
    /// # drop(running); Ok(()) }
    /// ```
    #[must_use]
    pub fn partitions(mut self, partitions: Partitions) -> Self {
        self.partitions = Some(partitions);
        self
    }

    /// Also serves the handlers of `other`'s `#[processor]` impls on this processor's
    /// queues, with `other` as their `&self`: how a component adds its own handlers to a
    /// ready-made one (a GenericApplication, say) without copying its code.
    #[must_use]
    pub fn handlers<Q: Send + Sync + 'static>(mut self, other: Q) -> Self {
        self.parts
            .more_handlers
            .push(HandlerSet::of(Arc::new(other)));
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

    /// Stops the processor on SIGTERM or SIGINT as [`ProcessorHandle::shutdown`](super::ProcessorHandle::shutdown) does.
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

    /// Retries the messages its handlers fail on, as `policy` says: with backoff, through
    /// delay queues on the broker, then to a dead-letter queue (see [`RetryPolicy`]).
    /// Retry becomes the default for a failure that does not say otherwise.
    #[must_use]
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.parts.retry = Some(policy);
        self
    }

    /// What becomes of a message whose handler failed with an error that does not carry
    /// a [`Disposition`] of its own: [`Disposition::Reject`] by default,
    /// [`Disposition::Retry`] with a [`retry`](Self::retry) policy.
    #[must_use]
    pub fn on_failure(mut self, disposition: Disposition) -> Self {
        self.parts.on_failure = Some(disposition);
        self
    }

    /// How long a handler may run (default: no limit); one that runs longer is
    /// cancelled and counts as failed, so the retry policy applies, and an RPC call is
    /// answered with a `Timeout` exception. A handler's `timeout = "5s"` marker option
    /// overrides it.
    #[must_use]
    pub fn handler_timeout(mut self, timeout: Duration) -> Self {
        self.parts.handler_timeout = Some(timeout);
        self
    }

    /// Gives the handlers `value`, which they take as a [`State<T>`](crate::State)
    /// argument; one value per type (a second replaces the first). A handler that takes
    /// a state the processor was not given fails [`build`](Self::build), naming both.
    #[must_use]
    pub fn with_state<T: Send + Sync + 'static>(mut self, value: T) -> Self {
        self.parts.states.insert(value);
        self
    }

    /// Runs each message handler in a unit of work of `inbox` (a database transaction,
    /// with `postage-outbox`): the message's id is recorded in it, the handler takes it
    /// as an argument and writes in it, and it commits when the handler succeeds; a
    /// message the handler already handled (a redelivery, a duplicate) is acknowledged
    /// without running it again. See [`crate::inbox`]. RPC handlers run without it.
    #[must_use]
    pub fn inbox(mut self, inbox: impl Inbox) -> Self {
        self.parts.states.insert(crate::inbox::Given);
        self.parts.inbox = Some(Arc::new(inbox));
        self
    }

    /// The fingerprint stamped on RPC answers (default: this process, no name).
    #[must_use]
    pub fn fingerprint(mut self, fingerprint: Fingerprint) -> Self {
        self.parts.fingerprint = Some(fingerprint);
        self
    }

    /// Replaces the JSON encoder.
    #[must_use]
    pub fn encoder(mut self, encoder: impl Encoder + Clone) -> Self {
        self.consumer = self.consumer.encoder(encoder.clone());
        self.parts.encoder = Arc::new(encoder);
        self
    }

    /// Collects the handlers registered for `P` (an error names both places of two RPC
    /// handlers for one command), then declares and binds the queues.
    pub async fn build(self) -> Result<Processor<P>> {
        let checked = self.parts.check()?;
        let slots = match self.ordered {
            Some(_) => 1,
            None => self.concurrency,
        };
        let hold = checked.longest_hold(self.prefetch, slots);
        let consumer = match hold {
            Some(hold) => self
                .consumer
                .delivery_timeout(hold + DELIVERY_TIMEOUT_MARGIN),
            None => self.consumer,
        };
        if let Some(partitions) = &self.partitions {
            super::claims::Claims::declare(&self.connection, partitions).await?;
        }
        let consumer = consumer.build().await?;
        warn_past_consumer_timeout(hold, self.connection.config().consumer_timeout);
        let answers = Producer::builder(&self.connection).build().await?;
        let copies = Copies::on(&self.connection);
        let telemetry = self.connection.telemetry().cloned();
        Ok(Processor {
            shared: Arc::new(checked.shared(answers, copies, telemetry)),
            connection: self.connection,
            consumer,
            prefetch: self.prefetch,
            concurrency: self.concurrency,
            ordered: self.ordered,
            partitions: self.partitions,
            limits: self.limits,
            stop: Arc::default(),
        })
    }
}

impl<P: Send + Sync + 'static> Processor<P> {
    /// Starts configuring a processor with state `state` on `connection`.
    pub fn builder(connection: &Connection, state: P) -> ProcessorBuilder<P> {
        ProcessorBuilder {
            connection: connection.clone(),
            parts: Parts::new(state),
            consumer: Consumer::builder(connection).prefetch(DEFAULT_PREFETCH),
            prefetch: DEFAULT_PREFETCH,
            concurrency: 1,
            ordered: None,
            partitions: None,
            limits: Limits::default(),
        }
    }
}
