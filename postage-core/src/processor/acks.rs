//! Settling a processor's deliveries: a rejection goes out at once, acknowledgements are
//! coalesced into one `basic.ack` with `multiple` over every delivery up to a tag, and
//! never cover a delivery whose handlers have not finished.
//!
//! Delivery tags count 1, 2, 3... on each channel, but deliveries of several queues may
//! reach the processor out of that order, so a multiple acknowledgement goes only as far
//! as every tag before it was seen and finished.

use std::collections::BTreeMap;

use lapin::Acker;
use lapin::options::{BasicAckOptions, BasicRejectOptions};

use crate::consumer::Delivery;

/// Which delivery a handler run settles: the channel it came on and its tag there.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ticket {
    channel: u64,
    tag: u64,
}

#[derive(Debug)]
enum State {
    /// Its handlers are running.
    Running(Acker),
    /// Finished well, waiting for a coalesced acknowledgement.
    Done(Acker),
    /// Rejected, or acknowledged on its own.
    Settled,
}

/// The unsettled deliveries of the consumer's current channel.
#[derive(Debug)]
pub(super) struct Acks {
    /// The serial of the channel the entries are on.
    channel: u64,
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
            channel: u64::MAX,
            settled_through: 0,
            entries: BTreeMap::new(),
            done: 0,
            batch: batch.max(1),
        }
    }

    /// Records a delivery whose handling starts; `None` for one that came on a channel
    /// lost since: it went back to its queue with that channel and comes again.
    pub(super) fn start(&mut self, delivery: &Delivery) -> Option<Ticket> {
        let (channel, tag) = delivery.tag();
        // Channel serials only grow: a higher one is the channel of a recovery, whose
        // predecessor's deliveries can no longer be settled.
        if self.channel == u64::MAX || channel > self.channel {
            *self = Self::new(self.batch);
            self.channel = channel;
        } else if channel < self.channel {
            return None;
        }
        self.entries
            .insert(tag, State::Running(delivery.lapin().acker.clone()));
        Some(Ticket { channel, tag })
    }

    /// Settles a finished delivery: rejected now when `ok` is false (dropped or
    /// dead-lettered), else acknowledged with the next batch.
    pub(super) async fn finish(&mut self, ticket: Ticket, ok: bool) {
        if ticket.channel != self.channel {
            return;
        }
        let Some(state) = self.entries.get_mut(&ticket.tag) else {
            return;
        };
        let State::Running(acker) = std::mem::replace(state, State::Settled) else {
            return;
        };
        if ok {
            *state = State::Done(acker);
            self.done += 1;
            if self.done >= self.batch {
                self.flush(false).await;
            }
        } else if let Err(error) = acker.reject(BasicRejectOptions { requeue: false }).await {
            tracing::warn!(%error, "reject failed");
        }
    }

    /// Acknowledges, with one `multiple`, every delivery up to the first one not seen or
    /// still running; with `all`, also the finished ones after that, one by one (the
    /// queue is quiet or the processor stops: none may wait for a slow handler).
    pub(super) async fn flush(&mut self, all: bool) {
        if self.done == 0 {
            return;
        }
        let mut last = None;
        while let Some(entry) = self.entries.first_entry() {
            if *entry.key() != self.settled_through + 1 || matches!(entry.get(), State::Running(_))
            {
                break;
            }
            self.settled_through += 1;
            if let State::Done(acker) = entry.remove() {
                self.done -= 1;
                last = Some(acker);
            }
        }
        if let Some(acker) = last {
            ack(&acker, true).await;
        }
        if all && self.done > 0 {
            for state in self.entries.values_mut() {
                if matches!(state, State::Done(_))
                    && let State::Done(acker) = std::mem::replace(state, State::Settled)
                {
                    ack(&acker, false).await;
                }
            }
            self.done = 0;
        }
    }
}

async fn ack(acker: &Acker, multiple: bool) {
    if let Err(error) = acker.ack(BasicAckOptions { multiple }).await {
        tracing::warn!(%error, "acknowledgement failed");
    }
}
