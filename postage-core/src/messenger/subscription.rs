//! A Messenger's subscriptions: each consumes its queue on a channel of its own, is a
//! member of its connection's supervisor (consumed again after a reconnection or the loss
//! of its channel), and forwards what it receives to the messenger from a task.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

use crate::channel::{Channel, Incoming, Subscription};
use crate::connection::supervisor::{Member, Reconciling};
use crate::connection::{Connection, LiveChannel};
use crate::error::{Error, Result};
use crate::topology::Queue;

/// Consumes `source` and forwards its messages to `sender` from a task of its own,
/// counting them in `count`; returns the queue's name and the running subscription.
pub(super) async fn start(
    source: Source,
    sender: mpsc::UnboundedSender<Result<Incoming>>,
    count: Arc<AtomicUsize>,
) -> Result<(String, Subscribed)> {
    let generations = source.connection.watch_generation();
    let described = source.queue.name().to_owned();
    let (next, mut arrivals) = mpsc::unbounded_channel();
    let source = Arc::new(source);
    let live = LiveChannel::open(move || Arc::clone(&source).consume(next.clone())).await?;
    let Some(consuming) = arrivals.recv().await else {
        return Err(Error::Closed("a messenger subscription"));
    };
    let name = consuming.subscription.queue().to_owned();
    let kept = Arc::new(Kept {
        queue: described,
        live,
        arrivals: tokio::sync::Mutex::new(arrivals),
    });
    LiveChannel::kept(&kept, generations, |kept: &Kept| Some(&kept.live));
    let stop = Arc::new(Notify::new());
    let task = tokio::spawn(forward(kept, consuming, sender, count, Arc::clone(&stop)));
    Ok((name, Subscribed { stop, task }))
}

/// A running subscription: the task that forwards its messages, told to stop by `stop`.
#[derive(Debug)]
pub(super) struct Subscribed {
    pub(super) stop: Arc<Notify>,
    pub(super) task: JoinHandle<Result<()>>,
}

/// What a subscription consumes, kept to consume it again after a connection loss.
#[derive(Debug)]
pub(super) struct Source {
    pub(super) connection: Connection,
    /// The queue (with an empty name for one the broker names, anew each time).
    pub(super) queue: Queue,
    /// Whether the subscription declares the queue, or only consumes it.
    pub(super) declare: bool,
    pub(super) prefetch: u16,
}

/// A subscription's channel (one each: a missing queue closes that channel only) and
/// consumer.
#[derive(Debug)]
struct Consuming {
    channel: Channel,
    subscription: Subscription,
}

impl Source {
    /// Opens a channel and consumes the queue (declared first when the subscription
    /// declares it); hands the consumer to `next`, for the forwarding task.
    async fn consume(self: Arc<Self>, next: mpsc::UnboundedSender<Consuming>) -> Result<Channel> {
        let channel = Channel::open(&self.connection).await?;
        channel.qos(self.prefetch).await?;
        let name = if self.declare {
            channel.declare_queue(&self.queue).await?
        } else {
            self.queue.name().to_owned()
        };
        let subscription = channel.consume(&name, "").await?;
        let _ = next.send(Consuming {
            channel: channel.clone(),
            subscription,
        });
        Ok(channel)
    }
}

/// A subscription as a member of its connection's supervisor: after each reconnection,
/// and each loss of its channel it reports, the supervisor has it consume again on a
/// new channel, and the new consumer goes to the subscription's forwarding task.
#[derive(Debug)]
struct Kept {
    /// The queue's name as asked for, for the logs.
    queue: String,
    /// The channel the subscription consumes on now.
    live: LiveChannel<Channel>,
    /// Each new consumer, from the live channel's setup.
    arrivals: tokio::sync::Mutex<mpsc::UnboundedReceiver<Consuming>>,
}

impl Kept {
    /// Waits for the consumer that replaces the one on channel `serial`, lost.
    async fn replacement(&self, serial: u64) -> Option<Consuming> {
        self.live.lost(serial);
        self.arrivals.lock().await.recv().await
    }
}

impl Member for Kept {
    fn describe(&self) -> String {
        format!("messenger subscription of {:?}", self.queue)
    }

    /// Consumes again on a new channel, unless the current one is still open (a
    /// reconnection and the report of the channel's loss both ask): never two consumers.
    fn reconcile(self: Arc<Self>) -> Reconciling {
        Box::pin(async move { self.live.renewed().await.map(drop) })
    }
}

/// Hands a subscription's messages to the messenger until told to stop, going on with
/// the consumer the supervisor starts whenever the old one was lost with its channel.
async fn forward(
    kept: Arc<Kept>,
    mut consuming: Consuming,
    sender: mpsc::UnboundedSender<Result<Incoming>>,
    count: Arc<AtomicUsize>,
    stop: Arc<Notify>,
) -> Result<()> {
    loop {
        tokio::select! {
            biased;
            () = stop.notified() => return consuming.channel.close().await,
            next = consuming.subscription.next() => match next {
                // The channel failed; the end of the stream follows, and with it a new one.
                Some(Err(error)) => tracing::debug!(%error, "messenger subscription failed"),
                Some(incoming) => {
                    count.fetch_add(1, Ordering::AcqRel);
                    if sender.send(incoming).is_err() {
                        return Ok(());
                    }
                }
                None if consuming.channel.is_open() => {
                    let queue = consuming.subscription.queue().to_owned();
                    tracing::warn!(queue, "the broker ended a messenger subscription");
                    count.fetch_add(1, Ordering::AcqRel);
                    let _ = sender.send(Err(Error::SubscriptionEnded { queue }));
                    return consuming.channel.close().await;
                }
                None => {
                    let queue = consuming.subscription.queue().to_owned();
                    tracing::info!(queue, "messenger subscription lost with its channel; consuming again");
                    let serial = consuming.channel.serial();
                    consuming = tokio::select! {
                        biased;
                        () = stop.notified() => return Ok(()),
                        next = kept.replacement(serial) => match next {
                            Some(next) => next,
                            None => return Ok(()),
                        },
                    };
                }
            },
        }
    }
}
