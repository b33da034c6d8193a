//! Run with: `cargo run -p demos --bin iaas_client`
//!
//! The message-client SDK's example client: asks the target `iaas` for a machine in mode
//! "rpc" and prints the answer as JSON, or "RPC failed" (no `iaas_server` running, say).

use std::process::ExitCode;

use demos::{connect, say};
use postage_core::client::{Mode, Target, Transport};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<ExitCode, demos::Failure> {
    let connection = connect().await?;
    let transport = Transport::new(&connection).await?;
    let msg_body = json!({
        "cpu": 2,
        "mem": 4096,
        "disk": 40,
        "os": {"type": "ubuntu", "version": "14.04"},
    });
    let code = match transport
        .send(&Target::new("iaas"), &msg_body, Mode::Rpc)
        .await
    {
        Ok(result) => {
            say(result.unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(error) => {
            say(format_args!("RPC failed: {error}"));
            ExitCode::FAILURE
        }
    };
    transport.close().await?;
    connection.close().await?;
    Ok(code)
}
