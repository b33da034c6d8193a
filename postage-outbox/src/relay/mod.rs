//! [`Relay`]: publishes what the outbox holds, in order, with the broker's confirms.
//!
//! A relay reads the messages of committed transactions that are not yet sent, oldest
//! first, publishes each with a reliable producer (`mandatory`, waiting for the
//! publisher confirm) under the id it was stored with, and marks it sent once the broker
//! confirmed it. A message whose publish failed (the broker is down, refused it, or no
//! queue took it) stays, and so do the later ones to its destination: they go, in order,
//! when the relay tries again (backing off up to [`MAX_BACKOFF`]). A relay killed
//! between a publish and its mark publishes that message again when it (or another)
//! starts: receivers with an inbox take it once.
//!
//! Relays on one store take turns through a lease in the `postage_outbox_relay` table:
//! one publishes, the others wait until its lease runs out. So a relay can run in every
//! component (each in its process, as [`Relay::spawn`] does) or as one process of its
//! own (`postage outbox relay`) for many.

mod lease;
mod metrics;

pub use self::metrics::RelayMetrics;

use std::collections::HashSet;
use std::time::Duration;

use postage_core::{Connection, Producer};
use sqlx::Row;
use tokio::task::JoinHandle;

use self::lease::Lease;
use crate::error::{Error, Result};
use crate::store::{Store, millis, now_ms};

/// The longest a relay waits before trying a failed publish again.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Publishes a store's outbox: what committed transactions sent, oldest first, each
/// under the id it was stored with, confirmed by the broker before it is marked sent; a
/// failed publish holds its destination's later messages back until it goes through
/// (tried again, backing off up to [`MAX_BACKOFF`]). Relays of one name take turns
/// through a lease in the database: one may run in every component, or one for many
/// (`postage outbox relay`).
#[derive(Debug)]
pub struct Relay {
    store: Store,
    producer: Producer,
    lease: Lease,
    poll: Duration,
    batch: i64,
    metrics: RelayMetrics,
}

/// Configures a [`Relay`]; made by [`Relay::builder`].
#[derive(Debug)]
pub struct RelayBuilder {
    store: Store,
    connection: Connection,
    name: String,
    instance: Option<String>,
    lease: Duration,
    poll: Duration,
    batch: i64,
    publish_timeout: Duration,
    metrics: RelayMetrics,
}

