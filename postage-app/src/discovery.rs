//! Calls that collect every answer that arrives within a wait: `ping` on a fanout key,
//! and the list of live components.

use std::time::Duration;

use futures_util::StreamExt;
use postage_core::lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use postage_core::lapin::types::FieldTable;
use postage_core::lapin::{BasicProperties, Confirmation};
use postage_core::{Connection, Error, Exchange, Message, Result};

use crate::addresses::DISCOVERY_EXCHANGE;
use crate::application::Description;

/// Publishes `message` (an RPC command) to `exchange` with `routing_key` and returns every
/// answer that arrives within `wait`: one per application a fanout key reaches. A key no
/// queue is bound to is [`Error::Unroutable`].
pub async fn gather(
    connection: &Connection,
    exchange: &Exchange,
    routing_key: &str,
    message: &Message,
    wait: Duration,
) -> Result<Vec<Message>> {
    let channel = connection.open_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|source| Error::Amqp {
            operation: "enabling publisher confirms".into(),
            source,
        })?;
    let options = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    let queue = channel
        .queue_declare("".into(), options, FieldTable::default())
        .await
        .map_err(|source| Error::Amqp {
            operation: "declaring a reply queue".into(),
            source,
        })?;
    let mut replies = channel
        .basic_consume(
            queue.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|source| Error::Amqp {
            operation: "consuming answers".into(),
            source,
        })?;
    exchange.declare(&channel).await?;
    let body = message.to_json()?;
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_reply_to(queue.name().clone());
    let publish_error = |source| Error::Amqp {
        operation: format!(
            "publishing to {:?} with key {routing_key:?}",
            exchange.name()
        ),
        source,
    };
    let confirmation = channel
        .basic_publish(
            exchange.name().into(),
            routing_key.into(),
            BasicPublishOptions {
                mandatory: true,
                immediate: false,
            },
            &body,
            properties,
        )
        .await
        .map_err(publish_error)?
        .await
        .map_err(publish_error)?;
    if matches!(
        confirmation,
        Confirmation::Ack(Some(_)) | Confirmation::Nack(_)
    ) {
        return Err(Error::Unroutable {
            exchange: exchange.name().to_owned(),
            routing_key: routing_key.to_owned(),
        });
    }
    let mut answers = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Some(Ok(delivery))) = tokio::time::timeout_at(deadline, replies.next()).await {
        match Message::from_json(&delivery.data) {
            Ok(answer) => answers.push(answer),
            Err(error) => tracing::warn!(%error, "ignoring a malformed answer"),
        }
    }
    let _ = channel.close(200, "done".into()).await;
    Ok(answers)
}

/// Every live postage application of the virtual host that answers within `wait`, with
/// its fingerprint, groups and handlers.
pub async fn components(connection: &Connection, wait: Duration) -> Result<Vec<Description>> {
    let ask = Message::rpc_command("describe", serde_json::json!({}))?;
    let answers = gather(connection, &DISCOVERY_EXCHANGE, "", &ask, wait).await?;
    let mut found: Vec<Description> = answers
        .iter()
        .filter_map(|answer| match answer.to_result() {
            postage_core::RpcResult::Success { value, .. } => serde_json::from_value(value).ok(),
            _ => None,
        })
        .collect();
    found.sort_by(|a, b| {
        (&a.fingerprint.name, &a.fingerprint.host, &a.fingerprint.pid).cmp(&(
            &b.fingerprint.name,
            &b.fingerprint.host,
            &b.fingerprint.pid,
        ))
    });
    Ok(found)
}
