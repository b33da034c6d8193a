//! One publish on its way, [`Publish`], and how a producer sends it: within its publish
//! timeout, in a span of its own whose trace context goes in the message's headers,
//! counted in the metrics, to the recording of a test or to the broker, with the
//! broker's confirm awaited in reliable mode.

use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Confirmation};
use tracing::Instrument;

use super::Producer;
use crate::error::{Error, Result};
use crate::telemetry::{span, stamp};

/// One publish: where it goes, what it carries, and how it is sent.
#[derive(Debug)]
pub(crate) struct Publish<'a> {
    exchange: &'a str,
    routing_key: &'a str,
    body: &'a [u8],
    properties: BasicProperties,
    /// Returned by the broker when no queue takes it (with confirms, `Unroutable`).
    mandatory: bool,
    /// The channel it goes on, when not the producer's own.
    via: Option<&'a lapin::Channel>,
}

impl<'a> Publish<'a> {
    /// `body` with `properties` to `exchange` with `routing_key`, not mandatory, on the
    /// producer's own channel.
    pub(crate) fn new(
        exchange: &'a str,
        routing_key: &'a str,
        body: &'a [u8],
        properties: BasicProperties,
    ) -> Self {
        Self {
            exchange,
            routing_key,
            body,
            properties,
            mandatory: false,
            via: None,
        }
    }

    /// Mandatory or not: a reliable producer's publishes are, a fanout to whoever
    /// listens now is not.
    #[must_use]
    pub(crate) fn mandatory(mut self, mandatory: bool) -> Self {
        self.mandatory = mandatory;
        self
    }

    /// On `channel` instead of the producer's own: an RPC answer goes back on the
    /// channel its request came on, as a raw server's does (no second connection on its
    /// way, and an answer lost with that channel belongs to a request the broker
    /// delivers again).
    #[must_use]
    pub(crate) fn via(mut self, channel: &'a lapin::Channel) -> Self {
        self.via = Some(channel);
        self
    }

    fn operation(&self) -> String {
        format!(
            "publishing to exchange {:?} with key {:?}",
            self.exchange, self.routing_key
        )
    }
}

impl Producer {
    /// Sends `publish` within the producer's publish timeout (in reliable mode, with its
    /// confirm and a return reported).
    pub(crate) async fn send(&self, publish: Publish<'_>) -> Result<()> {
        let bound = self.inner.publish_timeout;
        let operation = publish.operation();
        match tokio::time::timeout(bound, self.send_unbounded(publish)).await {
            Ok(published) => published,
            Err(_) => Err(self.overdue(operation, bound)),
        }
    }

    /// Sends `publish` without a bound of its own: the caller bounds it (an RPC
    /// attempt, within its deadline).
    pub(crate) async fn send_unbounded(&self, mut publish: Publish<'_>) -> Result<()> {
        let span = span::publish(publish.exchange, publish.routing_key, publish.body.len());
        publish.properties = span.in_scope(|| stamp(publish.properties));
        let published = self.write(publish).instrument(span.clone()).await;
        let telemetry = self.telemetry();
        if !span.is_disabled() || telemetry.is_some() {
            let outcome = match &published {
                Ok(()) if self.inner.reliable => "confirmed",
                Ok(()) => "sent",
                Err(Error::Unroutable { .. }) => "unroutable",
                Err(Error::PublishRefused { .. }) => "refused",
                Err(_) => "failed",
            };
            span::outcome(&span, "postage.outcome", outcome, published.is_ok());
            if let Some(telemetry) = telemetry {
                telemetry.metrics.publish(outcome);
            }
        }
        published
    }

    /// Writes `publish` to the recording of a test, or to the broker, awaiting its
    /// confirm in reliable mode.
    async fn write(&self, publish: Publish<'_>) -> Result<()> {
        if let Some(recording) = self.recording() {
            return recording.record(
                self,
                publish.exchange,
                publish.routing_key,
                publish.body,
                &publish.properties,
            );
        }
        let operation = publish.operation();
        let live;
        let channel: &lapin::Channel = match publish.via {
            Some(channel) => channel,
            None => {
                live = self.live_channel().await?;
                &live
            }
        };
        let confirm = channel
            .basic_publish(
                publish.exchange.into(),
                publish.routing_key.into(),
                BasicPublishOptions {
                    mandatory: publish.mandatory,
                    immediate: false,
                },
                publish.body,
                publish.properties,
            )
            .await
            .map_err(|source| Error::Amqp {
                operation: operation.clone(),
                source,
            })?;
        if !self.inner.reliable {
            return Ok(());
        }
        let confirmation = confirm
            .await
            .map_err(|source| Error::Amqp { operation, source })?;
        match confirmation {
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
            Confirmation::Ack(Some(_)) => Err(Error::Unroutable {
                exchange: publish.exchange.to_owned(),
                routing_key: publish.routing_key.to_owned(),
            }),
            Confirmation::Nack(_) => Err(Error::PublishRefused {
                exchange: publish.exchange.to_owned(),
                routing_key: publish.routing_key.to_owned(),
            }),
        }
    }
}
