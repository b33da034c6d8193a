//! A processor whose channel or consumer the broker ends while the connection lives on:
//! the broker closes the channel after a channel error (here an acknowledgement of an
//! unknown delivery tag, as a consumer timeout also does), or cancels the consumer because
//! its queue was deleted. Either way the processor consumes again on a new channel,
//! without a restart; so does the simple client's server. A producer whose channel the
//! broker closed reopens it, with its RPC answer consumer, for the next call.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postage_core::lapin::options::{BasicAckOptions, ExchangeDeclareOptions};
use postage_core::lapin::types::FieldTable;
use postage_core::{
    Connection, Error, Exchange, Exit, Metadata, Processor, ProcessorHandle, Producer, Queue,
    RpcOptions,
    client::{Request, Target, Transport},
    processor,
};
use postage_tests::{connect, consumers_of, rabbitmqctl, unique};
use tokio::task::JoinHandle;

const PATIENCE: Duration = Duration::from_secs(30);

/// Records each `note` it handles with its redelivered flag; a note that asks for it takes
/// its time the first time it is delivered.
struct Notes {
    seen: Mutex<Vec<(String, bool)>>,
}

#[processor]
impl Notes {
    #[message_handler("command", "note")]
    async fn note(&self, text: String, metadata: &Metadata) {
        if text.starts_with("slow") && !metadata.redelivered() {
            tokio::time::sleep(Duration::from_secs(4)).await;
        }
        self.seen
            .lock()
            .unwrap()
            .push((text, metadata.redelivered()));
    }

    #[rpc_handler("command", "echo")]
    fn echo(&self, text: String) -> String {
        text
    }
}

impl Notes {
    fn new() -> Self {
        Self {
            seen: Mutex::new(Vec::new()),
        }
    }

