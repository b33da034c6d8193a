//! One connection to RabbitMQ, shared by every producer and consumer of a process.

use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::watch;

use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{ConnectionProperties, ErrorKind};

use crate::config::{Config, Host};
use crate::error::{Error, Result};
use crate::topology::QueueShape;

/// A connection to the first broker of [`Config::hosts`] that accepts the login, kept
/// alive: when it is lost (network cut, broker restart, node loss, closed by the broker,
/// a silent peer caught by heartbeats) it reconnects with backoff, trying every host in
/// turn, and every consumer built on it restores its topology and consumers; producers
/// reopen their channel on their next publish. Clone it freely: clones share the one
/// AMQP connection, and each producer or consumer opens its own channel on it.
#[derive(Debug, Clone)]
pub struct Connection {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: Config,
    link: RwLock<Link>,
    /// Bumped after each reconnection; consumers and producers watch it.
    generation: watch::Sender<u64>,
    /// Connected, blocked or reconnecting, for programs to watch.
    state: watch::Sender<LinkState>,
    /// Set by [`Connection::close`]: a closed connection is not recovered.
    closed: AtomicBool,
    /// Closes of channels whose producer or consumer was dropped, still under way.
    closing: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

/// What a connection's link to RabbitMQ is doing, for a program to watch
/// ([`Connection::watch_state`]) and log.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LinkState {
    /// Connected, and publishing flows.
    Connected,
    /// Connected, but the broker has stopped taking what this connection publishes: a
    /// resource alarm (memory or disk) is in effect. Publishes and calls wait at most their
    /// bound, then fail with [`Error::Blocked`].
    Blocked {
        /// The broker's reason, such as `low on memory`.
        reason: String,
    },
    /// The connection was lost; postage is reconnecting, trying every host.
    Reconnecting,
}

