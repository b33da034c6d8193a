//! What the dashboard knows of the fleet: the components discovery found, their rates from
//! their `/metrics`, their queues as the broker tells, and the ones gone; one
//! [`Fleet::poll`] a period.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use postage_core::channel::{Channel, QueueState};
use postage_core::{Connection, Fingerprint};
use serde::Serialize;

use crate::addresses::Addresses;
use crate::application::Description;
use crate::discovery::{components, pings};

use super::scrape::{Buckets, Counts, SCRAPE_TIMEOUT, Scraped, per_second, scrape};

/// Points of rate history kept per component (one a poll: five minutes at one a second).
const HISTORY: usize = 300;
/// How long a component that stopped answering stays on the page, shown as gone.
const GONE_KEPT: Duration = Duration::from_secs(60);
/// At most this many components are watched; more are counted, not shown.
const MAX_COMPONENTS: usize = 2000;
/// At most this many of a component's group queues are read.
const MAX_GROUP_QUEUES: usize = 8;
/// How far back latency percentiles look.
const LATENCY_WINDOW: Duration = Duration::from_secs(60);
/// At most one histogram kept for the latency window every this often.
const LATENCY_STEP: Duration = Duration::from_secs(5);

/// Percentiles of a duration, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(super) struct Percentiles {
    pub(super) p50: f64,
    pub(super) p95: f64,
    pub(super) p99: f64,
}

impl Percentiles {
    fn of(buckets: &Buckets) -> Option<Self> {
        Some(Self {
            p50: buckets.quantile_ms(0.5)?,
            p95: buckets.quantile_ms(0.95)?,
            p99: buckets.quantile_ms(0.99)?,
        })
    }
}

/// The RPC calls a component makes, per second over the last period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub(super) struct Calls {
    pub(super) made: f64,
    /// Those that ended in an error, exception, timeout or failure.
    pub(super) failed: f64,
}

/// One component as the page shows it.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Shown {
    /// `pid@host`: its own routing key, and its id on the page.
    pub(super) id: String,
    pub(super) name: String,
    pub(super) kind: String,
    pub(super) host: String,
    pub(super) pid: String,
    pub(super) user: String,
    pub(super) groups: Vec<String>,
    pub(super) handlers: Vec<serde_json::Value>,
    /// Seconds since it started, as it last said.
    pub(super) uptime: Option<f64>,
    /// Whether it answered the last discovery.
    pub(super) live: bool,
    /// Seconds since it last answered.
    pub(super) silent_for: f64,
    /// Whether it serves metrics (else it has no rates).
    pub(super) metrics: bool,
    /// Per handler, deliveries per second over the last period.
    pub(super) rates: BTreeMap<String, Counts>,
    /// All its handlers' deliveries per second, the last minutes, oldest first.
    pub(super) history: VecDeque<f64>,
    /// The RPC calls it made, per second over the last period.
    pub(super) calls: Option<Calls>,
    /// Over about the last minute: how long its handlers ran (the latency of the RPCs
    /// it serves) and how long the RPC calls it made took.
    pub(super) handler_latency: Option<Percentiles>,
    pub(super) call_latency: Option<Percentiles>,
    /// Whether it describes its API (the page links to it).
    pub(super) api: bool,
    /// Its queues (system-wide, host-wide, unique, groups') as the broker tells.
    pub(super) queues: Vec<QueueShown>,
}

/// One of a component's queues.
#[derive(Debug, Clone, Serialize)]
pub(super) struct QueueShown {
    pub(super) name: String,
    pub(super) messages: u32,
    pub(super) consumers: u32,
}

/// A watched component: what is shown and what the next rates are computed from.
#[derive(Debug)]
struct Watched {
    shown: Shown,
    description: Description,
    last_seen: Instant,
    counted: Option<(Instant, Scraped)>,
    /// Its handler and call histograms, one every [`LATENCY_STEP`] over the last
    /// [`LATENCY_WINDOW`], oldest first.
    window: VecDeque<(Instant, Buckets, Buckets)>,
}

/// What the page shows of the whole fleet.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Snapshot {
    /// Whether the last discovery reached the broker.
    pub(super) broker: bool,
    /// Whether the page may send controls.
    pub(super) control: bool,
    /// The login controls are sent as (`user_id`).
    pub(super) user: String,
    pub(super) components: Vec<Shown>,
    /// Components found beyond the ones watched.
    pub(super) unwatched: usize,
}

/// The fleet as the last polls found it.
#[derive(Debug)]
pub(super) struct Fleet {
    /// Silent this long, a component is shown gone: two polls missed.
    gone_after: Duration,
    watched: BTreeMap<String, Watched>,
    client: reqwest::Client,
    broker: bool,
    unwatched: usize,
}

