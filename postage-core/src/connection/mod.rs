//! One connection to RabbitMQ, shared by every producer and consumer of a process.

mod declare;
pub(crate) mod dial;
mod lease;
mod live;
mod runtime;
mod shape;
pub(crate) mod supervisor;

pub(crate) use self::lease::ChannelLease;
pub(crate) use self::live::LiveChannel;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use lapin::ErrorKind;
use tokio::sync::watch;

use self::dial::dial;
use self::runtime::own_runtime;
use self::shape::probe_shape;
use self::supervisor::supervise;
use crate::config::{Config, Host};
use crate::error::{Error, Result};
use crate::sync::Locked;
use crate::telemetry::{Telemetry, Watched};
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
    link: Locked<Link>,
    /// Bumped after each reconnection; consumers and producers watch it.
    generation: watch::Sender<u64>,
    /// Connected, blocked or reconnecting, for programs to watch.
    state: watch::Sender<LinkState>,
    /// Set by [`Connection::close`]: a closed connection is not recovered.
    closed: AtomicBool,
    /// Closes of channels whose producer or consumer was dropped, still under way.
    closing: Arc<Locked<Vec<tokio::task::JoinHandle<()>>>>,
    /// The channel declarations run on, kept between them (see `declare.rs`).
    declaring: Locked<Option<lapin::Channel>>,
    /// The connection producers publish on, opened with the first of them when
    /// [`Config::publishing_connection`] says so.
    publishing: tokio::sync::OnceCell<Connection>,
    /// For a publishing connection, the state of the connection it publishes for, which
    /// shows its blocks: the user watches that one.
    reports_to: Option<watch::Sender<LinkState>>,
    /// The metrics and health endpoint it reports to, with [`Config::metrics`].
    telemetry: Option<Arc<Telemetry>>,
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
    /// The connection was lost; postage is reconnecting, trying every host, for as long
    /// as it takes.
    Reconnecting,
    /// Closed by the application ([`Connection::close`]); it is not recovered.
    Closed,
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
        let telemetry = config.metrics.map(Telemetry::at).transpose()?;
        let connection = Self::open(config, None, telemetry).await?;
        if config.publishing_connection {
            // Dialled while the component declares its topology, so it is ready when the
            // first producer needs it; a failure here is tried again then.
            let early = connection.clone();
            tokio::spawn(async move {
                if let Ok(publishing) = early.publishing().await
                    && early.inner.closed.load(Ordering::SeqCst)
                {
                    let _ = publishing.close().await;
                }
            });
        }
        Ok(connection)
    }

    async fn open(
        config: &Config,
        reports_to: Option<watch::Sender<LinkState>>,
        telemetry: Option<Arc<Telemetry>>,
    ) -> Result<Self> {
        config.validate()?;
        let link = dial(config, reports_to.is_some()).await?;
        let events = link.amqp.events_listener();
        let connection = Self {
            inner: Arc::new(Inner {
                config: config.clone(),
                link: Locked::new(link),
                generation: watch::Sender::new(0),
                state: watch::Sender::new(LinkState::Connected),
                closed: AtomicBool::new(false),
                closing: Arc::default(),
                declaring: Locked::new(None),
                publishing: tokio::sync::OnceCell::new(),
                reports_to,
                telemetry,
            }),
        };
        if let Some(telemetry) = &connection.inner.telemetry {
            let watched: Arc<dyn Watched> = Arc::clone(&connection.inner) as _;
            telemetry.watch(Arc::downgrade(&watched));
        }
        tokio::spawn(supervise(
            Arc::downgrade(&connection.inner),
            Box::pin(events),
        ));
        Ok(connection)
    }

    fn link(&self) -> Link {
        self.inner.link.with(|link| link.clone())
    }

    /// Opens a new channel on the live connection.
    pub async fn open_channel(&self) -> Result<lapin::Channel> {
        let link = self.link();
        let operation = || format!("opening a channel on {}", link.host);
        self.bounded(operation, async {
            link.amqp
                .create_channel()
                .await
                .map_err(Error::amqp(operation()))
        })
        .await
    }

    /// Runs `work`, an exchange with the broker, within [`Config::operation_timeout`]:
    /// past it, fails with a timeout (or the broker's block) naming `operation`, so no
    /// channel open, declaration or consume waits for ever on a broker that does not
    /// answer.
    pub(crate) async fn bounded<T>(
        &self,
        operation: impl FnOnce() -> String,
        work: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let bound = self.inner.config.operation_timeout;
        match tokio::time::timeout(bound, work).await {
            Ok(done) => done,
            Err(_) => Err(self.overdue(operation(), bound)),
        }
    }

    /// The connection to publish on: one of its own beside this one, opened the first
    /// time (see [`Config::publishing_connection`]), or this one.
    pub(crate) async fn publishing(&self) -> Result<Connection> {
        if !self.inner.config.publishing_connection || self.inner.reports_to.is_some() {
            return Ok(self.clone());
        }
        self.inner
            .publishing
            .get_or_try_init(|| {
                Self::open(
                    &self.inner.config,
                    Some(self.inner.state.clone()),
                    self.inner.telemetry.clone(),
                )
            })
            .await
            .cloned()
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
    /// and returns its generation. The supervisor retries for ever, so this waits as long
    /// as the outage lasts, in [`LinkState::Reconnecting`] for anyone to watch; callers
    /// that owe someone an answer bound it themselves. Fails at once when the connection
    /// was closed.
    pub(crate) async fn wait_reconnected(&self, seen: u64) -> Result<u64> {
        let mut generations = self.watch_generation();
        let mut states = self.watch_state();
        loop {
            if self.inner.closed.load(Ordering::SeqCst) {
                return Err(Error::Closed("the connection"));
            }
            let generation = *generations.borrow_and_update();
            states.borrow_and_update();
            if self.link().amqp.status().connected() {
                if generation != seen {
                    tracing::debug!(seen, generation, "connection re-established");
                }
                return Ok(generation);
            }
            tokio::select! {
                changed = generations.changed() => if changed.is_err() {
                    return Err(Error::Closed("the connection"));
                },
                changed = states.changed() => if changed.is_err() {
                    return Err(Error::Closed("the connection"));
                },
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

    /// The error for `operation` on this connection, which did not finish within
    /// `waited`: [`Error::Blocked`] when a resource alarm blocks the connection, else
    /// [`Error::Timeout`].
    pub fn overdue(&self, operation: String, waited: Duration) -> Error {
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

    /// Where this connection's metrics and health are served, with [`Config::metrics`].
    pub fn metrics_address(&self) -> Option<std::net::SocketAddr> {
        self.inner.telemetry.as_ref().map(|t| t.address())
    }

    /// The metrics endpoint it reports to, if any.
    pub(crate) fn telemetry(&self) -> Option<&Arc<Telemetry>> {
        self.inner.telemetry.as_ref()
    }

    /// Adds metrics of the program's own (or of another crate, as an outbox relay's) to
    /// the metrics endpoint this connection reports to ([`Config::metrics`]), under the
    /// `postage_` prefix; returns false, adding nothing, without an endpoint.
    pub fn register_metrics(
        &self,
        add: impl FnOnce(&mut prometheus_client::registry::Registry),
    ) -> bool {
        match self.telemetry() {
            Some(telemetry) => {
                telemetry.metrics.extend(add);
                true
            }
            None => false,
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
        if let Some(publishing) = self.inner.publishing.get() {
            Box::pin(publishing.close()).await?;
        }
        let state = self.state();
        self.inner.closed.store(true, Ordering::SeqCst);
        self.inner.state.send_replace(LinkState::Closed);
        let amqp = self.link().amqp;
        if !amqp.status().connected() {
            return Ok(());
        }
        if let LinkState::Blocked { reason } = state {
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
        let leases = self.inner.closing.with(std::mem::take);
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

/// A connection is ready while connected and not blocked.
impl Watched for Inner {
    fn readiness(&self) -> Option<Result<(), String>> {
        let name = if self.reports_to.is_some() {
            "the publishing connection"
        } else {
            "the connection"
        };
        match &*self.state.borrow() {
            LinkState::Connected => Some(Ok(())),
            LinkState::Blocked { reason } => Some(Err(format!(
                "{name}: RabbitMQ blocks publishing ({reason})"
            ))),
            LinkState::Reconnecting => Some(Err(format!("{name}: reconnecting to RabbitMQ"))),
            LinkState::Closed => None,
        }
    }

    fn link_state(&self) -> Option<LinkState> {
        let state = self.state.borrow().clone();
        (state != LinkState::Closed).then_some(state)
    }
}
