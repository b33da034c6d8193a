//! The connection's supervisor, the one recovery policy of postage: it re-establishes a
//! lost link forever, with capped and jittered backoff over every host, and has every
//! resilient part built on the connection (a [`Member`]: consumers, and through them
//! processors, applications and servers; producers; transports; messenger
//! subscriptions) reconcile what it wants on the broker after each reconnection, and
//! whenever it reports a channel of its own lost on a live connection, retrying just as
//! patiently until it holds.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};

use lapin::ErrorKind;
use lapin::protocol::{AMQPErrorKind, AMQPHardError};

use super::dial::dial;
use super::{Inner, LinkState};
use crate::error::Result;

/// The first pause after a failed attempt; it doubles up to [`Backoff::CAP`].
const FIRST_PAUSE: Duration = Duration::from_millis(100);

/// Pauses between attempts: doubling from [`FIRST_PAUSE`] to [`Backoff::CAP`], each
/// drawn at random from its upper half, so a fleet that lost its broker at once does not
/// come back at once.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    /// The longest pause: a broker back after any outage is found within it.
    pub(crate) const CAP: Duration = Duration::from_secs(2);

    pub(crate) fn new() -> Self {
        Self { next: FIRST_PAUSE }
    }

    /// The pause before the next attempt.
    pub(crate) fn pause(&mut self) -> Duration {
        let ceiling = self.next;
        self.next = (self.next * 2).min(Self::CAP);
        ceiling.mul_f64(0.5 + fastrand::f64() / 2.0)
    }
}

/// A future a member's reconciliation returns.
pub(crate) type Reconciling = Pin<Box<dyn Future<Output = Result<()>> + Send>>;

/// Something built on a connection that holds state on the broker (channels, queues,
/// bindings, consumers) and can restore it: [`reconcile`](Member::reconcile) makes the
/// broker match what the member wants, from any starting point, and may be called again
/// after it failed halfway.
pub(crate) trait Member: Send + Sync + 'static {
    /// What it is, for the logs: `consumer of queues ["a", "b"]`.
    fn describe(&self) -> String;

    /// Restores everything on the live connection. An error is logged and the call is
    /// tried again after a pause, until it succeeds or the connection is lost again.
    fn reconcile(self: Arc<Self>) -> Reconciling;
}

/// Tells a member's keeper that its channel was lost on a live connection: the channel
/// serial it had, so a report that a newer reconciliation made stale is ignored.
#[derive(Debug, Clone)]
pub(super) struct Resync {
    sender: mpsc::UnboundedSender<u64>,
}

impl Resync {
    /// Asks for a reconciliation of the member whose channel `serial` was lost.
    pub(super) fn lost(&self, serial: u64) {
        let _ = self.sender.send(serial);
    }
}

/// Keeps `member` reconciled for as long as it lives: after each reconnection of the
/// connection whose generations `generations` watches, and after each loss it reports
/// through the returned [`Resync`] (`current` says which channel serial it has now: a
/// report about another is stale).
pub(super) fn keep<M: Member>(
    member: Weak<M>,
    mut generations: watch::Receiver<u64>,
    current: impl Fn(&M) -> u64 + Send + 'static,
) -> Resync {
    let (sender, mut losses) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = generations.changed() => if changed.is_err() {
                    return;
                },
                lost = losses.recv() => {
                    let Some(serial) = lost else {
                        return;
                    };
                    match member.upgrade() {
                        Some(strong) if current(&strong) == serial => {}
                        Some(_) => continue,
                        None => return,
                    }
                }
            }
            let mut backoff = Backoff::new();
            loop {
                let Some(strong) = member.upgrade() else {
                    return;
                };
                match Arc::clone(&strong).reconcile().await {
                    Ok(()) => {
                        tracing::info!(member = %strong.describe(), "recovered");
                        break;
                    }
                    Err(error) => {
                        let pause = backoff.pause();
                        tracing::warn!(member = %strong.describe(), %error, ?pause, "recovery failed; trying again");
                        drop(strong);
                        // Lost again: the next round starts with the next connection.
                        if generations.has_changed().unwrap_or(true) {
                            break;
                        }
                        tokio::time::sleep(pause).await;
                    }
                }
            }
        }
    });
    Resync { sender }
}

