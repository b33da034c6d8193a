//! Settling a processor's deliveries: a rejection goes out at once, acknowledgements are
//! coalesced into one `basic.ack` with `multiple` over every delivery up to a tag, and
//! never cover a delivery whose handlers have not finished.
//!
//! Delivery tags count 1, 2, 3... on each channel, but deliveries of several queues may
//! reach the processor out of that order, so a multiple acknowledgement goes only as far
//! as every tag before it was seen and finished. Acknowledgements go straight to the
//! channel (not through lapin's per-delivery `Acker`, which hands each to a task of its
//! own first).

use std::collections::BTreeMap;
use std::sync::Arc;

use lapin::options::{BasicAckOptions, BasicRejectOptions};

use crate::connection::ChannelLease;
use crate::consumer::Delivery;

/// Which delivery a handler run settles: the channel it came on and its tag there.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ticket {
    channel: u64,
    tag: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Its handlers are running.
    Running,
    /// Finished well, waiting for a coalesced acknowledgement.
    Done,
    /// Rejected, or acknowledged on its own.
    Settled,
}

/// The unsettled deliveries of the consumer's current channel.
#[derive(Debug)]
pub(super) struct Acks {
    /// The channel the entries are on.
    channel: Option<Arc<ChannelLease>>,
    /// Every tag up to this one is settled.
    settled_through: u64,
    entries: BTreeMap<u64, State>,
    /// How many entries are `Done`.
    done: usize,
    /// Acknowledge as soon as this many are done in a row.
    batch: usize,
}

impl Acks {
    /// Coalesces up to `batch` acknowledgements (1: one each).
    pub(super) fn new(batch: usize) -> Self {
        Self {
            channel: None,
            settled_through: 0,
            entries: BTreeMap::new(),
            done: 0,
            batch: batch.max(1),
        }
    }

    /// Records a delivery whose handling starts; `None` for one that came on a channel
    /// lost since: it went back to its queue with that channel and comes again.
    pub(super) fn start(&mut self, delivery: &Delivery) -> Option<Ticket> {
        let lease = delivery.channel();
        let channel = lease.serial();
        // Channel serials only grow: a higher one is the channel of a recovery, whose
        // predecessor's deliveries can no longer be settled.
        match self.channel.as_ref().map(|c| c.serial()) {
            Some(current) if channel < current => return None,
            Some(current) if channel == current => {}
            _ => {
                *self = Self::new(self.batch);
                self.channel = Some(Arc::clone(lease));
            }
        }
        let tag = delivery.lapin().delivery_tag;
        self.entries.insert(tag, State::Running);
        Some(Ticket { channel, tag })
    }

    /// Settles a finished delivery: rejected now when `ok` is false (dropped or
    /// dead-lettered), else acknowledged with the next batch.
    pub(super) async fn finish(&mut self, ticket: Ticket, ok: bool) {
        let Some(channel) = self.current(ticket) else {
            return;
        };
        let Some(state) = self.entries.get_mut(&ticket.tag) else {
            return;
        };
        if *state != State::Running {
            return;
        }
        if ok {
            *state = State::Done;
            self.done += 1;
            if self.done >= self.batch {
                self.flush(false).await;
            }
        } else {
            *state = State::Settled;
            let rejected = channel
                .basic_reject(ticket.tag, BasicRejectOptions { requeue: false })
                .await;
            if let Err(error) = rejected {
                failed(&channel, "reject", &error);
            }
        }
    }

    /// Acknowledges, with one `multiple`, every delivery up to the first one not seen or
    /// still running; with `all`, also the finished ones after that, one by one (the
    /// queue is quiet or the processor stops: none may wait for a slow handler).
    pub(super) async fn flush(&mut self, all: bool) {
        let Some(channel) = self.channel.clone().filter(|_| self.done > 0) else {
            return;
        };
        let mut last = None;
        while let Some(entry) = self.entries.first_entry() {
            if *entry.key() != self.settled_through + 1 || *entry.get() == State::Running {
                break;
            }
            self.settled_through += 1;
            if entry.remove() == State::Done {
                self.done -= 1;
                last = Some(self.settled_through);
            }
        }
        if let Some(tag) = last {
            ack(&channel, tag, true).await;
        }
        if all && self.done > 0 {
            for (tag, state) in &mut self.entries {
                if *state == State::Done {
                    *state = State::Settled;
                    ack(&channel, *tag, false).await;
                }
            }
            self.done = 0;
        }
    }

    /// The channel of `ticket`'s delivery, when it is still the current one.
    fn current(&self, ticket: Ticket) -> Option<Arc<ChannelLease>> {
        self.channel
            .clone()
            .filter(|channel| channel.serial() == ticket.channel)
    }
}

async fn ack(channel: &ChannelLease, tag: u64, multiple: bool) {
    if let Err(error) = channel.basic_ack(tag, BasicAckOptions { multiple }).await {
        failed(channel, "acknowledgement", &error);
    }
}

/// Logs a settlement that failed: a warning, unless the channel has closed, which the
/// consumer's recovery sees to (the broker delivers those messages again).
fn failed(channel: &ChannelLease, what: &str, error: &lapin::Error) {
    if channel.status().connected() {
        tracing::warn!(%error, "{what} failed");
    } else {
        tracing::debug!(%error, "{what} skipped: the channel closed; the broker delivers the message again");
    }
}