impl RelayBuilder {
    /// Which relays take turns (default `default`): one of the relays of a name
    /// publishes at a time.
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Who this relay is among those of its name (default: host, process id and a
    /// random part). A relay that starts again under the same instance (a component
    /// restarted by its supervisor under a fixed name) takes its lease back at once;
    /// under another, it waits until the last holder's lease runs out.
    #[must_use]
    pub fn instance(mut self, instance: impl Into<String>) -> Self {
        self.instance = Some(instance.into());
        self
    }

    /// How long a relay's turn lasts unless renewed (default 5 s): how long the others
    /// wait after it dies.
    #[must_use]
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_millis(100));
        self
    }

    /// How often an idle relay looks for messages that were not announced to it
    /// (default 200 ms): those committed by other processes. Commits in its own process
    /// wake it at once.
    #[must_use]
    pub fn poll(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    /// How many messages it reads at a time (default 500).
    #[must_use]
    pub fn batch(mut self, batch: u32) -> Self {
        self.batch = i64::from(batch.max(1));
        self
    }

    /// How long one publish, with its confirm, may take before the relay gives up on it
    /// for now and tries again later (default 5 s): while the broker is away, how often
    /// the relay looks again, and updates its lag.
    #[must_use]
    pub fn publish_timeout(mut self, timeout: Duration) -> Self {
        self.publish_timeout = timeout;
        self
    }

    /// Where it reports its lag, pending count and publishes (see [`RelayMetrics`]; by
    /// default metrics of its own, which it adds to its connection's metrics endpoint
    /// when there is one).
    #[must_use]
    pub fn metrics(mut self, metrics: RelayMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Opens its producer (reliable: confirms, mandatory).
    pub async fn build(self) -> Result<Relay> {
        let producer = Producer::builder(&self.connection)
            .reliable(true)
            .persistent(true)
            .publish_timeout(self.publish_timeout)
            .build()
            .await?;
        let instance = self.instance.unwrap_or_else(|| {
            let host = hostname::get().map_or_else(
                |_| "localhost".to_owned(),
                |host| host.to_string_lossy().into_owned(),
            );
            format!("{host}:{}:{:08x}", std::process::id(), fastrand::u32(..))
        });
        let metrics = self.metrics.clone();
        let name = self.name.clone();
        self.connection.register_metrics(|registry| {
            metrics.register(registry.sub_registry_with_label(("relay".into(), name.into())));
        });
        Ok(Relay {
            lease: Lease::new(self.store.clone(), self.name, instance, self.lease),
            store: self.store,
            producer,
            poll: self.poll,
            batch: self.batch,
            metrics: self.metrics,
        })
    }
}

impl Relay {
    /// Starts configuring a relay of `store`'s outbox that publishes on `connection`.
    pub fn builder(store: &Store, connection: &Connection) -> RelayBuilder {
        RelayBuilder {
            store: store.clone(),
            connection: connection.clone(),
            name: "default".to_owned(),
            instance: None,
            lease: Duration::from_secs(5),
            poll: Duration::from_millis(200),
            batch: 500,
            publish_timeout: Duration::from_secs(5),
            metrics: RelayMetrics::default(),
        }
    }

    /// Its metrics.
    pub fn metrics(&self) -> &RelayMetrics {
        &self.metrics
    }

    /// Runs it in a task of its own until the handle is dropped or stopped.
    pub fn spawn(self) -> RelayHandle {
        RelayHandle {
            task: tokio::spawn(async move { self.run().await }),
        }
    }

    /// Publishes for ever: the loop [`spawn`](Self::spawn) runs.
    pub async fn run(self) {
        let mut backoff = Duration::ZERO;
        let mut last_purge = 0;
        loop {
            if !backoff.is_zero() {
                tokio::time::sleep(backoff).await;
            }
            match self.round(&mut last_purge).await {
                Ok(Round::Idle) => {
                    backoff = Duration::ZERO;
                    let committed = self.store.inner.committed.notified();
                    let _ = tokio::time::timeout(self.poll, committed).await;
                }
                Ok(Round::Busy) => backoff = Duration::ZERO,
                Ok(Round::Waiting) => {
                    backoff = Duration::ZERO;
                    tokio::time::sleep(self.lease.wait()).await;
                }
                Ok(Round::Blocked) | Err(_) => {
                    backoff = (backoff * 2).clamp(Duration::from_millis(100), MAX_BACKOFF);
                }
            }
        }
    }

    /// One look at the outbox: publishes what is pending, if this relay holds the lease.
    async fn round(&self, last_purge: &mut i64) -> Result<Round> {
        let held = self.lease.hold().await.inspect_err(|error| {
            tracing::warn!(%error, "outbox relay: could not take its lease");
        })?;
        if !held {
            return Ok(Round::Waiting);
        }
        let pending = self.pending().await.inspect_err(|error| {
            tracing::warn!(%error, "outbox relay: could not read the outbox");
        })?;
        let now = now_ms();
        let oldest = pending
            .first()
            .map_or(0, |message| now - message.created_at);
        self.metrics.observe_lag(Duration::from_millis(
            u64::try_from(oldest).unwrap_or_default(),
        ));
        if pending.is_empty() {
            self.metrics.set_pending(0);
            if now - *last_purge > 10_000 {
                *last_purge = now;
                self.purge(now).await?;
            }
            return Ok(Round::Idle);
        }
        let mut blocked: HashSet<(&str, &str)> = HashSet::new();
        let mut sent = Vec::with_capacity(pending.len());
        for message in &pending {
            let destination = (message.exchange.as_str(), message.routing_key.as_str());
            if blocked.contains(&destination) {
                continue;
            }
            if !self.lease.still_held() {
                break;
            }
            let published = self
                .producer
                .publish_encoded(
                    &message.exchange,
                    &message.routing_key,
                    &message.body,
                    &message.message_id,
                )
                .await;
            match published {
                Ok(()) => {
                    self.metrics.published();
                    sent.push(message.seq);
                    if sent.len() >= 100 {
                        self.mark_sent(&sent).await?;
                        sent.clear();
                    }
                }
                Err(error) => {
                    self.metrics.failed();
                    tracing::warn!(%error, exchange = %message.exchange, routing_key = %message.routing_key, message_id = %message.message_id, "outbox relay: publish failed; the destination waits for the next try");
                    blocked.insert(destination);
                }
            }
        }
        self.mark_sent(&sent).await?;
        if blocked.is_empty() {
            Ok(Round::Busy)
        } else {
            Ok(Round::Blocked)
        }
    }

    /// The oldest messages not sent yet.
    async fn pending(&self) -> Result<Vec<Pending>> {
        let rows = sqlx::query(
            "SELECT seq, exchange, routing_key, message_id, body, created_at FROM postage_outbox \
             WHERE sent_at IS NULL ORDER BY seq LIMIT $1",
        )
        .bind(self.batch)
        .fetch_all(&self.store.inner.pool)
        .await
        .map_err(Error::db("reading the outbox"))?;
        self.metrics
            .set_pending(i64::try_from(rows.len()).unwrap_or(i64::MAX));
        rows.iter()
            .map(|row| {
                Ok(Pending {
                    seq: row.try_get(0)?,
                    exchange: row.try_get(1)?,
                    routing_key: row.try_get(2)?,
                    message_id: row.try_get(3)?,
                    body: row.try_get(4)?,
                    created_at: row.try_get(5)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Error::db("reading the outbox"))
    }

    /// Marks the messages `seqs` sent.
    async fn mark_sent(&self, seqs: &[i64]) -> Result<()> {
        if seqs.is_empty() {
            return Ok(());
        }
        let placeholders: Vec<String> = (2..seqs.len() + 2).map(|n| format!("${n}")).collect();
        let sql = format!(
            "UPDATE postage_outbox SET sent_at = $1 WHERE seq IN ({})",
            placeholders.join(", ")
        );
        let mut query = sqlx::query(&sql).bind(now_ms());
        for seq in seqs {
            query = query.bind(*seq);
        }
        query
            .execute(&self.store.inner.pool)
            .await
            .map_err(Error::db("marking messages sent"))?;
        Ok(())
    }

    /// Deletes the messages sent longer ago than the store keeps them.
    async fn purge(&self, now: i64) -> Result<()> {
        sqlx::query("DELETE FROM postage_outbox WHERE sent_at IS NOT NULL AND sent_at < $1")
            .bind(now - millis(self.store.inner.keep_sent))
            .execute(&self.store.inner.pool)
            .await
            .map_err(Error::db("deleting sent messages"))?;
        Ok(())
    }
}

/// What one round found.
enum Round {
    /// Nothing to send.
    Idle,
    /// It sent what there was.
    Busy,
    /// Another relay holds the lease.
    Waiting,
    /// A publish failed: try again after a while.
    Blocked,
}

/// A message in the outbox, not sent yet.
struct Pending {
    seq: i64,
    exchange: String,
    routing_key: String,
    message_id: String,
    body: Vec<u8>,
    created_at: i64,
}

/// A running relay: stops it when stopped or dropped.
#[derive(Debug)]
pub struct RelayHandle {
    task: JoinHandle<()>,
}

impl RelayHandle {
    /// Stops the relay now (a message it was publishing may go again: receivers' inboxes
    /// take it once).
    pub fn stop(self) {}
}

impl Drop for RelayHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}
