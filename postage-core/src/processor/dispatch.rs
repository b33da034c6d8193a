//! Dispatch: a message to the handlers registered for it (their filters run in their
//! calls), and their outcome to a disposition and an answer.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::FutureExt;
use tracing::Instrument;

use super::Shared;
use super::reply::ChannelReply;
use super::retry::{Settle, Verdict, attempt_of};
use super::table::Entry;
use crate::connection::ChannelLease;
use crate::consumer::Delivery;
use crate::handler::{
    Disposition, HandlerCall, HandlerError, Metadata, Outcome, Reply, ReplySender,
};
use crate::inbox::Unit;
use crate::rpc::{ReturnAddress, progress};
use crate::telemetry::{Scope, Telemetry, current_deadline, span};
use crate::wire::{COMMAND, Category, Message, RpcResult};

pub(super) fn metadata(delivery: &Delivery) -> Metadata {
    let (shared, queue) = delivery.shared();
    let attempt = attempt_of(delivery.properties());
    Metadata::new(Arc::clone(shared), Arc::clone(queue), attempt)
}

impl<P: Send + Sync + 'static> Shared<P> {
    /// Handles a delivery (`admitted`: its message, or why it was refused) and settles
    /// it, counted in the metrics.
    pub(super) async fn handle(
        &self,
        delivery: &Delivery,
        admitted: Result<Message, String>,
    ) -> Settle {
        let _in_flight = self.telemetry.as_deref().map(InFlight::new);
        let (verdict, ran) = match admitted {
            Ok(message) => self.dispatch(delivery, message).await,
            // Bad input is never retried: rejected, or dead-lettered with its reason.
            Err(reason) => (Verdict::Reject(reason), &[][..]),
        };
        let (settle, disposition) = self.settle(delivery, verdict).await;
        self.count(delivery.shared().1, ran, disposition);
        settle
    }

    /// Runs the handlers for a delivery and says what becomes of it; a request that
    /// arrives after its deadline is not run (its caller no longer waits).
    /// Also returns the handlers that ran, for the metrics.
    pub(super) async fn dispatch(
        &self,
        delivery: &Delivery,
        message: Message,
    ) -> (Verdict, &[Entry]) {
        if let Some(deadline) = current_deadline()
            && deadline <= tokio::time::Instant::now()
        {
            tracing::info!(queue = delivery.queue(), kind = %message.kind, name = %message.name, category = message.category.as_str(), late = ?deadline.elapsed(), "skipping a message that arrived after its deadline");
            return (Verdict::Expired, &[]);
        }
        let ran = match message.category {
            Category::Message => self.table.message_handlers(&message.kind, &message.name),
            Category::Rpc if message.kind == COMMAND => self
                .table
                .rpc_handler(&message.name)
                .map(std::slice::from_ref)
                .unwrap_or_default(),
            Category::Rpc => &[],
        };
        let via = Some(delivery.channel());
        let mut metadata = metadata(delivery);
        if self.inbox.is_some() && metadata.message_id().is_none() {
            metadata = metadata.with_message_id(&crate::message_id::derive(
                delivery.body(),
                delivery.exchange(),
                delivery.routing_key(),
            ));
        }
        (self.dispatch_with(message, metadata, via).await, ran)
    }

    /// Counts a delivery `ran` handled (none: bad input, no handler, expired) and what
    /// became of it.
    fn count(&self, queue: &Arc<str>, ran: &[Entry], disposition: &'static str) {
        let Some(telemetry) = &self.telemetry else {
            return;
        };
        if ran.is_empty() {
            telemetry.metrics.delivery(queue, None, disposition);
        }
        for entry in ran {
            telemetry
                .metrics
                .delivery(queue, Some(&entry.label), disposition);
        }
    }

    /// Runs the handlers for `message`, delivered with `metadata` on `via` (which RPC
    /// answers go back on; else on the processor's producer).
    pub(super) async fn dispatch_with(
        &self,
        message: Message,
        metadata: Metadata,
        via: Option<&Arc<ChannelLease>>,
    ) -> Verdict {
        match message.category {
            Category::Message => self.dispatch_message(message, metadata).await,
            Category::Rpc => self.dispatch_rpc(message, metadata, via).await,
        }
    }

    /// Runs every handler for the message, each on the message decoded once (the last
    /// one takes it, the others a copy); the gravest of their verdicts stands.
    pub(super) async fn dispatch_message(&self, message: Message, metadata: Metadata) -> Verdict {
        let handlers = self.table.message_handlers(&message.kind, &message.name);
        let Some((last, others)) = handlers.split_last() else {
            return Verdict::Ack;
        };
        let mut verdict = Verdict::Ack;
        for entry in others {
            let next = self
                .run_message(entry, message.clone(), metadata.clone())
                .await;
            verdict = verdict.and(next);
        }
        verdict.and(self.run_message(last, message, metadata).await)
    }

    /// Runs one message handler through its filters, and says what its outcome makes of
    /// the delivery.
    pub(super) async fn run_message(
        &self,
        entry: &Entry,
        message: Message,
        metadata: Metadata,
    ) -> Verdict {
        let handler = entry.registration;
        let unit = match self.open_unit(entry, &metadata).await {
            Opened::Run(unit) => unit,
            Opened::HandledBefore => return Verdict::Ack,
            Opened::Failed(verdict) => return verdict,
        };
        let call = HandlerCall {
            message,
            metadata,
            reply: None,
            deadline: None,
            states: Arc::clone(&self.states),
            unit: unit.as_ref().map(|unit| unit.handle()),
        };
        let outcome = self.call(entry, call).await;
        let outcome = match unit {
            Some(unit) if outcome.commits() => match unit.commit().await {
                Ok(()) => outcome,
                Err(error) => {
                    tracing::warn!(handler = handler.method, %error, "the inbox could not commit; the message goes back to its queue");
                    return Verdict::of(Disposition::Requeue, handler.attempts, error.to_string());
                }
            },
            _ => outcome,
        };
        match outcome {
            Outcome::Failed(error) => {
                let disposition = error.disposition().unwrap_or(self.on_failure);
                tracing::warn!(handler = handler.method, at = handler.location, kind = handler.kind, name = handler.name, %error, ?disposition, "message handler failed");
                Verdict::of(disposition, handler.attempts, error.to_string())
            }
            Outcome::Settle(disposition) => Verdict::of(
                disposition,
                handler.attempts,
                format!("{} asked for {disposition:?}", handler.method),
            ),
            Outcome::Refused(reason) => {
                tracing::warn!(handler = handler.method, %reason, "a filter rejected the message");
                Verdict::Reject(reason)
            }
            Outcome::Done | Outcome::Answer(_) | Outcome::Replied | Outcome::Skipped => {
                Verdict::Ack
            }
        }
    }

    /// The inbox's unit of work for `handler` on the message (none without an inbox).
    async fn open_unit(&self, entry: &Entry, metadata: &Metadata) -> Opened {
        let Some(inbox) = &self.inbox else {
            return Opened::Run(None);
        };
        let handler = entry.registration;
        let id = metadata.message_id().unwrap_or_default().to_owned();
        match inbox.begin(id, entry.label.to_string()).await {
            Ok(Some(unit)) => Opened::Run(Some(unit)),
            Ok(None) => {
                tracing::debug!(
                    handler = handler.method,
                    message_id = metadata.message_id().unwrap_or(""),
                    queue = metadata.queue(),
                    "handled before (inbox); acknowledging"
                );
                Opened::HandledBefore
            }
            Err(error) => {
                tracing::warn!(handler = handler.method, %error, "the inbox could not open a unit of work; the message goes back to its queue");
                Opened::Failed(Verdict::of(
                    Disposition::Requeue,
                    handler.attempts,
                    error.to_string(),
                ))
            }
        }
    }

    /// Runs the RPC handler and answers; a call no handler serves is answered at once
    /// with an error result naming the command, so its caller does not wait in vain.
    pub(super) async fn dispatch_rpc(
        &self,
        message: Message,
        metadata: Metadata,
        via: Option<&Arc<ChannelLease>>,
    ) -> Verdict {
        if message.kind != COMMAND {
            return Verdict::Ack;
        }
        let entry = self.table.rpc_handler(&message.name);
        let Some(reply_to) = metadata.reply_to() else {
            if entry.is_none() {
                tracing::debug!(name = %message.name, "no RPC handler, nor anyone to tell; acknowledging");
                return Verdict::Ack;
            }
            tracing::warn!(name = %message.name, "rejecting an RPC call without reply_to");
            return Verdict::Reject(format!("RPC call {:?} without reply_to", message.name));
        };
        let to = ReturnAddress::new(reply_to.to_owned(), metadata.correlation_id());
        let beats = progress::requested(metadata.headers());
        let sender: Arc<dyn ReplySender> = Arc::new(ChannelReply {
            answers: self.answers.clone(),
            via: via.cloned(),
            to,
            encoder: (!self.encoder.is_postage_json()).then(|| Arc::clone(&self.encoder)),
            fingerprint: Arc::clone(&self.fingerprint),
            beats,
        });
        let Some(entry) = entry else {
            let text = format!("no RPC handler for command {:?} here", message.name);
            tracing::warn!(name = %message.name, correlation_id = metadata.correlation_id().unwrap_or("<none>"), "answering an RPC call no handler serves with an error");
            if let Err(error) = sender.send(RpcResult::error(text)).await {
                tracing::warn!(%error, name = %message.name, "could not send the RPC answer");
            }
            return Verdict::Ack;
        };
        let handler = entry.registration;
        let correlation_id = metadata.correlation_id().map(str::to_owned);
        let sent = Arc::new(AtomicBool::new(false));
        let reply = Reply {
            sender: Arc::clone(&sender),
            sent: Arc::clone(&sent),
        };
        let call = HandlerCall {
            message,
            metadata,
            reply: Some(reply),
            deadline: None,
            states: Arc::clone(&self.states),
            unit: None,
        };
        // A caller that asked for beats gets one every interval while the handler runs.
        let _beating =
            beats.map(|every| Beating::start(every, Arc::clone(&sender), Arc::clone(&sent)));
        let answer = match self.call(entry, call).await {
            Outcome::Answer(result) => result,
            // Filtered out: no answer (as Python Postage's filters).
            Outcome::Skipped => return Verdict::Ack,
            Outcome::Refused(reason) => {
                tracing::warn!(handler = handler.method, %reason, "a filter rejected the call");
                return Verdict::Reject(reason);
            }
            // Answered through its Reply.
            Outcome::Replied | Outcome::Done | Outcome::Settle(_)
                if sent.load(Ordering::SeqCst) =>
            {
                return Verdict::Ack;
            }
            Outcome::Replied | Outcome::Done | Outcome::Settle(_) => {
                RpcResult::error("the handler finished without replying")
            }
            Outcome::Failed(error) => RpcResult::exception("HandlerFailed", error.to_string()),
        };
        let correlation_id = correlation_id.as_deref().unwrap_or("<none>");
        let verdict = match &answer {
            RpcResult::Success { .. } => Verdict::Ack,
            RpcResult::Error { message } => {
                tracing::warn!(handler = handler.method, at = handler.location, name = handler.name, correlation_id, error = %message, "RPC handler failed; answered with an error");
                Verdict::Ack
            }
            RpcResult::Exception { kind, message } => {
                tracing::warn!(handler = handler.method, at = handler.location, name = handler.name, correlation_id, %kind, error = %message, "RPC handler failed; answered with an exception");
                Verdict::Reject(format!("{kind}: {message}"))
            }
        };
        // An answer the handler already sent through its Reply stands.
        if !sent.swap(true, Ordering::SeqCst)
            && let Err(error) = sender.send(answer).await
        {
            tracing::warn!(%error, name = handler.name, "could not send the RPC answer");
        }
        verdict
    }

    /// Calls one handler, within its timeout, in a span of its own; a panic or a timeout
    /// becomes a failure (answered with an exception in RPC). What it sends carries its
    /// trace context, and the calls it makes wait no longer than its deadline: the
    /// request's, or its timeout's if that comes first.
    pub(super) async fn call(&self, entry: &Entry, call: HandlerCall) -> Outcome {
        let handler = entry.registration;
        let span = span::handler(handler);
        let started = tokio::time::Instant::now();
        let outcome = self.call_in(entry, call).instrument(span.clone()).await;
        if let Some(telemetry) = &self.telemetry {
            telemetry
                .metrics
                .handler_run(&entry.label, started.elapsed());
        }
        if !span.is_disabled() {
            span.record(
                "postage.duration_ms",
                started.elapsed().as_secs_f64() * 1000.0,
            );
            let (name, ok) = outcome.describe();
            span::outcome(&span, "postage.outcome", name, ok);
        }
        outcome
    }

    async fn call_in(&self, entry: &Entry, mut call: HandlerCall) -> Outcome {
        let handler = entry.registration;
        let rpc = call.reply.is_some();
        let timeout = handler.timeout.or(self.handler_timeout);
        // A timeout the clock cannot hold (`Duration::MAX`) is no limit.
        let scope = Scope::current().bounded_by(timeout.and_then(crate::deadline::deadline_after));
        call.deadline = scope.deadline;
        let run = (handler.call)(Arc::clone(&entry.state), call);
        let run = scope.run(AssertUnwindSafe(run).catch_unwind());
        let ran = match timeout {
            None => run.await,
            Some(bound) => match tokio::time::timeout(bound, run).await {
                Ok(ran) => ran,
                Err(_) => {
                    tracing::warn!(handler = handler.method, at = handler.location, timeout = ?bound, "handler ran past its timeout; cancelled");
                    let error = HandlerError::exception(
                        "Timeout",
                        format!("{} ran past its timeout of {bound:?}", handler.method),
                    );
                    return failed(rpc, error);
                }
            },
        };
        match ran {
            Ok(outcome) => outcome,
            Err(panic) => {
                let text = panic_text(&*panic);
                tracing::error!(handler = handler.method, at = handler.location, panic = %text, "handler panicked");
                failed(rpc, HandlerError::exception("Panic", text))
            }
        }
    }
}

