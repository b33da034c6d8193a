//! Asking a broker which queue shape it accepts (see [`QueueShape`]).

use lapin::ErrorKind;
use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::protocol::{AMQPErrorKind, AMQPHardError};
use lapin::types::{AMQPValue, FieldTable};

use super::dial::{connection_name, open};
use crate::config::{Config, Host};
use crate::topology::QueueShape;

/// Whether the broker at `host` accepts a transient non-exclusive queue, asked on a
/// connection of its own: a broker that refuses one closes the whole connection, which
/// must not be the user's (and lapin logs that close as an error, target `lapin`). When the question cannot be asked (the probe fails for any
/// other reason) the wire contract's shape is kept, and a refused declaration later says
/// which setting to change.
pub(super) async fn probe_shape(config: &Config, host: &Host) -> QueueShape {
    let name = format!("{} queue shape probe", connection_name(config));
    let Ok(probe) = open(config, host, &name).await else {
        return QueueShape::Transient;
    };
    let asked = async {
        let channel = probe.create_channel().await?;
        let mut arguments = FieldTable::default();
        // Gone by itself should the delete below never arrive.
        arguments.insert("x-expires".into(), AMQPValue::LongInt(10_000));
        let options = QueueDeclareOptions {
            auto_delete: true,
            ..QueueDeclareOptions::default()
        };
        let queue = channel.queue_declare("".into(), options, arguments).await?;
        channel
            .queue_delete(queue.name().clone(), QueueDeleteOptions::default())
            .await?;
        Ok::<_, lapin::Error>(())
    };
    let shape = match tokio::time::timeout(config.connection_timeout, asked).await {
        Ok(Ok(())) => QueueShape::Transient,
        Ok(Err(error)) if is_deprecated_feature(&error) => QueueShape::Durable,
        Ok(Err(error)) => {
            tracing::debug!(host = %host, %error, "could not ask the broker for its queue shape");
            QueueShape::Transient
        }
        Err(_) => QueueShape::Transient,
    };
    if probe.status().connected() {
        let closing = probe.close(200, "postage: queue shape probe".into());
        let _ = tokio::time::timeout(config.connection_timeout, closing).await;
    }
    shape
}

/// The broker's answer to a use of a feature it was told to deny.
fn is_deprecated_feature(error: &lapin::Error) -> bool {
    matches!(error.kind(), ErrorKind::ProtocolError(e)
        if matches!(e.kind(), AMQPErrorKind::Hard(AMQPHardError::INTERNALERROR))
            && e.get_message().as_str().contains("is deprecated"))
}