impl Fleet {
    /// A fleet polled every `period`.
    pub(super) fn new(period: Duration) -> Self {
        Self {
            gone_after: period.mul_f64(1.5) + Duration::from_millis(200),
            watched: BTreeMap::new(),
            client: reqwest::Client::builder()
                .timeout(SCRAPE_TIMEOUT)
                .no_proxy()
                .build()
                .unwrap_or_default(),
            broker: false,
            unwatched: 0,
        }
    }

    /// Asks who is there (answers collected for `wait`), scrapes the metrics of those
    /// that serve them, and marks the silent ones gone.
    pub(super) async fn poll(&mut self, connection: &Connection, wait: Duration) {
        let mut hosts: Vec<String> = self
            .watched
            .values()
            .map(|w| w.shown.host.clone())
            .collect();
        hosts.push(Fingerprint::default().host);
        hosts.sort();
        hosts.dedup();
        let (described, pinged) = tokio::join!(
            components(connection, wait),
            pings(connection, &hosts, wait)
        );
        let mut found = match described {
            Ok(found) => found,
            Err(error) => {
                // The error's text is not shown: it may name the broker's address.
                // Nor are components marked gone: nobody could answer.
                tracing::debug!(%error, "discovery failed");
                self.broker = false;
                return;
            }
        };
        // Applications that answer ping but not describe (Python Postage's) are shown
        // with their fingerprint only.
        for fingerprint in pinged.unwrap_or_default() {
            let known = found.iter().any(|d| {
                d.fingerprint.pid == fingerprint.pid && d.fingerprint.host == fingerprint.host
            });
            if !known {
                found.push(Description {
                    fingerprint,
                    groups: Vec::new(),
                    handlers: Vec::new(),
                    api: None,
                    metrics: None,
                    uptime: None,
                });
            }
        }
        self.broker = true;
        let now = Instant::now();
        self.unwatched = found.len().saturating_sub(MAX_COMPONENTS);
        found.truncate(MAX_COMPONENTS);
        // Each metrics endpoint once, however many components share it.
        let mut endpoints: Vec<(SocketAddr, String)> = found
            .iter()
            .filter_map(|d| Some((d.metrics?, d.fingerprint.host.clone())))
            .collect();
        endpoints.sort();
        endpoints.dedup();
        let scrapes = endpoints.into_iter().map(|(address, host)| {
            let client = self.client.clone();
            async move {
                let scraped = scrape(&client, address, &host).await;
                ((address, host), scraped)
            }
        });
        let scraped: BTreeMap<(SocketAddr, String), Option<Scraped>> =
            futures_util::future::join_all(scrapes)
                .await
                .into_iter()
                .collect();
        let answers = found.into_iter().map(|description| {
            let counts = description.metrics.and_then(|address| {
                scraped
                    .get(&(address, description.fingerprint.host.clone()))
                    .cloned()
                    .flatten()
            });
            (description, counts)
        });
        for (description, counts) in answers {
            let fingerprint = &description.fingerprint;
            let id = format!("{}@{}", fingerprint.pid, fingerprint.host);
            let watched = self.watched.entry(id.clone()).or_insert_with(|| Watched {
                shown: Shown {
                    id,
                    name: String::new(),
                    kind: String::new(),
                    host: String::new(),
                    pid: String::new(),
                    user: String::new(),
                    groups: Vec::new(),
                    handlers: Vec::new(),
                    uptime: None,
                    live: true,
                    silent_for: 0.0,
                    metrics: false,
                    rates: BTreeMap::new(),
                    history: VecDeque::new(),
                    calls: None,
                    handler_latency: None,
                    call_latency: None,
                    api: false,
                    queues: Vec::new(),
                },
                description: description.clone(),
                last_seen: now,
                counted: None,
                window: VecDeque::new(),
            });
            watched.update(description, counts, now);
        }
        self.age();
        self.read_queues(connection).await;
    }