    /// Waits until `text` was handled; returns each time it was, with its redelivered flag.
    async fn handled(&self, text: &str) -> Vec<bool> {
        let start = Instant::now();
        loop {
            let times: Vec<bool> = self
                .seen
                .lock()
                .unwrap()
                .iter()
                .filter(|(t, _)| t == text)
                .map(|(_, redelivered)| *redelivered)
                .collect();
            if !times.is_empty() || start.elapsed() > PATIENCE {
                return times;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Sends a note, again while no queue takes it (its queue is being declared again).
async fn send(producer: &Producer, text: &str) {
    let start = Instant::now();
    loop {
        match producer.command("note", text).await {
            Ok(()) => return,
            Err(Error::Unroutable { .. }) if start.elapsed() < PATIENCE => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("sending {text:?}: {error}"),
        }
    }
}

/// A running processor of [`Notes`] on an exchange and a queue of its own (bound with
/// both commands' keys), and a reliable producer routed to it.
struct Served {
    notes: Arc<Notes>,
    /// The processor's consumer channel as it was at the start.
    channel: postage_core::lapin::Channel,
    handle: ProcessorHandle,
    running: JoinHandle<postage_core::Result<Exit>>,
    producer: Producer,
    queue: String,
}

impl Served {
    async fn start(connection: &Connection, prefix: &str) -> Self {
        let exchange = Exchange::named(unique(prefix));
        let queue = unique(&format!("{prefix}-q"));
        let processor = Processor::builder(connection, Notes::new())
            .bindings(
                exchange.clone(),
                [
                    (Queue::new(queue.clone()), "note"),
                    (Queue::new(queue.clone()), "echo"),
                ],
            )
            .build()
            .await
            .unwrap();
        let notes = Arc::clone(processor.state());
        let channel = processor.consumer().channel();
        let handle = processor.handle();
        let running = tokio::spawn(processor.run());
        let producer = Producer::builder(connection)
            .destination(exchange, "note")
            .reliable(true)
            .build()
            .await
            .unwrap();
        Self {
            notes,
            channel,
            handle,
            running,
            producer,
            queue,
        }
    }

    /// Checks that a note sent now is handled once, by the one consumer of the queue.
    async fn serves_on(&self) {
        send(&self.producer, "after").await;
        assert_eq!(
            self.notes.handled("after").await,
            [false],
            "serving goes on"
        );
        assert_eq!(consumers_of(&self.queue), Some(1), "no consumer stacked");
    }

    async fn stop(self) {
        self.handle.shutdown();
        self.running.await.unwrap().unwrap();
        rabbitmqctl(&["delete_queue", &self.queue]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_channel_closed_by_the_broker_is_replaced_and_serving_goes_on() {
    let connection = connect().await;
    let served = Served::start(&connection, "closed").await;
    let generation = connection.generation();

    // While "slow" is handled (4 s), the broker closes the channel (PRECONDITION_FAILED,
    // unknown delivery tag) and puts the message back in the queue.
    send(&served.producer, "slow").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = served
        .channel
        .basic_ack(424_242, BasicAckOptions::default())
        .await;
    let start = Instant::now();
    while !served.notes.handled("slow").await.contains(&true) {
        assert!(
            start.elapsed() < PATIENCE,
            "handled again on a new channel, marked redelivered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    served.serves_on().await;
    assert_eq!(
        connection.generation(),
        generation,
        "the connection itself was never lost"
    );
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_queue_deleted_under_a_processor_is_declared_again_and_served() {
    let connection = connect().await;
    let served = Served::start(&connection, "deleted").await;
    send(&served.producer, "before").await;
    assert_eq!(served.notes.handled("before").await, [false]);

    tokio::task::spawn_blocking({
        let queue = served.queue.clone();
        move || rabbitmqctl(&["delete_queue", &queue])
    })
    .await
    .unwrap();
    // Unroutable until the processor has declared and bound its queue again.
    served.serves_on().await;
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_producer_channel_closed_by_the_broker_is_reopened_for_the_next_call() {
    let connection = connect().await;
    let served = Served::start(&connection, "reopen").await;
    let producer = &served.producer;
    let echo = || RpcOptions::new().key("echo");
    let before: String = producer.call_with("echo", "before", echo()).await.unwrap();
    assert_eq!(before, "before");

    // A passive declare of an exchange that does not exist: NOT_FOUND closes the channel.
    let refused = producer
        .channel()
        .expect("a producer on a connection")
        .exchange_declare(
            unique("missing").as_str().into(),
            postage_core::lapin::ExchangeKind::Direct,
            ExchangeDeclareOptions {
                passive: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await;
    assert!(refused.is_err());
    assert!(
        !producer
            .channel()
            .expect("a producer on a connection")
            .status()
            .connected()
    );

    let after: String = tokio::time::timeout(PATIENCE, producer.call_with("echo", "after", echo()))
        .await
        .expect("answered, not left to time out")
        .unwrap();
    assert_eq!(after, "after");
    assert!(
        producer
            .channel()
            .expect("a producer on a connection")
            .status()
            .connected(),
        "a new channel"
    );
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_simple_server_whose_queue_is_deleted_declares_it_again_and_serves() {
    let connection = connect().await;
    let transport = Transport::new(&connection).await.unwrap();
    let queue = unique("server-q");
    let target = Target::with_queue(Queue::new(queue.clone()));
    let server = transport.server(&target).await.unwrap();
    let handle = server.handle();
    let serving = tokio::spawn(server.serve(|request: Request| {
        let body = request.body().clone();
        async move { body }
    }));
    let before: String = transport.call(&target, &"before").await.unwrap();
    assert_eq!(before, "before");

    tokio::task::spawn_blocking({
        let queue = queue.clone();
        move || rabbitmqctl(&["delete_queue", &queue])
    })
    .await
    .unwrap();
    // Unroutable until the server has declared its queue again.
    let start = Instant::now();
    let after: String = loop {
        match transport.call(&target, &"after").await {
            Ok(answer) => break answer,
            Err(Error::Unroutable { .. }) if start.elapsed() < PATIENCE => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("calling after the deletion: {error}"),
        }
    };
    assert_eq!(after, "after");
    assert_eq!(consumers_of(&queue), Some(1), "no consumer stacked");

    handle.shutdown();
    serving.await.unwrap().unwrap();
    transport.close().await.unwrap();
    rabbitmqctl(&["delete_queue", &queue]);
}
