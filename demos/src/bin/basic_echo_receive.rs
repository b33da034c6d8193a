//! Run with: `cargo run -p demos --bin basic_echo_receive` (`-- --asyncapi` prints its
//! AsyncAPI document)
//!
//! Waits for `echo` commands on `echo-queue` and prints their parameters, until a `quit`.

use demos::{ECHO_EXCHANGE, ECHO_KEY, connect, say, shared_queue};
use postage_core::asyncapi::Component;
use postage_core::{Processor, processor};

struct EchoReceiveProcessor;

#[processor]
impl EchoReceiveProcessor {
    #[message_handler("command", "echo")]
    fn msg_echo(&self, text: serde_json::Value) {
        say(text
            .as_str()
            .map_or_else(|| text.to_string(), str::to_owned));
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
        .stop_on_signals(true)
        .build()
        .await?;
    say("waiting for messages");
    receiver.run().await?;
    say("quit");
    Ok(connection.close().await?)
}
