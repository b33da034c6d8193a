//! Where a message goes.

use crate::topology::Exchange;

/// Where a message goes: the producer's defaults, one routing key on its first exchange
/// (Postage's `_key`), or an explicit list of (exchange, routing key) pairs (`_eks`).
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Route {
    /// Every (exchange, key) pair the producer was built with.
    #[default]
    Default,
    /// The producer's first exchange with this routing key.
    Key(String),
    /// These pairs instead of the defaults.
    Pairs(Vec<(Exchange, String)>),
}

impl Route {
    /// The producer's first exchange with routing key `key`.
    pub fn key(key: impl Into<String>) -> Self {
        Self::Key(key.into())
    }

    /// Exactly these (exchange, routing key) pairs.
    pub fn pairs<K: Into<String>>(pairs: impl IntoIterator<Item = (Exchange, K)>) -> Self {
        Self::Pairs(pairs.into_iter().map(|(e, k)| (e, k.into())).collect())
    }
}

impl From<&str> for Route {
    fn from(key: &str) -> Self {
        Self::key(key)
    }
}