    /// Reads the depth and consumers of every live component's queues from the broker,
    /// with passive declares (a missing queue closes the channel: the next gets another).
    async fn read_queues(&mut self, connection: &Connection) {
        let mut channel: Option<Channel> = None;
        let mut known: BTreeMap<String, Option<QueueState>> = BTreeMap::new();
        for watched in self.watched.values_mut().filter(|w| w.shown.live) {
            let addresses = Addresses::of(&watched.description.fingerprint);
            let mut names = vec![
                addresses.sid().name().to_owned(),
                addresses.hid().name().to_owned(),
                addresses.uid().name().to_owned(),
            ];
            names.extend(
                watched
                    .description
                    .groups
                    .iter()
                    .take(MAX_GROUP_QUEUES)
                    .map(|g| addresses.group_queue(g).name().to_owned()),
            );
            watched.shown.queues.clear();
            for name in names {
                if !known.contains_key(&name) {
                    if channel.is_none() {
                        channel = Channel::open(connection).await.ok();
                    }
                    let Some(open) = &channel else { return };
                    let state: Option<QueueState> =
                        open.queue_state(&name).await.unwrap_or_default();
                    if state.is_none() {
                        channel = None;
                    }
                    known.insert(name.clone(), state);
                }
                if let Some(Some(state)) = known.get(&name) {
                    watched.shown.queues.push(QueueShown {
                        name,
                        messages: state.messages,
                        consumers: state.consumers,
                    });
                }
            }
        }
        if let Some(channel) = channel {
            let _ = channel.close().await;
        }
    }

    /// Marks the components that did not answer lately gone, and forgets the long gone.
    fn age(&mut self) {
        let now = Instant::now();
        self.watched
            .retain(|_, w| now.duration_since(w.last_seen) < GONE_KEPT);
        for watched in self.watched.values_mut() {
            let silent = now.duration_since(watched.last_seen);
            watched.shown.silent_for = (silent.as_secs_f64() * 10.0).round() / 10.0;
            watched.shown.live = silent < self.gone_after;
            if !watched.shown.live {
                watched.shown.rates.clear();
            }
        }
    }

    /// What the page shows now.
    pub(super) fn snapshot(&self, control: bool, user: &str) -> Snapshot {
        let mut components: Vec<Shown> = self.watched.values().map(|w| w.shown.clone()).collect();
        components.sort_by(|a, b| (&a.name, &a.host, &a.pid).cmp(&(&b.name, &b.host, &b.pid)));
        Snapshot {
            broker: self.broker,
            control,
            user: user.to_owned(),
            components,
            unwatched: self.unwatched,
        }
    }

    /// The description of the component `id` (`pid@host`), if it is watched.
    pub(super) fn description(&self, id: &str) -> Option<&Description> {
        self.watched.get(id).map(|w| &w.description)
    }
}

impl Watched {
    fn update(&mut self, description: Description, scraped: Option<Scraped>, now: Instant) {
        let fingerprint = &description.fingerprint;
        let shown = &mut self.shown;
        shown.name.clone_from(&fingerprint.name);
        shown.kind.clone_from(&fingerprint.kind);
        shown.host.clone_from(&fingerprint.host);
        shown.pid.clone_from(&fingerprint.pid);
        shown.user.clone_from(&fingerprint.user);
        shown.groups.clone_from(&description.groups);
        shown.handlers.clone_from(&description.handlers);
        shown.uptime = description.uptime.map(|u| u.round());
        shown.metrics = scraped.is_some();
        shown.api = description.api.is_some();
        shown.rates.clear();
        shown.calls = None;
        if let Some(scraped) = scraped {
            if let Some((then, before)) = &self.counted {
                let seconds = now.duration_since(*then).as_secs_f64().max(0.001);
                let empty = Counts::default();
                for (handler, counts) in &scraped.deliveries {
                    let before = before.deliveries.get(handler).unwrap_or(&empty);
                    shown
                        .rates
                        .insert(handler.clone(), counts.rate_since(before, seconds));
                }
                shown.calls = Some(Calls {
                    made: per_second(scraped.calls, before.calls, seconds),
                    failed: per_second(scraped.calls_failed, before.calls_failed, seconds),
                });
                let total = shown.rates.values().map(|r| r.handled).sum::<f64>();
                if shown.history.len() == HISTORY {
                    shown.history.pop_front();
                }
                shown.history.push_back((total * 100.0).round() / 100.0);
            }
            while self
                .window
                .front()
                .is_some_and(|(at, ..)| now.duration_since(*at) > LATENCY_WINDOW)
            {
                self.window.pop_front();
            }
            let (handlers, calls) = match self.window.front() {
                Some((_, handlers, calls)) => (
                    scraped.handler_time.since(handlers),
                    scraped.call_time.since(calls),
                ),
                None => (scraped.handler_time.clone(), scraped.call_time.clone()),
            };
            shown.handler_latency = Percentiles::of(&handlers);
            shown.call_latency = Percentiles::of(&calls);
            if self
                .window
                .back()
                .is_none_or(|(at, ..)| now.duration_since(*at) >= LATENCY_STEP)
            {
                self.window.push_back((
                    now,
                    scraped.handler_time.clone(),
                    scraped.call_time.clone(),
                ));
            }
            self.counted = Some((now, scraped));
        }
        self.description = description;
        self.last_seen = now;
    }
}
