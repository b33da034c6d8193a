//! [`Metadata`]: where a message came from, read from its delivery as asked.

use std::sync::{Arc, LazyLock};

use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::types::{AMQPValue, FieldTable, ShortString};

/// Where a message came from: everything about its delivery except the body.
///
/// It shares the delivery rather than copying its parts, so handing it to handlers costs
/// nothing per message. Tests make one with `Metadata::default()` and the `with_*`
/// methods.
#[derive(Debug, Clone)]
pub struct Metadata {
    delivery: Arc<Delivery>,
    queue: Arc<str>,
    attempt: u32,
    /// A `message_id` given here, in place of the delivery's.
    message_id: Option<Arc<str>>,
}

/// The headers of a message that has none.
static NO_HEADERS: LazyLock<FieldTable> = LazyLock::new(FieldTable::default);

impl Metadata {
    /// The metadata of `delivery`, read from `queue`, attempt `attempt`.
    pub(crate) fn new(delivery: Arc<Delivery>, queue: Arc<str>, attempt: u32) -> Self {
        Self {
            delivery,
            queue,
            attempt,
            message_id: None,
        }
    }

    /// The queue it was read from.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The exchange it was published to (`""` for the default exchange).
    pub fn exchange(&self) -> &str {
        self.delivery.exchange.as_str()
    }

    /// The routing key it was published with.
    pub fn routing_key(&self) -> &str {
        self.delivery.routing_key.as_str()
    }

    /// True when the broker delivered it before without an acknowledgement.
    pub fn redelivered(&self) -> bool {
        self.delivery.redelivered
    }

    /// Its AMQP properties: headers, `reply_to`, `correlation_id`, content type...
    pub fn properties(&self) -> &BasicProperties {
        &self.delivery.properties
    }

    /// The AMQP application headers (empty when it has none).
    pub fn headers(&self) -> &FieldTable {
        self.properties().headers().as_ref().unwrap_or(&NO_HEADERS)
    }

    /// The application header `name`, when it has one.
    pub fn header(&self, name: &str) -> Option<&AMQPValue> {
        self.headers().inner().get(name)
    }

    /// The queue the sender waits for an answer on, for RPC.
    pub fn reply_to(&self) -> Option<&str> {
        text(self.properties().reply_to())
    }

    /// The sender's correlation id, copied into the answer.
    pub fn correlation_id(&self) -> Option<&str> {
        text(self.properties().correlation_id())
    }

    /// The AMQP `user_id` of the sender, when it set one; RabbitMQ checks that it is the
    /// user the sender logged in as, so it can be trusted.
    pub fn user_id(&self) -> Option<&str> {
        text(self.properties().user_id())
    }

    /// Which attempt at this message this is: 1 at first, then one more for each retry of
    /// the processor's [`RetryPolicy`](crate::RetryPolicy) (counted in the message's
    /// `x-postage-attempt` header).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The AMQP `message_id` its sender set (every postage producer sets one). A
    /// processor with an [inbox](crate::inbox) fills in, for a message without one, the
    /// id [`message_id::derive`](crate::message_id::derive) gives it.
    pub fn message_id(&self) -> Option<&str> {
        match &self.message_id {
            Some(id) => Some(id),
            None => text(self.properties().message_id()),
        }
    }

    /// With the queue it was read from.
    #[must_use]
    pub fn with_queue(mut self, queue: &str) -> Self {
        self.queue = queue.into();
        self
    }

    /// With the exchange it was published to.
    #[must_use]
    pub fn with_exchange(mut self, exchange: &str) -> Self {
        self.delivery_mut().exchange = exchange.into();
        self
    }

    /// With the routing key it was published with.
    #[must_use]
    pub fn with_routing_key(mut self, routing_key: &str) -> Self {
        self.delivery_mut().routing_key = routing_key.into();
        self
    }

    /// Delivered before (`true`) or not.
    #[must_use]
    pub fn with_redelivered(mut self, redelivered: bool) -> Self {
        self.delivery_mut().redelivered = redelivered;
        self
    }

