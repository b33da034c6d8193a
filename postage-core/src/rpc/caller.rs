//! The calling side's engine, which every caller holds: one reply consumer on the
//! caller's live channel, the calls waiting for its answers, and the rule for answers
//! without a correlation id.
//!
//! No task of its own reads the answers: a waiting call does, for every call, while no
//! other call does (the first in line holds the consumer). A lone caller so gets its
//! answer from lapin without a hop to another task and thread. A caller that must take
//! answers while no call waits (the simple client's requests) keeps one reader waiting
//! for ever.

use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use futures_util::StreamExt;
use lapin::types::ShortString;
use tokio::sync::{Notify, oneshot};

use super::{Calls, Destination, Destinations, ReplyQueue, start_reply_consumer};
use crate::connection::{ChannelLease, Connection};
use crate::error::Result;

/// What a waiting call hears.
#[derive(Debug)]
pub(crate) enum Heard {
    /// Its answer's body, undecoded.
    Answer(Vec<u8>),
    /// An answer without a correlation id came on the shared queue, perhaps its own:
    /// the call is sent again on a queue of its own.
    SendAlone,
    /// The reply consumer ended with its channel: no answer can come.
    Lost,
    /// A progress beat's body (see [`super::progress`]): the call goes on.
    Progress(Vec<u8>),
}

/// One call (or request) waiting in a [`Replies`] table.
pub(crate) trait Waiter: Send {
    /// The reply consumer (its epoch) the call was last sent for.
    fn epoch(&self) -> u64;
    /// Where the call went, for callers that may call Python Postage receivers; `None`
    /// for a caller that cannot send a call again on a queue of its own.
    fn destination(&self) -> Option<Destination>;
    /// Tells the caller what came.
    fn hear(self, heard: Heard);
    /// Hands the caller a progress beat's body, the waiter staying in place for the
    /// answer; dropped by a caller that asks for no beats.
    fn progress(&self, _body: Vec<u8>) {}
}

/// A caller's answers: where they come back, the calls waiting for them, and which
/// destinations answer without a correlation id.
#[derive(Debug)]
pub(crate) struct Replies<W> {
    /// The shared queue's kind: direct reply-to or a private queue.
    kind: ReplyQueue,
    /// The calls waiting, by correlation id.
    pub(crate) waiters: Calls<W>,
    /// Which destinations answer without a correlation id (see [`crate::rpc`]).
    pub(crate) destinations: Destinations,
    /// The `reply_to` address once the consumer runs, with the serial of the channel
    /// it runs on: a reopened channel needs a new consumer.
    reply_to: tokio::sync::Mutex<Option<(u64, ShortString)>>,
    /// The consumer; `None` once it ended with its channel.
    answers: tokio::sync::Mutex<Option<lapin::Consumer>>,
    /// Whether `answers` holds a running consumer.
    answering: AtomicBool,
    /// Tells the reader of `answers` to let go, and readers with nothing to read to look
    /// again: a new consumer replaces the old one.
    replacing: Notify,
    /// Counts the consumers started. The answers to calls sent for an earlier one cannot
    /// come: when it is replaced, those calls are told at once.
    epoch: AtomicU64,
}

impl<W: Waiter> Replies<W> {
    /// Answers over `kind`'s shared queue ([`ReplyQueue::PerCall`] callers share a
    /// private queue for the calls that have none of their own).
    pub(crate) fn new(kind: ReplyQueue) -> Self {
        Self {
            kind: match kind {
                ReplyQueue::PerCall => ReplyQueue::Private,
                other => other,
            },
            waiters: Calls::new(),
            destinations: Destinations::default(),
            reply_to: tokio::sync::Mutex::new(None),
            answers: tokio::sync::Mutex::new(None),
            answering: AtomicBool::new(false),
            replacing: Notify::new(),
            epoch: AtomicU64::new(0),
        }
    }

