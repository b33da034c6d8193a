//! [`Tx`]: one database transaction, in which a handler writes, the inbox records the
//! message, and the outbox keeps what is to be sent.

use std::any::TypeId;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use postage_core::__private::{CallParts, FromCall, Locked, Outcome};
use postage_core::{Encoder, Exchange, HandlerError, JsonEncoder, Message};
use serde::Serialize;
use sqlx::{Any, AnyConnection, Transaction};
use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};

use crate::error::{Error, Result};
use crate::store::{Store, now_ms};

/// A database transaction on a [`Store`]: what a handler of a processor with an inbox
/// takes as an argument (by its type, as `State<T>`), and what [`Store::begin`] opens
/// elsewhere. Its queries go through [`conn`](Self::conn); messages sent through
/// [`send`](Self::send) are written in it and published by the [`Relay`](crate::Relay)
/// once it commits, never if it rolls back. Clones are the same transaction.
///
/// In a handler the processor commits it when the handler succeeds and rolls it back
/// when it fails; elsewhere, [`commit`](Self::commit) it (dropped, it rolls back).
#[derive(Debug, Clone)]
pub struct Tx {
    pub(crate) shared: Arc<Shared>,
}

/// What a transaction's handles share.
#[derive(Debug)]
pub(crate) struct Shared {
    store: Store,
    tx: Mutex<Option<Transaction<'static, Any>>>,
    /// The destinations it locked (see the `postage_outbox_destination` table).
    destinations: Locked<HashSet<(String, String)>>,
    /// Whether it sent anything, so a commit wakes the relay.
    sent: AtomicBool,
}

impl Store {
    /// Opens a transaction, for code outside a handler (a handler takes its own).
    pub async fn begin(&self) -> Result<Tx> {
        let tx = self
            .inner
            .pool
            .begin()
            .await
            .map_err(Error::db("beginning a transaction"))?;
        Ok(Tx::open(self.clone(), tx))
    }
}

impl Tx {
    pub(crate) fn open(store: Store, tx: Transaction<'static, Any>) -> Self {
        Self {
            shared: Arc::new(Shared {
                store,
                tx: Mutex::new(Some(tx)),
                destinations: Locked::new(HashSet::new()),
                sent: AtomicBool::new(false),
            }),
        }
    }

    /// The transaction's connection, to run queries in it:
    /// `sqlx::query("...").execute(&mut *tx.conn().await?)`. Placeholders are `$1`,
    /// `$2`, ... on both databases.
    pub async fn conn(&self) -> Result<MappedMutexGuard<'_, AnyConnection>> {
        MutexGuard::try_map(self.shared.tx.lock().await, |tx| tx.as_deref_mut())
            .map_err(|_| Error::Finished)
    }

    /// Sends the command `name` with `parameters` to `exchange` with `routing_key`
    /// through the outbox; returns the message's id.
    pub async fn command(
        &self,
        exchange: &Exchange,
        routing_key: &str,
        name: &str,
        parameters: impl Serialize,
    ) -> Result<String> {
        self.send(exchange, routing_key, Message::command(name, parameters)?)
            .await
    }

    /// Writes `message` (stamped with the store's fingerprint) into the outbox, to go to
    /// `exchange` with `routing_key` once this transaction commits, under the id it
    /// returns. The relay publishes a destination's messages in the order their
    /// transactions committed: a transaction that sends to a destination holds it (a row
    /// lock) until it ends, so two transactions sending to the same destination take
    /// turns from their first send there.
    pub async fn send(
        &self,
        exchange: &Exchange,
        routing_key: &str,
        message: Message,
    ) -> Result<String> {
        let message = message.with_fingerprint(self.shared.store.inner.fingerprint.clone());
        let body = JsonEncoder.encode(&message)?;
        let id = postage_core::message_id::generate();
        let destination = (exchange.name().to_owned(), routing_key.to_owned());
        let first = self
            .shared
            .destinations
            .with(|held| held.insert(destination.clone()));
        let mut conn = self.conn().await?;
        if first {
            sqlx::query(
                "INSERT INTO postage_outbox_destination (exchange, routing_key, messages) \
                 VALUES ($1, $2, 1) ON CONFLICT (exchange, routing_key) DO UPDATE \
                 SET messages = postage_outbox_destination.messages + 1",
            )
            .bind(&destination.0)
            .bind(&destination.1)
            .execute(&mut *conn)
            .await
            .map_err(Error::db("holding the outbox's destination"))?;
        }
        sqlx::query(
            "INSERT INTO postage_outbox (exchange, routing_key, message_id, body, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(destination.0)
        .bind(destination.1)
        .bind(id.clone())
        .bind(body)
        .bind(now_ms())
        .execute(&mut *conn)
        .await
        .map_err(Error::db("writing to the outbox"))?;
        self.shared.sent.store(true, Ordering::Relaxed);
        Ok(id)
    }

    /// Commits the transaction (its writes, the inbox's record, the messages it sent).
    pub async fn commit(self) -> Result<()> {
        self.shared.commit().await
    }

    /// Rolls the transaction back: nothing it wrote or sent remains.
    pub async fn rollback(self) -> Result<()> {
        match self.shared.tx.lock().await.take() {
            Some(tx) => tx
                .rollback()
                .await
                .map_err(Error::db("rolling a transaction back")),
            None => Err(Error::Finished),
        }
    }
}

impl Shared {
    pub(crate) async fn commit(&self) -> Result<()> {
        let tx = self.tx.lock().await.take().ok_or(Error::Finished)?;
        tx.commit()
            .await
            .map_err(Error::db("committing a transaction"))?;
        if self.sent.load(Ordering::Relaxed) {
            self.store.inner.committed.notify_waiters();
        }
        Ok(())
    }
}

/// A handler takes its transaction by type; its processor must have an inbox.
impl<'a> FromCall<'a> for Tx {
    fn state() -> Option<(TypeId, &'static str)> {
        Some((
            TypeId::of::<postage_core::inbox::Given>(),
            "postage_outbox::Tx",
        ))
    }

    fn from_call(call: &'a CallParts) -> std::result::Result<Self, Outcome> {
        call.unit::<Shared>()
            .map(|shared| Self { shared })
            .ok_or_else(|| {
                Outcome::Failed(
                    HandlerError::exception(
                        "NoInbox",
                        "a handler takes a Tx only in a processor built with .inbox(store)",
                    )
                    .reject(),
                )
            })
    }
}
