//! A Messenger in the style of Qpid Proton's: messages sent to addresses
//! (`amqp://host/queue`), a routing table and a rewrite table on the sender, a [`Tracker`]
//! per send, explicit acceptance of what is received, windows, timeouts and interrupts.

mod address;
mod subscription;

pub use self::address::{Address, RouteTable};

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, mpsc};

use self::address::strip_credentials;
use self::subscription::{Source, Subscribed};
use crate::channel::Channel;
use crate::channel::Tracker;
use crate::channel::{Envelope, Incoming};
use crate::config::{Config, Host, Password};
use crate::connection::Connection;
use crate::error::{Error, Result};
use crate::sync::Locked;
use crate::topology::Queue;

/// The application header that carries the address a receiver sees (after the rewrite
/// rules; credentials stripped by default). Read it with [`Incoming::header_str`].
pub const ADDRESS_HEADER: &str = "address";

/// One broker the messenger talks to: which TLS setting, host, port and user.
type PeerKey = (bool, String, u16, String);

/// A broker's place in the messenger: empty until its connection is opened.
type PeerSlot = tokio::sync::Mutex<Option<Peer>>;

#[derive(Debug)]
struct Peer {
    connection: Connection,
    owned: bool,
    publisher: Channel,
}

/// Sends messages to addresses and receives from subscriptions, over as many broker
/// connections as the addresses name (one per broker and user, opened on first use).
///
/// - [`put`](Messenger::put) routes the address through the [routing
///   table](Messenger::route), publishes `mandatory` to the queue the routed address
///   names (default exchange), and returns a [`Tracker`] that resolves to accepted,
///   rejected or unroutable from the broker's publisher confirm. The receiver sees the
///   original address rewritten by the [rewrite table](Messenger::rewrite) (by default
///   only stripped of credentials) in the [`ADDRESS_HEADER`] header.
/// - [`send`](Messenger::send) waits until every sent message is settled;
///   [`recv`](Messenger::recv) waits for the next received one. Both honour the
///   [timeout](Messenger::timeout) and wake with [`Error::Interrupted`] when another task
///   calls [`Interrupter::interrupt`].
/// - The incoming window is the prefetch of each subscription: how many received messages
///   may wait for [`Incoming::ack`] (accept) or [`Incoming::reject`]. The outgoing window
///   is how many sends may wait for their confirm; `put` waits for room beyond it.
///
/// It outlives a lost connection: each connection reconnects by itself, the next `put`
/// to that broker opens a new channel, and each subscription consumes again on a new
/// channel (declaring its queue again when [`subscribe_queue`](Messenger::subscribe_queue)
/// declared it; a server-named queue comes back under a new name). What the connection
/// loss cut short is as AMQP leaves it: trackers of sends not yet confirmed say
/// [`Aborted`](crate::channel::DeliveryStatus::Aborted), and received messages not yet settled
/// can no longer be; the broker delivers them again. A subscription the broker ends on
/// a live connection (its queue deleted) hands [`recv`](Messenger::recv) an error.
///
/// ```no_run
/// use std::time::Duration;
/// use postage_core::{Config, channel::{DeliveryStatus, Envelope}, messenger::Messenger};
///
/// # async fn demo() -> postage_core::Result<()> {
/// let mut messenger = Messenger::new(Config::from_env()?)
///     .incoming_window(10)
///     .outgoing_window(100)
///     .timeout(Some(Duration::from_secs(5)));
/// messenger.route("orders/*", "amqp://guest:guest@localhost/$1");
///
/// messenger.subscribe("amqp://localhost/eu").await?;
/// let tracker = messenger.put("orders/eu", Envelope::text("one book")).await?;
/// messenger.send().await?; // every put is settled now
/// assert_eq!(tracker.status(), DeliveryStatus::Accepted);
///
/// let message = messenger.recv().await?;
/// assert_eq!(message.header_str("address"), Some("orders/eu"));
/// message.ack().await?; // accept; `reject(false)` rejects
/// messenger.stop().await
/// # }
/// ```
#[derive(Debug)]
pub struct Messenger {
    config: Config,
    routes: RouteTable,
    rewrites: RouteTable,
    incoming_window: u16,
    outgoing_window: Option<Arc<Semaphore>>,
    timeout: Option<Duration>,
    interrupt: Arc<Notify>,
    /// The brokers talked to, each behind a lock of its own: a put to one broker waits
    /// for that broker's connection and no other's.
    peers: Locked<HashMap<PeerKey, Arc<PeerSlot>>>,
    publishers: Locked<Vec<Channel>>,
    subscriptions: Locked<Vec<Subscribed>>,
    incoming_sender: mpsc::UnboundedSender<Result<Incoming>>,
    incoming: tokio::sync::Mutex<mpsc::UnboundedReceiver<Result<Incoming>>>,
    incoming_count: Arc<AtomicUsize>,
}