/// A connection's event stream.
pub(super) type Events = std::pin::Pin<Box<dyn futures_util::Stream<Item = lapin::Event> + Send>>;

/// Watches the connection and re-establishes it when it is lost, until it is closed or
/// dropped.
pub(super) async fn supervise(inner: Weak<Inner>, mut events: Events) {
    let mut check = tokio::time::interval(Duration::from_millis(500));
    // The last error lapin reported: why the link broke, when it does.
    let mut cause = None;
    loop {
        // Wait until the link breaks: an error event, or a status check that finds it down.
        tokio::select! {
            event = events.next() => match event {
                Some(lapin::Event::Error(error)) => {
                    tracing::debug!(%error, "connection error event");
                    cause = Some(error);
                }
                Some(lapin::Event::ConnectionBlocked(reason)) => {
                    tracing::warn!(%reason, "RabbitMQ blocked publishing on this connection (a resource alarm)");
                    set_state(&inner, LinkState::Blocked { reason });
                    continue;
                }
                Some(lapin::Event::ConnectionUnblocked) => {
                    tracing::info!("RabbitMQ unblocked publishing on this connection");
                    set_state(&inner, LinkState::Connected);
                    continue;
                }
                Some(_) => continue,
                None => {}
            },
            _ = check.tick() => {}
        }
        let Some(strong) = inner.upgrade() else {
            return;
        };
        if strong.closed.load(Ordering::SeqCst) {
            return;
        }
        let link = strong.link.with(|link| link.clone());
        if link.amqp.status().connected() {
            continue;
        }
        match cause.take() {
            // The operation the broker refused reports it; this is not news to a user.
            Some(error) if refused_request(&error) => {
                tracing::info!(host = %link.host, %error, "RabbitMQ closed the connection over a request it refused; reconnecting");
            }
            _ => tracing::warn!(host = %link.host, "connection to RabbitMQ lost; reconnecting"),
        }
        strong.state.send_replace(LinkState::Reconnecting);
        drop(strong);
        let lost = tokio::time::Instant::now();
        let mut backoff = Backoff::new();
        let fresh = loop {
            let Some(strong) = inner.upgrade() else {
                return;
            };
            if strong.closed.load(Ordering::SeqCst) {
                return;
            }
            match dial(&strong.config, strong.reports_to.is_some()).await {
                Ok(fresh) => break fresh,
                Err(error) => {
                    drop(strong);
                    let pause = backoff.pause();
                    tracing::debug!(%error, ?pause, "no broker answered; trying again");
                    tokio::time::sleep(pause).await;
                }
            }
        };
        let Some(strong) = inner.upgrade() else {
            return;
        };
        events = Box::pin(fresh.amqp.events_listener());
        tracing::info!(host = %fresh.host, after = ?lost.elapsed(), "reconnected to RabbitMQ");
        strong.link.with(|link| *link = fresh);
        strong.state.send_replace(LinkState::Connected);
        strong.generation.send_modify(|g| *g += 1);
        if let Some(telemetry) = &strong.telemetry {
            telemetry.metrics.reconnect();
        }
    }
}

fn set_state(inner: &Weak<Inner>, state: LinkState) {
    let Some(inner) = inner.upgrade() else {
        return;
    };
    // A publishing connection's block is its parent's: that is where the user looks.
    if let Some(parent) = &inner.reports_to {
        match &state {
            LinkState::Blocked { .. } => {
                parent.send_replace(state.clone());
            }
            _ => {
                parent.send_if_modified(|current| {
                    let blocked = matches!(current, LinkState::Blocked { .. });
                    if blocked {
                        *current = LinkState::Connected;
                    }
                    blocked
                });
            }
        }
    }
    inner.state.send_replace(state);
}

/// A connection the broker closed over something postage sent (a refused feature, a
/// command it does not allow), not over its own state (forced close, shutdown) or the
/// network.
fn refused_request(error: &lapin::Error) -> bool {
    matches!(error.kind(), ErrorKind::ProtocolError(e)
        if matches!(e.kind(), AMQPErrorKind::Hard(hard)
            if !matches!(hard, AMQPHardError::CONNECTIONFORCED)))
}