/// The live AMQP connection, the host it reached and how queues are declared there
/// (asked of that broker the first time it matters).
#[derive(Debug, Clone)]
struct Link {
    amqp: Arc<lapin::Connection>,
    host: Host,
    shape: Arc<tokio::sync::OnceCell<QueueShape>>,
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
        let link = dial(config).await?;
        let events = link.amqp.events_listener();
        let connection = Self {
            inner: Arc::new(Inner {
                config: config.clone(),
                link: RwLock::new(link),
                generation: watch::Sender::new(0),
                state: watch::Sender::new(LinkState::Connected),
                closed: AtomicBool::new(false),
                closing: Arc::default(),
            }),
        };
        tokio::spawn(supervise(
            Arc::downgrade(&connection.inner),
            Box::pin(events),
        ));
        Ok(connection)
    }

    fn link(&self) -> Link {
        match self.inner.link.read() {
            Ok(link) => link.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Opens a new channel on the live connection.
    pub async fn open_channel(&self) -> Result<lapin::Channel> {
        let link = self.link();
        link.amqp
            .create_channel()
            .await
            .map_err(Error::amqp(format!("opening a channel on {}", link.host)))
    }

    /// Opens a channel that is closed explicitly when dropped, and that
    /// [`Connection::close`] waits for, so a close never races a channel still closing.
    pub(crate) async fn lease_channel(&self) -> Result<ChannelLease> {
        static SERIAL: AtomicU64 = AtomicU64::new(0);
        Ok(ChannelLease {
            channel: self.open_channel().await?,
            closing: Arc::clone(&self.inner.closing),
            serial: SERIAL.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// How many times the connection was re-established: a change tells a channel user
    /// its channel is gone.
    pub fn generation(&self) -> u64 {
        *self.inner.generation.borrow()
    }

    /// Waits until the connection is up (again, when it was lost since generation `seen`)
    /// and returns its generation; gives up after ten connection timeouts, or at once
    /// when the connection was closed.
    pub(crate) async fn wait_reconnected(&self, seen: u64) -> Result<u64> {
        let mut generations = self.watch_generation();
        let patience = self.inner.config.connection_timeout * 10;
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            if self.inner.closed.load(Ordering::SeqCst) {
                return Err(Error::Closed("the connection"));
            }
            let generation = *generations.borrow_and_update();
            if self.link().amqp.status().connected() {
                if generation != seen {
                    tracing::debug!(seen, generation, "connection re-established");
                }
                return Ok(generation);
            }
            match tokio::time::timeout_at(deadline, generations.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(Error::Closed("the connection")),
                Err(_) => {
                    return Err(Error::ConnectionFailed {
                        attempts: format!(
                            "no broker of {} answered within {patience:?}",
                            self.inner.config.describe_hosts()
                        ),
                    });
                }
            }
        }
    }

    /// Wakes on each reconnection.
    pub fn watch_generation(&self) -> watch::Receiver<u64> {
        self.inner.generation.subscribe()
    }

    /// What the link is doing now: connected, blocked by a resource alarm, reconnecting.
    pub fn state(&self) -> LinkState {
        self.inner.state.borrow().clone()
    }

    /// Wakes on each change of [`Connection::state`].
    pub fn watch_state(&self) -> watch::Receiver<LinkState> {
        self.inner.state.subscribe()
    }

    /// The error for `operation`, which did not finish within `waited`: the broker's block
    /// when one is in effect, else a plain timeout.
    pub(crate) fn overdue(&self, operation: String, waited: Duration) -> Error {
        match self.state() {
            LinkState::Blocked { reason } => Error::Blocked {
                operation,
                reason,
                waited,
            },
            _ => Error::Timeout {
                operation,
                timeout: waited,
            },
        }
    }

    /// The settings this connection was made with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The broker this connection reaches now.
    pub fn host(&self) -> Host {
        self.link().host
    }

    /// How queues are declared on the broker this connection reaches now: what
    /// [`Config::queue_shape`] says, else what the broker accepts, asked once per
    /// connection (and again after a reconnection), the first time a queue that is
    /// neither durable nor exclusive is declared, on a short connection of its own.
    pub async fn queue_shape(&self) -> QueueShape {
        if let Some(shape) = self.inner.config.queue_shape {
            return shape;
        }
        let link = self.link();
        *link
            .shape
            .get_or_init(|| probe_shape(&self.inner.config, &link.host))
            .await
    }

    /// The live lapin connection, for anything postage does not wrap.
    pub fn lapin(&self) -> Arc<lapin::Connection> {
        self.link().amqp
    }

    /// Closes the connection, and with it every channel opened on it; it is not recovered
    /// after that. Closing a closed connection does nothing. Under a resource alarm
    /// ([`LinkState::Blocked`]) lapin writes nothing, the close included: it returns at
    /// once, and the close goes out when the alarm clears or the socket closes with the
    /// process.
    pub async fn close(&self) -> Result<()> {
        self.inner.closed.store(true, Ordering::SeqCst);
        let amqp = self.link().amqp;
        if !amqp.status().connected() {
            return Ok(());
        }
        if let LinkState::Blocked { reason } = self.state() {
            tracing::debug!(%reason, "closing a blocked connection in the background");
            if let Ok(runtime) = own_runtime() {
                drop(runtime.spawn(async move {
                    let _ = amqp
                        .close(200, "postage: closed by the application".into())
                        .await;
                }));
            }
            return Ok(());
        }
        let leases = self
            .inner
            .closing
            .lock()
            .map(|mut tasks| std::mem::take(&mut *tasks))
            .unwrap_or_default();
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            futures_util::future::join_all(leases),
        )
        .await;
        let closing = amqp.close(200, "postage: closed by the application".into());
        let bound = self.inner.config.connection_timeout;
        let Ok(closed) = tokio::time::timeout(bound, closing).await else {
            return Err(self.overdue("closing the connection".into(), bound));
        };
        match closed {
            // A channel whose last handle was just dropped is still closing; lapin reports
            // that, yet the connection is torn down all the same.
            Err(error) if matches!(error.kind(), ErrorKind::InvalidChannelState(..)) => Ok(()),
            other => other.map_err(Error::amqp("closing the connection")),
        }
    }
}

/// Tries every host in turn, each for at most [`Config::connection_timeout`]; a refused
/// login or virtual host stops at once.
async fn dial(config: &Config) -> Result<Link> {
    let mut attempts = Vec::new();
    for host in &config.hosts {
        match open(config, host, &connection_name()).await {
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
enum Refusal {
    Final(Error),
    Next(String),
}

/// Opens one AMQP connection to `host`, within [`Config::connection_timeout`].
async fn open(config: &Config, host: &Host, name: &str) -> Result<lapin::Connection, Refusal> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    let tls = if config.tls {
        config.tls_config().map_err(Refusal::Final)?
    } else {
        lapin::tcp::OwnedTLSConfig::default()
    };
    let runtime = lapin_runtime().map_err(Refusal::Final)?;
    // lapin bounds neither the TCP connect nor the AMQP handshake: a frozen broker (its
    // kernel still accepts connections) would hold the dial, and every host after it,
    // forever.
    let connect =
        lapin::Connection::connect_uri_with_config(config.amqp_uri(host), properties, tls, runtime);
    match tokio::time::timeout(config.connection_timeout, connect).await {
        Err(_) => Err(Refusal::Next(format!(
            "no answer within {:?}",
            config.connection_timeout
        ))),
        Ok(Ok(amqp)) => Ok(amqp),
        Ok(Err(error)) => Err(refusal(config, host, &error)),
    }
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

/// Whether the broker at `host` accepts a transient non-exclusive queue, asked on a
/// connection of its own: a broker that refuses one closes the whole connection, which
/// must not be the user's (and lapin logs that close as an error, target `lapin`). When the question cannot be asked (the probe fails for any
/// other reason) the wire contract's shape is kept, and a refused declaration later says
/// which setting to change.
async fn probe_shape(config: &Config, host: &Host) -> QueueShape {
    let name = format!("{} queue shape probe", connection_name());
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
        let _ = probe.close(200, "postage: queue shape probe".into()).await;
    }
    shape
}

/// A connection the broker closed over something postage sent (a refused feature, a
/// command it does not allow), not over its own state (forced close, shutdown) or the
/// network.
fn refused_request(error: &lapin::Error) -> bool {
    matches!(error.kind(), ErrorKind::ProtocolError(e)
        if matches!(e.kind(), AMQPErrorKind::Hard(hard)
            if !matches!(hard, AMQPHardError::CONNECTIONFORCED)))
}

/// The broker's answer to a use of a feature it was told to deny.
fn is_deprecated_feature(error: &lapin::Error) -> bool {
    matches!(error.kind(), ErrorKind::ProtocolError(e)
        if matches!(e.kind(), AMQPErrorKind::Hard(AMQPHardError::INTERNALERROR))
            && e.get_message().as_str().contains("is deprecated"))
}

/// The runtime lapin runs its connections' tasks on: postage's own, one worker thread,
/// made once and never shut down. On the application's runtime, a lapin I/O thread that
/// was (re)connecting or closing when that runtime shut down (an error exit from `main`,
/// a restart) found its task cancelled and panicked, printing a backtrace.
fn own_runtime() -> Result<&'static tokio::runtime::Runtime> {
    static RUNTIME: OnceLock<std::io::Result<tokio::runtime::Runtime>> = OnceLock::new();
    let runtime = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("postage-lapin")
            .enable_all()
            .build()
    });
    runtime.as_ref().map_err(|error| {
        Error::config(
            "runtime",
            format!("cannot start the runtime for lapin's connections: {error}"),
        )
    })
}

/// [`own_runtime`], as lapin takes it.
fn lapin_runtime() -> Result<async_rs::TokioRuntime> {
    own_runtime().map(|runtime| async_rs::Runtime::tokio_with_handle(runtime.handle().clone()))
}

/// A connection's event stream.
type Events = std::pin::Pin<Box<dyn futures_util::Stream<Item = lapin::Event> + Send>>;

/// Watches the connection and re-establishes it when it is lost, until it is closed or
/// dropped.
async fn supervise(inner: Weak<Inner>, mut events: Events) {
    let mut check = tokio::time::interval(Duration::from_millis(500));
    // The last error lapin reported: why the link broke, when it does.
    let mut cause = None;
    loop {
        // Wait until the link breaks: an error event, or a status check that finds it down.
        tokio::select! {
            event = events.next() => match event {
                Some(lapin::Event::Error(error)) => {
                    tracing::debug!(%error, "connection error event");
                    cause = Some(error);
                }
                Some(lapin::Event::ConnectionBlocked(reason)) => {
                    tracing::warn!(%reason, "RabbitMQ blocked publishing on this connection (a resource alarm)");
                    set_state(&inner, LinkState::Blocked { reason });
                    continue;
                }
                Some(lapin::Event::ConnectionUnblocked) => {
                    tracing::info!("RabbitMQ unblocked publishing on this connection");
                    set_state(&inner, LinkState::Connected);
                    continue;
                }
                Some(_) => continue,
                None => {}
            },
            _ = check.tick() => {}
        }
        let Some(strong) = inner.upgrade() else {
            return;
        };
        if strong.closed.load(Ordering::SeqCst) {
            return;
        }
        let link = match strong.link.read() {
            Ok(link) => link.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        if link.amqp.status().connected() {
            continue;
        }
        match cause.take() {
            // The operation the broker refused reports it; this is not news to a user.
            Some(error) if refused_request(&error) => {
                tracing::info!(host = %link.host, %error, "RabbitMQ closed the connection over a request it refused; reconnecting");
            }
            _ => tracing::warn!(host = %link.host, "connection to RabbitMQ lost; reconnecting"),
        }
        strong.state.send_replace(LinkState::Reconnecting);
        drop(strong);
        let lost = tokio::time::Instant::now();
        let mut backoff = Duration::from_millis(100);
        let fresh = loop {
            let Some(strong) = inner.upgrade() else {
                return;
            };
            if strong.closed.load(Ordering::SeqCst) {
                return;
            }
            match dial(&strong.config).await {
                Ok(fresh) => break fresh,
                Err(_) => {
                    drop(strong);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        };
        let Some(strong) = inner.upgrade() else {
            return;
        };
        events = Box::pin(fresh.amqp.events_listener());
        tracing::info!(host = %fresh.host, after = ?lost.elapsed(), "reconnected to RabbitMQ");
        match strong.link.write() {
            Ok(mut link) => *link = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
        strong.state.send_replace(LinkState::Connected);
        strong.generation.send_modify(|g| *g += 1);
    }
}

fn set_state(inner: &Weak<Inner>, state: LinkState) {
    if let Some(inner) = inner.upgrade() {
        inner.state.send_replace(state);
    }
}

/// A channel owned by a producer or consumer: when it is dropped the channel is closed
/// explicitly, and the connection's close waits for that.
#[derive(Debug)]
pub(crate) struct ChannelLease {
    channel: lapin::Channel,
    closing: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    /// Unique in the process: tells deliveries of a channel from those of the channel
    /// before it (delivery tags start again at 1 on each channel).
    serial: u64,
}

impl ChannelLease {
    /// This lease's number, unique in the process.
    pub(crate) fn serial(&self) -> u64 {
        self.serial
    }
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
