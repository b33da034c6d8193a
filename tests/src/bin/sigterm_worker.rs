//! A worker for the shutdown tests: consumes the queue named by its first argument, four
//! handlers at a time, each taking 10 ms and printing `handled <n>`; stops on SIGTERM.

use std::io::Write;
use std::time::Duration;

use postage_core::{Connection, Exchange, Processor, Queue, processor};

struct Worker;

#[processor]
impl Worker {
    #[message_handler("command", "work")]
    async fn work(&self, n: u64) {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "handled {n}");
        let _ = out.flush();
    }
}

#[tokio::main]
async fn main() -> postage_core::Result<()> {
    let queue = std::env::args().nth(1).expect("a queue name");
    let connection = Connection::from_env().await?;
    let worker = Processor::builder(&connection, Worker)
        .bind(Exchange::DEFAULT, Queue::new(queue.clone()), queue)
        .concurrency(4)
        .prefetch(20)
        .stop_on_signals(true)
        .build()
        .await?;
    println!("ready");
    let exit = worker.run().await?;
    println!("stopped {exit:?}");
    connection.close().await
}
