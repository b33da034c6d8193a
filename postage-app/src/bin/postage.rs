//! `postage`: talk to any component from a shell.
//!
//! Reads the same connection settings as the library (`POSTAGE_*`, or `--url`). Exit
//! codes: 0 done; 1 the component answered an error or exception; 2 bad usage; 3 no
//! answer in time; 4 no queue is bound to the key; 5 the broker could not be reached or
//! refused the settings; 6 `asyncapi --check` found a breaking change.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use postage_app::{Description, GENERIC_APPLICATION_EXCHANGE, components};
use postage_core::asyncapi::{Document, breaking_changes};
use postage_core::{
    Config, Connection, Error, Exchange, Fingerprint, Producer, Route, RpcOptions, RpcResult,
};
use serde_json::{Value, json};

/// Talk to postage components: send commands, call them, ping, list, control.
#[derive(Debug, Parser)]
#[command(name = "postage", version)]
struct Cli {
    /// Broker URL, `amqp[s]://user:pass@host:port/vhost` (default: the POSTAGE_* variables).
    #[arg(long, global = true)]
    url: Option<String>,
    /// One JSON object a line instead of text for people (error answers included).
    #[arg(long, global = true)]
    json: bool,
    /// Exchange (default `generic-application-exchange`; `components` asks on the
    /// discovery exchange).
    #[arg(long, global = true)]
    exchange: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Sends a fire-and-forget command.
    Send {
        /// Routing key, such as `name`, `name/rr`, `@host`, `pid@host`, `name#group`.
        key: String,
        /// Command name.
        command: String,
        /// Parameters as JSON (default `{}`).
        #[arg(long)]
        params: Option<String>,
        /// Delivered this long from now (`100ms`, `2s`, `5m`, `1h 30m`), held by the
        /// broker meanwhile.
        #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "at")]
        after: Option<Duration>,
        /// Delivered at this time (RFC 3339, such as `2026-12-05T10:00:00Z`), held by
        /// the broker until then.
        #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
        at: Option<std::time::SystemTime>,
    },
    /// Calls an RPC command and prints its result (the first, and how many answered when
    /// the key reached more than one component).
    Rpc {
        /// Routing key.
        key: String,
        /// Command name.
        command: String,
        /// Parameters as JSON (default `{}`).
        #[arg(long)]
        params: Option<String>,
        /// Seconds to wait for the answer (with `--progress`: for the first beat).
        #[arg(long, default_value_t = 10.0)]
        timeout: f64,
        /// Asks the component for a progress beat this often (`1s`, `500ms`) and prints
        /// each as it comes; the call then waits as long as beats come (at most
        /// `--answer-within`).
        #[arg(long, value_parser = humantime::parse_duration)]
        progress: Option<Duration>,
        /// With `--progress`, how long to wait for the answer in all (`20m`, `2h`).
        #[arg(long, value_parser = humantime::parse_duration, default_value = "1h", requires = "progress")]
        answer_within: Duration,
    },
    /// Pings every application a key reaches and prints each fingerprint.
    Ping {
        /// Routing key.
        key: String,
        /// Seconds to collect answers.
        #[arg(long, default_value_t = 1.0)]
        wait: f64,
    },
    /// Asks the applications a key reaches to quit.
    Quit {
        /// Routing key.
        key: String,
    },
    /// Asks the applications a key reaches to restart in place.
    Restart {
        /// Routing key.
        key: String,
    },
    /// Makes the applications a key reaches join a group.
    JoinGroup {
        /// Routing key.
        key: String,
        /// Group name.
        group: String,
    },
    /// Makes the applications a key reaches leave a group.
    LeaveGroup {
        /// Routing key.
        key: String,
        /// Group name.
        group: String,
    },
    /// Lists the live applications with their groups and handlers.
    Components {
        /// Seconds to collect answers.
        #[arg(long, default_value_t = 1.0)]
        wait: f64,
    },
    /// Prints the AsyncAPI 3.0 document of the applications a key reaches (from their
    /// `describe`), or of a document file; with `--check`, compares it with a saved one
    /// and exits 6 on a breaking change.
    Asyncapi {
        /// Routing key of the applications to describe (not with `--from`).
        #[arg(required_unless_present = "from")]
        key: Option<String>,
        /// Read the document from this file (a program's own `--asyncapi` output, say)
        /// instead of asking running applications; needs no broker.
        #[arg(long, conflicts_with = "key")]
        from: Option<std::path::PathBuf>,
        /// The saved document to compare with: breaking changes are listed, exit 6.
        #[arg(long)]
        check: Option<std::path::PathBuf>,
        /// The document's title.
        #[arg(long, default_value = "postage components")]
        title: String,
        /// The API's version in the document.
        #[arg(long, default_value = "0.1.0")]
        api_version: String,
        /// Seconds to collect answers.
        #[arg(long, default_value_t = 1.0)]
        wait: f64,
    },
    /// Serves a live web page of the fleet until stopped: every component with its
    /// groups, handlers and rates, and (with `--allow-control`) buttons to quit,
    /// restart and regroup them, sent as the connection's login.
    Dashboard {
        /// Address to serve the page on (loopback by default: the page has no login).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Let the page send quit, restart, join_group and leave_group.
        #[arg(long)]
        allow_control: bool,
        /// Seconds between two looks at the fleet.
        #[arg(long, default_value_t = 1.0)]
        period: f64,
    },
    /// A component's outbox (`postage-outbox`): what it holds, or a relay for it.
    Outbox {
        #[command(subcommand)]
        command: OutboxCommand,
    },
}

