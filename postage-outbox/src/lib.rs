//! Effects exactly once for postage components: an inbox and a transactional outbox on
//! the database a component already runs, SQLite (a file, nothing to run) or PostgreSQL.
//!
//! postage delivers at least once. A handler that writes to a database and sends a
//! message could write twice (a redelivery after a crash or a lost acknowledgement) or
//! write and never send (a crash between its commit and its publish). With this crate:
//!
//! - **Inbox**: a processor built with `.inbox(store)` runs each message handler in a
//!   database transaction, a [`Tx`] the handler takes as an argument, in which the
//!   message's id is recorded first; the transaction commits when the handler succeeds,
//!   and only then is the message acknowledged. A message the handler already handled
//!   (a redelivery, a duplicate with the same `message_id`) is acknowledged without
//!   running it. The id is the AMQP `message_id` postage producers set; a message
//!   without one (Python Postage) is known by the id
//!   [`postage_core::message_id::derive`] gives it from its body and routing. Records
//!   expire after the store's [inbox window](StoreBuilder::inbox_window).
//! - **Outbox**: messages sent through [`Tx::send`] are rows written in the same
//!   transaction, so they exist if and only if it commits. A [`Relay`] publishes them
//!   with publisher confirms, in commit order per destination, marks them sent once
//!   confirmed, and tries again after a crash or a broker outage. Every sending carries
//!   the id the message was stored with: a receiver with an inbox handles it once.
//!
//! ```no_run
//! use postage_core::{Connection, Exchange, Processor, processor};
//! use postage_outbox::{Relay, Store, Tx};
//!
//! const JOBS: Exchange = Exchange::new("jobs-exchange");
//! const LEDGER: Exchange = Exchange::new("ledger-exchange");
//!
//! #[derive(serde::Deserialize)]
//! struct Job {
//!     id: i64,
//! }
//!
//! struct Worker;
//!
//! #[processor]
//! impl Worker {
//!     #[message_handler("command", "job")]
//!     async fn job(&self, job: Job, tx: Tx) -> anyhow::Result<()> {
//!         sqlx::query("INSERT INTO jobs_done (id) VALUES ($1)")
//!             .bind(job.id)
//!             .execute(&mut *tx.conn().await?)
//!             .await?;
//!         tx.command(&LEDGER, "ledger", "record", serde_json::json!({"id": job.id}))
//!             .await?;
//!         Ok(())
//!     }
//! }
//!
//! # async fn demo() -> anyhow::Result<()> {
//! let connection = Connection::from_env().await?;
//! let store = Store::sqlite("worker.db").await?;
//! let _relay = Relay::builder(&store, &connection).build().await?.spawn();
//! Processor::builder(&connection, Worker)
//!     .bind(JOBS, "jobs", "job")
//!     .inbox(store)
//!     .build()
//!     .await?
//!     .run()
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! # Tables
//!
//! The store creates its tables when they are missing (see `schema.rs`):
//! `postage_inbox`, `postage_outbox`, `postage_outbox_destination` and
//! `postage_outbox_relay`. Queries of the application's own use `$1`, `$2`, ...
//! placeholders, which both databases take.

mod error;
mod inbox;
mod relay;
mod schema;
mod status;
mod store;
mod tx;

pub use self::error::{Error, Result};
pub use self::relay::{MAX_BACKOFF, Relay, RelayBuilder, RelayHandle, RelayMetrics};
pub use self::status::Status;
pub use self::store::{Backend, DEFAULT_INBOX_WINDOW, DEFAULT_KEEP_SENT, Store, StoreBuilder};
pub use self::tx::Tx;

/// The database toolkit the store is built on, re-exported so versions match.
pub use sqlx;
