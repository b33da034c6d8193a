//! Run with: `cargo run -p demos --bin group_app -- --name N [--group G ...]`
//!
//! A GenericApplication called N, member of the groups given, printing one line for each
//! command it handles: `hello <text>` for the `hello` command, `join_group G` and
//! `leave_group G` for those. Start three in three shells and drive them with the
//! `postage` tool (see README).

use clap::Parser;
use demos::{connect, say};
use postage_app::GenericApplication;
use postage_core::{Fingerprint, processor};
use serde::Deserialize;

/// A GenericApplication that prints what it handles.
#[derive(Debug, Parser)]
struct Args {
    /// The application's name (its fingerprint name).
    #[arg(long)]
    name: String,
    /// A group to join at start; repeat for several.
    #[arg(long = "group")]
    groups: Vec<String>,
}

struct Printer;

#[derive(Deserialize)]
struct GroupName {
    group_name: String,
}

#[processor]
impl Printer {
    #[message_handler("command", "hello")]
    fn hello(&self, text: serde_json::Value) {
        say(format_args!(
            "hello {}",
            text.as_str()
                .map_or_else(|| text.to_string(), str::to_owned)
        ));
    }

    #[message_handler("command", "join_group")]
    fn join_group(&self, group: GroupName) {
        say(format_args!("join_group {}", group.group_name));
    }

    #[message_handler("command", "leave_group")]
    fn leave_group(&self, group: GroupName) {
        say(format_args!("leave_group {}", group.group_name));
    }
}

#[tokio::main]
async fn main() -> Result<(), demos::Failure> {
    let args = Args::parse();
    let connection = connect().await?;
    let fingerprint = Fingerprint::new(args.name, "application");
    let mut app = GenericApplication::builder(&connection, fingerprint.clone()).handlers(Printer);
    for group in args.groups {
        app = app.group(group);
    }
    let app = app.build().await?;
    say(format_args!(
        "ready {}@{}",
        fingerprint.pid, fingerprint.host
    ));
    app.run().await?;
    say("quit");
    Ok(connection.close().await?)
}
