//! A worker for the shutdown tests: consumes the queue named by its first argument, four
//! handlers at a time; `work` takes 10 ms and prints `handled <n>`, `slow` prints
//! `started slow <ms>`, takes that many milliseconds and prints `handled slow <ms>`; the
//! RPC `long` prints `started long <ms>`, takes that many milliseconds and answers them.
//! Stops on SIGTERM, waiting for its handlers at most the milliseconds of its second
//! argument (default 30 s); serves health probes where `POSTAGE_METRICS` says.

use std::io::Write;
use std::time::Duration;

use postage_core::{Connection, Exchange, HandlerError, Processor, Queue, processor};

struct Worker;

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

#[processor]
impl Worker {
    #[message_handler("command", "work")]
    async fn work(&self, n: u64) {
        tokio::time::sleep(Duration::from_millis(10)).await;
        say(&format!("handled {n}"));
    }

    #[message_handler("command", "slow")]
    async fn slow(&self, ms: u64) {
        say(&format!("started slow {ms}"));
        tokio::time::sleep(Duration::from_millis(ms)).await;
        say(&format!("handled slow {ms}"));
    }

    #[rpc_handler("command", "long")]
    async fn long(&self, ms: u64) -> Result<u64, HandlerError> {
        say(&format!("started long {ms}"));
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(ms)
    }
}

#[tokio::main]
async fn main() -> postage_core::Result<()> {
    let queue = std::env::args().nth(1).expect("a queue name");
    let drain = std::env::args()
        .nth(2)
        .map_or(Duration::from_secs(30), |ms| {
            Duration::from_millis(ms.parse().expect("a drain bound in milliseconds"))
        });
    let connection = Connection::from_env().await?;
    let worker = Processor::builder(&connection, Worker)
        .bind(Exchange::DEFAULT, Queue::new(queue.clone()), queue)
        .concurrency(4)
        .prefetch(20)
        .stop_on_signals(true)
        .shutdown_timeout(drain)
        .build()
        .await?;
    if let Some(address) = connection.metrics_address() {
        say(&format!("health {address}"));
    }
    say("ready");
    let exit = worker.run().await?;
    say(&format!("stopped {exit:?}"));
    connection.close().await
}
