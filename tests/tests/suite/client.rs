//! The simple client (the message-client SDK's API) against the real broker: the three
//! send modes, non-blocking requests, serving, failover, and plain AMQP RPC both ways
//! with bare lapin code that knows nothing of postage.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use postage_core::lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions,
};
use postage_core::lapin::types::FieldTable;
use postage_core::lapin::{self, BasicProperties};
use postage_core::{
    Config, Error, Host, Queue,
    channel::Channel,
    client::{Mode, Request, Server, ServerHandle, Target, Transport},
};
use postage_tests::{connect, unique};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;

/// Long enough for anything that should happen; only reached when something is broken.
const PATIENCE: Duration = Duration::from_secs(30);
/// How long to wait for messages that must not come.
const QUIET: Duration = Duration::from_millis(400);

/// A target of this test only, whose queue goes away with its last server.
fn target(prefix: &str) -> Target {
    Target::with_queue(Queue::new(unique(prefix)).auto_delete(true))
}

/// The broker URL for bare lapin code, from the same `POSTAGE_*` settings.
fn amqp_url() -> String {
    let config = Config::from_env().expect("POSTAGE_* settings");
    let host = &config.hosts[0];
    let encode = |text: &str| -> String {
        text.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    char::from(b).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    format!(
        "amqp://{}:{}@{}:{}/{}",
        encode(&config.user),
        encode(config.password.expose()),
        host.name,
        host.port,
        encode(&config.vhost)
    )
}

/// Runs `server` on a task: its handler reports (server number, mode, body) on `seen` and
/// answers `{"server": n, "echo": body}`.
fn run(
    server: Server,
    number: u32,
    seen: mpsc::UnboundedSender<(u32, Mode, Value)>,
) -> (ServerHandle, JoinHandle<postage_core::Result<()>>) {
    let handle = server.handle();
    let task = tokio::spawn(server.serve(move |request: Request| {
        let _ = seen.send((number, request.mode(), request.body().clone()));
        let body = request.body().clone();
        async move { json!({"server": number, "echo": body}) }
    }));
    (handle, task)
}

async fn stop(handle: ServerHandle, task: JoinHandle<postage_core::Result<()>>) {
    handle.shutdown();
    task.await
        .expect("the server task")
        .expect("the server ends cleanly");
}

#[tokio::test]
async fn a_bare_lapin_client_calls_the_simple_server() {
    let connection = connect().await;
    let transport = Transport::new(&connection).await.unwrap();
    let iaas = target("iaas");
    let (seen, _) = mpsc::unbounded_channel();
    let (handle, task) = run(transport.server(&iaas).await.unwrap(), 1, seen);

    // Plain AMQP RPC: a private reply queue, reply_to and correlation_id; no postage types.
    let bare = lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let channel = bare.create_channel().await.unwrap();
    let replies = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut answers = channel
        .basic_consume(
            replies.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let request = json!({"cpu": 2, "mem": 4096, "disk": 40});
    channel
        .basic_publish(
            "".into(),
            iaas.name().into(),
            BasicPublishOptions::default(),
            &serde_json::to_vec(&request).unwrap(),
            BasicProperties::default()
                .with_content_type("application/json".into())
                .with_reply_to(replies.name().clone())
                .with_correlation_id("bare-1".into()),
        )
        .await
        .unwrap();
    let answer = tokio::time::timeout(PATIENCE, answers.next())
        .await
        .expect("an answer")
        .expect("the reply consumer is open")
        .unwrap();

    assert_eq!(
        answer
            .properties
            .correlation_id()
            .as_ref()
            .map(|id| id.as_str()),
        Some("bare-1")
    );
    let body: Value = serde_json::from_slice(&answer.data).unwrap();
    assert_eq!(body, json!({"server": 1, "echo": request}));

    bare.close(200, "done".into()).await.unwrap();
    stop(handle, task).await;
    transport.close().await.unwrap();
}

#[tokio::test]
async fn the_simple_client_calls_a_bare_lapin_server() {
    let name = unique("bare-server");
    let bare = lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let channel = bare.create_channel().await.unwrap();
    channel
        .queue_declare(
            name.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut requests = channel
        .basic_consume(
            name.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    // A server as any AMQP tutorial writes it: answer to reply_to, copy correlation_id.
    // It serves the test's two requests and ends, so that its last acknowledgement is
    // written before the test closes its connection.
    let server = tokio::spawn(async move {
        for _ in 0..2 {
            let delivery = requests.next().await.unwrap().unwrap();
            let body: Value = serde_json::from_slice(&delivery.data).unwrap();
            let sum = body["a"].as_i64().unwrap() + body["b"].as_i64().unwrap();
            let reply_to = delivery.properties.reply_to().clone().unwrap();
            let mut properties = BasicProperties::default();
            if let Some(id) = delivery.properties.correlation_id() {
                properties = properties.with_correlation_id(id.clone());
            }
            channel
                .basic_publish(
                    "".into(),
                    reply_to,
                    BasicPublishOptions::default(),
                    &serde_json::to_vec(&json!({"sum": sum})).unwrap(),
                    properties,
                )
                .await
                .unwrap();
            delivery.ack(BasicAckOptions::default()).await.unwrap();
        }
    });

    let connection = connect().await;
    let transport = Transport::new(&connection).await.unwrap();
    let adder = Target::new(name.as_str());
    let answer: Value = transport
        .call(&adder, &json!({"a": 2, "b": 3}))
        .await
        .unwrap();
    assert_eq!(answer, json!({"sum": 5}));
    let answer = transport
        .send(&adder, &json!({"a": 40, "b": 2}), Mode::Rpc)
        .await
        .unwrap();
    assert_eq!(answer, Some(json!({"sum": 42})));

    server.await.unwrap();
    transport.close().await.unwrap();
    bare.close(200, "done".into()).await.unwrap();
}

#[tokio::test]
async fn a_hundred_requests_in_flight_all_reach_the_callback() {
    let connection = connect().await;
    let transport = Transport::new(&connection).await.unwrap();
    let slow = target("slow");
    // The server cannot answer until the gate opens.
    let gate = Arc::new(Semaphore::new(0));
    let server = transport.server(&slow).await.unwrap();
    let handle = server.handle();
    let server_gate = Arc::clone(&gate);
    let task = tokio::spawn(server.serve(move |request: Request| {
        let gate = Arc::clone(&server_gate);
        async move {
            let _open = gate.acquire().await;
            json!({"n": request.body()["n"]})
        }
    }));

    let (answers, mut answered) = mpsc::unbounded_channel();
    transport.on_response(move |response| {
        let _ = answers.send(response);
    });
    let mut sent = HashMap::new();
    for n in 0..100 {
        let id = transport.request(&slow, &json!({"n": n})).await.unwrap();
        sent.insert(id, n);
    }
    // Every request went out while the server was stuck on the first: the caller was
    // never waiting for an answer.
    assert_eq!(sent.len(), 100);
    assert!(
        answered.try_recv().is_err(),
        "no answer before the gate opens"
    );

    gate.add_permits(1);
    let mut received = HashMap::new();
    while received.len() < 100 {
        let response = tokio::time::timeout(PATIENCE, answered.recv())
            .await
            .expect("all answers arrive")
            .expect("the callback task runs");
        let n = response.json::<Value>().unwrap()["n"].as_i64().unwrap();
        assert!(
            received
                .insert(response.correlation_id().to_owned(), n)
                .is_none(),
            "one answer per request"
        );
    }
    assert_eq!(received, sent);

    stop(handle, task).await;
    transport.close().await.unwrap();
}

#[tokio::test]
async fn fanout_reaches_every_server_and_cast_reaches_one() {
    let connection = connect().await;
    let transport = Transport::new(&connection).await.unwrap();
    let shared = target("modes");
    let (seen, mut heard) = mpsc::unbounded_channel();
    let (first, first_task) = run(transport.server(&shared).await.unwrap(), 1, seen.clone());
    let (second, second_task) = run(transport.server(&shared).await.unwrap(), 2, seen);

    transport.cast(&shared, &json!("cast")).await.unwrap();
    let none = transport
        .send(&shared, &json!("fanout"), Mode::Fanout)
        .await
        .unwrap();
    assert_eq!(none, None);

    let mut log = Vec::new();
    while log.len() < 3 {
        let entry = tokio::time::timeout(PATIENCE, heard.recv())
            .await
            .expect("the servers hear the messages")
            .unwrap();
        log.push(entry);
    }
    // Nothing more comes: the cast is not delivered twice.
    if let Ok(Some(extra)) = tokio::time::timeout(QUIET, heard.recv()).await {
        log.push(extra);
    }
    let mut fanouts: Vec<u32> = log
        .iter()
        .filter(|(_, mode, body)| *mode == Mode::Fanout && body == "fanout")
        .map(|(server, _, _)| *server)
        .collect();
    fanouts.sort_unstable();
    assert_eq!(fanouts, vec![1, 2], "every server gets the fanout: {log:?}");
    let casts = log
        .iter()
        .filter(|(_, mode, body)| *mode == Mode::Cast && body == "cast")
        .count();
    assert_eq!(casts, 1, "one server gets the cast: {log:?}");
    assert_eq!(log.len(), 3, "{log:?}");

    stop(first, first_task).await;
    stop(second, second_task).await;
    transport.close().await.unwrap();
}

#[tokio::test]
async fn rpc_and_cast_to_a_target_nobody_serves_are_unroutable() {
    let connection = connect().await;
    let transport = Transport::new(&connection).await.unwrap();
    let nobody = Target::new(unique("nobody"));
    for mode in [Mode::Rpc, Mode::Cast] {
        match transport.send(&nobody, &json!({}), mode).await {
            Err(Error::Unroutable { routing_key, .. }) => assert_eq!(routing_key, nobody.name()),
            other => panic!("{mode:?}: expected Unroutable, got {other:?}"),
        }
    }
    // A fanout with no server running reaches nobody, and that is no error.
    assert_eq!(
        transport
            .send(&nobody, &json!({}), Mode::Fanout)
            .await
            .unwrap(),
        None
    );
    transport.close().await.unwrap();
}

#[tokio::test]
async fn a_call_nobody_answers_times_out() {
    let connection = connect().await;
    let transport = Transport::new(&connection)
        .await
        .unwrap()
        .with_timeout(Duration::from_millis(300));
    // A queue that exists but that no server reads; gone with the connection.
    let silent = unique("silent");
    let channel = Channel::open(&connection).await.unwrap();
    channel
        .declare_queue(&Queue::new(silent.as_str()).exclusive(true))
        .await
        .unwrap();
    match transport
        .call::<Value>(&Target::new(silent.as_str()), &json!({}))
        .await
    {
        Err(Error::Timeout { operation, .. }) => assert!(operation.contains(&silent)),
        other => panic!("expected a timeout, got {other:?}"),
    }
    transport.close().await.unwrap();
    connection.close().await.unwrap();
}

#[tokio::test]
async fn the_transport_fails_over_to_the_next_host() {
    let mut config = Config::from_env().unwrap();
    let reachable = config.hosts.clone();
    // Nothing listens on port 1: the first host fails, the broker behind it answers.
    config.hosts.insert(
        0,
        Host {
            name: "127.0.0.1".into(),
            port: 1,
        },
    );
    config.heartbeat = Duration::from_secs(2); // the SDK example's mq_heartbeat_interval
    let transport = Transport::connect(&config).await.unwrap();
    assert_eq!(transport.connection().host(), reachable[0]);

    let echo = target("failover");
    let (seen, _) = mpsc::unbounded_channel();
    let (handle, task) = run(transport.server(&echo).await.unwrap(), 7, seen);
    let answer: Value = transport.call(&echo, &json!("ping")).await.unwrap();
    assert_eq!(answer, json!({"server": 7, "echo": "ping"}));
    stop(handle, task).await;
    transport.close().await.unwrap();
}
