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
    collect(connection, exchange, routing_key, message, wait, None).await
}

/// [`gather`], returning `grace` after the first answer (or at `timeout` without one):
/// a call's answer, and whether others answered too (a fanout key runs the handler on
/// every component it reaches).
pub async fn gather_first(
    connection: &Connection,
    exchange: &Exchange,
    routing_key: &str,
    message: &Message,
    timeout: Duration,
    grace: Duration,
) -> Result<Vec<Message>> {
    collect(
        connection,
        exchange,
        routing_key,
        message,
        timeout,
        Some(grace),
    )
    .await
}

/// Publishes `message` with a private reply queue of its own and confirms it; returns
/// the channel and the consumer of the answers.
async fn ask(
    connection: &Connection,
    exchange: &Exchange,
    routing_key: &str,
    message: &Message,
) -> Result<(postage_core::lapin::Channel, postage_core::lapin::Consumer)> {
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
    let replies = channel
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
        .with_user_id(connection.config().user.as_str().into())
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
    Ok((channel, replies))
}

async fn collect(
    connection: &Connection,
    exchange: &Exchange,
    routing_key: &str,
    message: &Message,
    wait: Duration,
    grace: Option<Duration>,
) -> Result<Vec<Message>> {
    // Under a resource alarm the publish waits: it too must end within `wait`.
    let asked = tokio::time::timeout(wait, ask(connection, exchange, routing_key, message)).await;
    let Ok(asked) = asked else {
        return Err(connection.overdue(
            format!("asking {:?} with key {routing_key:?}", exchange.name()),
            wait,
        ));
    };
    let (channel, mut replies) = asked?;
    let mut answers = Vec::new();
    let mut deadline = tokio::time::Instant::now() + wait;
    while let Ok(Some(Ok(delivery))) = tokio::time::timeout_at(deadline, replies.next()).await {
        match Message::from_json(&delivery.data) {
            Ok(answer) => answers.push(answer),
            Err(error) => tracing::warn!(%error, "ignoring a malformed answer"),
        }
        if let Some(grace) = grace
            && answers.len() == 1
        {
            deadline = deadline.min(tokio::time::Instant::now() + grace);
        }
    }
    let _ = tokio::time::timeout(wait, channel.close(200, "done".into())).await;
    Ok(answers)
}

/// Every live postage application of the virtual host that answers within `wait`, with
/// its fingerprint, groups and handlers.
pub async fn components(connection: &Connection, wait: Duration) -> Result<Vec<Description>> {
    let ask = Message::rpc_command("describe", serde_json::json!({}))?;
    let answers = match gather(connection, &DISCOVERY_EXCHANGE, "", &ask, wait).await {
        // No application listens on the discovery exchange: none is running.
        Err(Error::Unroutable { .. }) => return Ok(Vec::new()),
        answers => answers?,
    };
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
