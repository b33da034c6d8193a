//! Plain AMQP messages, for code that does not speak the Postage envelope: an [`Envelope`]
//! to send (a body and its properties: application headers, content type and encoding,
//! correlation id...) and an [`Incoming`] message received, acknowledged explicitly.

use std::sync::Arc;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::consumer;
use crate::error::{Error, Result};

/// A value that can stand in an application header: integers, floats, booleans, text, or
/// any lapin [`AMQPValue`] (nested tables included).
pub trait HeaderValue {
    /// The header as AMQP encodes it.
    fn into_header_value(self) -> AMQPValue;
}

macro_rules! header_values {
    ($($ty:ty => $variant:ident),* $(,)?) => {
        $(impl HeaderValue for $ty {
            fn into_header_value(self) -> AMQPValue {
                AMQPValue::$variant(self)
            }
        })*
    };
}

header_values! {
    bool => Boolean,
    i8 => ShortShortInt,
    u8 => ShortShortUInt,
    i16 => ShortInt,
    u16 => ShortUInt,
    i32 => LongInt,
    u32 => LongUInt,
    i64 => LongLongInt,
    f32 => Float,
    f64 => Double,
    FieldTable => FieldTable,
    LongString => LongString,
    ShortString => ShortString,
}

impl HeaderValue for &str {
    fn into_header_value(self) -> AMQPValue {
        AMQPValue::LongString(self.into())
    }
}

impl HeaderValue for String {
    fn into_header_value(self) -> AMQPValue {
        AMQPValue::LongString(self.into())
    }
}

impl HeaderValue for AMQPValue {
    fn into_header_value(self) -> AMQPValue {
        self
    }
}

/// A message to publish as it is: a body of bytes and its AMQP properties, no Postage
/// envelope around it. Built like Python amqplib's `Message`:
///
/// ```
/// use postage_core::channel::Envelope;
///
/// let message = Envelope::text("fancy").header("foo", 7).header("bar", "baz");
/// assert_eq!(message.body(), b"fancy");
/// assert_eq!(message.properties().content_encoding().as_ref().map(|e| e.as_str()), Some("utf-8"));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    body: Vec<u8>,
    properties: BasicProperties,
    mandatory: bool,
}

impl Envelope {
    /// A message with this body and no properties.
    pub fn new(body: impl Into<Vec<u8>>) -> Self {
        Self {
            body: body.into(),
            properties: BasicProperties::default(),
            mandatory: false,
        }
    }

    /// A text message: UTF-8 body, content type `text/plain`, content encoding `utf-8`.
    pub fn text(text: impl Into<String>) -> Self {
        Self::new(text.into().into_bytes())
            .content_type("text/plain")
            .content_encoding("utf-8")
    }

    /// A JSON message: `value` serialized, content type `application/json`.
    pub fn json(value: &impl Serialize) -> Result<Self> {
        let body = serde_json::to_vec(value).map_err(|source| Error::Payload {
            what: "a JSON message body".to_owned(),
            source,
        })?;
        Ok(Self::new(body).content_type("application/json"))
    }

    /// Adds the application header `name` (amqplib's `application_headers`).
    #[must_use]
    pub fn header(mut self, name: &str, value: impl HeaderValue) -> Self {
        let mut headers = self.properties.headers().clone().unwrap_or_default();
        headers.insert(name.into(), value.into_header_value());
        self.properties = self.properties.with_headers(headers);
        self
    }

    /// Sets the MIME content type (`application/json`, `text/plain`...).
    #[must_use]
    pub fn content_type(mut self, content_type: &str) -> Self {
        self.properties = self.properties.with_content_type(content_type.into());
        self
    }

    /// Sets the content encoding (`utf-8`, `gzip`...).
    #[must_use]
    pub fn content_encoding(mut self, encoding: &str) -> Self {
        self.properties = self.properties.with_content_encoding(encoding.into());
        self
    }

    /// Sets the correlation id, which an answer copies.
    #[must_use]
    pub fn correlation_id(mut self, id: &str) -> Self {
        self.properties = self.properties.with_correlation_id(id.into());
        self
    }

    /// Sets the queue an answer should be sent to.
    #[must_use]
    pub fn reply_to(mut self, queue: &str) -> Self {
        self.properties = self.properties.with_reply_to(queue.into());
        self
    }

    /// Asks the broker to keep the message on disk (delivery mode 2) in a durable queue.
    #[must_use]
    pub fn persistent(mut self, persistent: bool) -> Self {
        self.properties = self
            .properties
            .with_delivery_mode(if persistent { 2 } else { 1 });
        self
    }

    /// Replaces every property at once, for those this type has no method for.
    #[must_use]
    pub fn properties_from(mut self, properties: BasicProperties) -> Self {
        self.properties = properties;
        self
    }

