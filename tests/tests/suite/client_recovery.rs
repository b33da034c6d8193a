//! The simple client and the messenger across a lost connection: the broker closes this
//! module's connections (named so: tests of other modules run beside these), the
//! connection comes back, and they go on. The module's tests take turns.

use std::time::{Duration, Instant};

use postage_core::{
    Config, Connection, Error, Queue,
    channel::{Channel, DeliveryStatus, Envelope},
    client::{Mode, Request, Target, Transport},
    messenger::Messenger,
};
use postage_tests::{close_connections_named, consumers_of, unique};
use serde_json::{Value, json};

const PATIENCE: Duration = Duration::from_secs(30);

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A connection under a name of its own: `close_my_connections` closes it and leaves the
/// connections of tests running beside this one alone.
async fn connect() -> Connection {
    postage_tests::init_tracing();
    let config = Config {
        connection_name: Some(NAME.to_owned()),
        ..Config::from_env().expect("POSTAGE_* settings")
    };
    Connection::connect(&config)
        .await
        .expect("the broker answers")
}

/// The name this module's connections go by (its publishing ones add ` publishing`).
const NAME: &str = "postage client recovery test";

/// Has the broker close every connection of this module's tests.
async fn close_my_connections() {
    close_connections_named(NAME).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_and_transport_go_on_after_the_connection_is_lost() {
    let _turn = ONE_AT_A_TIME.lock().await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_messenger_sends_and_receives_again_after_the_connection_is_lost() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let connection = connect().await;
    let queue = unique("messenger-recover");
    let declaring = Channel::open(&connection).await.unwrap();
    declaring
        .declare_queue(&Queue::new(queue.clone()))
        .await
        .unwrap();
    drop(declaring);
    let address = format!("amqp://{}/{queue}", connection.host());
    let messenger = Messenger::with_connection(&connection)
        .await
        .unwrap()
        .timeout(Some(PATIENCE));
    messenger.subscribe(&address).await.unwrap();
    // A server-named queue the subscription declares: it comes back under a new name.
    messenger
        .subscribe_queue(&address, &Queue::new("").exclusive(true))
        .await
        .unwrap();

    let settled = messenger
        .put(&address, Envelope::text("settled"))
        .await
        .unwrap();
    messenger
        .put(&address, Envelope::text("unsettled"))
        .await
        .unwrap();
    messenger.send().await.unwrap();
    assert_eq!(settled.status(), DeliveryStatus::Accepted);
    let first = messenger.recv().await.unwrap();
    assert_eq!(first.text().unwrap(), "settled");
    first.ack().await.unwrap();
    let second = messenger.recv().await.unwrap();
    assert_eq!(second.text().unwrap(), "unsettled");

    let generation = connection.generation();
    close_my_connections().await;
    let mut generations = connection.watch_generation();
    tokio::time::timeout(PATIENCE, generations.wait_for(|g| *g > generation))
        .await
        .expect("the connection comes back")
        .unwrap();
    // Too late to settle: its channel is gone, and the broker delivers it again.
    assert!(second.ack().await.is_err());

    let after = messenger
        .put(&address, Envelope::text("after"))
        .await
        .expect("a put after the loss opens a new channel");
    messenger.send().await.unwrap();
    assert_eq!(after.status(), DeliveryStatus::Accepted);
    let mut received = Vec::new();
    for _ in 0..2 {
        let message = messenger
            .recv()
            .await
            .expect("the subscription consumes again");
        received.push((message.text().unwrap().to_owned(), message.redelivered()));
        message.ack().await.unwrap();
    }
    received.sort();
    assert_eq!(
        received,
        [("after".to_owned(), false), ("unsettled".to_owned(), true)]
    );
    // One consumer on the queue, as before the loss: none stacked.
    assert_eq!(consumers_of(&queue), Some(1));
    assert!(messenger.get().is_none(), "nothing else arrived");

    messenger.stop().await.unwrap();
    let cleanup = Channel::open(&connection).await.unwrap();
    cleanup.delete_queue(&queue).await.unwrap();
    connection.close().await.unwrap();
}
