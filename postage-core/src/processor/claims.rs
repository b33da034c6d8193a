//! A processor's share of a queue's partitions (see [`Partitions`]): it counts the
//! fleet on the roster, claims free partitions up to its share, and gives up what is
//! above it in order (stop reading, let what was received be handled and acknowledged,
//! then drop the claim).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicConsumeOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use tokio::sync::Notify;

use crate::connection::Connection;
use crate::consumer::ConsumerHandle;
use crate::error::{Error, Result};
use crate::topology::{Partitions, QueueShape};

/// How often a partition given up is checked for deliveries still held.
const DRAIN_POLL: Duration = Duration::from_millis(10);

/// The partitions one processor owns, and what it keeps them with.
#[derive(Debug)]
pub(super) struct Claims {
    partitions: Partitions,
    connection: Connection,
    consumer: ConsumerHandle,
    owned: BTreeSet<u16>,
    /// Owned partitions no longer read: being given up, their deliveries still running.
    stopped: BTreeSet<u16>,
    /// Reads the roster: this instance counted in the fleet while its consumer lives
    /// (dropping it cancels it).
    roster: Option<(lapin::Channel, lapin::Consumer)>,
    /// Declares the claims; a refused claim closes it, and the next opens another.
    claiming: Option<lapin::Channel>,
    /// The longest a partition given up waits for its deliveries to be handled.
    drain_bound: Duration,
}

impl Claims {
    /// Declares the exchange and every partition queue, bound with equal weights, so
    /// messages wait in their partition whoever reads it.
    pub(super) async fn declare(connection: &Connection, partitions: &Partitions) -> Result<()> {
        let exchange = partitions.exchange();
        connection.declare_exchange(&exchange).await?;
        for partition in 0..partitions.count() {
            let queue = partitions.queue(partition);
            connection.declare_queue(&queue).await?;
            connection
                .bind_queue(queue.name(), &exchange, Partitions::WEIGHT)
                .await?;
        }
        connection.declare_queue(&partitions.roster()).await?;
        Ok(())
    }

    pub(super) fn new(
        partitions: Partitions,
        connection: Connection,
        consumer: ConsumerHandle,
        drain_bound: Duration,
    ) -> Self {
        Self {
            partitions,
            connection,
            consumer,
            owned: BTreeSet::new(),
            stopped: BTreeSet::new(),
            roster: None,
            claiming: None,
            drain_bound,
        }
    }

    /// Keeps the share until `stop` is notified; then returns, to drop the claims once
    /// the processor's channel is closed ([`Self::drop_all`]).
    pub(super) async fn keep(mut self, stop: Arc<Notify>) -> Self {
        loop {
            tokio::select! {
                () = stop.notified() => return self,
                rebalanced = self.rebalance() => {
                    if let Err(error) = rebalanced {
                        tracing::warn!(%error, partitions = self.partitions.name(), "could not rebalance the partitions; trying again");
                        self.roster = None;
                        self.claiming = None;
                    }
                }
            }
            tokio::select! {
                () = stop.notified() => return self,
                () = tokio::time::sleep(self.partitions.every()) => {}
            }
        }
    }

    /// One round: count the fleet, then give up what is above the share or claim up to
    /// it.
    async fn rebalance(&mut self) -> Result<()> {
        let instances = self.count_instances().await?;
        let share = usize::from(self.partitions.count()).div_ceil(instances.max(1));
        tracing::debug!(partitions = self.partitions.name(), instances, share, owned = ?self.owned, "rebalancing");
        if self.owned.len() > share {
            let extra: Vec<u16> = self
                .owned
                .iter()
                .rev()
                .take(self.owned.len() - share)
                .copied()
                .collect();
            self.give_up(&extra).await?;
        }
        if self.owned.len() <= share && !self.stopped.is_empty() {
            // The share grew while partitions were being given up: read them again.
            for partition in std::mem::take(&mut self.stopped) {
                let queue = self.partitions.queue(partition);
                self.consumer
                    .bind(&self.partitions.exchange(), &queue, Partitions::WEIGHT)
                    .await?;
            }
        }
        if self.owned.len() < share {
            // Starting at an offset of its own, so instances starting together try
            // different partitions first.
            let count = self.partitions.count();
            let offset = fastrand::u16(0..count);
            for step in 0..count {
                if self.owned.len() >= share {
                    break;
                }
                let partition = (offset + step) % count;
                if !self.owned.contains(&partition) && self.claim(partition).await? {
                    let queue = self.partitions.queue(partition);
                    self.consumer
                        .bind(&self.partitions.exchange(), &queue, Partitions::WEIGHT)
                        .await?;
                    self.owned.insert(partition);
                    tracing::info!(
                        partitions = self.partitions.name(),
                        partition,
                        "claimed a partition"
                    );
                }
            }
        }
        Ok(())
    }

