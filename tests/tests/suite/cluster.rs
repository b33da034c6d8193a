//! Node loss in a three-node RabbitMQ cluster of the test's own (own node names and
//! ports, quorum queues): stop the node a component is connected to; it fails over to
//! another node and keeps serving with nothing lost. Then the metadata store (Mnesia up
//! to 4.0, Khepri on 4.3): a declaration through one node is seen through another, and a
//! node left in a minority refuses declarations on 4.3 with a clear error in time.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use postage_core::{
    Config, Connection, Consumer, Exchange, Host, Processor, Producer, Queue, processor,
};
use postage_tests::{OwnCluster, ctl, rabbitmq_version, unique};

const NODES: [(&str, u16, u16); 3] = [
    ("postage-c1", 5701, 25701),
    ("postage-c2", 5702, 25702),
    ("postage-c3", 5703, 25703),
];

fn start_cluster() -> OwnCluster {
    OwnCluster::start(&NODES, "")
}

struct Counter {
    seen: Mutex<Vec<u64>>,
}

#[processor]
impl Counter {
    #[message_handler("command", "count")]
    fn count(&self, n: u64) {
        self.seen.lock().unwrap().push(n);
    }
}

fn cluster_config() -> Config {
    Config {
        hosts: NODES
            .iter()
            .map(|(_, port, _)| Host {
                name: "127.0.0.1".into(),
                port: *port,
            })
            .collect(),
        ..Config::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn losing_the_connected_node_fails_over_with_nothing_lost() {
    postage_tests::init_tracing();
    let _cluster = tokio::task::spawn_blocking(start_cluster).await.unwrap();
    let serving = Connection::connect(&cluster_config()).await.unwrap();
    // The sender starts from the last node, so it survives the loss of the first.
    let mut sender_config = cluster_config();
    sender_config.hosts.reverse();
    let sending = Connection::connect(&sender_config).await.unwrap();
    let exchange = Exchange::named(unique("cluster"));
    let queue = Queue::new(unique("cluster-q")).quorum();
    let processor = Processor::builder(
        &serving,
        Counter {
            seen: Mutex::new(Vec::new()),
        },
    )
    .bind(exchange.clone(), queue, "count")
    .prefetch(50)
    .build()
    .await
    .unwrap();
    let counter = Arc::clone(processor.state());
    let handle = processor.handle();
    let running = tokio::spawn(processor.run());
    let producer = Producer::builder(&sending)
        .destination(exchange, "count")
        .reliable(true)
        .persistent(true)
        .build()
        .await
        .unwrap();

    const SENT: u64 = 2_000;
    let mut retries = 0;
    let mut lost_node = None;
    let mut failover = Duration::ZERO;
    let mut n = 0;
    while n < SENT {
        if n == SENT / 2 && lost_node.is_none() {
            let host = serving.host();
            let (name, _, _) = *NODES
                .iter()
                .find(|(_, port, _)| *port == host.port)
                .unwrap();
            lost_node = Some(name);
            let stopping = Instant::now();
            tokio::task::spawn_blocking(move || ctl(name, &["stop_app"]))
                .await
                .unwrap();
            while serving.host() == host && stopping.elapsed() < Duration::from_secs(30) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            failover = stopping.elapsed();
        }
        match producer.command("count", n).await {
            Ok(()) => n += 1,
            Err(_) => {
                retries += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let start = Instant::now();
    let distinct = loop {
        let distinct: BTreeSet<u64> = counter.seen.lock().unwrap().iter().copied().collect();
        if distinct.len() as u64 == SENT || start.elapsed() > Duration::from_secs(60) {
            break distinct;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let handled = counter.seen.lock().unwrap().len();
    eprintln!(
        "node loss: stopped {:?}, serving moved to {} in {failover:?}; sent {SENT}, handled {handled}, distinct {}, duplicates {}, lost {}, publish retries {retries}",
        lost_node,
        serving.host(),
        distinct.len(),
        handled - distinct.len(),
        SENT as usize - distinct.len()
    );
    assert_ne!(
        serving.host().port,
        NODES[0].1,
        "failed over to another node"
    );
    assert_eq!(distinct.len() as u64, SENT, "nothing lost");
    handle.shutdown();
    running.await.unwrap().unwrap();

    let left: Vec<(&str, u16)> = NODES
        .iter()
        .filter(|(name, _, _)| Some(*name) != lost_node)
        .map(|(name, port, _)| (*name, *port))
        .collect();
    declarations_across_nodes_and_in_a_minority(left[0], left[1].0).await;
}

/// The cluster's metadata store, with one of its three nodes already stopped: a queue
/// declared through node `a` is seen through node `b`; then `b` stops too and `a`, alone,
/// is a minority. RabbitMQ 4.3 keeps metadata in Khepri (Raft), which needs a majority:
/// a declaration there waits for the store (30 s, then the broker closes the connection
/// with 541 "the metadata store operation timed out"), so postage gives up first, at its
/// operation timeout, with one line naming the queue. 3.10 and 4.0 keep it in Mnesia,
/// where the node alone takes the declaration.
async fn declarations_across_nodes_and_in_a_minority(
    (a, port): (&'static str, u16),
    b: &'static str,
) {
    let config = Config {
        hosts: vec![Host {
            name: "127.0.0.1".into(),
            port,
        }],
        operation_timeout: Duration::from_secs(5),
        ..Config::default()
    };
    let connection = Connection::connect(&config).await.unwrap();
    let declare = |name: &str| {
        Consumer::builder(&connection)
            .bind(Exchange::new(""), Queue::new(name).durable(true), name)
            .build()
    };
    let seen = unique("cluster-seen");
    declare(&seen).await.expect("a declaration with a majority");
    let listing = tokio::task::spawn_blocking(move || ctl(b, &["list_queues", "name"]))
        .await
        .unwrap();
    assert!(
        listing.lines().any(|line| line == seen),
        "{seen} declared through {a} is seen through {b}: {listing}"
    );

    tokio::task::spawn_blocking(move || ctl(b, &["stop_app"]))
        .await
        .unwrap();
    let alone = unique("cluster-minority");
    let started = Instant::now();
    let declared = declare(&alone).await;
    let took = started.elapsed();
    if rabbitmq_version() >= (4, 3) {
        let error = declared.expect_err("Khepri refuses a declaration without a majority");
        let text = error.to_string();
        assert!(
            took < config.operation_timeout + Duration::from_secs(3),
            "within the operation timeout: {took:?}, {text}"
        );
        assert!(text.contains(&alone) && !text.contains('\n'), "{text}");
        eprintln!("minority declaration on {a}: {text} after {took:?}");
    } else {
        declared.expect("Mnesia: a node alone takes declarations");
    }
}
