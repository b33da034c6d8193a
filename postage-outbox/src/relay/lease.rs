//! Whose turn it is to publish: a lease in the `postage_outbox_relay` table, taken by
//! one relay of a name at a time and renewed while it lives.

use std::time::Duration;

use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::store::{Store, millis, now_ms};
use postage_core::__private::Locked;

/// One relay's claim on its name's turn.
#[derive(Debug)]
pub(super) struct Lease {
    store: Store,
    name: String,
    instance: String,
    length: Duration,
    /// Until when this relay holds it, by its own clock (a margin short of the row's).
    held_until: Locked<Option<Instant>>,
}

impl Lease {
    pub(super) fn new(store: Store, name: String, instance: String, length: Duration) -> Self {
        Self {
            store,
            name,
            instance,
            length,
            held_until: Locked::new(None),
        }
    }

    /// Takes or renews the lease when half of it has passed; whether this relay holds it.
    pub(super) async fn hold(&self) -> Result<bool> {
        let now = Instant::now();
        if let Some(until) = self.held_until.with(|until| *until)
            && until > now + self.length / 2
        {
            return Ok(true);
        }
        let wall = now_ms();
        let taken = sqlx::query(
            "INSERT INTO postage_outbox_relay (name, holder, until_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until_ms = excluded.until_ms \
             WHERE postage_outbox_relay.holder = excluded.holder \
             OR postage_outbox_relay.until_ms < $4",
        )
        .bind(&self.name)
        .bind(&self.instance)
        .bind(wall + millis(self.length))
        .bind(wall)
        .execute(&self.store.inner.pool)
        .await
        .map_err(Error::db("taking the relay's lease"))?
        .rows_affected()
            == 1;
        // A margin for the time the statement took and for clocks that differ a little.
        let held = taken.then(|| now + self.length.mul_f64(0.8));
        if taken && self.held_until.with(|until| *until).is_none() {
            tracing::info!(relay = %self.name, instance = %self.instance, "outbox relay: took the lease; publishing");
        }
        self.held_until.with(|until| *until = held);
        Ok(taken)
    }

    /// Whether the lease is still this relay's, by its own clock.
    pub(super) fn still_held(&self) -> bool {
        self.held_until
            .with(|until| *until)
            .is_some_and(|until| until > Instant::now())
    }

    /// How long to wait before asking again, while another relay holds it.
    pub(super) fn wait(&self) -> Duration {
        self.length / 4
    }
}
