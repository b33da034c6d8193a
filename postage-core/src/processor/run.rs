//! The run loop: consume, admit, dispatch concurrently up to the limit, settle.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use tracing::Instrument;

use super::acks::Acks;
use super::control::ControlPolicy;
use super::control::{control_command, restart, watch_signals};
use super::retry::{Settle, attempt_of};
use super::timers::Timers;
use super::{Control, Exit, Processor};
use crate::consumer::Delivery;
use crate::error::Result;
use crate::telemetry::{Scope, Watched, span};
use crate::wire::Message;

impl<P: Send + Sync + 'static> Processor<P> {
    /// Consumes and dispatches until a `quit` command, a shutdown through a
    /// [`ProcessorHandle`](super::ProcessorHandle), or the end of the consumer; then finishes the handlers in
    /// flight and returns. A `restart` command replaces the process with a new run of the
    /// same executable and arguments (same pid) and so never returns.
    pub async fn run(mut self) -> Result<Exit> {
        self.consumer.start().await?;
        if let Some(telemetry) = &self.shared.telemetry {
            let stop: Arc<dyn Watched> = self.stop.clone();
            telemetry.watch(Arc::downgrade(&stop));
        }
        if self.limits.stop_on_signals {
            watch_signals(self.handle())?;
        }
        let timers = Timers::start(&self.shared.table);
        let (shared, stop) = (Arc::clone(&self.shared), Arc::clone(&self.stop));
        // With prefetch 0 (no limit) acknowledgements wait for a quiet queue or 100 more.
        let mut acks = Acks::new(
            match self.prefetch {
                0 => 100,
                prefetch => usize::from(prefetch / 2),
            },
            Arc::clone(&self.stop.tracked),
        );
        // The handlers in flight run on this task: no task and no wake-up per message.
        let mut running = FuturesUnordered::new();
        let mut control = None;
        let exit = loop {
            // What finished is settled first, without waiting.
            while let Some(Some((ticket, settle))) = running.next().now_or_never() {
                acks.finish(ticket, settle).await;
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
                        Some((ticket, settle)) = running.next(), if !running.is_empty() => {
                            acks.finish(ticket, settle).await;
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
            let admitted = self.admit(&delivery);
            if let Ok(message) = &admitted
                && let Some(command) = control_command(message)
            {
                let user = delivery.properties().user_id().as_ref().map(|u| u.as_str());
                if self.limits.control.allows(user) {
                    acks.finish(ticket, Settle::Ack).await;
                    control = Some(command);
                    break Exit::Quit;
                }
                if self.limits.control != ControlPolicy::Off {
                    tracing::warn!(command = %message.name, user = user.unwrap_or("<none>"), "ignoring a control command from a sender not allowed to send it");
                    acks.finish(ticket, Settle::Ack).await;
                    continue;
                }
            }
            let shared = &*shared;
            let properties = delivery.properties();
            let span = span::delivery(
                delivery.queue(),
                delivery.lapin(),
                admitted.as_ref().ok(),
                attempt_of(properties),
            );
            let scope = Scope::of(properties.headers().as_ref());
            // Boxed once here: the handling future is kilobytes, and every wrapper and the
            // push would otherwise copy it whole, per message.
            let handling =
                Box::pin(async move { (ticket, shared.handle(&delivery, admitted).await) });
            running.push(scope.run(handling.instrument(span)));
        };
        self.consumer.stop().await?;
        // Deliveries received but not started go straight back to their queue.
        for delivery in self.consumer.take_buffered() {
            if let Err(error) = delivery.reject(true).await {
                tracing::warn!(%error, "could not hand a delivery back");
            }
        }
        let finished = tokio::time::timeout(self.limits.shutdown_timeout, async {
            while let Some((ticket, settle)) = running.next().await {
                acks.finish(ticket, settle).await;
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
        timers.stop(self.limits.shutdown_timeout).await;
        acks.flush(true).await;
        self.consumer.close().await?;
        if let Some(Control::Restart) = control {
            restart(&self.connection).await;
        }
        tracing::info!(?exit, "processor stopped");
        Ok(exit)
    }

    /// Decodes a delivery, or says why it must be rejected: too big, a content type of
    /// another encoding, not a message.
    pub(super) fn admit(&self, delivery: &Delivery) -> Result<Message, String> {
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
        if let Ok(message) = &message
            && self.connection.config().debug
        {
            tracing::info!(queue = delivery.queue(), routing_key = delivery.routing_key(), kind = %message.kind, name = %message.name, category = message.category.as_str(), sender = %message.fingerprint.name, content = %message.content, "<-- received");
        }
        message
    }
}
