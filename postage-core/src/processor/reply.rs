//! Answering an RPC call: the answer goes to the caller's return address.

use std::sync::Arc;

use crate::error::Result;
use crate::handler::{BoxFuture, ReplySender};
use crate::producer::Producer;
use crate::rpc::ReturnAddress;
use crate::wire::Fingerprint;
use crate::wire::json;
use crate::wire::{Encoder, JsonEncoder};
use crate::wire::{Message, RpcResult};

/// Publishes an RPC answer to the caller's `reply_to` queue through the default exchange,
/// with the processor's producer (on the publishing connection: a resource alarm that
/// holds the answer back does not hold back the consumer's acknowledgements; a test's is
/// a recording one).
#[derive(Debug)]
pub(super) struct ChannelReply {
    pub(super) answers: Producer,
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
        let answers = self.answers.clone();
        let reply_to = self.to.reply_to().to_owned();
        Box::pin(async move {
            answers
                .publish_body("", &reply_to, &body?, properties)
                .await
        })
    }
}
