//! Run with: `cargo run -p demos --bin ordered_worker [-- --concurrency N]` (`-- --asyncapi`
//! prints its AsyncAPI document), then send it steps from a shell:
//!
//! ```sh
//! for seq in 0 1 2 3; do for key in a b c; do
//!   target/debug/postage send --exchange steps-exchange step step --params "{\"key\": \"$key\", \"seq\": $seq}"
//! done; done
//! ```
//!
//! A worker on the durable queue `steps` (exchange `steps-exchange`, key `step`) that runs
//! up to N steps at once (8 by default) and keeps each key's steps in the order they
//! came: for each `step` command with `{"key": K, "seq": S}` it sleeps 0-5 ms at random
//! and prints `key=K seq=S`. Lines of one key come out in their `seq` order, whatever the
//! sleeps; lines of different keys interleave.

use std::time::Duration;

use clap::Parser;
use demos::{connect, say};
use postage_core::asyncapi::Component;
use postage_core::schemars::JsonSchema;
use postage_core::{Exchange, Processor, Queue, processor};
use serde::Deserialize;

/// The exchange steps are sent to, with key `step`.
const STEPS_EXCHANGE: Exchange = Exchange::new("steps-exchange");

#[derive(Parser)]
#[command(about = "A worker that runs steps of different keys at once, each key in order")]
struct Args {
    /// How many steps may run at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Print the worker's AsyncAPI document and exit.
    #[arg(long)]
    asyncapi: bool,
}

#[derive(Deserialize, JsonSchema)]
#[schemars(crate = "postage_core::schemars")]
struct Step {
    /// The key whose steps keep their order.
    key: serde_json::Value,
    /// The step's number within its key.
    seq: serde_json::Value,
}

struct OrderedWorker;

#[processor]
impl OrderedWorker {
    #[message_handler("command", "step")]
    async fn step(&self, step: Step) {
        tokio::time::sleep(Duration::from_micros(fastrand::u64(0..=5_000))).await;
        say(format!("key={} seq={}", plain(&step.key), plain(&step.seq)));
    }
}

/// A JSON value as a shell user wrote it: a string without its quotes.
fn plain(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

#[tokio::main]
async fn main() -> Result<(), demos::Failure> {
    demos::print_api_if_asked(|| {
        Component::of::<OrderedWorker>("ordered_worker").bind(STEPS_EXCHANGE, "steps", "step")
    });
    let args = Args::parse();
    let connection = connect().await?;
    let worker = Processor::builder(&connection, OrderedWorker)
        .bind(STEPS_EXCHANGE, Queue::new("steps").durable(true), "step")
        .concurrency(args.concurrency)
        .prefetch(64)
        // The key as it came (`"a"` and `1` are two keys), a message without one its own.
        .ordered_by(|message, _| message.raw_parameters().get("key").map(ToString::to_string))
        .stop_on_signals(true)
        .build()
        .await?;
    say("waiting for messages");
    worker.run().await?;
    say("quit");
    Ok(connection.close().await?)
}
