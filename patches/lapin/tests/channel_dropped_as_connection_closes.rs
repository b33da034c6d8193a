#![cfg(feature = "tokio")]

//! Dropping the last handle of an open channel asks the internal RPC loop to close it.
//! When the connection starts closing before that close is sent (a channel dropped just
//! before its connection is closed, as a task ending with its channel does), the close
//! finds the channel `Closing`: the connection's close ends it anyway, and closing the
//! connection must succeed. It used to fail with `invalid channel state: Closing
//! (channel.close)`, reported as the connection's error.
//!
//! Runs against a real broker.

use lapin::{Connection, ConnectionProperties};

#[tokio::test(flavor = "multi_thread")]
async fn a_channel_dropped_as_its_connection_closes_leaves_the_close_clean() {
    let addr = std::env::var("AMQP_ADDR").unwrap_or_else(|_| "amqp://127.0.0.1:5672/%2f".into());
    for round in 0..50 {
        let conn = Connection::connect(&addr, ConnectionProperties::default())
            .await
            .unwrap();
        let channel = conn.create_channel().await.unwrap();
        // The channel's close is queued, then the connection's close starts.
        drop(channel);
        let closed = conn.close(200, "bye".into()).await;
        assert!(closed.is_ok(), "round {round}: {closed:?}");
    }
}
