//! Reaching a broker: every host in turn, each within the connection timeout, a refused
//! login or virtual host final.

use std::sync::Arc;

use async_rs::traits::Reactor;
use async_rs::util::SocketAddrs;
use async_rs::{Tokio, TokioRuntime};
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::tcp::{AsyncTcpStream, OwnedTLSConfig};
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{ConnectionProperties, ErrorKind};

use super::Link;
use super::runtime::lapin_runtime;
use crate::config::{Config, Host};
use crate::error::{Error, Result};

/// Tries every host in turn, each for at most [`Config::connection_timeout`]; a refused
/// login or virtual host stops at once.
/// A publishing connection (`publishing`) says so in its name, in the broker's list.
pub(super) async fn dial(config: &Config, publishing: bool) -> Result<Link> {
    let name = if publishing {
        format!("{} publishing", connection_name(config))
    } else {
        connection_name(config)
    };
    let mut attempts = Vec::new();
    for host in &config.hosts {
        match open(config, host, &name).await {
            Ok(amqp) => {
                tracing::debug!(host = %host, vhost = %config.vhost, "connected to RabbitMQ");
                return Ok(Link {
                    amqp: Arc::new(amqp),
                    host: host.clone(),
                    shape: Arc::default(),
                });
            }
            Err(Refusal::Final(error)) => return Err(error),
            Err(Refusal::Next(reason)) => {
                tracing::debug!(host = %host, %reason, "RabbitMQ host did not accept the connection");
                attempts.push(format!("{host}: {reason}"));
            }
        }
    }
    Err(Error::ConnectionFailed {
        attempts: attempts.join("; "),
    })
}

/// Why one host was not connected to: a refusal that another host would repeat (login,
/// virtual host), or a reason to try the next.
pub(super) enum Refusal {
    Final(Error),
    Next(String),
}

/// The bytes of publishes a connection may have queued, not yet written, before a
/// publish waits for the socket: 256 KiB, some 1,000 small messages or one large one.
/// A larger backlog published no faster here and held more with 10,000 RPC calls in
/// flight, their requests waiting as frames (the benchmark's memory figure: 8 MiB 24.3
/// MiB, 1 MiB 21.7, 256 KiB 17.1).
pub const PUBLISH_BACKLOG: usize = 256 << 10;

/// Opens one AMQP connection to `host`, within [`Config::connection_timeout`].
pub(super) async fn open(
    config: &Config,
    host: &Host,
    name: &str,
) -> Result<lapin::Connection, Refusal> {
    // The patched lapin's two opt-ins (patches/README.md): the I/O loop a task on the
    // runtime below instead of a thread per connection, and a publish that returns once
    // its frames are queued (in issue order with the channel's other frames), waiting only
    // while more than PUBLISH_BACKLOG bytes are queued on the connection.
    let properties = ConnectionProperties::default()
        .with_connection_name(name.into())
        .with_io_loop_task(true)
        .with_queued_publishes(PUBLISH_BACKLOG);
    let tls = if config.tls {
        config.tls_config().map_err(Refusal::Final)?
    } else {
        OwnedTLSConfig::default()
    };
    let runtime = lapin_runtime().map_err(Refusal::Final)?;
    // lapin bounds neither the TCP connect nor the AMQP handshake: a frozen broker (its
    // kernel still accepts connections) would hold the dial, and every host after it,
    // forever.
    let connect = lapin::Connection::task_connector(
        config.amqp_uri(host),
        runtime,
        move |uri, runtime| stream(uri, runtime, tls.clone()),
        properties,
    );
    match tokio::time::timeout(config.connection_timeout, connect).await {
        Err(_) => Err(Refusal::Next(format!(
            "no answer within {:?}",
            config.connection_timeout
        ))),
        Ok(Ok(amqp)) => Ok(amqp),
        Ok(Err(error)) => Err(refusal(config, host, &error)),
    }
}

/// Opens the socket of a connection to `uri`, TLS on it when the scheme asks, as lapin's
/// own connector does, but with the host resolved by tokio: when the runtime ends during
/// a resolution (an application stopping while a connection is being dialled, as after a
/// refused start with the publishing connection on its way), tokio's resolver fails
/// with an error where lapin's (async-rs's) panicked on the runtime's thread, its trace
/// on the user's terminal.
async fn stream(
    uri: AMQPUri,
    runtime: TokioRuntime,
    tls: OwnedTLSConfig,
) -> lapin::Result<AsyncTcpStream<<Tokio as Reactor>::TcpStream>> {
    let host = &uri.authority.host;
    let addresses: Vec<_> = tokio::net::lookup_host((host.as_str(), uri.authority.port))
        .await?
        .collect();
    let stream = AsyncTcpStream::connect(&runtime, SocketAddrs(addresses)).await?;
    Ok(match uri.scheme {
        AMQPScheme::AMQP => stream,
        AMQPScheme::AMQPS => stream.into_tls(host, tls.as_ref()).await?,
    })
}

/// Sorts a failed connection attempt: a refused login or virtual host is final.
fn refusal(config: &Config, host: &Host, error: &lapin::Error) -> Refusal {
    let ErrorKind::ProtocolError(amqp) = error.kind() else {
        return Refusal::Next(error.to_string());
    };
    match amqp.kind() {
        AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) => Refusal::Final(Error::AccessRefused {
            user: config.user.clone(),
            vhost: config.vhost.clone(),
            host: host.to_string(),
        }),
        AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED) => Refusal::Final(Error::VhostRefused {
            vhost: config.vhost.clone(),
            user: config.user.clone(),
            host: host.to_string(),
            reason: amqp
                .get_message()
                .as_str()
                .trim_start_matches("NOT_ALLOWED - ")
                .to_owned(),
        }),
        _ => Refusal::Next(error.to_string()),
    }
}

/// The name shown in the broker's connection list: [`Config::connection_name`], by
/// default `program (pid N)`.
pub(super) fn connection_name(config: &Config) -> String {
    if let Some(name) = &config.connection_name {
        return name.clone();
    }
    let program = std::env::args()
        .next()
        .and_then(|p| {
            std::path::Path::new(&p)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "postage".to_owned());
    format!("{program} (pid {})", std::process::id())
}