    /// Publishes `mandatory`: a message no queue takes comes back, and its
    /// [`Tracker`](crate::channel::Tracker) says [`Unroutable`](crate::channel::DeliveryStatus::Unroutable)
    /// instead of [`Accepted`](crate::channel::DeliveryStatus::Accepted).
    #[must_use]
    pub fn mandatory(mut self, mandatory: bool) -> Self {
        self.mandatory = mandatory;
        self
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The AMQP properties.
    pub fn properties(&self) -> &BasicProperties {
        &self.properties
    }

    /// Whether it is published `mandatory`.
    pub fn is_mandatory(&self) -> bool {
        self.mandatory
    }

    pub(crate) fn into_parts(self) -> (Vec<u8>, BasicProperties, bool) {
        (self.body, self.properties, self.mandatory)
    }
}

/// A message received from a queue, by polling ([`Channel::get`](crate::channel::Channel::get)) or
/// consuming ([`Subscription`](crate::channel::Subscription)): its body, properties and routing,
/// to acknowledge or reject explicitly.
#[derive(Debug)]
pub struct Incoming {
    inner: lapin::message::Delivery,
    queue: Arc<str>,
    consumer_tag: Option<Arc<str>>,
}

impl Incoming {
    pub(crate) fn new(
        inner: lapin::message::Delivery,
        queue: Arc<str>,
        consumer_tag: Option<Arc<str>>,
    ) -> Self {
        Self {
            inner,
            queue,
            consumer_tag,
        }
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        &self.inner.data
    }

    /// The body as UTF-8 text.
    pub fn text(&self) -> Result<&str> {
        std::str::from_utf8(&self.inner.data).map_err(|error| {
            Error::MalformedMessage(format!(
                "a body from {:?} is not UTF-8: {error}",
                self.queue
            ))
        })
    }

    /// The body decoded from JSON into `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.inner.data).map_err(|source| Error::Payload {
            what: format!("a message from {:?}", self.queue),
            source,
        })
    }

    /// The AMQP properties: headers, content type and encoding, `reply_to`...
    pub fn properties(&self) -> &BasicProperties {
        &self.inner.properties
    }

    /// The application headers, if any.
    pub fn headers(&self) -> Option<&FieldTable> {
        self.inner.properties.headers().as_ref()
    }

    /// One application header.
    pub fn header(&self, name: &str) -> Option<&AMQPValue> {
        self.headers().and_then(|h| h.inner().get(name))
    }

    /// One application header holding text.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        match self.header(name)? {
            AMQPValue::LongString(text) => std::str::from_utf8(text.as_bytes()).ok(),
            AMQPValue::ShortString(text) => Some(text.as_str()),
            _ => None,
        }
    }

    /// The content type, if set.
    pub fn content_type(&self) -> Option<&str> {
        self.inner
            .properties
            .content_type()
            .as_ref()
            .map(ShortString::as_str)
    }

    /// The content encoding, if set.
    pub fn content_encoding(&self) -> Option<&str> {
        self.inner
            .properties
            .content_encoding()
            .as_ref()
            .map(ShortString::as_str)
    }

    /// The correlation id, if set.
    pub fn correlation_id(&self) -> Option<&str> {
        self.inner
            .properties
            .correlation_id()
            .as_ref()
            .map(ShortString::as_str)
    }

    /// Where the sender wants an answer, if anywhere.
    pub fn reply_to(&self) -> Option<&str> {
        self.inner
            .properties
            .reply_to()
            .as_ref()
            .map(ShortString::as_str)
    }

    /// The queue it was read from.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The exchange it was published to (`""` for the default exchange).
    pub fn exchange(&self) -> &str {
        self.inner.exchange.as_str()
    }

    /// The routing key it was published with.
    pub fn routing_key(&self) -> &str {
        self.inner.routing_key.as_str()
    }

    /// The tag of the consumer that received it; `None` for a polled message. Cancel that
    /// consumer with [`Channel::cancel`](crate::channel::Channel::cancel).
    pub fn consumer_tag(&self) -> Option<&str> {
        self.consumer_tag.as_deref()
    }

    /// True when the broker delivered it before without an acknowledgement.
    pub fn redelivered(&self) -> bool {
        self.inner.redelivered
    }

    /// Acknowledges (accepts) it: the broker forgets it. Fails with
    /// [`Error::Closed`](crate::Error::Closed) when the channel it came on has closed since
    /// (a lost connection, or closed by the broker): the broker delivers it again.
    pub async fn ack(&self) -> Result<()> {
        consumer::ack(&self.inner, &self.queue).await
    }

    /// Rejects it; with `requeue` the broker delivers it again, otherwise it is dropped or
    /// dead-lettered. Fails as [`ack`](Self::ack) does.
    pub async fn reject(&self, requeue: bool) -> Result<()> {
        consumer::reject(&self.inner, &self.queue, requeue).await
    }

    /// The lapin delivery, for anything postage does not wrap.
    pub fn lapin(&self) -> &lapin::message::Delivery {
        &self.inner
    }
}
