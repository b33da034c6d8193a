//! Run with: `cargo run -p demos --bin outbox_ledger -- --db ledger.db` (or
//! `--postgres URL`), beside `outbox_worker`.
//!
//! The worker's downstream: consumes the durable queue `ledger` (exchange
//! `ledger-exchange`, key `ledger`) through an inbox and inserts each record's `N` into
//! the table `ledger` (column `id`, no unique constraint: a duplicate would show as a
//! second row). Its first line says where its database is; then `recorded id=N` per
//! record.

use clap::Parser;
use demos::{Database, connect, say};
use postage_core::{Exchange, Processor, Queue, processor};
use postage_outbox::Tx;
use serde::Deserialize;

#[derive(Parser)]
#[command(about = "Records each id it is sent, exactly once")]
struct Args {
    #[command(flatten)]
    database: Database,
    /// The queue it consumes.
    #[arg(long, default_value = "ledger")]
    queue: String,
    /// The exchange its records come through.
    #[arg(long, default_value = "ledger-exchange")]
    exchange: String,
    /// The routing key of its records.
    #[arg(long, default_value = "ledger")]
    key: String,
}

#[derive(Deserialize)]
struct Record {
    id: i64,
}

struct Ledger;

#[processor]
impl Ledger {
    #[message_handler("command", "record")]
    async fn record(&self, record: Record, tx: Tx) -> Result<(), postage_outbox::Error> {
        postage_outbox::sqlx::query("INSERT INTO ledger (id) VALUES ($1)")
            .bind(record.id)
            .execute(&mut *tx.conn().await?)
            .await
            .map_err(|source| postage_outbox::Error::Database {
                operation: "inserting a record",
                source,
            })?;
        say(format!("recorded id={}", record.id));
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), demos::Failure> {
    let args = Args::parse();
    let (store, place) = args.database.open().await?;
    say(format!("outbox_ledger: database {place}"));
    postage_outbox::sqlx::query("CREATE TABLE IF NOT EXISTS ledger (id BIGINT NOT NULL)")
        .execute(store.pool())
        .await?;
    let connection = connect().await?;
    let processor = Processor::builder(&connection, Ledger)
        .bind(
            Exchange::named(args.exchange),
            Queue::new(args.queue).durable(true),
            args.key,
        )
        .inbox(store)
        .handler_timeout(std::time::Duration::from_secs(30))
        .stop_on_signals(true)
        .build()
        .await?;
    say("waiting for records");
    processor.run().await?;
    Ok(connection.close().await?)
}
