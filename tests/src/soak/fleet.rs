//! The fleet a soak runs: a cluster of RabbitMQ nodes of its own, and `fault_component`
//! processes on it (workers, an RPC server and its callers, publishers, a
//! GenericApplication group), some inside a network namespace and some behind relays so
//! their links can be faulted; the soak's own connection pings the group and sends the
//! jobs a worker holds past the consumer timeout.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use postage_core::{Config, Connection, Exchange, Host, Producer, Route};
use tokio::sync::mpsc::UnboundedSender;

use crate::net::{Component, Namespace, Relay};
use crate::{OwnCluster, rabbitmq_version, try_ctl};

/// The soak's nodes (name, AMQP port, distribution port): the first holds the queues and
/// is restarted, the second is stopped. RabbitMQ 4.3 keeps its metadata in Khepri, which
/// needs a majority: its cluster has a third node.
const NODES: [(&str, u16, u16); 3] = [
    ("postage-soak-1", 5801, 25801),
    ("postage-soak-2", 5802, 25802),
    ("postage-soak-3", 5803, 25803),
];

/// The components' heartbeat, in seconds: a black hole is noticed within twice it.
pub(super) const HEARTBEAT: u64 = 2;

/// The nodes' consumer timeout: a delivery held longer is taken back by the broker.
pub(super) const CONSUMER_TIMEOUT: Duration = Duration::from_secs(4);

/// How a member reaches the nodes.
#[derive(Debug, Clone, Copy)]
enum Way {
    /// Straight to them.
    Direct,
    /// From inside the namespace, through relays on its host end: its link can be made
    /// a black hole.
    Island,
    /// Through relays on this machine, which can slow its link.
    Slow,
}

