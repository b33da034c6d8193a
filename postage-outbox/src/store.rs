//! [`Store`]: the database an inbox and an outbox live in, SQLite or PostgreSQL.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use postage_core::Fingerprint;
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Executor};
use tokio::sync::Notify;

use crate::error::{Error, Result};
use crate::schema;

/// How long an inbox remembers a message by default: a day, past any redelivery or
/// retry backoff a processor is likely to see.
pub const DEFAULT_INBOX_WINDOW: Duration = Duration::from_secs(24 * 60 * 60);

/// How long the relay keeps a message after the broker confirmed it, by default (for
/// inspection), before deleting it.
pub const DEFAULT_KEEP_SENT: Duration = Duration::from_secs(10 * 60);

/// Which database a store is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite: a file, in the process; one connection (SQLite writes one at a time).
    Sqlite,
    /// PostgreSQL: a server.
    Postgres,
}

/// The database an inbox and an outbox live in: a pool of connections, the tables
/// (created when missing, see the [`schema`](crate#tables)), and the settings. Clones
/// share the pool.
///
/// On SQLite the store holds one connection (SQLite writes one transaction at a time):
/// code inside a handler's transaction must use that transaction, never the store's
/// pool, or it waits for itself.
#[derive(Debug, Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) pool: AnyPool,
    pub(crate) backend: Backend,
    pub(crate) inbox_window: Duration,
    pub(crate) keep_sent: Duration,
    pub(crate) fingerprint: Fingerprint,
    /// Told when a transaction that sent messages commits, so an in-process relay
    /// publishes them at once rather than at its next poll.
    pub(crate) committed: Notify,
    /// When the inbox's old records were last deleted (ms since the epoch).
    pub(crate) last_sweep: AtomicI64,
}

/// Configures a [`Store`]; made by [`Store::builder`].
#[derive(Debug, Clone)]
pub struct StoreBuilder {
    inbox_window: Duration,
    keep_sent: Duration,
    max_connections: u32,
    fingerprint: Option<Fingerprint>,
}

impl Default for StoreBuilder {
    fn default() -> Self {
        Self {
            inbox_window: DEFAULT_INBOX_WINDOW,
            keep_sent: DEFAULT_KEEP_SENT,
            max_connections: 10,
            fingerprint: None,
        }
    }
}

impl StoreBuilder {
    /// How long the inbox remembers a handled message (default
    /// [`DEFAULT_INBOX_WINDOW`]): a copy that comes later runs again. Older records are
    /// deleted as messages arrive, so the table holds about the messages of one window.
    #[must_use]
    pub fn inbox_window(mut self, window: Duration) -> Self {
        self.inbox_window = window;
        self
    }

    /// How long a message stays in the outbox table after the broker confirmed it
    /// (default [`DEFAULT_KEEP_SENT`]).
    #[must_use]
    pub fn keep_sent(mut self, keep: Duration) -> Self {
        self.keep_sent = keep;
        self
    }

    /// The most connections to a PostgreSQL server (default 10; SQLite has one).
    #[must_use]
    pub fn max_connections(mut self, max: u32) -> Self {
        self.max_connections = max.max(1);
        self
    }

    /// The fingerprint stamped on messages sent through the outbox (default: this
    /// process, no name).
    #[must_use]
    pub fn fingerprint(mut self, fingerprint: Fingerprint) -> Self {
        self.fingerprint = Some(fingerprint);
        self
    }

    /// Opens (creating it if missing) the SQLite database in the file `path`, in WAL
    /// mode with `synchronous = NORMAL`: a commit survives the process being killed.
    pub async fn sqlite(self, path: impl AsRef<Path>) -> Result<Store> {
        let url = format!("sqlite://{}?mode=rwc", path.as_ref().display());
        self.open(&url, Backend::Sqlite).await
    }

    /// Connects to the PostgreSQL server at `url` (`postgres://user:password@host/db`).
    pub async fn postgres(self, url: &str) -> Result<Store> {
        self.open(url, Backend::Postgres).await
    }

    /// Opens a `sqlite:` or `postgres:` URL.
    pub async fn url(self, url: &str) -> Result<Store> {
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(Error::UnknownDatabase);
        };
        self.open(url, backend).await
    }

    async fn open(self, url: &str, backend: Backend) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let options = AnyPoolOptions::new().acquire_timeout(Duration::from_secs(30));
        let options = match backend {
            Backend::Sqlite => options.max_connections(1).after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute("PRAGMA journal_mode = WAL").await?;
                    conn.execute("PRAGMA synchronous = NORMAL").await?;
                    conn.execute("PRAGMA busy_timeout = 30000").await?;
                    Ok(())
                })
            }),
            Backend::Postgres => options.max_connections(self.max_connections),
        };
        let pool = options
            .connect(url)
            .await
            .map_err(Error::db("connecting to the database"))?;
        let mut conn = pool
            .acquire()
            .await
            .map_err(Error::db("connecting to the database"))?;
        schema::create(&mut conn, backend).await?;
        drop(conn);
        Ok(Store {
            inner: Arc::new(Inner {
                pool,
                backend,
                inbox_window: self.inbox_window,
                keep_sent: self.keep_sent,
                fingerprint: self.fingerprint.unwrap_or_default(),
                committed: Notify::new(),
                last_sweep: AtomicI64::new(0),
            }),
        })
    }
}

impl Store {
    /// Starts configuring a store.
    pub fn builder() -> StoreBuilder {
        StoreBuilder::default()
    }

    /// Opens the SQLite database in `path` with the defaults (see
    /// [`StoreBuilder::sqlite`]).
    pub async fn sqlite(path: impl AsRef<Path>) -> Result<Self> {
        Self::builder().sqlite(path).await
    }

    /// Connects to the PostgreSQL server at `url` with the defaults.
    pub async fn postgres(url: &str) -> Result<Self> {
        Self::builder().postgres(url).await
    }

    /// The connection pool, for the application's own queries outside a transaction.
    pub fn pool(&self) -> &AnyPool {
        &self.inner.pool
    }

    /// Which database it is on.
    pub fn backend(&self) -> Backend {
        self.inner.backend
    }

    /// Deletes the inbox's records older than its window, at most every quarter window
    /// (or minute), in a task of its own.
    pub(crate) fn sweep_if_due(&self) {
        let now = now_ms();
        let window = millis(self.inner.inbox_window);
        let every = (window / 4).min(60_000);
        let last = self.inner.last_sweep.load(Ordering::Relaxed);
        if now - last < every
            || self
                .inner
                .last_sweep
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let pool = self.inner.pool.clone();
        tokio::spawn(async move {
            let deleted = sqlx::query("DELETE FROM postage_inbox WHERE handled_at < $1")
                .bind(now - window)
                .execute(&pool)
                .await;
            match deleted {
                Ok(done) => tracing::debug!(
                    rows = done.rows_affected(),
                    "deleted the inbox's expired records"
                ),
                Err(error) => {
                    tracing::warn!(%error, "could not delete the inbox's expired records")
                }
            }
        });
    }
}

/// Now, in milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, millis)
}

/// A duration in whole milliseconds (saturating).
pub(crate) fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}