    /// The epoch of the consumer running now.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// The `reply_to` address of calls published on `channel` and the epoch of the
    /// consumer behind it, starting that consumer on `channel` when it is not running
    /// there yet (direct reply-to must be consumed on the channel that publishes).
    pub(crate) async fn address(
        &self,
        connection: &Connection,
        channel: &ChannelLease,
    ) -> Result<(ShortString, u64)> {
        let serial = channel.serial();
        let mut current = self.reply_to.lock().await;
        if let Some((running, address)) = &*current
            && *running == serial
            && self.answering.load(Ordering::SeqCst)
        {
            return Ok((address.clone(), self.epoch()));
        }
        let (address, consumer) = start_reply_consumer(connection, channel, self.kind).await?;
        self.replacing.notify_waiters();
        *self.answers.lock().await = Some(consumer);
        self.answering.store(true, Ordering::SeqCst);
        let epoch = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        // Calls sent for the consumer replaced wait in vain, even those nobody awaits
        // now: dropping their waiters tells them when they are awaited.
        self.waiters.retain(|waiter| waiter.epoch() >= epoch);
        *current = Some((serial, address.clone()));
        Ok((address, epoch))
    }

    /// Waits for what `receiver` hears, reading the answers for every waiter meanwhile
    /// while no other does.
    pub(crate) async fn wait(&self, receiver: &mut oneshot::Receiver<Heard>) -> Heard {
        loop {
            // Enabled before `answers` is looked at, so a consumer started meanwhile is
            // not missed.
            let mut replaced = pin!(self.replacing.notified());
            replaced.as_mut().enable();
            let mut answers = tokio::select! {
                biased;
                heard = &mut *receiver => return heard.unwrap_or(Heard::Lost),
                answers = self.answers.lock() => answers,
            };
            let Some(consumer) = answers.as_mut() else {
                drop(answers);
                tokio::select! {
                    biased;
                    heard = &mut *receiver => return heard.unwrap_or(Heard::Lost),
                    () = replaced => continue,
                }
            };
            loop {
                tokio::select! {
                    biased;
                    heard = &mut *receiver => return heard.unwrap_or(Heard::Lost),
                    () = &mut replaced => break,
                    next = consumer.next() => match next {
                        Some(Ok(delivery)) => self.deliver(delivery),
                        // Ended with its channel: calls still waiting learn at once that
                        // no answer can come, this one included.
                        _ => {
                            tracing::debug!("RPC reply consumer ended");
                            *answers = None;
                            self.answering.store(false, Ordering::SeqCst);
                            self.waiters.retain(|_| false);
                            break;
                        }
                    },
                }
            }
        }
    }

    /// Reads answers for every waiter until `until`'s sender is dropped: for a caller
    /// whose answers must be taken while no call waits, which keeps that sender.
    pub(crate) async fn read_until(self: Arc<Self>, mut until: oneshot::Receiver<Heard>) {
        let _ = self.wait(&mut until).await;
    }

    /// Gives `body` to the call waiting under `id`, which learns its destination answers
    /// with correlation ids; false when none waits.
    pub(crate) fn hand(&self, id: &str, body: Vec<u8>) -> bool {
        let Some(waiter) = self.waiters.take(id) else {
            return false;
        };
        if let Some(destination) = waiter.destination() {
            self.destinations.answered_correlated(destination);
        }
        waiter.hear(Heard::Answer(body));
        true
    }

    /// Hands an answer's body, undecoded, to its waiting call. One without a correlation
    /// id cannot be matched on a shared reply queue: it may answer an earlier call that
    /// gave up, so it goes to nobody, and the calls it may answer are sent again, each on
    /// a queue of its own (see [`crate::rpc`]).
    fn deliver(&self, delivery: lapin::message::Delivery) {
        let Some(id) = delivery.properties.correlation_id() else {
            self.destinations.saw_uncorrelated();
            let alone = self.waiters.take_where(|waiter| {
                waiter
                    .destination()
                    .is_some_and(|destination| !self.destinations.correlates(destination))
            });
            tracing::info!(
                calls = alone.len(),
                "an RPC answer without a correlation id (Python Postage 1.x receivers answer \
                 so): the calls it may answer are sent again, each on a reply queue of its own"
            );
            for waiter in alone {
                waiter.hear(Heard::SendAlone);
            }
            return;
        };
        if super::progress::is_beat(&delivery.properties) {
            let data = delivery.data;
            self.waiters
                .with(id.as_str(), |waiter| waiter.progress(data));
            return;
        }
        if !self.hand(id.as_str(), delivery.data) {
            tracing::debug!(correlation_id = %id, "dropping an RPC answer nobody waits for");
        }
    }
}
