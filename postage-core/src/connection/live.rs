//! The live channel of a resilient part (a producer, a consumer, a messenger
//! subscription): the channel it works on now, the setup that opens another like it, and
//! the supervisor's keeper, told when the channel is lost on a live connection.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use super::ChannelLease;
use super::supervisor::{Member, Resync, keep};
use crate::channel::Channel;
use crate::error::Result;
use crate::sync::Locked;

/// A channel a [`LiveChannel`] holds: numbered (see [`ChannelLease::serial`]), open or
/// not, and shared by cloning.
pub(crate) trait Lease: Clone + Send + Sync + 'static {
    /// The number of the channel, unique in the process.
    fn serial(&self) -> u64;
    /// Whether it is still open (a connection loss closes it).
    fn is_open(&self) -> bool;
}

impl Lease for Arc<ChannelLease> {
    fn serial(&self) -> u64 {
        ChannelLease::serial(self)
    }

    fn is_open(&self) -> bool {
        self.status().connected()
    }
}

impl Lease for Channel {
    fn serial(&self) -> u64 {
        Channel::serial(self)
    }

    fn is_open(&self) -> bool {
        Channel::is_open(self)
    }
}

/// Opens a channel of a part's kind, set up as it needs (confirms, prefetch, a consumer).
type Setup<C> = Box<dyn Fn() -> Pin<Box<dyn Future<Output = Result<C>> + Send>> + Send + Sync>;

/// One resilient part's channel slot: the channel now, replaced only through
/// [`renewed`](Self::renewed) and [`replaced`](Self::replaced), one replacement at a time.
pub(crate) struct LiveChannel<C> {
    current: Locked<C>,
    setup: Setup<C>,
    /// Held while a new channel is opened: never two for one slot at once.
    opening: tokio::sync::Mutex<()>,
    /// The supervisor's keeper of the part, once [`kept`](Self::kept).
    keeper: OnceLock<Resync>,
}

impl<C: Lease> LiveChannel<C> {
    /// Opens the first channel with `setup`, which opens every later one too.
    pub(crate) async fn open<F, Fut>(setup: F) -> Result<Self>
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<C>> + Send + 'static,
    {
        let setup: Setup<C> = Box::new(move || Box::pin(setup()));
        let first = setup().await?;
        Ok(Self {
            current: Locked::new(first),
            setup,
            opening: tokio::sync::Mutex::new(()),
            keeper: OnceLock::new(),
        })
    }

    /// Has the connection's supervisor keep `member`, whose slot `slot` finds, reconciled
    /// after each reconnection and each loss reported through [`lost`](Self::lost).
    pub(crate) fn kept<M: Member>(
        member: &Arc<M>,
        generations: tokio::sync::watch::Receiver<u64>,
        slot: fn(&M) -> Option<&Self>,
    ) {
        let Some(live) = slot(member) else {
            return;
        };
        let keeper = keep(Arc::downgrade(member), generations, move |member: &M| {
            slot(member).map_or(0, |live| live.current().serial())
        });
        let _ = live.keeper.set(keeper);
    }

    /// The channel now.
    pub(crate) fn current(&self) -> C {
        self.current.with(|current| current.clone())
    }

    /// Tells the keeper that channel `serial` was lost on a live connection: the part is
    /// reconciled, unless it moved to another channel meanwhile.
    pub(crate) fn lost(&self, serial: u64) {
        if let Some(keeper) = self.keeper.get() {
            keeper.lost(serial);
        }
    }

    /// The channel now when it is open, else a new one, with whether it is new. Callers
    /// that race for a new one share the first's.
    pub(crate) async fn renewed(&self) -> Result<(C, bool)> {
        let current = self.current();
        if current.is_open() {
            return Ok((current, false));
        }
        let _opening = self.opening.lock().await;
        let current = self.current();
        if current.is_open() {
            return Ok((current, false));
        }
        let fresh = (self.setup)().await?;
        self.current.with(|current| *current = fresh.clone());
        Ok((fresh, true))
    }

    /// A new channel in place of the current one, open or not: returns the new one and
    /// the one it replaced, for the caller to close.
    pub(crate) async fn replaced(&self) -> Result<(C, C)> {
        let _opening = self.opening.lock().await;
        let fresh = (self.setup)().await?;
        let old = self
            .current
            .with(|current| std::mem::replace(current, fresh.clone()));
        Ok((fresh, old))
    }
}

impl<C: Lease> fmt::Debug for LiveChannel<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LiveChannel")
            .field("serial", &self.current().serial())
            .field("open", &self.current().is_open())
            .finish_non_exhaustive()
    }
}
