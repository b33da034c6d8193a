//! What the dashboard reads in a component's `/metrics` (the text
//! [`postage_core::telemetry`] serves): deliveries by handler and disposition, RPC calls
//! by outcome, and the handler and call duration histograms.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use prometheus_parse::Value;
use serde::Serialize;

/// Bound of one scrape of a component's `/metrics`.
pub(super) const SCRAPE_TIMEOUT: Duration = Duration::from_millis(800);
/// At most this many bytes of a `/metrics` answer are read.
const SCRAPE_LIMIT: usize = 1 << 20;

/// Counts of one handler's deliveries, by what became of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub(super) struct Counts {
    /// Every delivery it ran on.
    pub(super) handled: f64,
    /// Rejected or handed back to the queue.
    pub(super) failed: f64,
    /// Sent to its retry queue.
    pub(super) retried: f64,
    /// Sent to its dead-letter queue.
    pub(super) dead_lettered: f64,
}

impl Counts {
    fn add(&mut self, disposition: &str, value: f64) {
        self.handled += value;
        match disposition {
            "reject" | "requeue" => self.failed += value,
            "retry" => self.retried += value,
            "dead-letter" => self.dead_lettered += value,
            _ => {}
        }
    }

    /// The change per second from `before` to `self` over `seconds` (never negative: a
    /// restarted component counts from zero again).
    pub(super) fn rate_since(&self, before: &Counts, seconds: f64) -> Counts {
        Counts {
            handled: per_second(self.handled, before.handled, seconds),
            failed: per_second(self.failed, before.failed, seconds),
            retried: per_second(self.retried, before.retried, seconds),
            dead_lettered: per_second(self.dead_lettered, before.dead_lettered, seconds),
        }
    }
}

/// The change per second from `then` to `now` over `seconds`, to two decimals, never
/// negative.
pub(super) fn per_second(now: f64, then: f64, seconds: f64) -> f64 {
    ((now - then).max(0.0) / seconds * 100.0).round() / 100.0
}

/// A histogram as cumulative counts by upper bound (`le`), summed over its labels.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Buckets(BTreeMap<Bound, f64>);

/// A bucket's upper bound, ordered (`+Inf` last).
#[derive(Debug, Clone, Copy)]
pub(super) struct Bound(f64);

impl PartialEq for Bound {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Bound {}

impl PartialOrd for Bound {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Bound {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

impl Buckets {
    /// The observations since `before` (a restarted component's: all of them).
    pub(super) fn since(&self, before: &Buckets) -> Buckets {
        let total = |b: &Buckets| b.0.values().copied().fold(0.0, f64::max);
        if total(self) < total(before) {
            return self.clone();
        }
        Buckets(
            self.0
                .iter()
                .map(|(le, count)| (*le, count - before.0.get(le).copied().unwrap_or(0.0)))
                .collect(),
        )
    }

    /// The `q` quantile (0 to 1) in milliseconds, interpolated within its bucket as
    /// Prometheus' `histogram_quantile` does; `None` without observations.
    pub(super) fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total = self.0.values().copied().fold(0.0, f64::max);
        if total <= 0.0 {
            return None;
        }
        let target = q * total;
        let (mut lower, mut below) = (0.0, 0.0);
        for (Bound(le), count) in &self.0 {
            if *count >= target {
                if le.is_infinite() {
                    return Some((lower * 1000.0 * 100.0_f64).round() / 100.0);
                }
                let within = if count > &below {
                    (target - below) / (count - below)
                } else {
                    1.0
                };
                let seconds = lower + (le - lower) * within;
                return Some((seconds * 1000.0 * 100.0).round() / 100.0);
            }
            (lower, below) = (*le, *count);
        }
        None
    }
}

/// What one scrape of a component's `/metrics` found.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Scraped {
    /// Deliveries by handler.
    pub(super) deliveries: BTreeMap<String, Counts>,
    /// RPC calls the component made, and those that did not succeed.
    pub(super) calls: f64,
    pub(super) calls_failed: f64,
    /// How long its handlers ran.
    pub(super) handler_time: Buckets,
    /// How long the RPC calls it made took.
    pub(super) call_time: Buckets,
}

/// What a `/metrics` text counts, as `prometheus-parse` reads the text format.
pub(super) fn read(text: &str) -> Scraped {
    let mut found = Scraped::default();
    let lines = text.lines().map(|line| Ok(line.to_owned()));
    let Ok(scrape) = prometheus_parse::Scrape::parse(lines) else {
        return found;
    };
    for sample in scrape.samples {
        let labels = &sample.labels;
        let value = match &sample.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(counts) => {
                let buckets = match sample.metric.as_str() {
                    "postage_handler_duration_seconds" => &mut found.handler_time,
                    "postage_rpc_call_duration_seconds" => &mut found.call_time,
                    _ => continue,
                };
                for count in counts {
                    *buckets.0.entry(Bound(count.less_than)).or_default() += count.count;
                }
                continue;
            }
            Value::Summary(_) => continue,
        };
        match sample.metric.as_str() {
            "postage_deliveries_total" => {
                if let (Some(handler), Some(disposition)) =
                    (labels.get("handler"), labels.get("disposition"))
                {
                    found
                        .deliveries
                        .entry(handler.to_owned())
                        .or_default()
                        .add(disposition, value);
                }
            }
            "postage_rpc_calls_total" => {
                found.calls += value;
                if labels.get("outcome") != Some("success") {
                    found.calls_failed += value;
                }
            }
            _ => {}
        }
    }
    found
}

