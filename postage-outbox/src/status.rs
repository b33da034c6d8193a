//! [`Status`]: what an outbox holds, for `postage outbox status` and health checks.

use std::time::Duration;

use sqlx::Row;

use crate::error::{Error, Result};
use crate::store::{Store, now_ms};

/// What the outbox holds now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// Messages committed and not yet confirmed by the broker.
    pub pending: u64,
    /// How long the oldest of them has waited; `None` when none waits.
    pub oldest: Option<Duration>,
    /// Messages sent and kept for a while (see `StoreBuilder::keep_sent`).
    pub sent: u64,
    /// Messages the inbox remembers.
    pub inbox: u64,
}

impl Store {
    /// What the outbox and the inbox hold now.
    pub async fn status(&self) -> Result<Status> {
        let row = sqlx::query(
            "SELECT \
               (SELECT COUNT(*) FROM postage_outbox WHERE sent_at IS NULL), \
               (SELECT MIN(created_at) FROM postage_outbox WHERE sent_at IS NULL), \
               (SELECT COUNT(*) FROM postage_outbox WHERE sent_at IS NOT NULL), \
               (SELECT COUNT(*) FROM postage_inbox)",
        )
        .fetch_one(&self.inner.pool)
        .await
        .map_err(Error::db("reading the outbox's status"))?;
        let count = |i: usize| -> Result<u64> {
            let n: i64 = row
                .try_get(i)
                .map_err(Error::db("reading the outbox's status"))?;
            Ok(u64::try_from(n).unwrap_or_default())
        };
        let oldest: Option<i64> = row
            .try_get(1)
            .map_err(Error::db("reading the outbox's status"))?;
        Ok(Status {
            pending: count(0)?,
            oldest: oldest.map(|created| {
                Duration::from_millis(u64::try_from(now_ms() - created).unwrap_or_default())
            }),
            sent: count(2)?,
            inbox: count(3)?,
        })
    }
}
