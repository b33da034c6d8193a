//! Run with: `cargo run -p demos --bin advanced_echo_send [-- --quit]`
//!
//! Sends one `echo` to the shared queue (one receiver prints it) and one to the fanout
//! key (every receiver prints it), signed with an `echo_send` fingerprint. With `--quit`,
//! sends `quit` to every receiver instead.

use demos::{ECHO_FANOUT_KEY, connect, echo_producer, wants_quit};
use postage_core::{Fingerprint, Route};

#[tokio::main]
async fn main() -> Result<(), demos::Failure> {
    let connection = connect().await?;
    let producer = echo_producer(&connection, Fingerprint::new("echo_send", "application")).await?;
    let everyone = producer.to(Route::key(ECHO_FANOUT_KEY));
    if wants_quit() {
        everyone.message_quit().await?;
    } else {
        producer.message_echo("A single test message").await?;
        everyone.message_echo("A fanout test message").await?;
    }
    Ok(connection.close().await?)
}
