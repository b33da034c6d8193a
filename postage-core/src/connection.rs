//! One connection to RabbitMQ, shared by every producer and consumer of a process.

use std::ops::Deref;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::{ConnectionProperties, ErrorKind};

use crate::config::{Config, Host};
use crate::error::{Error, Result};

/// A connection to the first broker of [`Config::hosts`] that accepts the login. Clone it
/// freely: clones share the one AMQP connection, and each producer or consumer opens its
/// own channel on it.
#[derive(Debug, Clone)]
pub struct Connection {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    amqp: lapin::Connection,
    config: Config,
    host: Host,
    /// Closes of channels whose producer or consumer was dropped, still under way.
    closing: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Connection {
    /// Connects with the `POSTAGE_*` environment (see [`Config::from_env`]).
    pub async fn from_env() -> Result<Self> {
        Self::connect(&Config::from_env()?).await
    }

    /// Connects to the first host of `config` that answers, trying them in turn. A login
    /// the broker refuses stops at once with [`Error::AccessRefused`]; when no host
    /// answers, [`Error::ConnectionFailed`] lists why for each.
    pub async fn connect(config: &Config) -> Result<Self> {
        config.validate()?;
        let mut attempts = Vec::new();
        for host in &config.hosts {
            let properties =
                ConnectionProperties::default().with_connection_name(connection_name().into());
            match lapin::Connection::connect_uri(config.amqp_uri(host), properties).await {
                Ok(amqp) => {
                    tracing::debug!(host = %host, vhost = %config.vhost, "connected to RabbitMQ");
                    return Ok(Self {
                        inner: Arc::new(Inner {
                            amqp,
                            config: config.clone(),
                            host: host.clone(),
                            closing: Arc::default(),
                        }),
                    });
                }
                Err(error) if is_access_refused(&error) => {
                    return Err(Error::AccessRefused {
                        user: config.user.clone(),
                        vhost: config.vhost.clone(),
                        host: host.to_string(),
                    });
                }
                Err(error) => {
                    tracing::warn!(host = %host, %error, "RabbitMQ host did not accept the connection");
                    attempts.push(format!("{host}: {error}"));
                }
            }
        }
        Err(Error::ConnectionFailed {
            attempts: attempts.join("; "),
        })
    }

    /// Opens a new channel.
    pub async fn open_channel(&self) -> Result<lapin::Channel> {
        self.inner
            .amqp
            .create_channel()
            .await
            .map_err(Error::amqp(format!(
                "opening a channel on {}",
                self.inner.host
            )))
    }

    /// Opens a channel that is closed explicitly when dropped, and that
    /// [`Connection::close`] waits for, so a close never races a channel still closing.
    pub(crate) async fn lease_channel(&self) -> Result<ChannelLease> {
        Ok(ChannelLease {
            channel: self.open_channel().await?,
            closing: Arc::clone(&self.inner.closing),
        })
    }

    /// The settings this connection was made with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The broker this connection reached.
    pub fn host(&self) -> &Host {
        &self.inner.host
    }

    /// The underlying lapin connection, for anything postage does not wrap.
    pub fn lapin(&self) -> &lapin::Connection {
        &self.inner.amqp
    }

    /// Closes the connection, and with it every channel opened on it. Closing a closed
    /// connection does nothing.
    pub async fn close(&self) -> Result<()> {
        if !self.inner.amqp.status().connected() {
            return Ok(());
        }
        let closing = self
            .inner
            .closing
            .lock()
            .map(|mut tasks| std::mem::take(&mut *tasks))
            .unwrap_or_default();
        for task in closing {
            let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
        }
        match self
            .inner
            .amqp
            .close(200, "postage: closed by the application".into())
            .await
        {
            // A channel whose last handle was just dropped is still closing; lapin reports
            // that, yet the connection is torn down all the same.
            Err(error) if matches!(error.kind(), ErrorKind::InvalidChannelState(..)) => Ok(()),
            other => other.map_err(Error::amqp("closing the connection")),
        }
    }
}

/// A channel owned by a producer or consumer: when it is dropped the channel is closed
/// explicitly, and the connection's close waits for that.
#[derive(Debug)]
pub(crate) struct ChannelLease {
    channel: lapin::Channel,
    closing: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Deref for ChannelLease {
    type Target = lapin::Channel;

    fn deref(&self) -> &lapin::Channel {
        &self.channel
    }
}

impl Drop for ChannelLease {
    fn drop(&mut self) {
        if !self.channel.status().connected() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let channel = self.channel.clone();
        let task = runtime.spawn(async move {
            let _ = channel.close(200, "postage: released".into()).await;
        });
        if let Ok(mut tasks) = self.closing.lock() {
            tasks.retain(|t| !t.is_finished());
            tasks.push(task);
        }
    }
}

fn is_access_refused(error: &lapin::Error) -> bool {
    matches!(error.kind(), ErrorKind::ProtocolError(e)
        if matches!(e.kind(), AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED)))
}

/// `program (pid N)`, shown in the broker's connection list.
fn connection_name() -> String {
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
