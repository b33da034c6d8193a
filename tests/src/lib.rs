//! Shared helpers of the integration tests: a connection to the broker that
//! `scripts/broker.sh` runs, unique names, and reading state back with `rabbitmqctl`.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use postage_core::{Config, Connection, Consumer, Delivery, Exchange, ExchangeKind};

pub mod bench;
pub mod net;
pub mod postgres;
pub mod soak;

/// A name no other test (or earlier run) uses: `prefix-pid-n`.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "test-{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A direct exchange the broker deletes once its last queue is unbound.
pub fn exchange(prefix: &str) -> Exchange {
    Exchange::named(unique(prefix))
        .kind(ExchangeKind::Direct)
        .auto_delete(true)
        .durable(false)
}

/// Connects with the environment's settings (the local broker by default).
pub async fn connect() -> Connection {
    init_tracing();
    let config = Config::from_env().expect("POSTAGE_* settings");
    Connection::connect(&config)
        .await
        .expect("the broker from scripts/broker.sh answers")
}

/// Where the broker of the environment's settings listens (its first host).
pub fn broker_address() -> SocketAddr {
    let config = Config::from_env().expect("POSTAGE_* settings");
    let host = config.hosts.first().expect("a broker host");
    let ip = if host.name == "localhost" {
        "127.0.0.1"
    } else {
        host.name.as_str()
    };
    format!("{ip}:{}", host.port)
        .parse()
        .expect("the broker's host is an address")
}

/// Logs to the test output, once, filtered by `RUST_LOG` (default `warn`).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Has the broker close every connection whose client properties mention `marker` (a
/// connection name of the test's own), as a network cut or a restart would.
pub async fn close_connections_named(marker: &str) {
    let marker = marker.to_owned();
    tokio::task::spawn_blocking(move || {
        let listing = rabbitmqctl(&["list_connections", "pid", "client_properties"]);
        let mine: Vec<&str> = listing
            .lines()
            .filter(|line| line.contains(&marker))
            .filter_map(|line| line.split('\t').next())
            .collect();
        assert!(
            !mine.is_empty(),
            "no connection named {marker:?} in {listing}"
        );
        for pid in mine {
            rabbitmqctl(&["close_connection", pid, "closed by a test"]);
        }
    })
    .await
    .expect("rabbitmqctl ran");
}

/// The next delivery within `wait`, or `None`.
pub async fn next_within(consumer: &mut Consumer, wait: Duration) -> Option<Delivery> {
    match tokio::time::timeout(wait, consumer.next()).await {
        Ok(Some(delivery)) => Some(delivery.expect("a delivery")),
        _ => None,
    }
}

/// Every delivery that arrives until `quiet` passes without one, each acknowledged,
/// decoded to its command parameters as text.
pub async fn drain(consumer: &mut Consumer, quiet: Duration) -> Vec<String> {
    let mut seen = Vec::new();
    while let Some(delivery) = next_within(consumer, quiet).await {
        let message = delivery.message().expect("a Postage message");
        seen.push(message.parameters::<String>().unwrap_or_default());
        delivery.ack().await.expect("ack");
    }
    seen
}

/// Runs `rabbitmqctl` with `args` against the broker the tests use (`RABBITMQ_NODENAME`,
/// default `rabbit@localhost`) and returns its standard output.
pub fn rabbitmqctl(args: &[&str]) -> String {
    ctl(&test_node(), args)
}

/// Deletes queue `name` and the queues a retry policy keeps for it: its delay queues
/// (`name.delay.*`, which stay when unused) and its dead-letter queue (`name.dead`).
pub fn delete_queue_and_retries(name: &str) {
    let queues = rabbitmqctl(&["list_queues", "name", "--no-table-headers", "--silent"]);
    let delays = format!("{name}.delay.");
    let dead = format!("{name}.dead");
    for queue in queues.lines().map(str::trim) {
        if queue == name || queue == dead || queue.starts_with(&delays) {
            rabbitmqctl(&["delete_queue", queue]);
        }
    }
}

/// Runs `rabbitmqctl` with `args` against the node `name@localhost` of the RabbitMQ the
/// tests run on (`POSTAGE_RABBITMQ`: 3, 4.0 or 4.3; `scripts/node.sh` knows where each
/// lives)
/// and returns its standard output.
pub fn ctl(name: &str, args: &[&str]) -> String {
    try_ctl(name, args)
        .unwrap_or_else(|error| panic!("rabbitmqctl -n {name} {args:?} failed: {error}"))
}

