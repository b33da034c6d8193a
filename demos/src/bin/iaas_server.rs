//! Run with: `cargo run -p demos --bin iaas_server`
//!
//! The message-client SDK's example server: serves the target `iaas`, prints each request
//! and answers every call with the machine's address and login as a JSON object. Stops on
//! Ctrl-C (SIGINT), after the request in hand.

use demos::{connect, say};
use postage_core::client::{Request, Target, Transport};
use serde_json::json;
use tokio::signal::unix::{SignalKind, signal};

#[tokio::main]
async fn main() -> Result<(), demos::Failure> {
    // The SDK's CONF (hosts, port, user, password, virtual host, heartbeat) is read from
    // the POSTAGE_* variables.
    let connection = connect().await?;
    let transport = Transport::new(&connection).await?;
    let server = transport.server(&Target::new("iaas")).await?;

    let stop = server.handle();
    let mut interrupt = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        interrupt.recv().await;
        stop.shutdown();
    });

    say("waiting for messages");
    server
        .serve(|request: Request| async move {
            say(format_args!("receive message: {}", request.body()));
            json!({"ip": "172.30.40.201", "user": "cloud", "password": "123456"})
        })
        .await?;
    say("quit");
    transport.close().await?;
    connection.close().await?;
    Ok(())
}
