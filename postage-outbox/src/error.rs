//! What can go wrong with a store, its transactions and its relay.

/// An outbox or inbox failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database refused or failed a statement, or could not be reached.
    #[error("database: {operation}: {source}")]
    Database {
        /// What the store was doing.
        operation: &'static str,
        /// What the driver said.
        #[source]
        source: sqlx::Error,
    },
    /// The transaction was committed or rolled back already (a handler kept its `Tx`
    /// past its call, say).
    #[error("the transaction is finished: it was committed or rolled back")]
    Finished,
    /// A URL this crate does not know how to open (neither `sqlite:` nor `postgres:`).
    #[error("not a SQLite or PostgreSQL URL (the URL is not shown: it may hold a password)")]
    UnknownDatabase,
    /// A message could not be encoded, or sent.
    #[error(transparent)]
    Postage(#[from] postage_core::Error),
}

impl Error {
    /// A closure that names what failed, for `map_err`.
    pub(crate) fn db(operation: &'static str) -> impl FnOnce(sqlx::Error) -> Self {
        move |source| Self::Database { operation, source }
    }
}

/// A result of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
