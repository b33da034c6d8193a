//! Run with: `cargo run -p demos --bin outbox_worker -- --db worker.db` (or
//! `--postgres URL`; `scripts/postgres.sh` starts a server and prints its URL), with
//! `outbox_ledger` beside it, then send it jobs from a shell:
//!
//! ```sh
//! target/debug/postage send --exchange jobs-exchange job job --params '{"id": 1}'
//! ```
//!
//! Effects exactly once: for each `command`/`job` with `{"id": N}` from the durable
//! queue `jobs` (exchange `jobs-exchange`, key `job`), the worker inserts `N` into the
//! table `jobs_done` and, in the same transaction, sends `command`/`record` with
//! `{"id": N}` through the outbox to exchange `ledger-exchange`, key `ledger`. Kill it at
//! any moment (`kill -9`) and start it again: each job has one row in `jobs_done` and
//! one record in the ledger. Its first line says where its database is; then
//! `done id=N` per job.

use clap::Parser;
use demos::{Database, connect, say};
use postage_core::{Exchange, Processor, Queue, processor};
use postage_outbox::{Relay, Tx};
use serde::Deserialize;

#[derive(Parser)]
#[command(about = "Inserts each job's id and sends it to the ledger, exactly once")]
struct Args {
    #[command(flatten)]
    database: Database,
    /// The queue it consumes.
    #[arg(long, default_value = "jobs")]
    queue: String,
    /// The exchange its jobs come through, with key `--key`.
    #[arg(long, default_value = "jobs-exchange")]
    exchange: String,
    /// The routing key of its jobs.
    #[arg(long, default_value = "job")]
    key: String,
    /// Where its records go: this exchange...
    #[arg(long, default_value = "ledger-exchange")]
    to_exchange: String,
    /// ... with this key.
    #[arg(long, default_value = "ledger")]
    to_key: String,
    /// Who its relay is: a worker started again under the same name publishes at once
    /// (default: a name of this process, so a new one waits out the last one's lease).
    #[arg(long)]
    relay_instance: Option<String>,
}

#[derive(Deserialize)]
struct Job {
    id: i64,
}

struct Worker {
    ledger: Exchange,
    key: String,
}

#[processor]
impl Worker {
    #[message_handler("command", "job")]
    async fn job(&self, job: Job, tx: Tx) -> Result<(), postage_outbox::Error> {
        postage_outbox::sqlx::query("INSERT INTO jobs_done (id) VALUES ($1)")
            .bind(job.id)
            .execute(&mut *tx.conn().await?)
            .await
            .map_err(|source| postage_outbox::Error::Database {
                operation: "inserting a job",
                source,
            })?;
        tx.command(
            &self.ledger,
            &self.key,
            "record",
            serde_json::json!({ "id": job.id }),
        )
        .await?;
        say(format!("done id={}", job.id));
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), demos::Failure> {
    let args = Args::parse();
    let (store, place) = args.database.open().await?;
    say(format!("outbox_worker: database {place}"));
    postage_outbox::sqlx::query("CREATE TABLE IF NOT EXISTS jobs_done (id BIGINT NOT NULL)")
        .execute(store.pool())
        .await?;
    let connection = connect().await?;
    let mut relay = Relay::builder(&store, &connection);
    if let Some(instance) = args.relay_instance {
        relay = relay.instance(instance);
    }
    let _relay = relay.build().await?.spawn();
    let worker = Worker {
        ledger: Exchange::named(args.to_exchange),
        key: args.to_key,
    };
    let processor = Processor::builder(&connection, worker)
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
    say("waiting for jobs");
    processor.run().await?;
    Ok(connection.close().await?)
}
