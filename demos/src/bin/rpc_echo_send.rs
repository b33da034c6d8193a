//! Run with: `cargo run -p demos --bin rpc_echo_send [-- --quit]`
//!
//! Calls `echo` and prints the answer's value, or "RPC failed"; `--quit` sends `quit`.

use std::process::ExitCode;

use demos::{connect, echo_producer, say, wants_quit};
use postage_core::Fingerprint;

#[tokio::main]
async fn main() -> Result<ExitCode, demos::Failure> {
    let connection = connect().await?;
    let producer = echo_producer(&connection, Fingerprint::new("echo_send", "application")).await?;
    let code = if wants_quit() {
        producer.message_quit().await?;
        ExitCode::SUCCESS
    } else {
        match producer.rpc_echo("RPC test message").await {
            Ok(value) => {
                say(value);
                ExitCode::SUCCESS
            }
            Err(error) => {
                say(format_args!("RPC failed: {error}"));
                ExitCode::FAILURE
            }
        }
    };
    connection.close().await?;
    Ok(code)
}