#[derive(Debug, Subcommand)]
enum OutboxCommand {
    /// Prints what the outbox holds: messages not yet sent and how long the oldest has
    /// waited, messages sent and kept, the inbox's records. Needs no broker.
    Status {
        #[command(flatten)]
        database: OutboxDatabase,
    },
    /// Runs a relay of the outbox until stopped: one process publishing for components
    /// that run none (relays of one store take turns through a lease).
    Relay {
        #[command(flatten)]
        database: OutboxDatabase,
    },
}

/// Where an outbox is: `--db FILE` (SQLite) or `--postgres URL`.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
struct OutboxDatabase {
    /// The SQLite database file.
    #[arg(long, value_name = "FILE")]
    db: Option<std::path::PathBuf>,
    /// The PostgreSQL server's URL.
    #[arg(long, value_name = "URL")]
    postgres: Option<String>,
}

impl OutboxDatabase {
    async fn open(&self) -> Result<postage_outbox::Store, Failure> {
        let store = match (&self.db, &self.postgres) {
            (Some(file), _) if !file.exists() => {
                return Err(usage(format!("no database file {}", file.display())));
            }
            (Some(file), _) => postage_outbox::Store::sqlite(file).await,
            (None, Some(url)) => postage_outbox::Store::postgres(url).await,
            (None, None) => Err(postage_outbox::Error::UnknownDatabase),
        };
        store.map_err(|error| Failure {
            code: 5,
            text: error.to_string(),
        })
    }
}

/// A failure with the exit code it maps to.
struct Failure {
    code: u8,
    text: String,
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        let code = match &error {
            Error::RpcTimeout { .. } | Error::Blocked { .. } | Error::Timeout { .. } => 3,
            Error::Unroutable { .. } => 4,
            Error::ConnectionFailed { .. }
            | Error::AccessRefused { .. }
            | Error::VhostRefused { .. }
            | Error::QueueRefused { .. }
            | Error::InvalidConfig { .. } => 5,
            Error::RemoteError { .. } | Error::RemoteException { .. } => 1,
            _ => 1,
        };
        // The broker's words may span lines; the error stays on one.
        let text = error.to_string();
        Self {
            code,
            text: text.split_whitespace().collect::<Vec<_>>().join(" "),
        }
    }
}

fn usage(text: String) -> Failure {
    Failure { code: 2, text }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // Errors reach the user as one line each; `RUST_LOG` (unset or empty: errors, without
    // the AMQP client's own lines, which postage reports) shows more.
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|f| !f.trim().is_empty())
        .unwrap_or_else(|| "error,lapin=off".to_owned());
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(filter)
                .unwrap_or_else(|_| "error,lapin=off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("postage: {}", failure.text);
            ExitCode::from(failure.code)
        }
    }
}

fn seconds(value: f64, flag: &str) -> Result<Duration, Failure> {
    Duration::try_from_secs_f64(value)
        .map_err(|_| usage(format!("{flag} must be a positive number of seconds")))
}

fn parameters(params: Option<String>) -> Result<Value, Failure> {
    match params {
        None => Ok(json!({})),
        Some(text) => {
            serde_json::from_str(&text).map_err(|e| usage(format!("--params is not JSON: {e}")))
        }
    }
}

