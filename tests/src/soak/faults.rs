//! The faults a soak draws, and the life of each: injected, held for a drawn time, healed,
//! then watched until every component it hit works again (its recovery time).

use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinHandle;

use super::fleet::{CONSUMER_TIMEOUT, Fleet, Role, short_broker_timers};
use crate::net::{Direction, Links, Toxic};
use crate::try_ctl;

/// How long a healed fault may take to be recovered from before the soak calls the fleet
/// stuck.
pub(super) const RECOVERY_BOUND: Duration = Duration::from_secs(60);

/// A kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum Kind {
    /// The node holding the queues stops its broker and starts it again.
    BrokerRestart,
    /// The second node of the cluster stops for a while.
    NodeStopped,
    /// The broker closes every connection.
    ClosedConnections,
    /// A worker's link (in its namespace) drops every packet, with no reset.
    BlackHole,
    /// A worker's link gets 300 ms of latency and 100 ms of jitter each way.
    Latency,
    /// A memory alarm: the cluster blocks its publishers.
    MemoryAlarm,
    /// A job held by its handler past the broker's consumer timeout.
    ConsumerTimeout,
}

impl Kind {
    /// Every kind, in the report's order.
    pub(super) const ALL: [Self; 7] = [
        Self::BrokerRestart,
        Self::NodeStopped,
        Self::ClosedConnections,
        Self::BlackHole,
        Self::Latency,
        Self::MemoryAlarm,
        Self::ConsumerTimeout,
    ];

    /// Its name in the report.
    pub(super) fn name(self) -> &'static str {
        match self {
            Self::BrokerRestart => "broker restart",
            Self::NodeStopped => "cluster node stopped",
            Self::ClosedConnections => "closed connections",
            Self::BlackHole => "black hole",
            Self::Latency => "latency",
            Self::MemoryAlarm => "memory alarm",
            Self::ConsumerTimeout => "consumer timeout",
        }
    }

    /// Whether it acts on a node: one such fault at a time (a node restarted while the
    /// other is stopped may wait minutes for it, as RabbitMQ's last-down-first-up rule
    /// says).
    fn on_a_node(self) -> bool {
        matches!(
            self,
            Self::BrokerRestart | Self::NodeStopped | Self::MemoryAlarm
        )
    }

    /// How long it lasts before it is healed, drawn from its range.
    fn lasts(self, rng: &mut fastrand::Rng) -> Duration {
        let (least, most) = match self {
            Self::BrokerRestart => (1, 4),
            Self::NodeStopped => (5, 15),
            Self::ClosedConnections => (0, 0),
            Self::BlackHole => (4, 12),
            Self::Latency => (5, 15),
            Self::MemoryAlarm => (3, 8),
            Self::ConsumerTimeout => return CONSUMER_TIMEOUT,
        };
        Duration::from_millis(rng.u64(least * 1000..=most * 1000))
    }

    /// The members of the fleet it hits: those whose progress its recovery waits for.
    fn hits(self, fleet: &Fleet) -> Vec<usize> {
        let label = |wanted: &str| {
            fleet
                .members
                .iter()
                .position(|member| member.label == wanted)
                .into_iter()
                .collect()
        };
        let members = fleet.members.iter().enumerate();
        match self {
            Self::BrokerRestart | Self::ClosedConnections => members
                .filter(|(_, member)| member.role != Role::Server)
                .map(|(i, _)| i)
                .collect(),
            Self::NodeStopped => members
                .filter(|(_, member)| member.role != Role::Server && member.first_node == 1)
                .map(|(i, _)| i)
                .collect(),
            Self::MemoryAlarm => members
                .filter(|(_, member)| member.role == Role::Publisher)
                .map(|(i, _)| i)
                .collect(),
            Self::BlackHole => label("worker-2"),
            Self::Latency => label("worker-3"),
            Self::ConsumerTimeout => label("worker-1"),
        }
    }
}

/// Draws kinds at random (seeded), every kind once before any comes again, skipping
/// those that cannot start now.
#[derive(Debug)]
pub(super) struct Draw {
    rng: fastrand::Rng,
    bag: Vec<Kind>,
}

impl Draw {
    pub(super) fn new(seed: u64) -> Self {
        Self {
            rng: fastrand::Rng::with_seed(seed),
            bag: Vec::new(),
        }
    }

