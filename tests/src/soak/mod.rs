//! A chaos soak with a ledger: a fleet (three workers on durable queues, an RPC server and
//! two callers, three publishers of confirmed jobs, a GenericApplication group of two) on
//! a cluster of RabbitMQ nodes of the soak's own, under steady traffic, while faults drawn
//! at random (seeded) come and go, overlapping: a broker restart, a cluster node stopped,
//! every connection closed, a black hole, latency, a memory alarm, a consumer timeout.
//!
//! Every message sent and every call made is written in a [`ledger`](self) with its fate.
//! At the end the soak checks that no confirmed message was lost, that no call took
//! longer than its bound, that each queue has the consumers it should (one, or the
//! group's two), that the components' resident memory stayed flat and that the fleet
//! recovered from every fault; then it prints its report, whose last line reads
//! `soak: N sent, N confirmed, 0 lost, D duplicated, C calls, 0 past their bound`.
//!
//! The nodes (`postage-soak-*`, AMQP ports 5801-5803) are the soak's own: the brokers
//! other tests use are never faulted. Everything is stopped and removed at the end,
//! however the soak ends. `scripts/soak.sh` runs it (the `soak` program); the suite runs
//! a short one on each broker.

mod faults;
mod fleet;
mod ledger;
mod memory;
mod report;
mod session;

use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use self::faults::Draw;
use self::fleet::Fleet;
pub use self::report::Report;
use self::session::Session;

/// How long a soak runs and which faults it draws.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// How long faults are drawn (the fleet's start and the final checks come on top).
    pub duration: Duration,
    /// The seed of the draw: the same seed draws the same faults at the same times.
    pub seed: u64,
}

/// Runs a soak and returns its report (printed as it goes).
pub async fn run(settings: Settings) -> Report {
    let (version, minor) = crate::rabbitmq_version();
    println!(
        "soak: seed {} (repeat with --seed {}), {} s of faults, RabbitMQ {version}.{minor}",
        settings.seed,
        settings.seed,
        settings.duration.as_secs()
    );
    let started = Instant::now();
    let (events_in, events) = mpsc::unbounded_channel();
    let fleet = Fleet::start(events_in.clone()).await;
    println!(
        "soak: {} components on {} in {:.1} s",
        fleet.members.len(),
        fleet.nodes().join(", "),
        started.elapsed().as_secs_f64()
    );
    let mut session = Session::new(fleet, events_in, events);
    session
        .faults(&mut Draw::new(settings.seed), settings.duration)
        .await;
    session.read_consumers().await;
    session.stop_senders().await;
    session.drain().await;
    println!(
        "soak: the group answered a ping only in part at (s): {}",
        session.gaps()
    );
    let report = Report::new(settings, started.elapsed(), &session);
    // The fleet goes (components, namespace, nodes) before the report's last line.
    drop(session);
    report.print();
    report
}