/// Starts the RabbitMQ application of node `name` again after a `stop_app`. RabbitMQ 4.0
/// with transient queues denied sometimes fails to boot (`failed_to_deny_deprecated_features`,
/// with no such queue anywhere): a broker race on a loaded machine, whose check of the
/// queues runs before its metadata tables are up (its log: "Mnesia->Khepri fallback
/// handling: Mnesia function failed 99 times"), so it is stopped and started again, a
/// few times. Every restart of a test goes through here.
pub fn start_app(name: &str) {
    let started = (0..5).any(|attempt| {
        if attempt > 0 {
            std::thread::sleep(Duration::from_secs(2));
            let _ = try_ctl(name, &["stop_app"]);
        }
        match try_ctl(name, &["start_app"]) {
            Ok(_) => true,
            Err(why) => {
                eprintln!(
                    "start_app on {name} failed (attempt {}): {why}",
                    attempt + 1
                );
                false
            }
        }
    });
    assert!(started, "node {name} starts again");
}

/// [`ctl`], returning what `rabbitmqctl` printed on standard error when it fails.
pub fn try_ctl(name: &str, args: &[&str]) -> Result<String, String> {
    let output = Command::new(node_script())
        .args(["ctl", name])
        .args(args)
        .output()
        .expect("scripts/node.sh runs");
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// A program of the workspace (a demo, the `postage` tool) as `cargo build --workspace`
/// left it in the target directory: beside the running program, or beside the test
/// binary's `deps`.
pub fn binary(name: &str) -> std::path::PathBuf {
    let dir = std::env::current_exe()
        .ok()
        .and_then(|program| {
            let dir = program.parent()?;
            if dir.ends_with("deps") {
                dir.parent().map(std::path::PathBuf::from)
            } else {
                Some(dir.to_path_buf())
            }
        })
        .expect("the program lives in target/<profile> or its deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace` first",
        path.display()
    );
    path
}

/// A RabbitMQ node of a test's own, started by `scripts/node.sh` on the version the suite
/// runs on, with `config` as its `rabbitmq.conf`; stopped when dropped, however the test
/// ends.
#[derive(Debug)]
pub struct OwnNode {
    name: &'static str,
}

impl OwnNode {
    /// Starts `name@localhost` on `port` (AMQP) and `dist` (distribution).
    pub fn start(name: &'static str, port: u16, dist: u16, config: &str) -> Self {
        let conf = std::env::temp_dir().join(format!("{name}.conf"));
        std::fs::write(&conf, config).expect("the node's configuration is written");
        let started = Command::new(node_script())
            .args(["start", name, &port.to_string(), &dist.to_string()])
            .arg(&conf)
            .status()
            .expect("scripts/node.sh runs");
        assert!(started.success(), "node {name} starts");
        Self { name }
    }
}

impl Drop for OwnNode {
    fn drop(&mut self) {
        let _ = Command::new(node_script())
            .args(["stop", self.name])
            .status();
    }
}

/// RabbitMQ nodes of a test's own joined in one cluster (the first is the one the others
/// join), each with `config` as its `rabbitmq.conf`; every node stopped when dropped.
#[derive(Debug)]
pub struct OwnCluster {
    nodes: Vec<OwnNode>,
}

impl OwnCluster {
    /// Starts `nodes` (name, AMQP port, distribution port), all at once, then joins each
    /// after the first to it.
    pub fn start(nodes: &[(&'static str, u16, u16)], config: &str) -> Self {
        let nodes: Vec<OwnNode> = std::thread::scope(|scope| {
            let starting: Vec<_> = nodes
                .iter()
                .map(|&(name, port, dist)| {
                    scope.spawn(move || OwnNode::start(name, port, dist, config))
                })
                .collect();
            starting
                .into_iter()
                .map(|node| node.join().expect("a node starts"))
                .collect()
        });
        let first = format!("{}@localhost", nodes[0].name);
        for node in &nodes[1..] {
            let name = node.name;
            ctl(name, &["stop_app"]);
            ctl(name, &["join_cluster", &first]);
            // RabbitMQ 4.0 with transient queues denied sometimes fails to boot a node that
            // joins while the cluster's tables are still copying ("can't be denied because
            // ... actively used", with no such queue anywhere): a broker race, so the node
            // leaves, joins again from a clean state and starts again, a few times.
            let started = (0..5).any(|attempt| {
                if attempt > 0 {
                    std::thread::sleep(Duration::from_secs(2));
                    let _ = try_ctl(name, &["stop_app"]);
                    let _ = try_ctl(name, &["reset"]);
                    let _ = try_ctl(name, &["join_cluster", &first]);
                }
                try_ctl(name, &["start_app"]).is_ok()
            });
            assert!(started, "node {name} joins the cluster and starts");
        }
        Self { nodes }
    }

    /// The nodes' short names, the first one first.
    pub fn names(&self) -> Vec<&'static str> {
        self.nodes.iter().map(|node| node.name).collect()
    }
}

/// `scripts/node.sh`: starts, stops and runs `rabbitmqctl` against the tests' own nodes.
pub fn node_script() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/node.sh")
}

/// Which RabbitMQ the tests run against (`POSTAGE_RABBITMQ`, as `scripts/test.sh` and
/// `scripts/node.sh` spell it): `3` is 3.10 (the default), `4` and `4.0` are 4.0, `4.3` is
/// 4.3; returned as (major, minor).
pub fn rabbitmq_version() -> (u32, u32) {
    match std::env::var("POSTAGE_RABBITMQ").as_deref() {
        Ok("4" | "4.0") => (4, 0),
        Ok("4.3") => (4, 3),
        Ok("3" | "3.10") | Err(_) => (3, 10),
        Ok(other) => panic!("POSTAGE_RABBITMQ={other:?}: the suite knows 3, 4.0 and 4.3"),
    }
}

/// The major version of [`rabbitmq_version`]: 3 or 4.
pub fn rabbitmq_major() -> u32 {
    rabbitmq_version().0
}

/// Whether the broker under test refuses transient non-exclusive queues, as
/// `scripts/node.sh` starts it: by hand on 4.0 (unless `POSTAGE_RABBITMQ_DENY_TRANSIENT=0`
/// or the older `POSTAGE_RABBITMQ_PERMIT_DEPRECATED=1`), on any 4.x with
/// `POSTAGE_RABBITMQ_DENY_TRANSIENT=1`; never by default (4.3.6 permits them).
pub fn transient_queues_denied() -> bool {
    if rabbitmq_major() < 4 {
        return false;
    }
    match std::env::var("POSTAGE_RABBITMQ_DENY_TRANSIENT").as_deref() {
        Ok("1") => true,
        Ok("0") => false,
        _ => {
            rabbitmq_version() == (4, 0)
                && !std::env::var("POSTAGE_RABBITMQ_PERMIT_DEPRECATED").is_ok_and(|v| v == "1")
        }
    }
}

/// Messages (ready, unacknowledged) in `queue` on the node `name@localhost`, as the
/// broker counts them.
pub fn message_counts(node: &str, queue: &str) -> (u64, u64) {
    let listing = ctl(
        node,
        &[
            "list_queues",
            "name",
            "messages_ready",
            "messages_unacknowledged",
        ],
    );
    listing
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split('\t').collect();
            (fields.first() == Some(&queue))
                .then(|| (fields[1].parse().unwrap(), fields[2].parse().unwrap()))
        })
        .unwrap_or_else(|| panic!("queue {queue} listed:\n{listing}"))
}

