//! The fault relay: a TCP relay on this machine between components and the broker,
//! with toxiproxy's faults switched at run time.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// How much of what a client sends first is searched for markers: its handshake.
const HANDSHAKE: usize = 4096;

/// How many chunks read wait for their writer in each direction of a link.
const IN_FLIGHT: usize = 256;

/// Which way bytes go through the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the component to the broker.
    Upstream,
    /// From the broker to the component.
    Downstream,
}

/// Which relayed connections a fault applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Links {
    /// Every connection, those to come included.
    All,
    /// The connections whose handshake carries this text.
    Marked(String),
}

impl Links {
    /// The connections whose handshake carries `marker`.
    pub fn marked(marker: impl Into<String>) -> Self {
        Self::Marked(marker.into())
    }

    fn covers(&self, handshake: &[u8]) -> bool {
        match self {
            Self::All => true,
            Self::Marked(marker) => handshake
                .windows(marker.len().max(1))
                .any(|window| window == marker.as_bytes()),
        }
    }
}

/// A fault on one direction of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Toxic {
    /// Each chunk leaves `delay` after it came, plus up to `jitter` more at random.
    Latency {
        /// The least delay.
        delay: Duration,
        /// The most added to it.
        jitter: Duration,
    },
    /// At most `bytes_per_second`.
    Bandwidth {
        /// The cap.
        bytes_per_second: u64,
    },
    /// Every byte vanishes; the connection stays open (a one-way black hole).
    Silence,
    /// Bytes wait in the relay until the fault is healed (then they go) or the
    /// connection is cut (then they are lost).
    Hold,
    /// `bytes` more go through, then the connection is cut (both sides see it end), or
    /// reset (both get a TCP reset): a frame half written or half read.
    LimitData {
        /// How many.
        bytes: u64,
        /// A reset rather than a cut.
        reset: bool,
    },
}

/// A fault in force.
#[derive(Debug, Clone)]
struct Rule {
    id: u64,
    links: Links,
    direction: Direction,
    toxic: Toxic,
}

/// An end ordered for some connections: counted, so each is carried out once.
#[derive(Debug, Clone)]
struct End {
    id: u64,
    links: Links,
    reset: bool,
}

#[derive(Debug, Clone, Default)]
struct Faults {
    rules: Vec<Rule>,
    ends: Vec<End>,
}

/// A TCP relay from a port of its own to the broker; everything it relays ends when it
/// is dropped.
#[derive(Debug)]
pub struct Relay {
    address: SocketAddr,
    faults: Arc<watch::Sender<Faults>>,
    next_id: AtomicU64,
    accepted: Arc<AtomicUsize>,
    accepting: JoinHandle<()>,
}

impl Relay {
    /// Starts relaying from a free loopback port to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), upstream).await
    }

    /// Starts relaying from `listen` (port 0 for a free one; an address of a
    /// [`Namespace`](super::Namespace)'s host end, for a component inside it) to
    /// `upstream`.
    pub async fn start_on(listen: SocketAddr, upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind(listen)
            .await
            .expect("an address for the relay");
        let address = listener.local_addr().expect("the relay's address");
        let faults = Arc::new(watch::Sender::new(Faults::default()));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (watched, counted) = (Arc::clone(&faults), Arc::clone(&accepted));
        let accepting = tokio::spawn(async move {
            let mut links = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::Relaxed);
                let faults = watched.subscribe();
                links.spawn(async move {
                    if let Ok(broker) = TcpStream::connect(upstream).await {
                        relay(client, broker, faults).await;
                    }
                });
            }
        });
        Self {
            address,
            faults,
            next_id: AtomicU64::new(1),
            accepted,
            accepting,
        }
    }

    /// Where components connect to reach the broker through the relay.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// How many connections the relay has taken: a reconnection counts one more.
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Applies `toxic` to the bytes going `direction` on `links`, until [`heal`](Self::heal).
    pub fn add(&self, links: Links, direction: Direction, toxic: Toxic) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.faults.send_modify(|faults| {
            faults.rules.push(Rule {
                id,
                links,
                direction,
                toxic,
            });
        });
    }

    /// Takes every fault away; what was held goes on.
    pub fn heal(&self) {
        self.faults.send_modify(|faults| faults.rules.clear());
    }

    /// Cuts `links` as a network would: what the relay held never arrives, and both
    /// sides see the connection end (a FIN). Faults on them go too.
    pub fn cut(&self, links: Links) {
        self.end(links, false);
    }

    /// Resets `links`: both sides get a TCP reset, what the relay held is lost.
    pub fn reset(&self, links: Links) {
        self.end(links, true);
    }

    fn end(&self, links: Links, reset: bool) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.faults.send_modify(|faults| {
            faults.rules.retain(|rule| rule.links != links);
            faults.ends.push(End { id, links, reset });
        });
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