    /// The next kind that can start beside `active`, if any.
    pub(super) fn next(&mut self, active: &[Kind]) -> Option<Kind> {
        if self.bag.is_empty() {
            self.bag = Kind::ALL.to_vec();
            self.rng.shuffle(&mut self.bag);
        }
        let node_busy = active.iter().any(|kind| kind.on_a_node());
        let position = self
            .bag
            .iter()
            .position(|kind| !(active.contains(kind) || kind.on_a_node() && node_busy))?;
        Some(self.bag.remove(position))
    }

    /// A time from `least` to `most`.
    pub(super) fn pause(&mut self, least: Duration, most: Duration) -> Duration {
        let span = most.saturating_sub(least).as_millis();
        least + Duration::from_millis(self.rng.u64(0..=u64::try_from(span).unwrap_or(0)))
    }

    fn rng(&mut self) -> &mut fastrand::Rng {
        &mut self.rng
    }
}

/// Work a fault does on the broker or the network: `rabbitmqctl` off the runtime's
/// threads, the rest at once.
type Work = JoinHandle<Result<(), String>>;

/// Work already done.
fn done() -> Work {
    tokio::spawn(async { Ok(()) })
}

/// `rabbitmqctl ARGS` on `node`.
fn ctl_work(node: &'static str, args: &'static [&'static str]) -> Work {
    tokio::task::spawn_blocking(move || {
        try_ctl(node, args)
            .map(drop)
            .map_err(|error| format!("{node}: {args:?}: {error}"))
    })
}

/// Where a fault is in its life.
#[derive(Debug)]
enum Stage {
    Injecting(Work),
    Active,
    Healing(Work),
    Recovering,
    Over,
}

/// One fault injected into the fleet.
#[derive(Debug)]
pub(super) struct Fault {
    pub(super) kind: Kind,
    pub(super) began: Instant,
    lasts: Duration,
    stage: Stage,
    hits: Vec<usize>,
    healed: Option<Instant>,
    /// When each member hit worked again after the heal.
    back: Vec<Option<Instant>>,
    /// What went wrong injecting or healing it.
    pub(super) error: Option<String>,
}

impl Fault {
    /// Injects a fault of `kind` into `fleet`; `id` names the held job of a consumer
    /// timeout, whose fate `events` gets.
    pub(super) fn inject(
        kind: Kind,
        fleet: &Fleet,
        draw: &mut Draw,
        id: u64,
        events: &UnboundedSender<(Instant, String)>,
    ) -> Self {
        let nodes = fleet.nodes();
        let work = match kind {
            Kind::BrokerRestart => ctl_work(nodes[0], &["stop_app"]),
            Kind::NodeStopped => ctl_work(nodes[1], &["stop_app"]),
            Kind::ClosedConnections => tokio::task::spawn_blocking(move || {
                // On the first node that answers: the broker closes the cluster's
                // connections.
                let mut last = String::new();
                for node in nodes {
                    match try_ctl(node, &["close_all_connections", "soak fault"]) {
                        Ok(_) => return Ok(()),
                        Err(error) => last = error,
                    }
                }
                Err(last)
            }),
            Kind::BlackHole => {
                fleet.island().black_hole();
                done()
            }
            Kind::Latency => {
                for relay in fleet.slow_relays() {
                    for direction in [Direction::Upstream, Direction::Downstream] {
                        relay.add(
                            Links::All,
                            direction,
                            Toxic::Latency {
                                delay: Duration::from_millis(300),
                                jitter: Duration::from_millis(100),
                            },
                        );
                    }
                }
                done()
            }
            Kind::MemoryAlarm => ctl_work(nodes[0], &["set_vm_memory_high_watermark", "0.0000001"]),
            Kind::ConsumerTimeout => fleet.send_held_job(
                id,
                CONSUMER_TIMEOUT + Duration::from_secs(3),
                events.clone(),
            ),
        };
        let hits = kind.hits(fleet);
        Self {
            kind,
            began: Instant::now(),
            lasts: kind.lasts(draw.rng()),
            stage: Stage::Injecting(work),
            back: vec![None; hits.len()],
            hits,
            healed: None,
            error: None,
        }
    }

    /// Notes that member `member` worked at `at`.
    pub(super) fn progress(&mut self, member: usize, at: Instant) {
        if let (Stage::Recovering, Some(healed)) = (&self.stage, self.healed) {
            for (hit, back) in self.hits.iter().zip(&mut self.back) {
                if *hit == member && back.is_none() && at > healed {
                    *back = Some(at);
                }
            }
        }
    }

    /// Moves the fault on: heals it once its time is up (or at once when `now_heal`),
    /// and ends it once every member it hit works again, or after [`RECOVERY_BOUND`].
    /// A member still under another fault (`elsewhere`) when this one heals is left to
    /// that fault's recovery.
    pub(super) async fn step(&mut self, fleet: &Fleet, now_heal: bool, elsewhere: &[usize]) {
        match &mut self.stage {
            Stage::Injecting(work) if work.is_finished() => {
                if let Err(error) = work.await.unwrap_or_else(|e| Err(e.to_string())) {
                    self.error = Some(error);
                }
                self.stage = Stage::Active;
            }
            Stage::Active if now_heal || self.began.elapsed() >= self.lasts => {
                self.stage = Stage::Healing(self.heal(fleet));
            }
            Stage::Healing(work) if work.is_finished() => {
                if let Err(error) = work.await.unwrap_or_else(|e| Err(e.to_string())) {
                    self.error.get_or_insert(error);
                }
                // A consumer timeout is over once the broker took the delivery back.
                self.healed = Some(match self.kind {
                    Kind::ConsumerTimeout => self.began + CONSUMER_TIMEOUT,
                    _ => Instant::now(),
                });
                let hits = std::mem::take(&mut self.hits);
                self.hits = hits
                    .into_iter()
                    .filter(|hit| !elsewhere.contains(hit))
                    .collect();
                self.back = vec![None; self.hits.len()];
                self.stage = Stage::Recovering;
            }
            Stage::Recovering => {
                let healed = self.healed.unwrap_or(self.began);
                if self.back.iter().all(Option::is_some) || healed.elapsed() > RECOVERY_BOUND {
                    self.stage = Stage::Over;
                }
            }
            _ => {}
        }
    }

    fn heal(&self, fleet: &Fleet) -> Work {
        let nodes = fleet.nodes();
        let start = |node: &'static str| {
            tokio::task::spawn_blocking(move || {
                crate::start_app(node);
                short_broker_timers(node);
                Ok(())
            })
        };
        match self.kind {
            Kind::BrokerRestart => start(nodes[0]),
            Kind::NodeStopped => start(nodes[1]),
            Kind::ClosedConnections | Kind::ConsumerTimeout => done(),
            Kind::BlackHole => {
                fleet.island().heal();
                done()
            }
            Kind::Latency => {
                for relay in fleet.slow_relays() {
                    relay.heal();
                }
                done()
            }
            Kind::MemoryAlarm => ctl_work(nodes[0], &["set_vm_memory_high_watermark", "0.4"]),
        }
    }

    /// Leaves the members of `hits` that have not worked again since the heal to a fault
    /// that just hit them.
    pub(super) fn excuse(&mut self, hits: &[usize]) {
        if !matches!(self.stage, Stage::Recovering) {
            return;
        }
        let (mut kept, mut back) = (Vec::new(), Vec::new());
        for (hit, at) in self.hits.iter().zip(&self.back) {
            if at.is_some() || !hits.contains(hit) {
                kept.push(*hit);
                back.push(*at);
            }
        }
        (self.hits, self.back) = (kept, back);
    }

    /// Whether it is still injected (not yet healed).
    pub(super) fn injected(&self) -> bool {
        matches!(
            self.stage,
            Stage::Injecting(_) | Stage::Active | Stage::Healing(_)
        )
    }

    /// The members it hits.
    pub(super) fn hits(&self) -> &[usize] {
        &self.hits
    }

    /// Whether its life is over.
    pub(super) fn over(&self) -> bool {
        matches!(self.stage, Stage::Over)
    }

    /// How long after the heal the last member it hit worked again; `None` when one did
    /// not within [`RECOVERY_BOUND`], or when every member it hit was left to another
    /// fault.
    pub(super) fn recovery(&self) -> Option<Duration> {
        let healed = self.healed?;
        if self.hits.is_empty() {
            return None;
        }
        let last = self.back.iter().copied().collect::<Option<Vec<_>>>()?;
        Some(
            last.into_iter()
                .max()
                .map_or(Duration::ZERO, |at| at - healed),
        )
    }

    /// The label of the member it hit that worked again last.
    pub(super) fn slowest(&self, fleet: &Fleet) -> Option<&'static str> {
        let (hit, _) = self
            .hits
            .iter()
            .zip(&self.back)
            .filter_map(|(hit, back)| Some((hit, (*back)?)))
            .max_by_key(|(_, back)| *back)?;
        Some(fleet.members[*hit].label)
    }

    /// The labels of the members it hit that never worked again.
    pub(super) fn stuck(&self, fleet: &Fleet) -> Vec<&'static str> {
        self.hits
            .iter()
            .zip(&self.back)
            .filter(|(_, back)| back.is_none())
            .map(|(hit, _)| fleet.members[*hit].label)
            .collect()
    }
}
