//! Answering an RPC call: the answer goes to the caller's return address.

use std::sync::Arc;
use std::time::Duration;

use lapin::BasicProperties;

use crate::connection::ChannelLease;
use crate::error::Result;
use crate::handler::{BoxFuture, ReplySender};
use crate::producer::{Producer, Publish};
use crate::rpc::{ReturnAddress, progress};
use crate::wire::Fingerprint;
use crate::wire::json;
use crate::wire::{Encoder, JsonEncoder};
use crate::wire::{Message, RpcResult};

/// Publishes an RPC answer to the caller's `reply_to` queue through the default exchange,
/// on the channel its request came on, as a raw server does: one connection fewer on
/// every call's way than the publishing connection, which measured 10-20% of RPC
/// throughput here (with lapin's I/O then on a thread a connection). A resource alarm
/// that holds an answer back so holds that channel's acknowledgements until it clears;
/// the messages a handler sends itself still go on the publishing connection. Without a
/// channel (a test's harness), the processor's producer sends it (a recording one in a
/// test).
#[derive(Debug)]
pub(super) struct ChannelReply {
    pub(super) answers: Producer,
    pub(super) via: Option<Arc<ChannelLease>>,
    pub(super) to: ReturnAddress,
    /// `None` for the default JSON encoder.
    pub(super) encoder: Option<Arc<dyn Encoder>>,
    pub(super) fingerprint: Arc<Fingerprint>,
    /// The beat interval the caller asked for, `None` when it asked for no beats.
    pub(super) beats: Option<Duration>,
}

impl ChannelReply {
    /// Publishes `body` with `properties` to the caller's reply queue, on the request's
    /// channel when there is one.
    fn publish(&self, body: Vec<u8>, properties: BasicProperties) -> BoxFuture<Result<()>> {
        let (answers, via) = (self.answers.clone(), self.via.clone());
        let reply_to = self.to.reply_to().to_owned();
        Box::pin(async move {
            let publish = Publish::new("", &reply_to, &body, properties);
            match via {
                Some(channel) => answers.send(publish.via(&channel)).await,
                None => {
                    let mandatory = answers.reliable();
                    answers.send(publish.mandatory(mandatory)).await
                }
            }
        })
    }
}

impl ReplySender for ChannelReply {
    fn progress(&self, value: serde_json::Value) -> BoxFuture<Result<()>> {
        if self.beats.is_none() {
            return Box::pin(async { Ok(()) });
        }
        let body = match serde_json::to_vec(&value) {
            Ok(body) => body,
            Err(source) => {
                return Box::pin(async move {
                    Err(crate::error::Error::Payload {
                        what: "a progress value".into(),
                        source,
                    })
                });
            }
        };
        let properties = progress::beat(self.to.properties(JsonEncoder.content_type()));
        self.publish(body, properties)
    }

    fn send(&self, result: RpcResult) -> BoxFuture<Result<()>> {
        let (body, content_type) = match &self.encoder {
            None => (
                json::result(&result, &self.fingerprint),
                JsonEncoder.content_type(),
            ),
            Some(encoder) => {
                let message =
                    Message::result(&result).with_fingerprint((*self.fingerprint).clone());
                (encoder.encode(&message), encoder.content_type())
            }
        };
        let properties = self.to.properties(content_type);
        match body {
            Ok(body) => self.publish(body, properties),
            Err(error) => Box::pin(async move { Err(error) }),
        }
    }
}
