//! Run with: `cargo run -p demos --bin advanced_echo_receive` (`-- --asyncapi` prints its
//! AsyncAPI document)
//!
//! Like the basic receiver, plus: prints the sender's fingerprint (a full-body handler),
//! and reads both the shared `echo-queue` (round robin between receivers, key `echo-rk`)
//! and a private queue of its own (every receiver gets a copy, key `echo-fanout-rk`).

use demos::{ECHO_EXCHANGE, ECHO_FANOUT_KEY, ECHO_KEY, connect, say, shared_queue};
use postage_core::asyncapi::Component;
use postage_core::{Fingerprint, Message, Processor, Queue, processor};

struct EchoReceiveProcessor;

#[processor]
impl EchoReceiveProcessor {
    #[message_handler("command", "echo")]
    fn msg_echo(&self, text: serde_json::Value) {
        say(text
            .as_str()
            .map_or_else(|| text.to_string(), str::to_owned));
    }

    #[message_handler("command", "echo", full_body)]
    fn msg_echo_fingerprint(&self, body: Message) {
        let f = &body.fingerprint;
        say(format_args!(
            "Message fingerprint: name={} type={} pid={} host={} user={} vhost={}",
            f.name, f.kind, f.pid, f.host, f.user, f.vhost
        ));
    }
}

#[tokio::main]
async fn main() -> Result<(), demos::Failure> {
    demos::print_api_if_asked(|| {
        Component::of::<EchoReceiveProcessor>("echo_receive")
            .bind(ECHO_EXCHANGE, shared_queue(), ECHO_KEY)
            .bind(ECHO_EXCHANGE, "echo-queue-PIDHOST", ECHO_FANOUT_KEY)
    });
    let connection = connect().await?;
    let fingerprint = Fingerprint::new("echo_receive", "controller");
    let private_queue = Queue::new(format!(
        "echo-queue-{}{}",
        fingerprint.pid, fingerprint.host
    ))
    .auto_delete(true);
    let receiver = Processor::builder(&connection, EchoReceiveProcessor)
        .bindings(
            ECHO_EXCHANGE,
            [(shared_queue(), ECHO_KEY), (private_queue, ECHO_FANOUT_KEY)],
        )
        .fingerprint(fingerprint)
        .stop_on_signals(true)
        .build()
        .await?;
    say("waiting for messages");
    receiver.run().await?;
    say("quit");
    Ok(connection.close().await?)
}
