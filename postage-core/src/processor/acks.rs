//! Settling a processor's deliveries: a rejection (or requeue) goes out at once, acknowledgements are
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
use std::sync::atomic::{AtomicUsize, Ordering};

use lapin::options::{BasicAckOptions, BasicRejectOptions};

use super::retry::Settle;
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
}

/// The unsettled deliveries of the consumer's current channel.
///
/// What it holds is bounded by the prefetch, whatever the traffic: `entries` holds only
/// deliveries not yet settled (the broker hands over no more than the prefetch of
/// those), and the settled ones past a delivery still running (rejected, or
/// acknowledged one by one) are kept as ranges of tags, which merge as they fill in:
/// behind a handler that never finishes, one range.
#[derive(Debug)]
pub(super) struct Acks {
    /// The channel the entries are on.
    channel: Option<Arc<ChannelLease>>,
    /// Every tag up to this one is settled.
    settled_through: u64,
    entries: BTreeMap<u64, State>,
    /// Tags settled past `settled_through`, as ranges: first tag to last, inclusive.
    settled: BTreeMap<u64, u64>,
    /// How many entries are `Done`.
    done: usize,
    /// Acknowledge as soon as this many are done.
    batch: usize,
    /// How many records there are, for [`ProcessorHandle::tracked_deliveries`].
    ///
    /// [`ProcessorHandle::tracked_deliveries`]: super::ProcessorHandle::tracked_deliveries
    tracked: Arc<AtomicUsize>,
}

impl Acks {
    /// Coalesces up to `batch` acknowledgements (1: one each).
    pub(super) fn new(batch: usize, tracked: Arc<AtomicUsize>) -> Self {
        Self {
            channel: None,
            settled_through: 0,
            entries: BTreeMap::new(),
            settled: BTreeMap::new(),
            done: 0,
            batch: batch.max(1),
            tracked,
        }
    }

    /// Publishes how many records there are.
    fn count(&self) {
        self.tracked
            .store(self.entries.len() + self.settled.len(), Ordering::Relaxed);
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
                *self = Self::new(self.batch, Arc::clone(&self.tracked));
                self.channel = Some(Arc::clone(lease));
            }
        }
        let tag = delivery.lapin().delivery_tag;
        self.entries.insert(tag, State::Running);
        self.count();
        Some(Ticket { channel, tag })
    }

    /// Settles a finished delivery: acknowledged with the next batch, or rejected (or
    /// requeued) now.
    pub(super) async fn finish(&mut self, ticket: Ticket, settle: Settle) {
        let Some(channel) = self.current(ticket) else {
            return;
        };
        if self.entries.get(&ticket.tag) != Some(&State::Running) {
            return;
        }
        if settle == Settle::Ack {
            self.entries.insert(ticket.tag, State::Done);
            self.done += 1;
            if self.done >= self.batch {
                self.flush(false).await;
            }
        } else {
            self.entries.remove(&ticket.tag);
            self.settle(ticket.tag);
            let rejected = channel
                .basic_reject(
                    ticket.tag,
                    BasicRejectOptions {
                        requeue: settle == Settle::Requeue,
                    },
                )
                .await;
            if let Err(error) = rejected {
                failed(&channel, "reject", &error);
            }
            self.count();
        }
    }

    /// Acknowledges, with one `multiple`, every delivery up to the first one not seen or
    /// still running; with `all` (the queue is quiet, the processor stops), or when a
    /// batch is held back by a delivery still running, also the finished ones after
    /// that, one by one: none waits for a slow handler.
    pub(super) async fn flush(&mut self, all: bool) {
        let Some(channel) = self.channel.clone() else {
            return;
        };
        if let Some(tag) = self.advance() {
            ack(&channel, tag, true).await;
        }
        if (all || self.done >= self.batch) && self.done > 0 {
            let finished: Vec<u64> = self
                .entries
                .iter()
                .filter(|(_, state)| **state == State::Done)
                .map(|(tag, _)| *tag)
                .collect();
            for tag in finished {
                self.entries.remove(&tag);
                self.settle(tag);
                ack(&channel, tag, false).await;
            }
            self.done = 0;
        }
        self.count();
    }

    /// Moves `settled_through` over every tag settled or done after it, and returns the
    /// last done one: a `multiple` acknowledgement up to it covers exactly those.
    fn advance(&mut self) -> Option<u64> {
        let mut last = None;
        loop {
            let next = self.settled_through + 1;
            if self.entries.get(&next) == Some(&State::Done) {
                self.entries.remove(&next);
                self.done -= 1;
                self.settled_through = next;
                last = Some(next);
            } else if let Some(end) = self.settled.remove(&next) {
                self.settled_through = end;
            } else {
                return last;
            }
        }
    }

    /// Records `tag` as settled, merging it with the ranges beside it.
    fn settle(&mut self, tag: u64) {
        let mut first = tag;
        let last = self.settled.remove(&(tag + 1)).unwrap_or(tag);
        if let Some((&start, &end)) = self.settled.range(..tag).next_back()
            && end + 1 == tag
        {
            self.settled.remove(&start);
            first = start;
        }
        self.settled.insert(first, last);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn acks() -> Acks {
        Acks::new(10, Arc::default())
    }

    #[test]
    fn settled_tags_behind_a_running_one_merge_into_one_range() {
        let mut acks = acks();
        acks.entries.insert(1, State::Running);
        // Settled out of order: 3, 5, 4, 2, 7, 6.
        for tag in [3, 5, 4, 2, 7, 6] {
            acks.settle(tag);
        }
        assert_eq!(acks.settled, BTreeMap::from([(2, 7)]));
        assert_eq!(acks.advance(), None, "tag 1 still runs");
        assert_eq!(acks.settled_through, 0);
    }

    #[test]
    fn advancing_passes_done_and_settled_tags_and_stops_at_a_gap() {
        let mut acks = acks();
        acks.entries.insert(1, State::Done);
        acks.done = 1;
        acks.settle(2);
        acks.entries.insert(3, State::Done);
        acks.entries.insert(5, State::Done);
        acks.done += 2;
        // Tag 4 not seen yet: a multiple acknowledgement stops before it.
        assert_eq!(acks.advance(), Some(3));
        assert_eq!(acks.settled_through, 3);
        assert_eq!(acks.done, 1);
        assert!(acks.settled.is_empty());
        assert_eq!(acks.entries.keys().copied().collect::<Vec<_>>(), vec![5]);
    }
}
