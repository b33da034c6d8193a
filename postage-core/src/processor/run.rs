//! The run loop: consume, admit, dispatch concurrently up to the limit, settle.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::Notify;
use tracing::Instrument;

use super::Shared;
use super::acks::{Acks, Ticket};
use super::claims::Claims;
use super::control::ControlPolicy;
use super::control::{control_command, restart, watch_signals};
use super::dispatch::metadata;
use super::ordered::{Lanes, ORDERED_BACKLOG, REQUEUE_PAUSE};
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
        let claims = self.partitions.clone().map(|partitions| {
            let stop = Arc::new(Notify::new());
            let claims = Claims::new(
                partitions,
                self.connection.clone(),
                self.consumer.handle(),
                self.limits.shutdown_timeout,
            );
            (Arc::clone(&stop), tokio::spawn(claims.keep(stop)))
        });
        let (shared, stop) = (Arc::clone(&self.shared), Arc::clone(&self.stop));
        // With prefetch 0 (no limit) acknowledgements wait for a quiet queue or 100 more.
        let mut acks = Acks::new(
            match self.prefetch {
                0 => 100,
                prefetch => usize::from(prefetch / 2),
            },
            Arc::clone(&self.stop.tracked),
        );
        // Ordered: the deliveries waiting for an earlier one of their key, at most what
        // the broker hands over unacknowledged.
        let mut lanes = self.ordered.as_ref().map(|_| {
            Lanes::new(match self.prefetch {
                0 => ORDERED_BACKLOG,
                prefetch => usize::from(prefetch),
            })
        });
        // The handlers in flight run on this task: no task and no wake-up per message.
        let mut running = FuturesUnordered::new();
        let mut control = None;
        let exit = loop {
            // What finished is settled first, without waiting.
            while let Some(Some(done)) = running.next().now_or_never() {
                if let Some(next) = self.after(done, &mut acks, lanes.as_mut()).await {
                    running.push(start(&shared, next));
                }
            }
            if stop.requested.load(Ordering::Relaxed) {
                break Exit::Shutdown;
            }
            let free = running.len() < self.concurrency && !lanes.as_ref().is_some_and(Lanes::full);
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
                    let woke = tokio::select! {
                        biased;
                        () = stop.wake.notified() => break Exit::Shutdown,
                        Some(done) = running.next(), if !running.is_empty() => Woke::Finished(done),
                        next = self.consumer.next(), if free => Woke::Delivery(next),
                    };
                    match woke {
                        Woke::Finished(done) => {
                            if let Some(next) = self.after(done, &mut acks, lanes.as_mut()).await {
                                running.push(start(&shared, next));
                            }
                            continue;
                        }
                        Woke::Delivery(next) => next,
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
            // Bad input has no key: it is refused at once, holding up no key.
            let key = match (&self.ordered, &admitted) {
                (Some(key_of), Ok(message)) => Some(key_of.of(message, &metadata(&delivery))),
                _ => None,
            };
            let pending = Pending {
                ticket,
                delivery,
                admitted,
                key,
                pause: false,
            };
            let pending = match (key, lanes.as_mut()) {
                (Some(key), Some(lanes)) => lanes.enter(key, pending),
                _ => Some(pending),
            };
            if let Some(pending) = pending {
                running.push(start(&shared, pending));
            }
        };
        if lanes.is_some() {
            // In order: the handlers in flight finish first (starting nothing more), then
            // the channel closes without cancelling, so every delivery not started goes
            // back to its queue at once, in its place, before the broker gives the queue
            // to another consumer (a single-active-consumer queue's next one).
            self.finish_running(&mut running, &mut acks).await;
            timers.stop(self.limits.shutdown_timeout).await;
            acks.flush(true).await;
            self.consumer.close_in_order().await?;
        } else {
            self.consumer.stop().await?;
            // Deliveries received but not started go straight back to their queue.
            for delivery in self.consumer.take_buffered() {
                if let Err(error) = delivery.reject(true).await {
                    tracing::warn!(%error, "could not hand a delivery back");
                }
            }
            self.finish_running(&mut running, &mut acks).await;
            timers.stop(self.limits.shutdown_timeout).await;
            acks.flush(true).await;
            self.consumer.close().await?;
        }
        if let Some((stop, keeping)) = claims {
            // After the channel closed: what it had not acknowledged is back in place.
            stop.notify_one();
            match keeping.await {
                Ok(claims) => claims.drop_all().await,
                Err(error) => tracing::warn!(%error, "the partitions' keeper failed"),
            }
        }
        if let Some(Control::Restart) = control {
            restart(&self.connection).await;
        }
        tracing::info!(?exit, "processor stopped");
        Ok(exit)
    }

    /// Waits for the handlers in flight (within the shutdown timeout) and settles them.
    async fn finish_running<F: Future<Output = Finished>>(
        &self,
        running: &mut FuturesUnordered<F>,
        acks: &mut Acks,
    ) {
        let finished = tokio::time::timeout(self.limits.shutdown_timeout, async {
            while let Some(done) = running.next().await {
                // Stopping: a requeue goes back to the broker, and nothing new starts.
                acks.finish(done.ticket, done.settle).await;
            }
        })
        .await;
        if finished.is_err() {
            tracing::warn!(
                left = running.len(),
                "handlers still running at the shutdown timeout; their messages will be delivered again"
            );
        }
    }

    /// Settles a finished handler run and says what starts next in its place, in order:
    /// the same delivery again after [`REQUEUE_PAUSE`] when its handler asked for a
    /// requeue (run here, its key held, so no later delivery of its key overtakes it),
    /// else the next delivery waiting for its key.
    async fn after(
        &self,
        done: Finished,
        acks: &mut Acks,
        lanes: Option<&mut Lanes<Pending>>,
    ) -> Option<Pending> {
        let Finished {
            ticket,
            settle,
            key,
            delivery,
        } = done;
        let (Some(key), Some(lanes)) = (key, lanes) else {
            acks.finish(ticket, settle).await;
            return None;
        };
        if settle == Settle::Requeue {
            tracing::debug!(
                queue = delivery.queue(),
                "running a delivery again here, in its key's order, instead of requeueing it"
            );
            let admitted = self.admit(&delivery);
            return Some(Pending {
                ticket,
                delivery,
                admitted,
                key: Some(key),
                pause: true,
            });
        }
        acks.finish(ticket, settle).await;
        lanes.leave(key)
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

/// A delivery on its way into its handlers.
struct Pending {
    ticket: Ticket,
    delivery: Delivery,
    /// Its message, or why it is refused.
    admitted: Result<Message, String>,
    /// Its key, in an ordered processor.
    key: Option<u64>,
    /// Whether it waits [`REQUEUE_PAUSE`] first (it runs again after a requeue).
    pause: bool,
}

/// A handler run that finished, with what becomes of its delivery.
struct Finished {
    ticket: Ticket,
    settle: Settle,
    key: Option<u64>,
    delivery: Delivery,
}

/// What the loop woke up for.
enum Woke {
    Finished(Finished),
    Delivery(Option<Result<Delivery>>),
}

/// Runs a delivery's handlers, in its span and trace context.
fn start<P: Send + Sync + 'static>(
    shared: &Shared<P>,
    pending: Pending,
) -> impl Future<Output = Finished> + '_ {
    let Pending {
        ticket,
        delivery,
        admitted,
        key,
        pause,
    } = pending;
    let properties = delivery.properties();
    let span = span::delivery(
        delivery.queue(),
        delivery.lapin(),
        admitted.as_ref().ok(),
        attempt_of(properties),
    );
    let scope = Scope::of(properties.headers().as_ref());
    // Boxed once here: the handling future is kilobytes, and every wrapper and the push
    // would otherwise copy it whole, per message.
    let handling = Box::pin(async move {
        if pause {
            tokio::time::sleep(REQUEUE_PAUSE).await;
        }
        let settle = shared.handle(&delivery, admitted).await;
        Finished {
            ticket,
            settle,
            key,
            delivery,
        }
    });
    scope.run(handling.instrument(span))
}