/// How long `rpc` waits after the first answer for others (one per component a fanout
/// key reaches).
const FANOUT_GRACE: Duration = Duration::from_millis(300);

fn exchange(name: Option<String>) -> Exchange {
    name.map_or(GENERIC_APPLICATION_EXCHANGE, Exchange::named)
}

async fn run(cli: Cli) -> Result<(), Failure> {
    // A document read from a file needs no broker.
    if let Command::Asyncapi {
        from: Some(path),
        check,
        ..
    } = &cli.command
    {
        let document = read_document(path)?;
        return asyncapi(document, check.as_deref());
    }
    // The outbox's status needs no broker either.
    let command = match cli.command {
        Command::Outbox {
            command: OutboxCommand::Status { database },
        } => return outbox_status(&database.open().await?, cli.json).await,
        command => command,
    };
    let config = match &cli.url {
        Some(url) => Config::from_url(url)?,
        None => Config::from_env()?,
    };
    let connection = Connection::connect(&config).await?;
    if let Command::Dashboard {
        listen,
        allow_control,
        period,
    } = command
    {
        let options = postage_app::dashboard::Options {
            allow_control,
            period: seconds(period, "--period")?,
        };
        return dashboard(connection, config.user.clone(), listen, options).await;
    }
    let exchange = exchange(cli.exchange);
    let result = execute(&connection, command, cli.json, exchange).await;
    let _ = connection.close().await;
    result
}

/// Serves the dashboard on `listen` until Ctrl-C, printing its address first.
async fn dashboard(
    connection: Connection,
    user: String,
    listen: std::net::SocketAddr,
    options: postage_app::dashboard::Options,
) -> Result<(), Failure> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| usage(format!("cannot listen on {listen}: {e}")))?;
    let address = listener
        .local_addr()
        .map_err(|e| usage(format!("cannot listen on {listen}: {e}")))?;
    println!("postage dashboard on http://{address}/");
    let served = tokio::select! {
        served = postage_app::dashboard::serve(connection.clone(), user, listener, options) => served,
        _ = tokio::signal::ctrl_c() => Ok(()),
    };
    let _ = connection.close().await;
    served.map_err(|e| Failure {
        code: 1,
        text: format!("the dashboard stopped: {e}"),
    })
}

/// A reliable producer: an unroutable key is an error, not a silent loss. Opening it and
/// each publish take at most `bound` (under a resource alarm: an error naming it).
async fn producer(
    connection: &Connection,
    exchange: Exchange,
    key: &str,
    bound: Duration,
) -> Result<Producer, Failure> {
    Ok(Producer::builder(connection)
        .destination(exchange, key)
        .fingerprint(Fingerprint::new("postage-cli", "tool"))
        .reliable(true)
        .publish_timeout(bound)
        .build()
        .await?)
}

async fn send(
    connection: &Connection,
    key: &str,
    command: &str,
    params: Value,
    exchange: Exchange,
) -> Result<(), Failure> {
    producer(
        connection,
        exchange,
        key,
        postage_core::DEFAULT_PUBLISH_TIMEOUT,
    )
    .await?
    .command(command, params)
    .await?;
    Ok(())
}

