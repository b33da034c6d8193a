//! RPC calls from a producer: placeholder state, filled in with the RPC client.

use std::time::Duration;

/// How long an RPC call waits and how often it is re-sent.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RpcSettings {
    pub(crate) timeout: Duration,
    pub(crate) max_retry: u32,
}

impl Default for RpcSettings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            max_retry: 4,
        }
    }
}

#[derive(Debug)]
pub(crate) struct RpcState {
    pub(crate) settings: RpcSettings,
}

impl RpcState {
    pub(crate) fn new(settings: RpcSettings) -> Self {
        Self { settings }
    }
}
