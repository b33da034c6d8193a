//! The metrics a component keeps, in Prometheus' text format (`prometheus-client`):
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `postage_deliveries_total` | `queue`, `handler`, `disposition` | deliveries handled, by what became of them: `ack`, `reject`, `requeue`, `retry`, `dead-letter`, `expired` (`handler="none"` when none ran: bad input, no handler) |
//! | `postage_handler_duration_seconds` | `handler` | how long handler runs take |
//! | `postage_rpc_calls_total` | `command`, `outcome` | RPC calls made, by outcome: `success`, `error`, `exception`, `timeout`, `failed` |
//! | `postage_rpc_call_duration_seconds` | `command` | how long calls take, first send to answer |
//! | `postage_messages_in_flight` | | deliveries whose handlers run now |
//! | `postage_publishes_total` | `outcome` | publishes: `confirmed`, `sent` (without confirms), `refused`, `unroutable`, `failed` |
//! | `postage_reconnects_total` | | connections re-established after a loss |
//! | `postage_connections` | `state` | connections by state: `connected`, `blocked`, `reconnecting` |

use std::fmt;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::connection::LinkState;
use crate::sync::Locked;

/// Labels a processor formats once and shares (a queue's name, a handler's), so a
/// delivery's metrics cost no copies.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    queue: Arc<str>,
    handler: Arc<str>,
    disposition: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandlerLabels {
    handler: Arc<str>,
}

/// The `handler` label of a delivery no handler ran on.
static NO_HANDLER: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from("none"));

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    command: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommandLabels {
    command: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Durations from 0.5 ms to about 16 s.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Every metric of one endpoint, shared by the connections that report to it.
pub(crate) struct Metrics {
    /// Locked only to add the metrics of other crates (see [`Metrics::extend`]).
    registry: Locked<Registry>,
    deliveries: Family<DeliveryLabels, Counter>,
    handler_duration: Histograms<HandlerLabels>,
    calls: Family<CallLabels, Counter>,
    call_duration: Histograms<CommandLabels>,
    in_flight: Gauge,
    publishes: Family<OutcomeLabels, Counter>,
    reconnects: Counter,
    connections: Family<StateLabels, Gauge>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("postage");
        let deliveries = Family::default();
        registry.register(
            "deliveries",
            "Deliveries handled, by what became of them",
            deliveries.clone(),
        );
        let handler_duration: Histograms<HandlerLabels> = Family::new_with_constructor(latency);
        registry.register(
            "handler_duration_seconds",
            "How long handler runs take",
            handler_duration.clone(),
        );
        let calls = Family::default();
        registry.register("rpc_calls", "RPC calls made, by outcome", calls.clone());
        let call_duration: Histograms<CommandLabels> = Family::new_with_constructor(latency);
        registry.register(
            "rpc_call_duration_seconds",
            "How long RPC calls take, from the first send to the answer",
            call_duration.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "messages_in_flight",
            "Deliveries whose handlers run now",
            in_flight.clone(),
        );
        let publishes = Family::default();
        registry.register("publishes", "Publishes, by outcome", publishes.clone());
        let reconnects = Counter::default();
        registry.register(
            "reconnects",
            "Connections re-established after a loss",
            reconnects.clone(),
        );
        let connections = Family::default();
        registry.register("connections", "Connections by state", connections.clone());
        Self {
            registry: Locked::new(registry),
            deliveries,
            handler_duration,
            calls,
            call_duration,
            in_flight,
            publishes,
            reconnects,
            connections,
        }
    }

    /// Counts a delivery `handler` ran on (`None`: none did) and what became of it.
    pub(crate) fn delivery(
        &self,
        queue: &Arc<str>,
        handler: Option<&Arc<str>>,
        disposition: &'static str,
    ) {
        self.deliveries
            .get_or_create(&DeliveryLabels {
                queue: Arc::clone(queue),
                handler: Arc::clone(handler.unwrap_or(&NO_HANDLER)),
                disposition,
            })
            .inc();
    }

    /// Records how long a run of `handler` took.
    pub(crate) fn handler_run(&self, handler: &Arc<str>, took: Duration) {
        self.handler_duration
            .get_or_create(&HandlerLabels {
                handler: Arc::clone(handler),
            })
            .observe(took.as_secs_f64());
    }

    /// Counts an RPC call of `command` that ended with `outcome` after `took`.
    pub(crate) fn call(&self, command: &str, outcome: &'static str, took: Duration) {
        self.calls
            .get_or_create(&CallLabels {
                command: command.to_owned(),
                outcome,
            })
            .inc();
        self.call_duration
            .get_or_create(&CommandLabels {
                command: command.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    /// A delivery's handlers start (`true`) or are done.
    pub(crate) fn in_flight(&self, starting: bool) {
        if starting {
            self.in_flight.inc();
        } else {
            self.in_flight.dec();
        }
    }

    /// Counts a publish that ended with `outcome`.
    pub(crate) fn publish(&self, outcome: &'static str) {
        self.publishes
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// Counts a connection re-established.
    pub(crate) fn reconnect(&self) {
        self.reconnects.inc();
    }

    /// The text exposition, with `states` (each live connection's) as the connection gauge.
    pub(crate) fn encode(&self, states: &[LinkState]) -> String {
        for state in ["connected", "blocked", "reconnecting"] {
            let count = states
                .iter()
                .filter(|s| state_name(s) == Some(state))
                .count();
            self.connections
                .get_or_create(&StateLabels { state })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        let mut text = String::new();
        let encoded = self
            .registry
            .with(|registry| prometheus_client::encoding::text::encode(&mut text, registry));
        if let Err(error) = encoded {
            tracing::warn!(%error, "could not encode the metrics");
        }
        text
    }

    /// Adds metrics of another crate (an outbox relay's) to the endpoint, under the
    /// `postage_` prefix.
    pub(crate) fn extend(&self, add: impl FnOnce(&mut Registry)) {
        self.registry.with(add);
    }
}

fn state_name(state: &LinkState) -> Option<&'static str> {
    match state {
        LinkState::Connected => Some("connected"),
        LinkState::Blocked { .. } => Some("blocked"),
        LinkState::Reconnecting => Some("reconnecting"),
        _ => None,
    }
}