    /// How many instances read the roster, this one included (counted from now on).
    async fn count_instances(&mut self) -> Result<usize> {
        let roster = self.partitions.roster();
        let (channel, reading) = match self.roster.take().filter(|(c, _)| c.status().connected()) {
            Some(kept) => kept,
            None => {
                let channel = self.connection.open_channel().await?;
                roster.declare(&channel, QueueShape::Transient).await?;
                let reading = channel
                    .basic_consume(
                        roster.name().into(),
                        "".into(),
                        BasicConsumeOptions {
                            no_ack: true,
                            ..BasicConsumeOptions::default()
                        },
                        FieldTable::default(),
                    )
                    .await
                    .map_err(Error::amqp(format!(
                        "reading the roster {:?}",
                        roster.name()
                    )))?;
                // A new channel: the connection may be new too, and the claims gone with
                // the old one. Claim what is owned again; what another instance claimed
                // meanwhile is no longer read here.
                self.reclaim().await?;
                (channel, reading)
            }
        };
        let declared = channel
            .queue_declare(
                roster.name().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(Error::amqp(format!(
                "counting the roster {:?}",
                roster.name()
            )))?;
        self.roster = Some((channel, reading));
        Ok(usize::try_from(declared.consumer_count()).unwrap_or(1))
    }

    /// Claims what is owned again (after a reconnection), and stops reading what it can
    /// no longer claim.
    async fn reclaim(&mut self) -> Result<()> {
        let owned: Vec<u16> = self.owned.iter().copied().collect();
        for partition in owned {
            if !self.claim(partition).await? {
                let queue = self.partitions.queue(partition);
                self.consumer.stop_consuming(queue.name()).await?;
                self.owned.remove(&partition);
                tracing::info!(
                    partitions = self.partitions.name(),
                    partition,
                    "a partition claimed elsewhere meanwhile; no longer read here"
                );
            }
        }
        Ok(())
    }

    /// Tries to claim `partition`: whether it is this connection's now.
    async fn claim(&mut self, partition: u16) -> Result<bool> {
        let channel = match self.claiming.take().filter(|c| c.status().connected()) {
            Some(channel) => channel,
            None => self.connection.open_channel().await?,
        };
        let claim = self.partitions.claim(partition);
        match claim.declare(&channel, QueueShape::Transient).await {
            Ok(_) => {
                self.claiming = Some(channel);
                Ok(true)
            }
            // Another connection holds it (RESOURCE_LOCKED closes the channel).
            Err(_) if !channel.status().connected() => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Gives `partitions` up, in order: stops reading them, waits (at most the drain
    /// bound) until every delivery of them was handled and settled, then drops their
    /// claims, so the next owner reads on from the first message not handled.
    async fn give_up(&mut self, partitions: &[u16]) -> Result<()> {
        let queues: Vec<String> = partitions
            .iter()
            .map(|p| self.partitions.queue(*p).name().to_owned())
            .collect();
        for queue in &queues {
            self.consumer.stop_consuming(queue).await?;
        }
        self.stopped.extend(partitions);
        let drained = tokio::time::timeout(self.drain_bound, async {
            while queues.iter().any(|queue| self.consumer.held(queue) > 0) {
                tracing::trace!(held = ?queues.iter().map(|q| self.consumer.held(q)).collect::<Vec<_>>(), "waiting for partitions given up to drain");
                tokio::time::sleep(DRAIN_POLL).await;
            }
        })
        .await;
        if drained.is_err() {
            // Still handling: keep the claims (and the order), read no more, and try
            // again next round.
            tracing::warn!(
                partitions = self.partitions.name(),
                "deliveries of partitions being given up still run; keeping their claims for now"
            );
            return Ok(());
        }
        for partition in partitions {
            self.drop_claim(*partition).await?;
            self.owned.remove(partition);
            self.stopped.remove(partition);
            tracing::info!(
                partitions = self.partitions.name(),
                partition,
                "gave a partition up"
            );
        }
        Ok(())
    }

    /// Deletes the claim of `partition`, held by this connection.
    async fn drop_claim(&mut self, partition: u16) -> Result<()> {
        let channel = match self.claiming.take().filter(|c| c.status().connected()) {
            Some(channel) => channel,
            None => self.connection.open_channel().await?,
        };
        let claim = self.partitions.claim(partition);
        channel
            .queue_delete(claim.name().into(), QueueDeleteOptions::default())
            .await
            .map_err(Error::amqp(format!(
                "dropping the claim {:?}",
                claim.name()
            )))?;
        self.claiming = Some(channel);
        Ok(())
    }

    /// Drops every claim and leaves the roster: the processor stopped, and its channel,
    /// closed, has put back what it had not acknowledged.
    pub(super) async fn drop_all(mut self) {
        let owned: Vec<u16> = self.owned.iter().copied().collect();
        for partition in owned {
            if let Err(error) = self.drop_claim(partition).await {
                tracing::warn!(%error, partition, "could not drop a partition's claim; it goes with the connection");
            }
        }
        if let Some((roster, _reading)) = self.roster.take() {
            let _ = roster.close(200, "postage: processor stopped".into()).await;
        }
        if let Some(claiming) = self.claiming.take() {
            let _ = claiming
                .close(200, "postage: processor stopped".into())
                .await;
        }
    }
}
