//! What a relay reports, in Prometheus' format (`prometheus-client`), on the metrics
//! endpoint of the connection it publishes on when that has one
//! (`Config::metrics`, `POSTAGE_METRICS`), labelled `relay="<its name>"`:
//!
//! | metric | what |
//! |---|---|
//! | `postage_outbox_relay_lag_seconds` | how long the oldest message not yet sent has waited, when the relay last looked (0: none waits) |
//! | `postage_outbox_pending` | messages not yet sent, when it last looked (at most its batch) |
//! | `postage_outbox_published_total` | messages it published and the broker confirmed |
//! | `postage_outbox_publish_failures_total` | publishes that failed (tried again later) |

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// A relay's metrics; clones share them. Register them with a
/// `prometheus_client` registry, or read them directly.
#[derive(Debug, Clone, Default)]
pub struct RelayMetrics {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    lag: Gauge<f64, AtomicU64>,
    pending: Gauge,
    published: Counter,
    failures: Counter,
}

impl RelayMetrics {
    /// Adds them to `registry`, named `outbox_*`: a registry made with
    /// `Registry::with_prefix("postage")`, as postage's endpoint is, names them as the
    /// table above (a relay adds them to its connection's endpoint itself).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "outbox_relay_lag_seconds",
            "How long the oldest message not yet sent has waited",
            self.inner.lag.clone(),
        );
        registry.register(
            "outbox_pending",
            "Messages in the outbox not yet sent",
            self.inner.pending.clone(),
        );
        registry.register(
            "outbox_published",
            "Messages the relay published and the broker confirmed",
            self.inner.published.clone(),
        );
        registry.register(
            "outbox_publish_failures",
            "Publishes of the relay that failed",
            self.inner.failures.clone(),
        );
    }

    /// The lag when the relay last looked.
    pub fn lag(&self) -> Duration {
        Duration::from_secs_f64(self.inner.lag.get().max(0.0))
    }

    /// Messages published and confirmed.
    pub fn published_count(&self) -> u64 {
        self.inner.published.get()
    }

    pub(super) fn observe_lag(&self, lag: Duration) {
        self.inner.lag.set(lag.as_secs_f64());
    }

    pub(super) fn set_pending(&self, pending: i64) {
        self.inner.pending.set(pending);
    }

    pub(super) fn published(&self) {
        self.inner.published.inc();
    }

    pub(super) fn failed(&self) {
        self.inner.failures.inc();
    }
}