/// A member to start: its label, role, way, first node, and `fault_component`'s
/// arguments.
type Plan = (&'static str, Role, Way, usize, &'static [&'static str]);

/// What a component of the fleet does, which tells what its progress is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    /// A processor with retries on a durable queue of its own: `handled ID`.
    Worker,
    /// The RPC server the callers call: its progress shows in theirs.
    Server,
    /// Confirmed jobs for one worker, steadily: `confirmed ID`.
    Publisher,
    /// RPC calls with 4 in flight, each bounded: `answered I MS`.
    Caller,
    /// A member of the GenericApplication group the soak pings.
    App,
}

/// One component of the fleet.
#[derive(Debug)]
pub(super) struct Member {
    pub(super) label: &'static str,
    pub(super) role: Role,
    /// Which node it reaches first.
    pub(super) first_node: usize,
    pub(super) component: Component,
}

/// The fleet, and the means to fault it; everything stopped and removed when dropped
/// (the components first, the nodes last).
#[derive(Debug)]
pub(super) struct Fleet {
    pub(super) members: Vec<Member>,
    driver: Connection,
    jobs: Producer,
    /// The island's way to the nodes, kept for as long as the fleet lives.
    _island_relays: Vec<Relay>,
    slow_relays: Vec<Relay>,
    island: Namespace,
    cluster: OwnCluster,
}

/// The queue of the worker whose deliveries are held past the consumer timeout.
const HELD_QUEUE: &str = "soak-w1";

/// The GenericApplication group's name and group.
const APP: (&str, &str) = ("soak-app", "night");

/// The queues read by one consumer each, and those of the group's two members.
pub(super) const ONE_CONSUMER: [&str; 4] = ["soak-w1", "soak-w2", "soak-w3", "soak-echo"];

impl Fleet {
    /// Starts the nodes and the fleet; `events` gets the soak's own lines (pings, held
    /// jobs confirmed).
    pub(super) async fn start(events: UnboundedSender<(Instant, String)>) -> Self {
        let count = if rabbitmq_version() >= (4, 3) { 3 } else { 2 };
        let config = format!("consumer_timeout = {}\n", CONSUMER_TIMEOUT.as_millis());
        let cluster = tokio::task::spawn_blocking(move || {
            let cluster = OwnCluster::start(&NODES[..count], &config);
            for name in cluster.names() {
                short_broker_timers(name);
            }
            cluster
        })
        .await
        .expect("the soak's cluster starts");
        let nodes: Vec<SocketAddr> = NODES[..count]
            .iter()
            .map(|(_, port, _)| SocketAddr::from(([127, 0, 0, 1], *port)))
            .collect();
        let driver = Connection::connect(&Config {
            hosts: nodes
                .iter()
                .map(|node| Host {
                    name: node.ip().to_string(),
                    port: node.port(),
                })
                .collect(),
            heartbeat: Duration::from_secs(HEARTBEAT),
            connection_name: Some("postage-soak".into()),
            ..Config::default()
        })
        .await
        .expect("the soak connects to its cluster");
        let jobs = Producer::builder(&driver)
            .destination(Exchange::named(HELD_QUEUE), "work")
            .reliable(true)
            .persistent(true)
            .build()
            .await
            .expect("the soak's producer of held jobs");
        let island = Namespace::create();
        let mut island_relays = Vec::new();
        let mut slow_relays = Vec::new();
        for node in &nodes {
            let listen = SocketAddr::new(island.host_address(), 0);
            island_relays.push(Relay::start_on(listen, *node).await);
            slow_relays.push(Relay::start(*node).await);
        }
        let addresses = |relays: &[Relay]| relays.iter().map(Relay::address).collect::<Vec<_>>();
        let (island_hosts, slow_hosts) = (addresses(&island_relays), addresses(&slow_relays));
        let program = crate::binary("fault_component");
        let start = |(label, role, way, first, args): Plan| {
            let (command, hosts) = match way {
                Way::Direct => (Command::new(&program), &nodes),
                Way::Island => (island.command(&program), &island_hosts),
                Way::Slow => (Command::new(&program), &slow_hosts),
            };
            spawn(label, role, command, hosts, first, args)
        };
        // RabbitMQ 4.3 times out deliveries of quorum queues only.
        let held: &[&str] = if count == 3 {
            &["worker", HELD_QUEUE, "quorum"]
        } else {
            &["worker", HELD_QUEUE]
        };
        // Consumers first: every job published has its queue bound. A member whose
        // first node is the second (1) fails over when that node stops.
        #[rustfmt::skip]
        let serving: [Plan; 6] = [
            ("worker-1", Role::Worker, Way::Direct, 0, held),
            ("worker-2", Role::Worker, Way::Island, 0, &["worker", "soak-w2"]),
            ("worker-3", Role::Worker, Way::Slow, 0, &["worker", "soak-w3"]),
            ("server", Role::Server, Way::Direct, 0, &["server", "soak-echo"]),
            ("app-1", Role::App, Way::Direct, 0, &["app", APP.0, APP.1]),
            ("app-2", Role::App, Way::Direct, 1, &["app", APP.0, APP.1]),
        ];
        let mut members = join_all(serving.into_iter().map(start)).await;
        // Jobs 40 ms apart each, from ids of their own; calls 4 in flight, 100 ms apart.
        #[rustfmt::skip]
        let sending: [Plan; 5] = [
            ("publisher-1", Role::Publisher, Way::Direct, 1, &["publisher", HELD_QUEUE, "0", "1000000000", "40"]),
            ("publisher-2", Role::Publisher, Way::Direct, 0, &["publisher", "soak-w2", "0", "2000000000", "40"]),
            ("publisher-3", Role::Publisher, Way::Direct, 1, &["publisher", "soak-w3", "0", "3000000000", "40"]),
            ("caller-1", Role::Caller, Way::Direct, 0, &["caller", "soak-echo", "0", "4", "100"]),
            ("caller-2", Role::Caller, Way::Direct, 1, &["caller", "soak-echo", "0", "4", "100"]),
        ];
        members.extend(join_all(sending.into_iter().map(start)).await);
        tokio::spawn(ping_the_group(driver.clone(), events));
        Self {
            members,
            driver,
            jobs,
            _island_relays: island_relays,
            slow_relays,
            island,
            cluster,
        }
    }

    /// The nodes' short names, the one holding the queues first.
    pub(super) fn nodes(&self) -> Vec<&'static str> {
        self.cluster.names()
    }

    /// The namespace whose link is made a black hole.
    pub(super) fn island(&self) -> &Namespace {
        &self.island
    }

    /// The relays of the component whose link is slowed.
    pub(super) fn slow_relays(&self) -> &[Relay] {
        &self.slow_relays
    }

    /// Sends job `id` to the worker of [`HELD_QUEUE`], held `hold` by its handler when
    /// first delivered, tried until confirmed (for at most 20 s); `events` gets
    /// `confirmed ID` or `unconfirmed ID`.
    pub(super) fn send_held_job(
        &self,
        id: u64,
        hold: Duration,
        events: UnboundedSender<(Instant, String)>,
    ) -> tokio::task::JoinHandle<Result<(), String>> {
        let jobs = self.jobs.clone();
        tokio::spawn(async move {
            let job = serde_json::json!({ "id": id, "hold_ms": hold.as_millis() });
            let began = Instant::now();
            let fate = loop {
                match jobs.command("work", &job).await {
                    Ok(()) => break "confirmed",
                    Err(_) if began.elapsed() < Duration::from_secs(20) => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(_) => break "unconfirmed",
                }
            };
            let _ = events.send((Instant::now(), format!("{fate} {id}")));
            Ok(())
        })
    }

    /// The queues of the first node that answers, with their consumers.
    pub(super) fn consumers(&self) -> Result<Vec<(String, u32)>, String> {
        let mut last = String::from("no node");
        for node in self.nodes() {
            match try_ctl(node, &["list_queues", "name", "consumers"]) {
                Ok(listing) => {
                    return Ok(listing
                        .lines()
                        .filter_map(|line| {
                            let (name, consumers) = line.rsplit_once('\t')?;
                            Some((name.to_owned(), consumers.trim().parse().ok()?))
                        })
                        .collect());
                }
                Err(error) => last = error,
            }
        }
        Err(last)
    }

    /// Closes the soak's own connection.
    pub(super) async fn close(&self) {
        let _ = self.driver.close().await;
    }
}