    /// With these AMQP properties, headers and ids included.
    #[must_use]
    pub fn with_properties(mut self, properties: BasicProperties) -> Self {
        self.delivery_mut().properties = properties;
        self
    }

    /// With these application headers.
    #[must_use]
    pub fn with_headers(self, headers: FieldTable) -> Self {
        self.edit_properties(|properties| properties.with_headers(headers))
    }

    /// With the queue the sender waits for an answer on.
    #[must_use]
    pub fn with_reply_to(self, reply_to: &str) -> Self {
        self.edit_properties(|properties| properties.with_reply_to(reply_to.into()))
    }

    /// With the sender's correlation id.
    #[must_use]
    pub fn with_correlation_id(self, correlation_id: &str) -> Self {
        self.edit_properties(|properties| properties.with_correlation_id(correlation_id.into()))
    }

    /// With the sender's AMQP `user_id`.
    #[must_use]
    pub fn with_user_id(self, user_id: &str) -> Self {
        self.edit_properties(|properties| properties.with_user_id(user_id.into()))
    }

    /// As attempt `attempt` at the message.
    #[must_use]
    pub fn with_attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt;
        self
    }

    /// With this `message_id`.
    #[must_use]
    pub fn with_message_id(mut self, message_id: &str) -> Self {
        self.message_id = Some(message_id.into());
        self
    }

    fn edit_properties(mut self, edit: impl FnOnce(BasicProperties) -> BasicProperties) -> Self {
        let delivery = self.delivery_mut();
        delivery.properties = edit(std::mem::take(&mut delivery.properties));
        self
    }

    /// The delivery, to change: this metadata's own, copied first when it is shared.
    fn delivery_mut(&mut self) -> &mut Delivery {
        if Arc::get_mut(&mut self.delivery).is_none() {
            let shared = &self.delivery;
            let mut copy = Delivery::mock(
                shared.delivery_tag,
                shared.exchange.clone(),
                shared.routing_key.clone(),
                shared.redelivered,
                shared.data.clone(),
            );
            copy.properties = shared.properties.clone();
            self.delivery = Arc::new(copy);
        }
        Arc::get_mut(&mut self.delivery).unwrap_or_else(|| unreachable!("copied just above"))
    }
}

/// A message delivered on no queue, first attempt, without properties.
impl Default for Metadata {
    fn default() -> Self {
        let delivery = Delivery::mock(0, "".into(), "".into(), false, Vec::new());
        Self::new(Arc::new(delivery), "".into(), 1)
    }
}

fn text(value: &Option<ShortString>) -> Option<&str> {
    value.as_ref().map(ShortString::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_set_what_the_methods_read() {
        let mut headers = FieldTable::default();
        headers.insert("x-k".into(), AMQPValue::LongString("v".into()));
        let metadata = Metadata::default()
            .with_queue("q")
            .with_exchange("e")
            .with_routing_key("r")
            .with_redelivered(true)
            .with_headers(headers)
            .with_reply_to("back")
            .with_correlation_id("c")
            .with_user_id("u")
            .with_attempt(3);
        let shared = metadata.clone();
        // Changing a copy leaves the other as it was.
        let changed = metadata.with_message_id("m").with_routing_key("other");
        for m in [&shared, &changed] {
            assert_eq!(m.queue(), "q");
            assert_eq!(m.exchange(), "e");
            assert!(m.redelivered());
            assert_eq!(m.header("x-k"), Some(&AMQPValue::LongString("v".into())));
            assert_eq!(m.reply_to(), Some("back"));
            assert_eq!(m.correlation_id(), Some("c"));
            assert_eq!(m.user_id(), Some("u"));
            assert_eq!(m.attempt(), 3);
        }
        assert_eq!(shared.routing_key(), "r");
        assert_eq!(shared.message_id(), None);
        assert_eq!(changed.routing_key(), "other");
        assert_eq!(changed.message_id(), Some("m"));
        assert_eq!(Metadata::default().headers(), &FieldTable::default());
        assert_eq!(Metadata::default().attempt(), 1);
    }
}
