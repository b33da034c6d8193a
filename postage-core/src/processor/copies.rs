//! Where a processor's retry and dead-letter copies are published from: a reliable
//! producer of their own, so each copy is confirmed by the broker before its original is
//! settled.

use tokio::sync::OnceCell;

use crate::connection::Connection;
use crate::error::Result;
use crate::producer::Producer;

/// The producer a processor moves messages with: `mandatory` publishes that wait for
/// the broker's confirm (a copy refused, returned as unroutable or lost with its
/// connection is an error, and its original goes back to its queue). Built with the
/// first copy: a processor that never retries opens no channel for it.
#[derive(Debug)]
pub(super) struct Copies {
    connection: Option<Connection>,
    producer: OnceCell<Producer>,
}

impl Copies {
    /// Copies published on `connection`'s publishing link.
    pub(super) fn on(connection: &Connection) -> Self {
        Self {
            connection: Some(connection.clone()),
            producer: OnceCell::new(),
        }
    }

    /// Copies published through `producer` (a recording one, in tests of handlers).
    pub(super) fn through(producer: Producer) -> Self {
        Self {
            connection: None,
            producer: OnceCell::new_with(Some(producer)),
        }
    }

    /// The producer, built now if this is the first copy.
    pub(super) async fn producer(&self) -> Result<&Producer> {
        self.producer
            .get_or_try_init(|| async {
                match &self.connection {
                    Some(connection) => Producer::builder(connection).reliable(true).build().await,
                    None => Err(crate::error::Error::Closed("the processor's copies")),
                }
            })
            .await
    }
}