/// Wakes a [`Messenger`]'s blocking call from another task; cheap to clone.
#[derive(Debug, Clone)]
pub struct Interrupter {
    notify: Arc<Notify>,
}

impl Interrupter {
    /// Makes the blocking call in progress fail with [`Error::Interrupted`]; when none is
    /// in progress, the next one does.
    pub fn interrupt(&self) {
        self.notify.notify_one();
    }
}

impl Messenger {
    /// A messenger that logs in to every broker with `config`'s user, password, virtual
    /// host and heartbeat, unless an address carries its own user and password.
    /// Defaults: incoming window 10, no outgoing window, no timeout.
    pub fn new(config: Config) -> Self {
        let (incoming_sender, incoming) = mpsc::unbounded_channel();
        Self {
            config,
            routes: RouteTable::new(),
            rewrites: RouteTable::new(),
            incoming_window: 10,
            outgoing_window: None,
            timeout: None,
            interrupt: Arc::new(Notify::new()),
            peers: Locked::default(),
            publishers: Locked::new(Vec::new()),
            subscriptions: Locked::new(Vec::new()),
            incoming_sender,
            incoming: tokio::sync::Mutex::new(incoming),
            incoming_count: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// A messenger that uses `connection` for the broker and user it reached (and opens
    /// others, with its settings, for other addresses). [`stop`](Self::stop) leaves it
    /// open.
    pub async fn with_connection(connection: &Connection) -> Result<Self> {
        let messenger = Self::new(connection.config().clone());
        let config = connection.config();
        let key = (
            config.tls,
            connection.host().name.to_ascii_lowercase(),
            connection.host().port,
            config.user.clone(),
        );
        let publisher = Channel::open(connection).await?;
        messenger.track_publisher(&publisher);
        let peer = Peer {
            connection: connection.clone(),
            owned: false,
            publisher,
        };
        messenger.peers.with(|peers| {
            peers.insert(key, Arc::new(tokio::sync::Mutex::new(Some(peer))));
        });
        Ok(messenger)
    }

    /// How many messages each subscription may hold unsettled (its prefetch); set it
    /// before subscribing.
    #[must_use]
    pub fn incoming_window(mut self, window: u16) -> Self {
        self.incoming_window = window.max(1);
        self
    }

    /// How many sent messages may wait for the broker's confirm at once; a further
    /// [`put`](Self::put) waits for room. Unlimited by default.
    #[must_use]
    pub fn outgoing_window(mut self, window: usize) -> Self {
        self.outgoing_window = Some(Arc::new(Semaphore::new(window.max(1))));
        self
    }

    /// How long a blocking call may wait before it fails with [`Error::Timeout`]
    /// (`None`: forever, the default).
    #[must_use]
    pub fn timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    /// Appends a routing rule: a message put to an address matching `pattern` travels to
    /// `address` instead (with `$1`, `$2`... filled from the match). First match wins; see
    /// [`RouteTable`] for the pattern syntax.
    pub fn route(&mut self, pattern: &str, address: &str) {
        self.routes.add(pattern, address);
    }

    /// Appends a rewrite rule: the address the receiver sees, for messages put to an
    /// address matching `pattern`. Without a matching rule, the address is only stripped
    /// of user and password.
    pub fn rewrite(&mut self, pattern: &str, address: &str) {
        self.rewrites.add(pattern, address);
    }

    /// Where a message put to `address` travels: the first matching route, else the
    /// address itself.
    pub fn routed(&self, address: &str) -> String {
        self.routes
            .apply(address)
            .unwrap_or_else(|| address.to_owned())
    }

    /// The address a receiver sees for a message put to `address`: the first matching
    /// rewrite rule, else the address without credentials.
    pub fn rewritten(&self, address: &str) -> String {
        self.rewrites
            .apply(address)
            .unwrap_or_else(|| strip_credentials(address))
    }

    /// A handle that interrupts this messenger's blocking calls from another task.
    pub fn interrupter(&self) -> Interrupter {
        Interrupter {
            notify: Arc::clone(&self.interrupt),
        }
    }

    /// Interrupts the blocking call in progress, or else the next one.
    pub fn interrupt(&self) {
        self.interrupt.notify_one();
    }

    /// Sends `envelope` to `address` and returns its tracker at once, unless the outgoing
    /// window is full: then it waits for room (a blocking call: timeout and interrupt
    /// apply). The message is published `mandatory` to the queue the routed address
    /// names, with the [`ADDRESS_HEADER`] header.
    pub async fn put(&self, address: &str, envelope: Envelope) -> Result<Tracker> {
        let target = Address::parse(&self.routed(address))?;
        let envelope = envelope
            .header(ADDRESS_HEADER, self.rewritten(address))
            .mandatory(true);
        let window = match &self.outgoing_window {
            None => None,
            Some(window) => match Arc::clone(window).try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => Some(
                    self.block("waiting for room in the outgoing window", async {
                        Arc::clone(window)
                            .acquire_owned()
                            .await
                            .map_err(|_| Error::Closed("the messenger"))
                    })
                    .await?,
                ),
            },
        };
        // The whole put within the messenger's timeout: a broker being reconnected
        // to holds up this put, no longer than that, and puts to other brokers not at
        // all.
        self.block("putting a message", async {
            let publisher = self.peer(&target).await?.publisher;
            publisher
                .publish_in_window("", target.name(), envelope, window)
                .await
        })
        .await
    }

    /// Waits until the broker settled every message put so far (a blocking call). Sends
    /// whose channel a connection loss closed are settled as
    /// [`Aborted`](crate::channel::DeliveryStatus::Aborted).
    pub async fn send(&self) -> Result<()> {
        let publishers = self.publishers.with(|p| p.clone());
        self.block("sending", async {
            for publisher in &publishers {
                if publisher.is_open() {
                    publisher.flush().await?;
                } else {
                    publisher.settled().await;
                }
            }
            Ok(())
        })
        .await?;
        // Publishers replaced after a connection loss have nothing left to settle.
        self.publishers
            .with(|publishers| publishers.retain(|p| p.is_open() || p.unconfirmed() > 0));
        Ok(())
    }

    /// How many messages put are not settled yet.
    pub fn outgoing(&self) -> usize {
        self.publishers
            .with(|p| p.iter().map(Channel::unconfirmed).sum())
    }

    /// How many received messages wait to be taken by [`recv`](Self::recv) or
    /// [`get`](Self::get).
    pub fn incoming(&self) -> usize {
        self.incoming_count.load(Ordering::Acquire)
    }

    /// Receives from the queue `source` names, which must exist, on the broker it names.
    pub async fn subscribe(&self, source: &str) -> Result<()> {
        let address = Address::parse(source)?;
        if address.name().is_empty() {
            return Err(Error::InvalidAddress {
                address: address.to_string(),
                reason: "a subscription needs a queue name".to_owned(),
            });
        }
        self.start_subscription(&address, None).await.map(drop)
    }

    /// Declares `queue` (with its flags; an empty name asks the broker for one) on the
    /// broker `source` names, receives from it, and returns its name.
    pub async fn subscribe_queue(&self, source: &str, queue: &Queue) -> Result<String> {
        let address = Address::parse(source)?;
        self.start_subscription(&address, Some(queue)).await
    }

    async fn start_subscription(&self, address: &Address, queue: Option<&Queue>) -> Result<String> {
        let peer = self.peer(address).await?;
        let source = Source {
            connection: peer.connection,
            queue: queue.cloned().unwrap_or_else(|| Queue::new(address.name())),
            declare: queue.is_some(),
            prefetch: self.incoming_window,
        };
        let (name, subscribed) = subscription::start(
            source,
            self.incoming_sender.clone(),
            Arc::clone(&self.incoming_count),
        )
        .await?;
        self.subscriptions
            .with(|subscriptions| subscriptions.push(subscribed));
        Ok(name)
    }

    /// The eldest received message, waiting for one if none is there (a blocking call).
    pub async fn recv(&self) -> Result<Incoming> {
        if self.subscriptions.with(|s| s.is_empty()) {
            return Err(Error::config(
                "subscribe",
                "the messenger has no subscription to receive from",
            ));
        }
        self.block("receiving", async {
            let mut incoming = self.incoming.lock().await;
            match incoming.recv().await {
                Some(message) => {
                    self.incoming_count.fetch_sub(1, Ordering::AcqRel);
                    message
                }
                None => Err(Error::Closed("the messenger")),
            }
        })
        .await
    }

    /// The eldest received message, if one is there; never waits.
    pub fn get(&self) -> Option<Result<Incoming>> {
        let mut incoming = self.incoming.try_lock().ok()?;
        let message = incoming.try_recv().ok()?;
        self.incoming_count.fetch_sub(1, Ordering::AcqRel);
        Some(message)
    }

    /// Settles every message sent (as [`send`](Self::send)), stops every subscription
    /// (unsettled received messages go back to their queues) and closes the connections
    /// the messenger opened.
    pub async fn stop(&self) -> Result<()> {
        self.send().await?;
        let subscriptions = self.subscriptions.with(std::mem::take);
        for subscribed in subscriptions {
            subscribed.stop.notify_one();
            subscribed
                .task
                .await
                .map_err(|_| Error::Closed("a subscription"))??;
        }
        let peers = self.peers.with(std::mem::take);
        self.publishers.with(Vec::clear);
        for slot in peers.into_values() {
            let Some(peer) = slot.lock().await.take() else {
                continue;
            };
            peer.publisher.close().await?;
            if peer.owned {
                peer.connection.close().await?;
            }
        }
        Ok(())
    }

    /// The broker `address` names, connected on first use.
    async fn peer(&self, address: &Address) -> Result<PeerRef> {
        let user = address.user().unwrap_or(&self.config.user).to_owned();
        let key = (
            address.is_tls(),
            address.host().to_ascii_lowercase(),
            address.port(),
            user.clone(),
        );
        let slot = self
            .peers
            .with(|peers| Arc::clone(peers.entry(key).or_default()));
        let mut slot = slot.lock().await;
        if let Some(peer) = slot.as_mut() {
            if !peer.publisher.is_open() {
                // Lost with its connection: a new one once the connection is back.
                let generation = peer.connection.generation();
                peer.connection.wait_reconnected(generation).await?;
                peer.publisher = Channel::open(&peer.connection).await?;
                self.track_publisher(&peer.publisher);
            }
            return Ok(PeerRef::of(peer));
        }
        let mut config = self.config.clone();
        config.tls = address.is_tls();
        config.hosts = vec![Host {
            name: address.host().to_owned(),
            port: address.port(),
        }];
        config.user = user;
        if let Some(password) = address.password() {
            config.password = Password::new(password);
        }
        let connection = Connection::connect(&config).await?;
        let publisher = Channel::open(&connection).await?;
        self.track_publisher(&publisher);
        let peer = Peer {
            connection,
            owned: true,
            publisher,
        };
        let found = PeerRef::of(&peer);
        *slot = Some(peer);
        Ok(found)
    }

    fn track_publisher(&self, publisher: &Channel) {
        self.publishers
            .with(|publishers| publishers.push(publisher.clone()));
    }

    /// Runs `work` as a blocking call: it fails with [`Error::Timeout`] after the timeout
    /// and with [`Error::Interrupted`] when interrupted.
    async fn block<T>(&self, operation: &str, work: impl Future<Output = Result<T>>) -> Result<T> {
        let interrupted = self.interrupt.notified();
        let timed = async {
            match self.timeout {
                None => work.await,
                Some(timeout) => {
                    tokio::time::timeout(timeout, work)
                        .await
                        .map_err(|_| Error::Timeout {
                            operation: operation.to_owned(),
                            timeout,
                        })?
                }
            }
        };
        tokio::select! {
            biased;
            () = interrupted => Err(Error::Interrupted {
                operation: operation.to_owned(),
            }),
            result = timed => result,
        }
    }
}

/// What [`Messenger::peer`] hands out: clones of a peer's handles.
struct PeerRef {
    connection: Connection,
    publisher: Channel,
}

impl PeerRef {
    fn of(peer: &Peer) -> Self {
        Self {
            connection: peer.connection.clone(),
            publisher: peer.publisher.clone(),
        }
    }
}