/// The node name (`rabbit`) of the broker the tests use (`RABBITMQ_NODENAME`).
pub fn test_node() -> String {
    let node = std::env::var("RABBITMQ_NODENAME").unwrap_or_else(|_| "rabbit@localhost".into());
    node.split('@').next().unwrap_or(&node).to_owned()
}

/// How many consumers read `queue`, read back from the broker (`None`: no such queue).
pub fn consumers_of(queue: &str) -> Option<u32> {
    rabbitmqctl(&["list_queues", "name", "consumers"])
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{queue}\t"))?.parse().ok())
}

/// The routing keys binding `queue` to `exchange`, read back from the broker.
pub fn binding_keys(exchange: &str, queue: &str) -> Vec<String> {
    let listing = rabbitmqctl(&[
        "list_bindings",
        "source_name",
        "destination_name",
        "routing_key",
    ]);
    let mut keys: Vec<String> = listing
        .lines()
        .filter_map(|line| {
            let mut fields = line.split('\t');
            match (fields.next(), fields.next(), fields.next()) {
                (Some(s), Some(d), Some(k)) if s == exchange && d == queue => Some(k.to_owned()),
                _ => None,
            }
        })
        .collect();
    keys.sort();
    keys
}

/// A `GET` of `path`: the status code and the body.
pub fn get(address: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(address).expect("the endpoint answers");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("an HTTP response: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// [`get`], off the runtime's threads (the endpoint serves on them).
pub async fn fetch(address: SocketAddr, path: &'static str) -> (u16, String) {
    tokio::task::spawn_blocking(move || get(address, path))
        .await
        .unwrap()
}

/// The value of the sample `name` whose labels include every one of `labels`.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .find(|(series, _)| {
            let (series_name, series_labels) = series.split_once('{').unwrap_or((series, ""));
            series_name == name
                && labels
                    .iter()
                    .all(|(k, v)| series_labels.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|(_, value)| value.parse().ok())
}

/// `config` with a metrics endpoint of its own, on a free port
/// ([`Connection::metrics_address`](postage_core::Connection::metrics_address) tells it).
pub fn with_metrics(mut config: Config) -> Config {
    config.metrics = Some("127.0.0.1:0".parse().unwrap());
    config
}