/// What a component's `/metrics` counts, or `None` when it does not answer in time. An
/// address on every interface is asked for on the component's host.
pub(super) async fn scrape(
    client: &reqwest::Client,
    address: SocketAddr,
    host: &str,
) -> Option<Scraped> {
    let url = if address.ip().is_unspecified() {
        format!("http://{host}:{}/metrics", address.port())
    } else {
        format!("http://{address}/metrics")
    };
    let answer = client.get(url).send().await.ok()?;
    if !answer.status().is_success() || answer.content_length().unwrap_or(0) > SCRAPE_LIMIT as u64 {
        return None;
    }
    let body = answer.bytes().await.ok()?;
    if body.len() > SCRAPE_LIMIT {
        return None;
    }
    Some(read(&String::from_utf8_lossy(&body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliveries_are_summed_by_handler_and_disposition() {
        let text = "# TYPE postage_deliveries counter\n\
            postage_deliveries_total{queue=\"a\",handler=\"W::work\",disposition=\"ack\"} 5\n\
            postage_deliveries_total{queue=\"b\",handler=\"W::work\",disposition=\"retry\"} 2\n\
            postage_deliveries_total{queue=\"a\",handler=\"W::work\",disposition=\"dead-letter\"} 1\n\
            postage_deliveries_total{queue=\"a\",handler=\"none\",disposition=\"reject\"} 3\n\
            postage_reconnects_total 0\n";
        let found = read(text).deliveries;
        assert_eq!(
            found["W::work"],
            Counts {
                handled: 8.0,
                failed: 0.0,
                retried: 2.0,
                dead_lettered: 1.0
            }
        );
        assert_eq!(found["none"].failed, 3.0);
    }

    #[test]
    fn call_percentiles_come_from_the_buckets_observed_since_the_last_look() {
        let at = |fast: u32, slow: u32, failed: u32| {
            format!(
                "# TYPE postage_rpc_calls counter\n\
                 postage_rpc_calls_total{{command=\"a\",outcome=\"success\"}} {}\n\
                 postage_rpc_calls_total{{command=\"a\",outcome=\"timeout\"}} {failed}\n\
                 # TYPE postage_rpc_call_duration_seconds histogram\n\
                 postage_rpc_call_duration_seconds_bucket{{command=\"a\",le=\"0.001\"}} {fast}\n\
                 postage_rpc_call_duration_seconds_bucket{{command=\"a\",le=\"0.01\"}} {}\n\
                 postage_rpc_call_duration_seconds_bucket{{command=\"a\",le=\"+Inf\"}} {}\n",
                fast + slow,
                fast + slow,
                fast + slow
            )
        };
        let before = read(&at(100, 0, 0));
        let now = read(&at(100, 100, 4));
        assert_eq!(now.calls, 204.0);
        assert_eq!(now.calls_failed, 4.0);
        // Since the last look every call took 1 to 10 ms.
        let recent = now.call_time.since(&before.call_time);
        assert_eq!(recent.quantile_ms(0.5), Some(5.5));
        assert_eq!(recent.quantile_ms(0.99), Some(9.91));
        // Over the whole life half took under 1 ms.
        assert_eq!(now.call_time.quantile_ms(0.5), Some(1.0));
        assert_eq!(Buckets::default().quantile_ms(0.5), None);
    }
}
