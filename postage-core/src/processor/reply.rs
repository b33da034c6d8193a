//! Answering an RPC call: the answer goes to the caller's return address.

use std::sync::Arc;

use super::Outbox;
use crate::error::Result;
use crate::handler::{BoxFuture, ReplySender};
use crate::rpc::ReturnAddress;
use crate::wire::Fingerprint;
use crate::wire::json;
use crate::wire::{Encoder, JsonEncoder};
use crate::wire::{Message, RpcResult};

/// Publishes an RPC answer to the caller's `reply_to` queue through the default exchange,
/// with the processor's producer (on the publishing connection: a resource alarm that
/// holds the answer back does not hold back the consumer's acknowledgements), or keeps it
/// for a test.
#[derive(Debug)]
pub(super) struct ChannelReply {
    pub(super) answers: Outbox,
    pub(super) to: ReturnAddress,
    /// `None` for the default JSON encoder.
    pub(super) encoder: Option<Arc<dyn Encoder>>,
    pub(super) fingerprint: Arc<Fingerprint>,
}

impl ReplySender for ChannelReply {
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
        let answers = match &self.answers {
            Outbox::Broker(producer) => producer.clone(),
            Outbox::Kept(kept) => {
                if let Ok(mut kept) = kept.lock() {
                    kept.push(result);
                }
                return Box::pin(async { Ok(()) });
            }
        };
        let reply_to = self.to.reply_to().to_owned();
        Box::pin(async move {
            answers
                .publish_body("", &reply_to, &body?, properties)
                .await
        })
    }
}
