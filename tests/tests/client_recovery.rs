//! The simple client across a lost connection: the broker closes this process's
//! connections, the connection comes back, and the server and the transport go on.
//!
//! A test binary of its own, so closing "this process's connections" touches no other
//! test.

use std::time::{Duration, Instant};

use postage_core::{Error, Mode, Queue, Request, Target, Transport};
use postage_tests::{connect, rabbitmqctl, unique};
use serde_json::{Value, json};

const PATIENCE: Duration = Duration::from_secs(30);

/// Has the broker close every connection this process opened.
async fn close_my_connections() {
    let marker = format!("(pid {})", std::process::id());
    tokio::task::spawn_blocking(move || {
        let listing = rabbitmqctl(&["list_connections", "pid", "client_properties"]);
        let mine: Vec<&str> = listing
            .lines()
            .filter(|line| line.contains(&marker))
            .filter_map(|line| line.split('\t').next())
            .collect();
        assert!(
            !mine.is_empty(),
            "no connection of this process in {listing}"
        );
        for pid in mine {
            rabbitmqctl(&["close_connection", pid, "client recovery test"]);
        }
    })
    .await
    .expect("rabbitmqctl ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_and_transport_go_on_after_the_connection_is_lost() {
    let connection = connect().await;
    let transport = Transport::new(&connection).await.unwrap();
    let echo = Target::with_queue(Queue::new(unique("recover")).auto_delete(true));
    let server = transport.server(&echo).await.unwrap();
    let handle = server.handle();
    let (heard, mut fanouts) = tokio::sync::mpsc::unbounded_channel();
    let serving = tokio::spawn(server.serve(move |request: Request| {
        if request.mode() == Mode::Fanout {
            let _ = heard.send(request.body().clone());
        }
        let body = request.body().clone();
        async move { body }
    }));
    let before: Value = transport.call(&echo, &json!("before")).await.unwrap();
    assert_eq!(before, json!("before"));
    let generation = connection.generation();

    close_my_connections().await;

    // Until the server has declared its queue again a call is unroutable, or fails on the
    // channel that was just lost; then it is answered.
    let started = Instant::now();
    let after = loop {
        match transport.call::<Value>(&echo, &json!("after")).await {
            Ok(answer) => break answer,
            Err(Error::Unroutable { .. } | Error::Amqp { .. } | Error::Closed(_)) => {
                assert!(started.elapsed() < PATIENCE, "the server never came back");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(other) => panic!("unexpected failure: {other}"),
        }
    };
    assert_eq!(after, json!("after"));
    assert!(
        connection.generation() > generation,
        "the connection was re-established"
    );

    // Fanout reaches the server's new private queue too.
    transport.fanout(&echo, &json!("everyone")).await.unwrap();
    let fanout = tokio::time::timeout(PATIENCE, fanouts.recv())
        .await
        .unwrap();
    assert_eq!(fanout, Some(json!("everyone")));

    handle.shutdown();
    serving.await.unwrap().unwrap();
    transport.close().await.unwrap();
    connection.close().await.unwrap();
}
