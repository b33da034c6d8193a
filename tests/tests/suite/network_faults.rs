//! Faults at the network, against the real broker: components (`fault_component`
//! processes) inside a network namespace of the test's own, whose link is made a black
//! hole, or behind the fault relay, which slows, caps, silences, cuts and resets their
//! connections. What is asserted is what the README's failure section states: a black
//! hole or a silence is noticed within a bound of heartbeats and work resumes soon after
//! the link heals, no confirmed message is lost, a call ends within its own bound, and
//! slow links cause no reconnections.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use postage_core::channel::{DeliveryStatus, Envelope};
use postage_core::client::{Target, Transport};
use postage_core::messenger::Messenger;
use postage_core::{Connection, Exchange, Processor, Producer, Route, processor};
use postage_tests::net::{Component, Direction, Links, Namespace, Relay, Toxic};
use postage_tests::{binary, broker_address, connect, unique};
use serde_json::json;

/// The heartbeat of the components under test, in seconds: a black hole is noticed
/// within twice it.
const HEARTBEAT: u64 = 2;

/// Whether a TCP connection from inside `namespace` to `address` opens within a second,
/// and the broker answers the AMQP protocol header through it.
fn reaches(namespace: &Namespace, address: SocketAddr) -> bool {
    let probe = format!(
        "import socket,sys\n\
         s=socket.create_connection(('{}',{}),timeout=1)\n\
         s.sendall(b'AMQP\\x00\\x00\\x09\\x01')\n\
         sys.exit(0 if s.recv(1)==b'\\x01' else 1)",
        address.ip(),
        address.port()
    );
    namespace
        .command("python3")
        .args(["-c", &probe])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_namespace_reaches_the_broker_through_its_relay_until_its_link_is_a_black_hole() {
    let namespace = Namespace::create();
    let listen = SocketAddr::new(namespace.host_address(), 0);
    let relay = Relay::start_on(listen, broker_address()).await;
    let address = relay.address();
    let probe = |namespace: &Namespace| tokio::task::block_in_place(|| reaches(namespace, address));
    assert!(probe(&namespace), "the broker answers through the relay");
    namespace.black_hole();
    assert!(!probe(&namespace), "nothing passes a black hole");
    namespace.heal();
    assert!(probe(&namespace), "the healed link carries traffic again");
    assert_eq!(
        relay.connections(),
        2,
        "the black-holed attempt never reached the relay"
    );
}

/// A namespace, the relay on its host end, and what a component inside it is started
/// with.
struct Island {
    namespace: Namespace,
    relay: Relay,
}

impl Island {
    async fn new() -> Self {
        let namespace = Namespace::create();
        let listen = SocketAddr::new(namespace.host_address(), 0);
        let relay = Relay::start_on(listen, broker_address()).await;
        Self { namespace, relay }
    }

    async fn start(&self, args: &[&str]) -> Component {
        let command = self.namespace.command(binary("fault_component"));
        Component::start(command, &[self.relay.address()], HEARTBEAT, args).await
    }

    /// Makes the link a black hole for `hole`, and checks the component noticed within
    /// twice its heartbeat. Returns when the link healed.
    async fn black_hole(&self, component: &mut Component, hole: Duration) -> Instant {
        let began = Instant::now();
        self.namespace.black_hole();
        let noticed = component
            .until(hole, |line| line.starts_with("link reconnecting"))
            .await;
        let bound = Duration::from_secs(2 * HEARTBEAT) + Duration::from_millis(500);
        let noticed = noticed
            .unwrap_or_else(|| panic!("the black hole went unnoticed: {:?}", component.seen));
        assert!(
            noticed - began <= bound,
            "noticed after {:?}, more than twice the heartbeat",
            noticed - began
        );
        eprintln!(
            "black hole noticed after {:.1} s (heartbeat {HEARTBEAT} s)",
            (noticed - began).as_secs_f64()
        );
        tokio::time::sleep(hole.saturating_sub(began.elapsed())).await;
        self.namespace.heal();
        Instant::now()
    }
}

/// How long a component may take to work again once its link healed: the README's bound.
const RESUMES: Duration = Duration::from_secs(5);

/// A producer of the test, on its own connection straight to the broker, of jobs for
/// exchange `name`.
async fn jobs(connection: &Connection, name: &str) -> Producer {
    Producer::builder(connection)
        .destination(Exchange::named(name), "work")
        .reliable(true)
        .persistent(true)
        .build()
        .await
        .unwrap()
}

/// `fault_component ARGS`, plain, behind `relay`.
async fn behind(relay: &Relay, args: &[&str]) -> Component {
    let command = Command::new(binary("fault_component"));
    Component::start(command, &[relay.address()], HEARTBEAT, args).await
}

/// A worker and a publisher of `count` jobs for exchange `name`, both behind `relay`.
async fn worker_and_publisher(relay: &Relay, name: &str, count: &str) -> (Component, Component) {
    let worker = behind(relay, &["worker", name]).await;
    let publisher = behind(relay, &["publisher", name, count]).await;
    (worker, publisher)
}

/// Waits (at most `patience`) until `component` has printed `PREFIX N` for every `N` in
/// `0..count`, and says which are missing if not.
async fn names_all(component: &mut Component, prefix: &str, count: u64, patience: Duration) {
    let all: BTreeSet<u64> = (0..count).collect();
    let (named, whole) = component.all_of(prefix, &all, patience).await;
    assert!(
        whole.is_some(),
        "missing: {:?}",
        all.difference(&named).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_behind_a_black_hole_loses_nothing_and_resumes() {
    let island = Island::new().await;
    let name = unique("bh-worker");
    let mut worker = island.start(&["worker", &name]).await;
    let connection = connect().await;
    let producer = jobs(&connection, &name).await;
    for id in 0..20 {
        producer.command("work", json!({ "id": id })).await.unwrap();
    }
    let healed = island.black_hole(&mut worker, Duration::from_secs(8)).await;
    // Sent while the worker cannot be reached: they wait on its durable queue.
    for id in 20..40 {
        producer.command("work", json!({ "id": id })).await.unwrap();
    }
    names_all(&mut worker, "handled ", 40, Duration::from_secs(30)).await;
    let first_after = worker
        .seen
        .iter()
        .find(|(at, line)| *at > healed && line.starts_with("handled"));
    let first_after = first_after.map(|(at, _)| *at - healed);
    assert!(
        first_after.is_some_and(|after| after <= RESUMES),
        "work resumed {first_after:?} after the heal"
    );
    eprintln!("black hole, worker: working again {first_after:?} after the heal");
    let handled_twice = worker.numbers("handled ").len() - 40;
    eprintln!("black hole, worker: 40 jobs, none lost, {handled_twice} handled twice");
}

struct Echo;

#[processor]
impl Echo {
    #[rpc_handler("command", "echo")]
    fn echo(&self, value: u64) -> u64 {
        value
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_in_flight_through_a_black_hole_each_end_within_their_bound() {
    let island = Island::new().await;
    let name = unique("bh-caller");
    // The server, on the test's side of the link.
    let connection = connect().await;
    let server = Processor::builder(&connection, Echo)
        .bind(Exchange::named(name.as_str()), name.as_str(), "echo")
        .concurrency(64)
        .build()
        .await
        .unwrap();
    let handle = server.handle();
    let serving = tokio::spawn(server.run());
    let mut caller = island.start(&["caller", &name, "3000"]).await;
    caller
        .until(Duration::from_secs(10), |line| line.starts_with("answered"))
        .await
        .expect("calls are answered before the black hole");
    let healed = island.black_hole(&mut caller, Duration::from_secs(8)).await;
    let done = caller
        .until(Duration::from_secs(120), |line| line == "calls done")
        .await;
    assert!(
        done.is_some(),
        "the calls all end: {:?}",
        caller.seen.last()
    );
    // Each attempt waits 3 s and a call has two: none may take longer (with a second of
    // slack for a send that was under way).
    let bound = 2 * 3000 + 1000;
    let overdue: Vec<&String> = caller
        .seen
        .iter()
        .map(|(_, line)| line)
        .filter(|line| {
            let mut words = line.split_whitespace();
            matches!(words.next(), Some("answered" | "failed"))
                && words
                    .nth(1)
                    .and_then(|ms| ms.parse::<u64>().ok())
                    .is_some_and(|ms| ms > bound)
        })
        .collect();
    assert!(overdue.is_empty(), "calls past their bound: {overdue:?}");
    let answered_after = caller
        .seen
        .iter()
        .find(|(at, line)| *at > healed && line.starts_with("answered"))
        .map(|(at, _)| *at - healed);
    assert!(
        answered_after.is_some_and(|after| after <= RESUMES),
        "calls answered again {answered_after:?} after the heal"
    );
    eprintln!("black hole, caller: answered again {answered_after:?} after the heal");
    let failed = caller.numbers("failed ").len();
    eprintln!("black hole, caller: 3000 calls, 64 in flight, {failed} failed within their bound");
    handle.shutdown();
    let _ = serving.await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_simple_client_server_behind_a_black_hole_answers_again() {
    let island = Island::new().await;
    let name = unique("bh-client");
    let mut server = island.start(&["client", &name]).await;
    let connection = connect().await;
    let transport = Transport::new(&connection)
        .await
        .unwrap()
        .with_timeout(Duration::from_secs(2));
    let target = Target::new(name.as_str());
    let answer: serde_json::Value = transport.call(&target, &json!(1)).await.unwrap();
    assert_eq!(answer, json!(1));
    let healed = island.black_hole(&mut server, Duration::from_secs(8)).await;
    let mut answered = None;
    while healed.elapsed() < Duration::from_secs(20) {
        if let Ok(answer) = transport
            .call::<serde_json::Value>(&target, &json!(2))
            .await
        {
            assert_eq!(answer, json!(2));
            answered = Some(healed.elapsed());
            break;
        }
    }
    assert!(
        answered.is_some_and(|after| after <= RESUMES),
        "answered again {answered:?} after the heal"
    );
    eprintln!("black hole, simple client server: answered again {answered:?} after the heal");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_messenger_subscription_behind_a_black_hole_loses_nothing() {
    let island = Island::new().await;
    let name = unique("bh-messenger");
    let mut receiver = island.start(&["messenger", &name]).await;
    let connection = connect().await;
    let messenger = Messenger::with_connection(&connection).await.unwrap();
    let address = format!("amqp://{}/{name}", connection.host());
    let put = |id: u64| {
        let envelope = Envelope::json(&json!({ "id": id }))
            .unwrap()
            .persistent(true);
        let (messenger, address) = (&messenger, &address);
        async move {
            let tracker = messenger.put(address, envelope).await.unwrap();
            assert_eq!(tracker.settled().await, DeliveryStatus::Accepted);
        }
    };
    for id in 0..10 {
        put(id).await;
    }
    let _healed = island
        .black_hole(&mut receiver, Duration::from_secs(8))
        .await;
    for id in 10..20 {
        put(id).await;
    }
    names_all(&mut receiver, "received ", 20, Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_generic_application_behind_a_black_hole_answers_pings_again() {
    let island = Island::new().await;
    let name = unique("bh-app");
    let mut app = island.start(&["app", &name]).await;
    let connection = connect().await;
    let producer = Producer::builder(&connection).build().await.unwrap();
    let ping = || async {
        producer
            .gather(
                "ping",
                json!({}),
                &Route::pairs([(postage_app::GENERIC_APPLICATION_EXCHANGE, name.clone())]),
                Duration::from_secs(1),
                None,
            )
            .await
            .map(|answers| answers.len())
            .unwrap_or(0)
    };
    assert_eq!(ping().await, 1, "the application answers its name");
    let healed = island.black_hole(&mut app, Duration::from_secs(8)).await;
    let mut answered = None;
    while healed.elapsed() < Duration::from_secs(20) {
        if ping().await == 1 {
            answered = Some(healed.elapsed());
            break;
        }
    }
    assert!(
        answered.is_some_and(|after| after <= RESUMES),
        "answered again {answered:?} after the heal"
    );
    eprintln!("black hole, GenericApplication: answered again {answered:?} after the heal");
}

/// A worker and a publisher behind a link with 300 ms of latency, 100 ms of jitter and
/// 64 KB/s each way: slower, but every confirmed job is handled and neither reconnects.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_link_loses_nothing_and_causes_no_reconnections() {
    let relay = Relay::start(broker_address()).await;
    for direction in [Direction::Upstream, Direction::Downstream] {
        relay.add(
            Links::All,
            direction,
            Toxic::Latency {
                delay: Duration::from_millis(300),
                jitter: Duration::from_millis(100),
            },
        );
        relay.add(
            Links::All,
            direction,
            Toxic::Bandwidth {
                bytes_per_second: 64 * 1024,
            },
        );
    }
    let (mut worker, mut publisher) = worker_and_publisher(&relay, &unique("slow"), "100").await;
    publisher
        .until(Duration::from_secs(120), |line| line == "published")
        .await
        .expect("every job is confirmed");
    names_all(&mut worker, "handled ", 100, Duration::from_secs(60)).await;
    // Each component opens a connection and a publishing connection; none more.
    assert_eq!(relay.connections(), 4, "no reconnection on a slow link");
    let reconnected = worker
        .seen
        .iter()
        .chain(&publisher.seen)
        .any(|(_, line)| line.starts_with("link reconnecting"));
    assert!(!reconnected, "no component lost its link");
}

/// A publisher's link cut in the middle of a publish (a few hundred bytes into it), and a
/// worker's link reset (a TCP reset) in the middle of a delivery: every confirmed job is
/// handled, and at most the one unconfirmed publish comes twice.
#[tokio::test(flavor = "multi_thread")]
async fn a_link_cut_mid_frame_loses_nothing() {
    let relay = Relay::start(broker_address()).await;
    let (mut worker, mut publisher) = worker_and_publisher(&relay, &unique("midframe"), "60").await;
    publisher
        .until(Duration::from_secs(30), |line| line == "confirmed 20")
        .await
        .expect("jobs are confirmed");
    // The publishing connections' next 200 bytes go, then they are cut: a frame half
    // written. Deliveries to the worker get 300 bytes more, then a TCP reset.
    relay.add(
        Links::marked("publishing"),
        Direction::Upstream,
        Toxic::LimitData {
            bytes: 200,
            reset: false,
        },
    );
    relay.add(
        Links::All,
        Direction::Downstream,
        Toxic::LimitData {
            bytes: 300,
            reset: true,
        },
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    relay.heal();
    publisher
        .until(Duration::from_secs(60), |line| line == "published")
        .await
        .expect("every job is confirmed in the end");
    names_all(&mut worker, "handled ", 60, Duration::from_secs(60)).await;
    assert!(
        relay.connections() > 4,
        "the cuts made the components reconnect"
    );
    let twice = worker.numbers("handled ").len() - 60;
    eprintln!("cut mid-frame: 60 jobs, none lost, {twice} handled twice");
}

/// One-way silence, each way in turn (the relay drops a direction's bytes and keeps the
/// connection open, a half-open link): the worker hears nothing from the broker, and its
/// own heartbeat check notices within twice the heartbeat; then the broker hears nothing
/// from the worker, and the broker's check notices and closes the connection, which the
/// worker hears, within four times. Either way the jobs sent meanwhile wait on the
/// durable queue, and work resumes within [`RESUMES`] of the heal.
#[tokio::test(flavor = "multi_thread")]
async fn one_way_silence_either_way_is_noticed_and_loses_nothing() {
    let relay = Relay::start(broker_address()).await;
    let name = unique("silence");
    let mut worker = behind(&relay, &["worker", &name]).await;
    let connection = connect().await;
    let producer = jobs(&connection, &name).await;
    let mut sent = 0;
    for direction in [Direction::Downstream, Direction::Upstream] {
        for id in sent..sent + 10 {
            producer.command("work", json!({ "id": id })).await.unwrap();
        }
        sent += 10;
        names_all(&mut worker, "handled ", sent, Duration::from_secs(30)).await;
        let began = Instant::now();
        relay.add(Links::All, direction, Toxic::Silence);
        let noticed = worker
            .until(Duration::from_secs(10), |line| {
                line.starts_with("link reconnecting")
            })
            .await
            .unwrap_or_else(|| panic!("{direction:?} silence went unnoticed: {:?}", worker.seen));
        eprintln!(
            "{direction:?} silence noticed after {:.1} s (heartbeat {HEARTBEAT} s)",
            (noticed - began).as_secs_f64()
        );
        // The worker's own check misses the broker's heartbeats within twice the
        // heartbeat. The broker checks once a heartbeat and gives up after two silent
        // checks (2-3 heartbeats), then its close reaches the worker: within four.
        let bound = match direction {
            Direction::Downstream => Duration::from_secs(2 * HEARTBEAT),
            Direction::Upstream => Duration::from_secs(4 * HEARTBEAT),
        } + Duration::from_millis(500);
        assert!(
            noticed - began <= bound,
            "{direction:?} silence noticed after {:?}, more than {bound:?}",
            noticed - began
        );
        // Sent while the worker's link is silent: they wait on its durable queue.
        for id in sent..sent + 10 {
            producer.command("work", json!({ "id": id })).await.unwrap();
        }
        sent += 10;
        tokio::time::sleep(Duration::from_secs(8).saturating_sub(began.elapsed())).await;
        relay.heal();
        let healed = Instant::now();
        names_all(&mut worker, "handled ", sent, Duration::from_secs(30)).await;
        let resumed = worker
            .seen
            .iter()
            .find(|(at, line)| *at > healed && line.starts_with("handled"))
            .map(|(at, _)| *at - healed);
        eprintln!("{direction:?} silence: working again {resumed:?} after the heal");
        assert!(
            resumed.is_some_and(|after| after <= RESUMES),
            "work resumed {resumed:?} after the heal"
        );
    }
}
