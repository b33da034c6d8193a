//! Configuring a processor.

use std::sync::Arc;
use std::time::Duration;

use super::control::ControlPolicy;
use super::copies::Copies;
use super::retry::RetryPolicy;
use super::table::{HandlerSet, HandlerTable};
use super::{Limits, Processor, Shared};
use crate::connection::Connection;
use crate::consumer::{Consumer, ConsumerBuilder};
use crate::error::Result;
use crate::handler::{Disposition, States};
use crate::producer::Producer;
use crate::topology::Exchange;
use crate::topology::Queue;
use crate::wire::Fingerprint;
use crate::wire::{Encoder, JsonEncoder};

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
    retry: Option<RetryPolicy>,
    on_failure: Option<Disposition>,
    handler_timeout: Option<Duration>,
    states: States,
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
        self.retry = Some(policy);
        self
    }

    /// What becomes of a message whose handler failed with an error that does not carry
    /// a [`Disposition`] of its own: [`Disposition::Reject`] by default,
    /// [`Disposition::Retry`] with a [`retry`](Self::retry) policy.
    #[must_use]
    pub fn on_failure(mut self, disposition: Disposition) -> Self {
        self.on_failure = Some(disposition);
        self
    }

    /// How long a handler may run (default: no limit); one that runs longer is
    /// cancelled and counts as failed, so the retry policy applies, and an RPC call is
    /// answered with a `Timeout` exception. A handler's `timeout = "5s"` marker option
    /// overrides it.
    #[must_use]
    pub fn handler_timeout(mut self, timeout: Duration) -> Self {
        self.handler_timeout = Some(timeout);
        self
    }

    /// Gives the handlers `value`, which they take as a [`State<T>`](crate::State)
    /// argument; one value per type (a second replaces the first). A handler that takes
    /// a state the processor was not given fails [`build`](Self::build), naming both.
    #[must_use]
    pub fn with_state<T: Send + Sync + 'static>(mut self, value: T) -> Self {
        self.states.insert(value);
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
        table.check_states(&self.states)?;
        let consumer = self.consumer.build().await?;
        let answers = Producer::builder(&self.connection).build().await?;
        let copies = Copies::on(&self.connection);
        let telemetry = self.connection.telemetry().cloned();
        Ok(Processor {
            connection: self.connection,
            shared: Arc::new(Shared {
                state,
                table,
                answers,
                copies,
                encoder: self.encoder,
                plain_json: self.plain_json,
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
            }),
            consumer,
            prefetch: self.prefetch,
            concurrency: self.concurrency,
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
            state,
            more_handlers: Vec::new(),
            consumer: Consumer::builder(connection).prefetch(DEFAULT_PREFETCH),
            prefetch: DEFAULT_PREFETCH,
            concurrency: 1,
            limits: Limits::default(),
            fingerprint: None,
            encoder: Arc::new(JsonEncoder),
            plain_json: true,
            retry: None,
            on_failure: None,
            handler_timeout: None,
            states: States::default(),
        }
    }
}
