//! Run with: `cargo run -p demos --bin basic_echo_send [-- --quit]`
//!
//! Sends one `echo` command ("A test message"), or `quit` with `--quit`.

use demos::{connect, echo_producer, wants_quit};
use postage_core::Fingerprint;

#[tokio::main]
async fn main() -> Result<(), demos::Failure> {
    let connection = connect().await?;
    let producer = echo_producer(&connection, Fingerprint::default()).await?;
    if wants_quit() {
        producer.message_quit().await?;
    } else {
        producer.message_echo("A test message").await?;
    }
    Ok(connection.close().await?)
}