/// How many consumers a queue of the fleet should have: one for a component's own queue,
/// two for the group's shared ones (both members read them), at most one for the rest
/// (reply and unique queues; delay queues have none).
pub(super) fn expected_consumers(queue: &str) -> (u32, u32) {
    if ONE_CONSUMER.contains(&queue) {
        (1, 1)
    } else if queue.starts_with(APP.0) {
        (2, 2)
    } else {
        (0, 1)
    }
}

/// Shortens two broker timers on a soak node (again after each start of the
/// application). RabbitMQ 3.10 and 4.0 look for deliveries past the consumer timeout on
/// each channel's tick, every 60 s by default: every half second here. A delay queue
/// whose work queue could not take a message as its delay ended (its node down) offers
/// it again after `dead_letter_worker_publisher_confirm_timeout`, 3 minutes by default:
/// 2 s here, so such a job is not taken for lost by a soak that waits a minute at most.
pub(super) fn short_broker_timers(node: &str) {
    let _ = try_ctl(
        node,
        &[
            "eval",
            "application:set_env(rabbit, dead_letter_worker_publisher_confirm_timeout, 2000).",
        ],
    );
    if rabbitmq_version() < (4, 3) {
        let _ = try_ctl(
            node,
            &[
                "eval",
                "application:set_env(rabbit, channel_tick_interval, 500).",
            ],
        );
    }
}

/// Starts one member reaching `hosts` from the `first`th on.
async fn spawn(
    label: &'static str,
    role: Role,
    command: Command,
    hosts: &[SocketAddr],
    first: usize,
    args: &[&str],
) -> Member {
    let mut hosts = hosts.to_vec();
    hosts.rotate_left(first);
    let component = Component::start(command, &hosts, HEARTBEAT, args).await;
    Member {
        label,
        role,
        first_node: first,
        component,
    }
}

/// Pings the group every second for as long as the soak runs: `ping ANSWERS MS` on
/// `events` for each (the members that answered within 1 s).
async fn ping_the_group(connection: Connection, events: UnboundedSender<(Instant, String)>) {
    let Ok(producer) = Producer::builder(&connection).build().await else {
        let _ = events.send((Instant::now(), "ping 0 0 no producer".into()));
        return;
    };
    let route = Route::pairs([(
        postage_app::GENERIC_APPLICATION_EXCHANGE,
        format!("{}#{}", APP.0, APP.1),
    )]);
    loop {
        let began = Instant::now();
        let gathered = tokio::time::timeout(
            Duration::from_secs(10),
            producer.gather(
                "ping",
                serde_json::json!({}),
                &route,
                Duration::from_secs(1),
                None,
            ),
        )
        .await;
        let answers = match gathered {
            Ok(Ok(answers)) => answers.len(),
            _ => 0,
        };
        let line = format!("ping {answers} {}", began.elapsed().as_millis());
        if events.send((Instant::now(), line)).is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1).saturating_sub(began.elapsed())).await;
    }
}
