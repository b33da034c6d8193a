//! What the throughput benchmark and its child components share: the payload types, and
//! the Postage wire format written and read by hand with serde, as a raw lapin program
//! would, so the baselines send and read the very bodies postage does.

use postage_core::__private::PUBLISH_BACKLOG;
use serde::{Deserialize, Serialize};

/// The payload every benchmark message carries.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reading {
    /// Which sensor.
    pub sensor: String,
    /// A sequence number, different in each message.
    pub seq: u64,
    /// The value read.
    pub value: f64,
    /// A few labels.
    pub tags: Vec<String>,
    /// Filler that makes the payload as big as a figure needs; left out when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
}

impl Reading {
    /// A reading like every other one, numbered `seq`.
    pub fn sample(seq: u64) -> Self {
        Self {
            sensor: "sensor-7".to_owned(),
            seq,
            value: 21.5,
            tags: vec!["lab".to_owned(), "north".to_owned()],
            note: String::new(),
        }
    }

    /// A reading numbered `seq` whose JSON is about `bytes` long (at least a sample's,
    /// some 80 bytes), padded with a note.
    pub fn sized(seq: u64, bytes: usize) -> Self {
        let mut reading = Self::sample(seq);
        let plain = serde_json::to_vec(&reading).map_or(0, |json| json.len());
        // `,"note":""` is 10 bytes.
        let fill = bytes.saturating_sub(plain + 10);
        reading.note = "x".repeat(fill);
        reading
    }
}

/// The answer of the benchmark's RPC handler.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Receipt {
    /// The sequence number of the reading answered.
    pub seq: u64,
    /// Always true.
    pub ok: bool,
}

/// The `fingerprint` object of a Postage message, as the raw baselines write it.
#[derive(Debug, Clone, Serialize)]
pub struct RawFingerprint {
    /// Component name.
    pub name: String,
    /// Component kind.
    #[serde(rename = "type")]
    pub kind: String,
    /// Process id.
    pub pid: String,
    /// Host name.
    pub host: String,
    /// OS user.
    pub user: String,
    /// Virtual host.
    pub vhost: String,
}

impl RawFingerprint {
    /// The fingerprint of this process, named `name`.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            kind: "application".to_owned(),
            pid: std::process::id().to_string(),
            host: "localhost".to_owned(),
            user: "bench".to_owned(),
            vhost: "/".to_owned(),
        }
    }
}

/// A Postage message to send, with borrowed parts.
#[derive(Debug, Serialize)]
pub struct Outgoing<'a, C> {
    /// Message type (`command`, `result`...).
    #[serde(rename = "type")]
    pub kind: &'a str,
    /// Command name.
    pub name: &'a str,
    /// `message` or `rpc`.
    pub category: &'a str,
    /// Always `"2"`.
    pub version: &'a str,
    /// Who sends it.
    pub fingerprint: &'a RawFingerprint,
    /// The content object.
    pub content: C,
    /// Always empty.
    #[serde(rename = "_reserved")]
    pub reserved: Empty,
}

/// An empty JSON object.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Empty {}

/// A command's content: `{"parameters": ...}`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Parameters<T> {
    /// The command's parameters.
    pub parameters: T,
}

/// A success result's content.
#[derive(Debug, Serialize, Deserialize)]
pub struct Success<T> {
    /// Always `success` when sent; checked when read.
    #[serde(rename = "type")]
    pub kind: String,
    /// The answer.
    pub value: T,
    /// Usually empty.
    pub message: String,
}

/// A received Postage message whose content decodes into `C`; the fingerprint and any
/// other key is skipped.
#[derive(Debug, Deserialize)]
pub struct Incoming<C> {
    /// Message type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Command name.
    pub name: String,
    /// `message` or `rpc`.
    pub category: String,
    /// The content.
    pub content: C,
}

/// The body of a command `name` of `category` with `parameters`, as Postage writes it.
pub fn command_body<T: Serialize>(
    fingerprint: &RawFingerprint,
    category: &str,
    name: &str,
    parameters: &T,
) -> Vec<u8> {
    serde_json::to_vec(&Outgoing {
        kind: "command",
        name,
        category,
        version: "2",
        fingerprint,
        content: Parameters { parameters },
        reserved: Empty {},
    })
    .expect("a command encodes")
}

/// The body of a success result carrying `value`.
pub fn success_body<T: Serialize>(fingerprint: &RawFingerprint, value: &T) -> Vec<u8> {
    serde_json::to_vec(&Outgoing {
        kind: "result",
        name: "none",
        category: "message",
        version: "2",
        fingerprint,
        content: Success {
            kind: "success".to_owned(),
            value,
            message: String::new(),
        },
        reserved: Empty {},
    })
    .expect("a result encodes")
}

/// Reads a command body and its typed parameters.
pub fn read_command<T: for<'de> Deserialize<'de>>(
    body: &[u8],
) -> serde_json::Result<Incoming<Parameters<T>>> {
    serde_json::from_slice(body)
}

/// Reads a result body; `None` unless it is a success whose value decodes into `T`.
pub fn read_success<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Option<T> {
    let result: Incoming<Success<T>> = serde_json::from_slice(body).ok()?;
    (result.content.kind == "success").then_some(result.content.value)
}

/// The resident memory of process `pid` in bytes (`VmRSS` of `/proc/<pid>/status`).
pub fn resident_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The broker URL of the benchmark: `POSTAGE_URL`, else the local broker of
/// `scripts/broker.sh`.
pub fn broker_url() -> String {
    std::env::var("POSTAGE_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// The raw lapin side's connection properties: stock lapin's behaviour unless
/// `POSTAGE_BENCH_LAPIN` asks for the patched lapin's opt-ins (patches/README.md):
/// `queued` (publishes return once queued, with postage's backlog) or `task`
/// (that and the I/O loop as a task on the runtime, as postage's connections have both).
pub fn raw_lapin_properties() -> postage_core::lapin::ConnectionProperties {
    let properties = postage_core::lapin::ConnectionProperties::default();
    match std::env::var("POSTAGE_BENCH_LAPIN").as_deref() {
        Ok("queued") => properties.with_queued_publishes(PUBLISH_BACKLOG),
        Ok("task") => properties
            .with_queued_publishes(PUBLISH_BACKLOG)
            .with_io_loop_task(true),
        Ok("" | "stock") | Err(_) => properties,
        Ok(other) => panic!("POSTAGE_BENCH_LAPIN is stock, queued or task, not {other}"),
    }
}

/// Amqprs's connection arguments for `url`, read by postage's own URL parser (amqprs's
/// leaves a percent-encoded virtual host such as `%2f` encoded).
pub fn amqprs_arguments(url: &str) -> amqprs::connection::OpenConnectionArguments {
    let config = postage_core::Config::from_url(url).expect("a valid POSTAGE_URL");
    let host = &config.hosts[0];
    amqprs::connection::OpenConnectionArguments::new(
        &host.name,
        host.port,
        &config.user,
        config.password.expose(),
    )
    .virtual_host(&config.vhost)
    .finish()
}
