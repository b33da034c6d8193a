//! What the demos share, as `echo_shared.py` in Python Postage: the echo exchange, its
//! queue and routing keys, so these demos and the Python ones talk to each other.

use postage_core::asyncapi::{Component, Document};
use postage_core::{Connection, Exchange, Producer, Queue, producer_api};

/// The demos' exchange: direct and durable, Postage's defaults.
pub const ECHO_EXCHANGE: Exchange = Exchange::new("echo-exchange");
/// The queue every receiver shares.
pub const ECHO_QUEUE: &str = "echo-queue";
/// The routing key of the shared queue (round robin between receivers).
pub const ECHO_KEY: &str = "echo-rk";
/// The routing key of each receiver's private queue (every receiver gets a copy).
pub const ECHO_FANOUT_KEY: &str = "echo-fanout-rk";

producer_api! {
    /// The commands the echo receivers understand.
    pub struct EchoProducer {
        /// Sends `echo` with a text to print.
        message message_echo(text: &str) = "echo";
        /// Calls `echo` and returns the receiver's answer.
        rpc rpc_echo(text: &str) -> String = "echo";
        /// Asks receivers to stop.
        message message_quit() = "quit";
    }
}

/// Why a demo stopped: what its `main` returns on an error, so the program ends with
/// exit code 1 and one readable line on stderr, `Error: ` and the error's text, never a
/// `Debug` dump.
pub struct Failure(Box<dyn std::error::Error + Send + Sync>);

impl<E: std::error::Error + Send + Sync + 'static> From<E> for Failure {
    fn from(error: E) -> Self {
        Self(Box::new(error))
    }
}

impl std::fmt::Debug for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The broker's words may span lines; the error stays on one.
        let text = self.0.to_string();
        f.write_str(&text.split_whitespace().collect::<Vec<_>>().join(" "))
    }
}

/// With `--asyncapi` on its command line, a demo prints the AsyncAPI 3.0 document of
/// `component` (see `postage_core::asyncapi`) and exits, without a broker.
pub fn print_api_if_asked(component: impl FnOnce() -> Component) {
    if std::env::args().any(|arg| arg == "--asyncapi") {
        let document = Document::new("postage demos", env!("CARGO_PKG_VERSION"))
            .component(component())
            .to_json();
        println!(
            "{}",
            serde_json::to_string_pretty(&document).unwrap_or_default()
        );
        std::process::exit(0);
    }
}

/// Logs to stderr (`RUST_LOG`; when it is unset or empty, warnings, without the AMQP
/// client's own lines: postage reports what they would say) and connects with the
/// `POSTAGE_*` settings.
pub async fn connect() -> postage_core::Result<Connection> {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|f| !f.trim().is_empty())
        .unwrap_or_else(|| "warn,lapin=off".to_owned());
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(filter)
                .unwrap_or_else(|_| "warn,lapin=off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    Connection::from_env().await
}

/// A producer for the echo exchange with routing key `echo-rk`.
pub async fn echo_producer(
    connection: &Connection,
    fingerprint: postage_core::Fingerprint,
) -> postage_core::Result<EchoProducer> {
    let producer = Producer::builder(connection)
        .destination(ECHO_EXCHANGE, ECHO_KEY)
        .fingerprint(fingerprint)
        .build()
        .await?;
    Ok(EchoProducer::new(producer))
}

/// The shared queue, declared as Python Postage declares it.
pub fn shared_queue() -> Queue {
    Queue::new(ECHO_QUEUE)
}

/// True when the program was asked to send `quit` instead of its usual message.
pub fn wants_quit() -> bool {
    std::env::args().skip(1).any(|a| a == "--quit")
}

/// Prints a line and flushes, so a script reading the output sees it at once.
pub fn say(line: impl std::fmt::Display) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Where an outbox demo keeps its database: `--db FILE` (SQLite) or `--postgres URL`.
#[derive(clap::Args, Debug, Clone)]
#[group(required = true, multiple = false)]
pub struct Database {
    /// The SQLite database file (created if missing).
    #[arg(long, value_name = "FILE")]
    pub db: Option<std::path::PathBuf>,
    /// The PostgreSQL server's URL (`postgres://user:password@host:port/database`).
    #[arg(long, value_name = "URL")]
    pub postgres: Option<String>,
}

impl Database {
    /// Opens the store, and says where it is (the password left out).
    pub async fn open(&self) -> postage_outbox::Result<(postage_outbox::Store, String)> {
        match (&self.db, &self.postgres) {
            (Some(file), _) => Ok((
                postage_outbox::Store::sqlite(file).await?,
                format!("SQLite file {}", file.display()),
            )),
            (None, Some(url)) => {
                let shown = url
                    .parse::<url::Url>()
                    .map(|mut parsed| {
                        let _ = parsed.set_password(None);
                        parsed.to_string()
                    })
                    .unwrap_or_else(|_| "the URL given".to_owned());
                Ok((
                    postage_outbox::Store::postgres(url).await?,
                    format!("PostgreSQL {shown}"),
                ))
            }
            (None, None) => Err(postage_outbox::Error::UnknownDatabase),
        }
    }
}