/// A chunk of bytes on its way, and when it came.
struct Chunk {
    at: Instant,
    bytes: Vec<u8>,
}

/// What a link's parts share: the handshake seen so far, the faults, and how it ends.
struct Shared {
    handshake: Mutex<Vec<u8>>,
    faults: watch::Receiver<Faults>,
    /// Ends ordered before the link existed are not its own.
    first_end: u64,
}

impl Shared {
    fn covers(&self, links: &Links) -> bool {
        links.covers(&self.handshake.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The faults on `direction` of this link.
    fn toxics(&self, direction: Direction) -> Vec<(u64, Toxic)> {
        self.faults
            .borrow()
            .rules
            .iter()
            .filter(|rule| rule.direction == direction && self.covers(&rule.links))
            .map(|rule| (rule.id, rule.toxic))
            .collect()
    }

    /// An end ordered for this link: whether it is a reset.
    fn ended(&self) -> Option<bool> {
        self.faults
            .borrow()
            .ends
            .iter()
            .find(|end| end.id >= self.first_end && self.covers(&end.links))
            .map(|end| end.reset)
    }
}

/// Why a part of a link stopped.
enum Stop {
    /// A reader's side closed: its writer goes on until it has written what was read.
    Read,
    /// A writer is done: its reader's side closed, or a socket failed.
    Closed,
    /// A [`Toxic::LimitData`] ran out: whether it resets.
    Limit(bool),
}

/// Relays one connection until either side ends it, a cut or reset names it, or a
/// limit runs out.
async fn relay(client: TcpStream, broker: TcpStream, faults: watch::Receiver<Faults>) {
    let _ = client.set_nodelay(true);
    let _ = broker.set_nodelay(true);
    let first_end = faults
        .borrow()
        .ends
        .iter()
        .map(|end| end.id + 1)
        .max()
        .unwrap_or(0);
    let shared = Arc::new(Shared {
        handshake: Mutex::new(Vec::new()),
        faults: faults.clone(),
        first_end,
    });
    let (from_client, to_client) = client.into_split();
    let (from_broker, to_broker) = broker.into_split();
    // Kept to reset the sockets: a half's socket is the whole connection's.
    let (client_socket, broker_socket) = (Arc::new(to_client), Arc::new(to_broker));
    let mut parts = JoinSet::new();
    let (up, up_chunks) = mpsc::channel(IN_FLIGHT);
    let (down, down_chunks) = mpsc::channel(IN_FLIGHT);
    parts.spawn(read(from_client, up, Some(Arc::clone(&shared))));
    parts.spawn(read(from_broker, down, None));
    parts.spawn(write(
        up_chunks,
        Arc::clone(&broker_socket),
        Direction::Upstream,
        Arc::clone(&shared),
    ));
    parts.spawn(write(
        down_chunks,
        Arc::clone(&client_socket),
        Direction::Downstream,
        Arc::clone(&shared),
    ));
    let mut faults = faults;
    let reset = loop {
        if let Some(reset) = shared.ended() {
            break reset;
        }
        tokio::select! {
            stopped = parts.join_next() => match stopped {
                Some(Ok(Stop::Read)) => {}
                Some(Ok(Stop::Limit(reset))) => break reset,
                // A writer ended: that direction is over, and so is the link.
                Some(_) | None => break false,
            },
            changed = faults.changed() => if changed.is_err() { break false },
        }
    };
    if reset {
        let _ = client_socket.as_ref().as_ref().set_zero_linger();
        let _ = broker_socket.as_ref().as_ref().set_zero_linger();
    }
    // Dropping every part closes both sockets; what was held goes with them.
    parts.abort_all();
}

/// Reads chunks for a direction's writer; the client's side records the handshake.
async fn read(
    mut from: OwnedReadHalf,
    chunks: mpsc::Sender<Chunk>,
    handshake: Option<Arc<Shared>>,
) -> Stop {
    let mut buffer = vec![0; 64 * 1024];
    loop {
        let Ok(n @ 1..) = from.read(&mut buffer).await else {
            return Stop::Read;
        };
        if let Some(shared) = &handshake {
            let mut seen = shared.handshake.lock().unwrap_or_else(|p| p.into_inner());
            if seen.len() < HANDSHAKE {
                seen.extend_from_slice(&buffer[..n]);
            }
        }
        let chunk = Chunk {
            at: Instant::now(),
            bytes: buffer[..n].to_vec(),
        };
        if chunks.send(chunk).await.is_err() {
            return Stop::Read;
        }
    }
}

/// Writes a direction's chunks as its faults say.
async fn write(
    mut chunks: mpsc::Receiver<Chunk>,
    to: Arc<OwnedWriteHalf>,
    direction: Direction,
    shared: Arc<Shared>,
) -> Stop {
    let mut to = OwnedWriteHalfRef(to);
    let mut faults = shared.faults.clone();
    let mut held: Vec<Chunk> = Vec::new();
    // The limit in force (its rule's id) and the bytes that went since it came.
    let mut limit: Option<(u64, u64)> = None;
    loop {
        let toxics = shared.toxics(direction);
        let holding = toxics.iter().any(|(_, toxic)| *toxic == Toxic::Hold);
        if !holding && !held.is_empty() {
            for chunk in std::mem::take(&mut held) {
                if to.write_all(&chunk.bytes).await.is_err() {
                    return Stop::Closed;
                }
            }
        }
        let chunk = tokio::select! {
            chunk = chunks.recv() => match chunk {
                Some(chunk) => chunk,
                None => return Stop::Closed,
            },
            changed = faults.changed() => {
                if changed.is_err() {
                    return Stop::Closed;
                }
                continue;
            }
        };
        let toxics = shared.toxics(direction);
        let mut bytes = &chunk.bytes[..];
        let mut limited = None;
        let mut pause = Duration::ZERO;
        for (id, toxic) in &toxics {
            match *toxic {
                Toxic::Silence => bytes = &[],
                Toxic::Hold => {}
                Toxic::Latency { delay, jitter } => {
                    let extra = jitter.mul_f64(fastrand::f64());
                    tokio::time::sleep_until(chunk.at + delay + extra).await;
                }
                Toxic::Bandwidth { bytes_per_second } => {
                    pause += Duration::from_secs_f64(
                        bytes.len() as f64 / bytes_per_second.max(1) as f64,
                    );
                }
                Toxic::LimitData {
                    bytes: allowed,
                    reset,
                } => {
                    let (_, went) = limit.get_or_insert((*id, 0));
                    let left = allowed.saturating_sub(*went);
                    if (bytes.len() as u64) >= left {
                        bytes = &bytes[..usize::try_from(left).unwrap_or(usize::MAX)];
                        limited = Some(reset);
                    }
                    *went += bytes.len() as u64;
                }
            }
        }
        if toxics.iter().any(|(_, toxic)| *toxic == Toxic::Hold) {
            held.push(chunk);
            continue;
        }
        if limit.is_some_and(|(id, _)| !toxics.iter().any(|(rule, _)| *rule == id)) {
            limit = None;
        }
        if to.write_all(bytes).await.is_err() {
            return Stop::Closed;
        }
        if let Some(reset) = limited {
            return Stop::Limit(reset);
        }
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
}

/// A write half shared with the link, which keeps it to reset the socket.
struct OwnedWriteHalfRef(Arc<OwnedWriteHalf>);

impl OwnedWriteHalfRef {
    async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let mut written = 0;
        while written < bytes.len() {
            self.0.as_ref().as_ref().writable().await?;
            match self.0.as_ref().as_ref().try_write(&bytes[written..]) {
                Ok(n) => written += n,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }
}