async fn execute(
    connection: &Connection,
    command: Command,
    json: bool,
    exchange: Exchange,
) -> Result<(), Failure> {
    match command {
        Command::Send {
            key,
            command,
            params,
            after,
            at,
        } => {
            let params = parameters(params)?;
            let delay = match (after, at) {
                (Some(after), _) => Some(after),
                (None, Some(at)) => Some(
                    at.duration_since(std::time::SystemTime::now())
                        .unwrap_or(Duration::ZERO),
                ),
                (None, None) => None,
            };
            let Some(delay) = delay else {
                send(connection, &key, &command, params, exchange).await?;
                report(
                    json,
                    json!({"sent": command, "key": key}),
                    format!("sent {command} to {key}"),
                );
                return Ok(());
            };
            producer(
                connection,
                exchange,
                &key,
                postage_core::DEFAULT_PUBLISH_TIMEOUT,
            )
            .await?
            .command_after(delay, &command, params)
            .await?;
            let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
            report(
                json,
                json!({"scheduled": command, "key": key, "after_ms": ms}),
                format!(
                    "scheduled {command} to {key} in {}",
                    humantime::format_duration(Duration::from_millis(ms))
                ),
            );
        }
        Command::Quit { key } => {
            send(connection, &key, "quit", json!({}), exchange.clone()).await?;
            report(
                json,
                json!({"sent": "quit", "key": key}),
                format!("sent quit to {key}"),
            );
        }
        Command::Restart { key } => {
            send(connection, &key, "restart", json!({}), exchange.clone()).await?;
            report(
                json,
                json!({"sent": "restart", "key": key}),
                format!("sent restart to {key}"),
            );
        }
        Command::JoinGroup { key, group } => {
            send(
                connection,
                &key,
                "join_group",
                json!({"group_name": group}),
                exchange.clone(),
            )
            .await?;
            report(
                json,
                json!({"sent": "join_group", "key": key, "group": group}),
                format!("sent join_group {group} to {key}"),
            );
        }
        Command::LeaveGroup { key, group } => {
            send(
                connection,
                &key,
                "leave_group",
                json!({"group_name": group}),
                exchange.clone(),
            )
            .await?;
            report(
                json,
                json!({"sent": "leave_group", "key": key, "group": group}),
                format!("sent leave_group {group} to {key}"),
            );
        }
        Command::Rpc {
            key,
            command,
            params,
            timeout,
            progress,
            answer_within,
        } => {
            let timeout = seconds(timeout, "--timeout")?;
            let producer = producer(connection, exchange, &key, timeout).await?;
            if let Some(interval) = progress {
                let options = RpcOptions::new()
                    .timeout(timeout)
                    .max_retry(0)
                    .progress(interval)
                    .answer_within(answer_within)
                    .on_progress(move |value| {
                        if json {
                            println!("{}", json!({"progress": value}));
                        } else if value.is_null() {
                            println!("... working");
                        } else {
                            println!("... {value}");
                        }
                    });
                // No answer in time (the beats stopped) is exit code 3, as for any call.
                let answer = producer
                    .rpc_deferred(&command, parameters(params)?, options)
                    .await?
                    .result()
                    .await?;
                return answered(&command, answer, json);
            }
            let answers = producer
                .gather(
                    &command,
                    parameters(params)?,
                    &Route::Default,
                    timeout,
                    Some(FANOUT_GRACE),
                )
                .await?;
            let Some(first) = answers.first() else {
                return Err(Failure::from(Error::RpcTimeout {
                    command,
                    routing_key: key,
                    attempts: 1,
                    timeout,
                }));
            };
            if answers.len() > 1 {
                eprintln!(
                    "postage: {} components answered on {key} (a fanout key runs the \
                     handler on each); the first answer:",
                    answers.len()
                );
            }
            return answered(&command, first.clone(), json);
        }
        Command::Ping { key, wait } => {
            let wait_for = seconds(wait, "--wait")?;
            let answers = producer(connection, exchange, &key, wait_for)
                .await?
                .gather("ping", json!({}), &Route::Default, wait_for, None)
                .await?;
            if answers.is_empty() {
                return Err(Failure {
                    code: 3,
                    text: format!("no application answered on {key} within {wait} s"),
                });
            }
            for answer in answers {
                if let RpcResult::Success { value, .. } = answer {
                    let f: Fingerprint = serde_json::from_value(value.clone())
                        .unwrap_or_else(|_| Fingerprint::blank());
                    report(
                        json,
                        value,
                        format!(
                            "{} {}@{} type={} user={} vhost={}",
                            f.name, f.pid, f.host, f.kind, f.user, f.vhost
                        ),
                    );
                }
            }
        }
        Command::Asyncapi {
            key,
            check,
            title,
            api_version,
            wait,
            ..
        } => {
            let key = key.unwrap_or_default();
            let wait_for = seconds(wait, "--wait")?;
            let answers = producer(connection, exchange, &key, wait_for)
                .await?
                .gather("describe", json!({}), &Route::Default, wait_for, None)
                .await?;
            let mut document = Document::new(title, api_version);
            let mut described = 0;
            for answer in answers {
                if let RpcResult::Success { value, .. } = answer
                    && let Ok(Description { api: Some(api), .. }) = serde_json::from_value(value)
                {
                    document = document.component(api);
                    described += 1;
                }
            }
            if described == 0 {
                return Err(Failure {
                    code: 3,
                    text: format!("no application described its API on {key} within {wait} s"),
                });
            }
            return asyncapi(document.to_json(), check.as_deref());
        }
        Command::Outbox {
            command: OutboxCommand::Status { database },
        } => outbox_status(&database.open().await?, json).await?,
        // Served by `run` before it gets here.
        Command::Dashboard { .. } => return Err(usage("the dashboard runs on its own".to_owned())),
        Command::Outbox {
            command: OutboxCommand::Relay { database },
        } => {
            let store = database.open().await?;
            let relay = postage_outbox::Relay::builder(&store, connection)
                .build()
                .await
                .map_err(|error| Failure {
                    code: 5,
                    text: error.to_string(),
                })?;
            tokio::select! {
                () = relay.run() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Command::Components { wait } => {
            let found = components(connection, seconds(wait, "--wait")?).await?;
            if found.is_empty() {
                // Nothing running is an answer too: an empty list.
                report(json, json!([]), "no component answered".to_owned());
            }
            for component in found {
                let f = &component.fingerprint;
                let handlers: Vec<String> = component
                    .handlers
                    .iter()
                    .map(|h| {
                        format!(
                            "{}:{}/{}",
                            h["category"].as_str().unwrap_or("?"),
                            h["type"].as_str().unwrap_or("?"),
                            h["name"].as_str().unwrap_or("?")
                        )
                    })
                    .collect();
                let text = format!(
                    "{} {}@{} groups=[{}] handlers=[{}]",
                    f.name,
                    f.pid,
                    f.host,
                    component.groups.join(","),
                    handlers.join(" ")
                );
                report(
                    json,
                    serde_json::to_value(&component).unwrap_or_default(),
                    text,
                );
            }
        }
    }
    Ok(())
}

/// A JSON document from `path`, or why not.
fn read_document(path: &std::path::Path) -> Result<Value, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| usage(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_str(&text)
        .map_err(|e| usage(format!("{} is not a JSON document: {e}", path.display())))
}

/// Prints `document`, or with `check` the breaking changes from the saved one there.
fn asyncapi(document: Value, check: Option<&std::path::Path>) -> Result<(), Failure> {
    let Some(saved) = check else {
        println!(
            "{}",
            serde_json::to_string_pretty(&document).unwrap_or_default()
        );
        return Ok(());
    };
    let breaking = breaking_changes(&read_document(saved)?, &document);
    if breaking.is_empty() {
        println!("no breaking change from {}", saved.display());
        return Ok(());
    }
    for change in &breaking {
        println!("breaking: {change}");
    }
    Err(Failure {
        code: 6,
        text: format!(
            "{} breaking change(s) from {}",
            breaking.len(),
            saved.display()
        ),
    })
}

/// `postage outbox status`.
async fn outbox_status(store: &postage_outbox::Store, json: bool) -> Result<(), Failure> {
    let status = store.status().await.map_err(|error| Failure {
        code: 5,
        text: error.to_string(),
    })?;
    let oldest = status.oldest.map(|age| age.as_secs_f64());
    report(
        json,
        json!({
            "pending": status.pending,
            "oldest_seconds": oldest,
            "sent": status.sent,
            "inbox": status.inbox,
        }),
        format!(
            "pending {}, oldest {}, sent {}, inbox {}",
            status.pending,
            oldest.map_or_else(|| "-".to_owned(), |s| format!("{s:.1} s")),
            status.sent,
            status.inbox
        ),
    );
    Ok(())
}

fn report(json: bool, object: Value, text: String) {
    if json {
        println!("{object}");
    } else {
        println!("{text}");
    }
}

/// Prints an RPC answer: a success as its value; an error or exception as a failure
/// (exit code 1).
fn answered(command: &str, answer: RpcResult, json: bool) -> Result<(), Failure> {
    let (object, failure) = match answer {
        RpcResult::Success { value, .. } => {
            let text = value
                .as_str()
                .map_or_else(|| value.to_string(), str::to_owned);
            report(json, json!({"type": "success", "value": value}), text);
            return Ok(());
        }
        RpcResult::Error { message } => (
            json!({"type": "error", "message": message}),
            format!("{command} answered an error: {message}"),
        ),
        RpcResult::Exception { kind, message } => (
            json!({"type": "exception", "kind": kind, "message": message}),
            format!("{command} raised {kind}: {message}"),
        ),
    };
    if json {
        println!("{object}");
    }
    Err(Failure {
        code: 1,
        text: failure,
    })
}
