#![cfg(feature = "tokio")]

//! Dropping a consumer asks the internal RPC loop to cancel it. When its channel starts
//! closing before that cancel is sent (a consumer and its channel dropped together, as a
//! reply consumer of one call is), the cancel finds the channel `Closing`: there is
//! nothing left to cancel, and the connection must live on. It used to be closed with
//! `invalid channel state: Closing (basic.cancel)`.
//!
//! Runs against a real broker.

use lapin::{
    Connection, ConnectionProperties,
    options::{BasicConsumeOptions, QueueDeclareOptions},
    types::FieldTable,
};

#[tokio::test(flavor = "multi_thread")]
async fn a_consumer_dropped_as_its_channel_closes_leaves_the_connection_up() {
    let addr = std::env::var("AMQP_ADDR").unwrap_or_else(|_| "amqp://127.0.0.1:5672/%2f".into());
    let conn = Connection::connect(&addr, ConnectionProperties::default())
        .await
        .unwrap();
    for round in 0..200 {
        let channel = conn.create_channel().await.unwrap();
        let queue = channel
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
        let consumer = channel
            .basic_consume(
                queue.name().clone(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        // The cancel is queued, then the close starts before it is sent.
        drop(consumer);
        let closed = channel.close(200, "done".into()).await;
        assert!(conn.status().connected(), "round {round}: {closed:?}");
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(
        conn.status().connected(),
        "the connection outlives every round"
    );
    conn.create_channel().await.unwrap();
    let _ = conn.close(200, "bye".into()).await;
}