/// What the inbox made of a message for one handler.
enum Opened {
    /// Run the handler, in this unit of work (none without an inbox).
    Run(Option<Box<dyn Unit>>),
    /// The handler handled it before: acknowledge it unrun.
    HandledBefore,
    /// The inbox failed: settle so.
    Failed(Verdict),
}

/// One delivery in flight, counted in the metrics until it is dropped.
struct InFlight<'a>(&'a Telemetry);

impl<'a> InFlight<'a> {
    fn new(telemetry: &'a Telemetry) -> Self {
        telemetry.metrics.in_flight(true);
        Self(telemetry)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.metrics.in_flight(false);
    }
}

/// What a panic said.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(ToString::to_string)
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".to_owned())
}

/// The outcome of a handler that failed with `error`: an exception answer in RPC.
fn failed(rpc: bool, error: HandlerError) -> Outcome {
    if rpc {
        Outcome::Answer(error.to_result())
    } else {
        Outcome::Failed(error)
    }
}

/// The beats of a call whose caller asked for them: a task that sends a plain beat every
/// interval until the answer is sent; stopped when dropped, with the handler's run.
struct Beating(tokio::task::JoinHandle<()>);

impl Beating {
    fn start(every: Duration, sender: Arc<dyn ReplySender>, sent: Arc<AtomicBool>) -> Self {
        Self(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                if sent.load(Ordering::SeqCst) {
                    return;
                }
                if let Err(error) = sender.progress(serde_json::Value::Null).await {
                    tracing::debug!(%error, "could not send a progress beat");
                }
            }
        }))
    }
}

impl Drop for Beating {
    fn drop(&mut self) {
        self.0.abort();
    }
}
