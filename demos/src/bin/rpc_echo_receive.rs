//! Run with: `cargo run -p demos --bin rpc_echo_receive` (`-- --asyncapi` prints its
//! AsyncAPI document)
//!
//! Answers `echo` calls: prints the parameters, replies "RPC message received" first,
//! then goes on working after the reply, as the Postage demo does.

use demos::{ECHO_EXCHANGE, ECHO_KEY, connect, say, shared_queue};
use postage_core::asyncapi::Component;
use postage_core::{Fingerprint, Processor, Reply, processor};

struct EchoReceiveProcessor;

#[processor]
impl EchoReceiveProcessor {
    #[rpc_handler("command", "echo")]
    async fn msg_echo(&self, text: serde_json::Value, reply: Reply) -> postage_core::Result<()> {
        say(text
            .as_str()
            .map_or_else(|| text.to_string(), str::to_owned));
        reply.success("RPC message received").await?;
        say("replied");
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), demos::Failure> {
    demos::print_api_if_asked(|| {
        Component::of::<EchoReceiveProcessor>("echo_receive").bind(
            ECHO_EXCHANGE,
            shared_queue(),
            ECHO_KEY,
        )
    });
    let connection = connect().await?;
    let receiver = Processor::builder(&connection, EchoReceiveProcessor)
        .bind(ECHO_EXCHANGE, shared_queue(), ECHO_KEY)
        .fingerprint(Fingerprint::new("echo_receive", "controller"))
        .stop_on_signals(true)
        .build()
        .await?;
    say("waiting for messages");
    receiver.run().await?;
    say("quit");
    Ok(connection.close().await?)
}
