//! The tables: created when a store opens (if missing), the same on both databases but
//! for the outbox's sequence column.
//!
//! | table | what |
//! |---|---|
//! | `postage_inbox` | `(message_id, handler)` pairs handled, with when (ms since the epoch); rows older than the inbox's window are deleted |
//! | `postage_outbox` | messages sent through the outbox: `seq` (the order they are published in), `exchange`, `routing_key`, `message_id`, `body`, `created_at`, `sent_at` (null until the broker confirmed it) |
//! | `postage_outbox_destination` | one row per (exchange, routing key), locked by each transaction that sends there, so that their messages' `seq` follows their commit order |
//! | `postage_outbox_relay` | which relay may publish now, and until when (its lease) |

use sqlx::AnyConnection;

use super::store::Backend;
use crate::error::{Error, Result};

/// Creates the tables and indexes that are missing.
pub(crate) async fn create(conn: &mut AnyConnection, backend: Backend) -> Result<()> {
    let (seq, bytes) = match backend {
        Backend::Sqlite => ("INTEGER PRIMARY KEY AUTOINCREMENT", "BLOB"),
        Backend::Postgres => ("BIGSERIAL PRIMARY KEY", "BYTEA"),
    };
    let statements = [
        "CREATE TABLE IF NOT EXISTS postage_inbox (\
            message_id TEXT NOT NULL, \
            handler TEXT NOT NULL, \
            handled_at BIGINT NOT NULL, \
            PRIMARY KEY (message_id, handler))"
            .to_owned(),
        "CREATE INDEX IF NOT EXISTS postage_inbox_handled_at ON postage_inbox (handled_at)"
            .to_owned(),
        format!(
            "CREATE TABLE IF NOT EXISTS postage_outbox (\
                seq {seq}, \
                exchange TEXT NOT NULL, \
                routing_key TEXT NOT NULL, \
                message_id TEXT NOT NULL, \
                body {bytes} NOT NULL, \
                created_at BIGINT NOT NULL, \
                sent_at BIGINT)"
        ),
        "CREATE INDEX IF NOT EXISTS postage_outbox_pending ON postage_outbox (seq) \
            WHERE sent_at IS NULL"
            .to_owned(),
        "CREATE INDEX IF NOT EXISTS postage_outbox_sent ON postage_outbox (sent_at) \
            WHERE sent_at IS NOT NULL"
            .to_owned(),
        "CREATE TABLE IF NOT EXISTS postage_outbox_destination (\
            exchange TEXT NOT NULL, \
            routing_key TEXT NOT NULL, \
            messages BIGINT NOT NULL, \
            PRIMARY KEY (exchange, routing_key))"
            .to_owned(),
        "CREATE TABLE IF NOT EXISTS postage_outbox_relay (\
            name TEXT PRIMARY KEY, \
            holder TEXT NOT NULL, \
            until_ms BIGINT NOT NULL)"
            .to_owned(),
    ];
    let mut tx = sqlx::Connection::begin(&mut *conn)
        .await
        .map_err(Error::db("creating the tables"))?;
    if backend == Backend::Postgres {
        // Two processes creating the same tables at once would collide in the catalog.
        sqlx::query("SELECT pg_advisory_xact_lock(7236450211)")
            .execute(&mut *tx)
            .await
            .map_err(Error::db("creating the tables"))?;
    }
    for statement in statements {
        sqlx::query(&statement)
            .execute(&mut *tx)
            .await
            .map_err(Error::db("creating the tables"))?;
    }
    tx.commit().await.map_err(Error::db("creating the tables"))
}
