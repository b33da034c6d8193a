//! Delivery tracking: what became of each published message, from the broker's publisher
//! confirms, and how many sends are still unconfirmed.

use std::sync::Arc;

use lapin::{Confirmation, PublisherConfirm};
use tokio::sync::{OwnedSemaphorePermit, mpsc, watch};

/// What the broker did with a published message, as far as the sender can know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DeliveryStatus {
    /// Sent; the broker has not confirmed it yet.
    Pending,
    /// The broker took it: every queue it was routed to has it.
    Accepted,
    /// The broker refused it (a negative confirm: a full queue with
    /// `x-overflow: reject-publish`, an internal error...).
    Rejected,
    /// No queue was bound to take it, so the broker returned it. Only `mandatory`
    /// messages are returned; others are dropped and reported [`Accepted`](Self::Accepted).
    Unroutable,
    /// The channel closed before the broker answered: the message may or may not have
    /// arrived.
    Aborted,
}

impl DeliveryStatus {
    /// True once the broker answered (or the channel closed): anything but
    /// [`Pending`](Self::Pending).
    pub fn is_settled(self) -> bool {
        self != Self::Pending
    }
}

/// Follows one published message until the broker confirms it. Cheap to clone; dropping it
/// does not cancel anything.
///
/// ```no_run
/// use postage_core::{Connection, channel::{Channel, DeliveryStatus, Envelope}};
///
/// # async fn demo() -> postage_core::Result<()> {
/// let connection = Connection::from_env().await?;
/// let channel = Channel::open(&connection).await?;
/// let tracker = channel
///     .publish("", "no-such-queue", Envelope::text("hello").mandatory(true))
///     .await?;
/// assert_eq!(tracker.settled().await, DeliveryStatus::Unroutable);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Tracker {
    status: watch::Receiver<DeliveryStatus>,
}

impl Tracker {
    /// The last known status, without waiting.
    pub fn status(&self) -> DeliveryStatus {
        *self.status.borrow()
    }

    /// Waits until the broker confirms the message (or the channel closes) and returns
    /// the outcome, never [`DeliveryStatus::Pending`].
    pub async fn settled(&self) -> DeliveryStatus {
        let mut status = self.status.clone();
        match status.wait_for(|s| s.is_settled()).await {
            Ok(settled) => *settled,
            // The confirm task ended without an answer: the channel is gone.
            Err(_) => DeliveryStatus::Aborted,
        }
    }
}

/// One publish whose confirm is awaited.
struct Unconfirmed {
    confirm: PublisherConfirm,
    status: watch::Sender<DeliveryStatus>,
    _window: Option<OwnedSemaphorePermit>,
}

/// How many publishes of a channel may wait for their confirm: past it, a publish waits
/// for room, so a sender far ahead of the broker holds a bounded number of them.
pub(crate) const UNCONFIRMED_LIMIT: usize = 65_536;

/// A channel's publisher confirms: a task awaits each in publishing order, settles its
/// [`Tracker`] and frees its place in the outgoing window; [`Confirms::unsettled`] counts
/// those still waiting, at most [`UNCONFIRMED_LIMIT`].
#[derive(Debug, Clone)]
pub(crate) struct Confirms {
    sender: mpsc::Sender<Unconfirmed>,
    unsettled: Arc<watch::Sender<usize>>,
}

impl std::fmt::Debug for Unconfirmed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unconfirmed").finish_non_exhaustive()
    }
}

impl Confirms {
    /// Starts the task that awaits confirms; it ends when every `Confirms` clone is gone.
    pub(crate) fn start() -> Self {
        let (sender, mut receiver) = mpsc::channel::<Unconfirmed>(UNCONFIRMED_LIMIT);
        let unsettled = Arc::new(watch::Sender::new(0usize));
        let counter = Arc::clone(&unsettled);
        tokio::spawn(async move {
            while let Some(unconfirmed) = receiver.recv().await {
                let status = match unconfirmed.confirm.await {
                    Ok(Confirmation::Ack(None) | Confirmation::NotRequested) => {
                        DeliveryStatus::Accepted
                    }
                    Ok(Confirmation::Ack(Some(_))) => DeliveryStatus::Unroutable,
                    Ok(Confirmation::Nack(_)) => DeliveryStatus::Rejected,
                    Err(error) => {
                        tracing::debug!(%error, "no publisher confirm: the channel closed");
                        DeliveryStatus::Aborted
                    }
                };
                unconfirmed.status.send_replace(status);
                counter.send_modify(|n| *n = n.saturating_sub(1));
            }
        });
        Self { sender, unsettled }
    }

    /// Follows `confirm`, once there is room; `window` is released once it settles.
    pub(crate) async fn track(
        &self,
        confirm: PublisherConfirm,
        window: Option<OwnedSemaphorePermit>,
    ) -> Tracker {
        let (status, receiver) = watch::channel(DeliveryStatus::Pending);
        self.unsettled.send_modify(|n| *n += 1);
        let unconfirmed = Unconfirmed {
            confirm,
            status,
            _window: window,
        };
        if let Err(mpsc::error::SendError(lost)) = self.sender.send(unconfirmed).await {
            // The task is gone (runtime shutting down): nobody will confirm it.
            lost.status.send_replace(DeliveryStatus::Aborted);
            self.unsettled.send_modify(|n| *n = n.saturating_sub(1));
        }
        Tracker { status: receiver }
    }

    /// How many tracked messages the broker has not confirmed yet.
    pub(crate) fn unsettled(&self) -> usize {
        *self.unsettled.borrow()
    }

    /// Waits until every tracked message is settled.
    pub(crate) async fn all_settled(&self) {
        let mut unsettled = self.unsettled.subscribe();
        // The sender lives in `self`, so this cannot fail while we wait.
        let _ = unsettled.wait_for(|n| *n == 0).await;
    }
}
