//! A memory alarm, for real, on a node of the test's own: RabbitMQ blocks every publishing
//! connection; each publish and call must end within its bound with an error that names
//! the alarm (the `postage` tool with its timeout exit code), the connection must say it
//! is blocked, and once the alarm clears everything works again without a restart.

use std::process::Command;
use std::time::{Duration, Instant};

use postage_core::{
    Config, Connection, Error, Exchange, Host, LinkState, Processor, Producer, Queue, RpcOptions,
    processor,
};
use postage_tests::{OwnNode, binary, ctl, unique};

/// (name, AMQP port, distribution port) of the node the alarm is raised on.
const NODE: (&str, u16, u16) = ("postage-alarm", 5731, 25731);

struct Doubler;

#[processor]
impl Doubler {
    #[rpc_handler("command", "double")]
    async fn double(&self, n: i64) -> i64 {
        n * 2
    }
}

fn config() -> Config {
    Config {
        hosts: vec![Host {
            name: "127.0.0.1".into(),
            port: NODE.1,
        }],
        ..Config::default()
    }
}

/// Waits up to `wait` for the connection's state to satisfy `want`.
async fn state_within(connection: &Connection, wait: Duration, want: impl Fn(&LinkState) -> bool) {
    let mut states = connection.watch_state();
    let reached = tokio::time::timeout(wait, states.wait_for(|state| want(state))).await;
    assert!(reached.is_ok(), "state now {:?}", connection.state());
}

#[tokio::test]
async fn a_memory_alarm_bounds_publishes_and_calls_and_everything_works_after_it_clears() {
    let (name, port, dist) = NODE;
    let _node = OwnNode::start(name, port, dist, "");

    let server = Connection::connect(&config()).await.unwrap();
    // Durable, as the `postage` tool declares its exchange (the node is wiped at start).
    let exchange = Exchange::named(unique("alarm"));
    let key = unique("alarm");
    let doubler = Processor::builder(&server, Doubler)
        .bind(
            exchange.clone(),
            Queue::new(unique("alarm")).auto_delete(true),
            key.as_str(),
        )
        .build()
        .await
        .unwrap();
    let stop = doubler.handle();
    let running = tokio::spawn(doubler.run());

    let client = Connection::connect(&config()).await.unwrap();
    let bound = Duration::from_secs(2);
    let producer = Producer::builder(&client)
        .destination(exchange.clone(), key.as_str())
        .reliable(true)
        .publish_timeout(bound)
        .rpc_defaults(bound, 0)
        .build()
        .await
        .unwrap();
    let four: i64 = producer.call("double", 2).await.unwrap();
    assert_eq!(four, 4);
    assert_eq!(client.state(), LinkState::Connected);

    ctl(name, &["set_vm_memory_high_watermark", "0.0000001"]);

    // A publish waits at most its bound, then names the alarm.
    let sent = Instant::now();
    let refused = producer.command("double", 1).await.expect_err("blocked");
    let waited = sent.elapsed();
    assert!(matches!(refused, Error::Blocked { .. }), "{refused:?}");
    assert!(refused.to_string().contains("alarm"), "{refused}");
    assert!(waited < bound + Duration::from_secs(2), "waited {waited:?}");
    assert!(matches!(client.state(), LinkState::Blocked { .. }));

    // So does a call: its one deadline covers the request's publish and confirm.
    let called = Instant::now();
    let failed = producer
        .call::<i64>("double", 3)
        .await
        .expect_err("no answer under the alarm");
    let waited = called.elapsed();
    assert!(matches!(failed, Error::Blocked { .. }), "{failed:?}");
    assert!(waited < bound + Duration::from_secs(2), "waited {waited:?}");

    // And the `postage` tool exits with its timeout code.
    let url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    let tool = Instant::now();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(binary("postage"))
            .args([
                "rpc",
                "--url",
                &url,
                "--exchange",
                exchange.name(),
                "--timeout",
                "2",
            ])
            .args([key.as_str(), "double", "--params", "5"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("alarm"), "{stderr}");
    assert!(
        tool.elapsed() < Duration::from_secs(8),
        "took {:?}",
        tool.elapsed()
    );

    // The alarm clears: the same producer works again, nothing restarted.
    ctl(name, &["set_vm_memory_high_watermark", "0.4"]);
    state_within(&client, Duration::from_secs(15), |s| {
        *s == LinkState::Connected
    })
    .await;
    let options = RpcOptions::new().timeout(Duration::from_secs(5));
    let fourteen: i64 = producer.call_with("double", 7, options).await.unwrap();
    assert_eq!(fourteen, 14);

    stop.shutdown();
    running.await.unwrap().unwrap();
    client.close().await.unwrap();
    server.close().await.unwrap();
}
