//! A silent dead peer, caught by heartbeats: two RabbitMQ nodes of the test's own (own
//! names and ports, not clustered); a component serves on the first; the first node's
//! process is frozen with SIGSTOP, so its TCP connections stay open and only missing
//! heartbeats can tell; the component must notice, fail over to the second node within a
//! bound derived from the heartbeat, and serve there. Prints the measured times (run with
//! `--nocapture`).

use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use postage_core::{
    Config, Connection, Error, Exchange, Host, Processor, Producer, Queue, RpcOptions, processor,
};
use postage_tests::{node_script, unique};
use serde_json::{Value, json};

/// (name, AMQP port, distribution port) of node A, served first, then frozen.
const A: (&str, u16, u16) = ("postage-hb-a", 5711, 25711);
/// Node B, where the component must go.
const B: (&str, u16, u16) = ("postage-hb-b", 5712, 25712);

const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long one connection attempt may take, the frozen node's included.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(2);

fn signal(pid: u32, signal: Signal) {
    let pid = Pid::from_raw(i32::try_from(pid).expect("a pid"));
    if let Err(error) = nix::sys::signal::kill(pid, signal) {
        eprintln!("sending {signal} to {pid}: {error}");
    }
}

/// Thaws the frozen node (if it was) and stops both nodes when the test ends, however it
/// ends.
struct Nodes {
    frozen: Option<u32>,
}

impl Drop for Nodes {
    fn drop(&mut self) {
        if let Some(pid) = self.frozen.take() {
            signal(pid, Signal::SIGCONT);
        }
        for (name, _, _) in [A, B] {
            let _ = Command::new(node_script()).args(["stop", name]).status();
        }
    }
}

fn start_node((name, port, dist): (&str, u16, u16)) {
    let status = Command::new(node_script())
        .args(["start", name, &port.to_string(), &dist.to_string()])
        .status()
        .expect("scripts/node.sh runs");
    assert!(status.success(), "node {name} starts");
}

/// The pid of the node's Erlang VM (beam), which `scripts/node.sh` has it write.
fn beam_pid((name, _, _): (&str, u16, u16)) -> u32 {
    let file = format!("/tmp/postage-nodes/{name}/pid");
    let text = std::fs::read_to_string(&file).expect("the node's pid file");
    text.trim().parse().expect("a pid")
}

fn host((_, port, _): (&str, u16, u16)) -> Host {
    Host {
        name: "127.0.0.1".into(),
        port,
    }
}

fn config(hosts: Vec<Host>) -> Config {
    Config {
        hosts,
        heartbeat: HEARTBEAT,
        connection_timeout: CONNECTION_TIMEOUT,
        ..Config::default()
    }
}

struct Echo;

#[processor]
impl Echo {
    #[rpc_handler("command", "echo")]
    fn echo(&self, value: Value) -> Value {
        value
    }
}

/// One RPC round trip through `producer`, answered within half a second.
async fn echo(producer: &Producer, n: u64) -> postage_core::Result<Value> {
    let options = RpcOptions::new()
        .timeout(Duration::from_millis(500))
        .max_retry(0);
    producer.call_with("echo", json!({ "n": n }), options).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_node_is_caught_by_heartbeats_and_the_component_fails_over() {
    postage_tests::init_tracing();
    let mut nodes = Nodes { frozen: None };
    let (a, b) = tokio::join!(
        tokio::task::spawn_blocking(|| start_node(A)),
        tokio::task::spawn_blocking(|| start_node(B)),
    );
    a.unwrap();
    b.unwrap();

    // The component, on [A, B]: it declares its exchange, queue and binding on the node
    // it is connected to.
    let serving = Connection::connect(&config(vec![host(A), host(B)]))
        .await
        .unwrap();
    assert_eq!(serving.host(), host(A), "the first host is used first");
    let exchange = Exchange::named(unique("heartbeat"));
    let processor = Processor::builder(&serving, Echo)
        .bind(exchange.clone(), Queue::new(unique("heartbeat-q")), "echo")
        .build()
        .await
        .unwrap();
    let handle = processor.handle();
    let running = tokio::spawn(processor.run());

    // Callers pinned to one node each: what reaches B can only be served there.
    let caller = |node| {
        let exchange = exchange.clone();
        async move {
            let connection = Connection::connect(&config(vec![host(node)]))
                .await
                .unwrap();
            let producer = Producer::builder(&connection)
                .destination(exchange, "echo")
                .reliable(true)
                .build()
                .await
                .unwrap();
            (connection, producer)
        }
    };
    let (on_a, to_a) = caller(A).await;
    let (on_b, to_b) = caller(B).await;
    assert_eq!(
        echo(&to_a, 1).await.unwrap(),
        json!({"n": 1}),
        "served on A"
    );
    // The first call on B starts its answer consumer: under load that can take longer
    // than an echo's 500 ms, and an unroutable call fails at once whatever its timeout.
    let first_on_b = to_b
        .call_with::<Value>(
            "echo",
            json!({ "n": 2 }),
            RpcOptions::new()
                .timeout(Duration::from_secs(10))
                .max_retry(0),
        )
        .await;
    assert!(
        matches!(first_on_b, Err(Error::Unroutable { .. })),
        "nothing serves on B yet: {first_on_b:?}"
    );
    on_a.close().await.unwrap();

    // Freeze A: its sockets stay open, it just says nothing any more.
    let generation = serving.generation();
    let pid = beam_pid(A);
    signal(pid, Signal::SIGSTOP);
    nodes.frozen = Some(pid);
    let frozen = Instant::now();

    // lapin declares the peer dead after two heartbeat intervals without a frame; the
    // supervisor looks every 0.5 s, tries the frozen A first (given up after the
    // connection timeout), then B; two seconds of slack for scheduling.
    let bound =
        HEARTBEAT * 2 + Duration::from_millis(500) + CONNECTION_TIMEOUT + Duration::from_secs(2);
    let lapin = serving.lapin();
    let mut detected = None;
    while serving.generation() == generation && frozen.elapsed() < bound * 3 {
        if detected.is_none() && !lapin.status().connected() {
            detected = Some(frozen.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let failover = frozen.elapsed();
    let detected = detected.unwrap_or(failover);
    let on = serving.host();

    // Served again on B.
    let mut served = None;
    let mut n = 3;
    while frozen.elapsed() < bound * 3 {
        match echo(&to_b, n).await {
            Ok(answer) => {
                served = Some((frozen.elapsed(), answer));
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
        n += 1;
    }
    println!(
        "heartbeat {HEARTBEAT:?}, connection timeout {CONNECTION_TIMEOUT:?}: frozen peer detected \
         after {detected:?}, reconnected to {on} after {failover:?}, serving on B after {:?} \
         (bound {bound:?})",
        served.as_ref().map(|(after, _)| *after)
    );
    assert!(
        detected < HEARTBEAT * 4,
        "the silent peer is detected by heartbeats (after {detected:?})"
    );
    assert_eq!(on, host(B), "failed over to B");
    assert!(
        failover < bound,
        "failed over within {bound:?}, not {failover:?}"
    );
    let (after, answer) = served.expect("a call on B is answered");
    assert_eq!(answer, json!({"n": n}), "served on B");
    assert!(
        after < bound,
        "serving on B within {bound:?}, not {after:?}"
    );

    handle.shutdown();
    running.await.unwrap().unwrap();
    on_b.close().await.unwrap();
    serving.close().await.unwrap();
    drop(nodes);
}
