//! Run with: `cargo run -p demos --bin flaky_worker [-- --always-fail]` (`-- --asyncapi`
//! prints its AsyncAPI document), then send it work
//! from a shell:
//!
//! ```sh
//! target/debug/postage send --exchange flaky-exchange flaky work --params '{"id": 1}'
//! ```
//!
//! A worker whose first two attempts at each job fail: the job waits 1 s, then 2 s, in
//! delay queues on the broker, and the third attempt succeeds. It prints `attempt K id=N`
//! for each attempt and `done id=N` at the end. With `--always-fail` every attempt fails,
//! and after the third the job ends in the dead-letter queue `flaky-queue.dead`, with the
//! last error in its `x-postage-error` header (see it with `rabbitmqctl list_queues`).

use std::time::Duration;

use clap::Parser;
use demos::{connect, say};
use postage_core::asyncapi::Component;
use postage_core::schemars::JsonSchema;
use postage_core::{Exchange, HandlerError, Metadata, Processor, Queue, RetryPolicy, processor};
use serde::Deserialize;

/// The exchange the worker's jobs are sent to, with key `flaky`.
const FLAKY_EXCHANGE: Exchange = Exchange::new("flaky-exchange");

#[derive(Parser)]
#[command(about = "A worker that fails each job twice before it succeeds")]
struct Args {
    /// Fail every attempt, so each job ends in `flaky-queue.dead`.
    #[arg(long)]
    always_fail: bool,
    /// Print the worker's AsyncAPI document and exit.
    #[arg(long)]
    asyncapi: bool,
}

#[derive(Deserialize, JsonSchema)]
#[schemars(crate = "postage_core::schemars")]
struct Job {
    id: u64,
}

struct FlakyWorker {
    always_fail: bool,
}

#[processor]
impl FlakyWorker {
    #[message_handler("command", "work")]
    fn work(&self, job: Job, metadata: &Metadata) -> Result<(), HandlerError> {
        say(format!("attempt {} id={}", metadata.attempt(), job.id));
        if self.always_fail || metadata.attempt() < 3 {
            return Err(HandlerError::error(format!(
                "job {} failed at attempt {} on purpose",
                job.id,
                metadata.attempt()
            )));
        }
        say(format!("done id={}", job.id));
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), demos::Failure> {
    demos::print_api_if_asked(|| {
        Component::of::<FlakyWorker>("flaky_worker").bind(FLAKY_EXCHANGE, "flaky-queue", "flaky")
    });
    let args = Args::parse();
    let connection = connect().await?;
    let worker = Processor::builder(
        &connection,
        FlakyWorker {
            always_fail: args.always_fail,
        },
    )
    .bind(
        FLAKY_EXCHANGE,
        Queue::new("flaky-queue").durable(true),
        "flaky",
    )
    .retry(
        RetryPolicy::new()
            .attempts(3)
            .backoff(Duration::from_secs(1), Duration::from_secs(60))
            .jitter(0.0),
    )
    .stop_on_signals(true)
    .build()
    .await?;
    say("waiting for messages");
    worker.run().await?;
    say("quit");
    Ok(connection.close().await?)
}
