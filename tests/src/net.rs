//! Faults at the network, made by the tests themselves: a TCP [`Relay`] between a
//! component and the broker whose faults are switched while it runs.
//!
//! A connection through the relay is picked by a marker its handshake carries (a
//! connection name of the test's own, which postage sends in its client properties; the
//! publishing connection adds ` publishing`), so a test can fault one connection of a
//! process and leave the others alone.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How much of what a client sends first is searched for markers: its handshake.
const HANDSHAKE: usize = 4096;

/// The faults in force, by marker.
#[derive(Debug, Clone, Default)]
struct Faults {
    /// Bytes from clients whose handshake has this marker are held, not forwarded.
    hold: Option<String>,
    /// Connections whose handshake has this marker are cut, their held bytes dropped;
    /// counted, so each cut is carried out once.
    cut: Option<(u64, String)>,
}

/// A TCP relay on loopback to the broker at `upstream`; everything it relays ends when
/// it is dropped.
#[derive(Debug)]
pub struct Relay {
    address: SocketAddr,
    faults: Arc<watch::Sender<Faults>>,
    accepting: JoinHandle<()>,
}

impl Relay {
    /// Starts relaying from a free loopback port to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port for the relay");
        let address = listener.local_addr().expect("the relay's address");
        let faults = Arc::new(watch::Sender::new(Faults::default()));
        let watched = Arc::clone(&faults);
        let accepting = tokio::spawn(async move {
            let mut links = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
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
            accepting,
        }
    }

    /// Where components connect to reach the broker through the relay.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Holds what connections marked `marker` send to the broker (their frames wait in
    /// the relay) until [`release`](Self::release) or [`cut`](Self::cut).
    pub fn hold(&self, marker: &str) {
        self.faults
            .send_modify(|faults| faults.hold = Some(marker.to_owned()));
    }

    /// Forwards what was held, and everything after it.
    pub fn release(&self) {
        self.faults.send_modify(|faults| faults.hold = None);
    }

    /// Cuts the connections marked `marker` as a network would: what they sent and the
    /// relay held never reaches the broker, and both sides see the connection end.
    /// Holding stops too.
    pub fn cut(&self, marker: &str) {
        self.faults.send_modify(|faults| {
            let count = faults.cut.as_ref().map_or(0, |(n, _)| n + 1);
            faults.cut = Some((count, marker.to_owned()));
            faults.hold = None;
        });
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

/// Relays one connection until either side ends it or a cut names it.
async fn relay(mut client: TcpStream, mut broker: TcpStream, mut faults: watch::Receiver<Faults>) {
    let _ = client.set_nodelay(true);
    let _ = broker.set_nodelay(true);
    let (mut from_client, mut to_client) = client.split();
    let (mut from_broker, mut to_broker) = broker.split();
    let mut handshake = Vec::new();
    let mut held = Vec::new();
    let mut up = vec![0; 64 * 1024];
    let mut down = vec![0; 64 * 1024];
    let cut_seen = faults.borrow().cut.as_ref().map(|(n, _)| *n);
    let marked = |handshake: &[u8], marker: &str| {
        handshake
            .windows(marker.len())
            .any(|window| window == marker.as_bytes())
    };
    loop {
        tokio::select! {
            read = from_client.read(&mut up) => {
                let Ok(n @ 1..) = read else { return };
                if handshake.len() < HANDSHAKE {
                    handshake.extend_from_slice(&up[..n]);
                }
                let holding = faults
                    .borrow()
                    .hold
                    .as_deref()
                    .is_some_and(|marker| marked(&handshake, marker));
                if holding {
                    held.extend_from_slice(&up[..n]);
                } else if to_broker.write_all(&held).await.is_err()
                    || to_broker.write_all(&up[..n]).await.is_err()
                {
                    return;
                } else {
                    held.clear();
                }
            }
            read = from_broker.read(&mut down) => {
                let Ok(n @ 1..) = read else { return };
                if to_client.write_all(&down[..n]).await.is_err() {
                    return;
                }
            }
            changed = faults.changed() => {
                if changed.is_err() {
                    return;
                }
                let now = faults.borrow().clone();
                if let Some((n, marker)) = &now.cut
                    && Some(*n) != cut_seen
                    && marked(&handshake, marker)
                {
                    // Dropping both sockets without a word: the held bytes go with them.
                    return;
                }
                let holding = now.hold.as_deref().is_some_and(|marker| marked(&handshake, marker));
                if !holding && !held.is_empty() {
                    if to_broker.write_all(&held).await.is_err() {
                        return;
                    }
                    held.clear();
                }
            }
        }
    }
}
