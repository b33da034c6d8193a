//! The peer framework kanin (lapin 2, protobuf, a task per request) serving the
//! benchmark's RPC: the request is a reading's sequence number and note, the answer the
//! receipt, both protobuf, as kanin requires.

use kanin::extract::Msg;
use kanin::{App, HandlerConfig};
use postage_core::Exchange;

use crate::setup::PREFETCH;

/// Kanin's request: what the callers' readings carry that kanin's answer needs.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct EchoRequest {
    #[prost(uint64, tag = "1")]
    pub(crate) seq: u64,
    #[prost(string, tag = "2")]
    pub(crate) note: String,
}

/// Kanin's answer: the receipt.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct EchoResponse {
    #[prost(uint64, tag = "1")]
    pub(crate) seq: u64,
    #[prost(bool, tag = "2")]
    pub(crate) ok: bool,
}

/// What kanin answers when it cannot decode a request.
impl kanin::error::FromError<kanin::HandlerError> for EchoResponse {
    fn from_error(_: kanin::HandlerError) -> Self {
        Self { seq: 0, ok: false }
    }
}

async fn reading(Msg(request): Msg<EchoRequest>) -> EchoResponse {
    EchoResponse {
        seq: request.seq,
        ok: true,
    }
}

/// A kanin app on a connection of its own, serving `key` on the queue it declares, `queue`
/// (durable and auto-delete, which RabbitMQ 4 allows), bound to `exchange`.
pub(crate) struct Kanin {
    shutdown: tokio::sync::broadcast::Sender<()>,
    task: tokio::task::JoinHandle<kanin::Result<()>>,
}

impl Kanin {
    pub(crate) fn start(url: &str, exchange: &Exchange, queue: &str, key: &str) -> Self {
        let config = HandlerConfig::new()
            .with_exchange(exchange.name())
            .with_queue(queue)
            .with_prefetch(PREFETCH)
            .with_durable(true);
        let app = App::new(()).handler_with_config(key, reading, config);
        let shutdown = app.shutdown_channel();
        let url = url.to_owned();
        let task = tokio::spawn(async move { app.run(&url).await });
        Self { shutdown, task }
    }

    pub(crate) async fn stop(self) {
        let _ = self.shutdown.send(());
        match self.task.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => eprintln!("# kanin stopped: {error}"),
            Err(error) => eprintln!("# kanin's task: {error}"),
        }
    }
}
