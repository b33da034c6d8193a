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
mod report;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use self::faults::{Draw, Fault, Kind};
use self::fleet::{Fleet, Role, expected_consumers, resident_kib};
use self::ledger::{Ledger, Progress};
pub use self::report::Report;

/// How long a soak runs and which faults it draws.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// How long faults are drawn (the fleet's start and the final checks come on top).
    pub duration: Duration,
    /// The seed of the draw: the same seed draws the same faults at the same times.
    pub seed: u64,
}

/// The ids of the jobs held past the consumer timeout (the publishers' start at 1e9,
/// 2e9 and 3e9).
const HELD_IDS: u64 = 9_000_000_000;

/// Runs a soak and returns its report (printed as it goes).
pub async fn run(settings: Settings) -> Report {
    let (version, minor) = crate::rabbitmq_version();
    println!(
        "soak: seed {} (repeat with --seed {}), {} s of faults, RabbitMQ {version}.{minor}",
        settings.seed,
        settings.seed,
        settings.duration.as_secs()
    );
    let (events_in, mut events) = mpsc::unbounded_channel();
    let started = Instant::now();
    let mut fleet = Fleet::start(events_in.clone()).await;
    println!(
        "soak: {} components on {} in {:.1} s",
        fleet.members.len(),
        fleet.nodes().join(", "),
        started.elapsed().as_secs_f64()
    );
    let mut ledger = Ledger::default();
    let mut reconnections = vec![0u64; fleet.members.len()];
    let mut faults: Vec<Fault> = Vec::new();
    let mut draw = Draw::new(settings.seed);
    let began = Instant::now();
    let end = began + settings.duration;
    let mut next_fault = began + draw.pause(Duration::from_secs(3), Duration::from_secs(6));
    // Resident memory every few seconds, with when.
    let mut memory = Memory::default();
    let mut held = HELD_IDS;
    let mut stuck: Vec<String> = Vec::new();
    let mut gaps: Vec<(u64, u64)> = Vec::new();
    let apps: Vec<usize> = fleet
        .members
        .iter()
        .enumerate()
        .filter(|(_, member)| member.role == Role::App)
        .map(|(i, _)| i)
        .collect();

    // Traffic and faults, then every fault healed and recovered from.
    loop {
        let now = Instant::now();
        read_lines(&mut fleet, &mut ledger, &mut faults, &mut reconnections);
        while let Ok((at, line)) = events.try_recv() {
            let progress = ledger.record(&line);
            if !line.starts_with("ping") {
                continue;
            }
            if progress == Progress::Yes {
                for fault in &mut faults {
                    for app in &apps {
                        fault.progress(*app, at);
                    }
                }
            } else {
                // When the group did not answer whole, in seconds of the run.
                let second = at.saturating_duration_since(began).as_secs();
                match gaps.last_mut() {
                    Some((_, last)) if *last + 2 >= second => *last = second,
                    _ => gaps.push((second, second)),
                }
            }
        }
        let ending = now >= end;
        let injected: Vec<(usize, usize)> = faults
            .iter()
            .enumerate()
            .filter(|(_, fault)| fault.injected())
            .flat_map(|(i, fault)| fault.hits().iter().map(move |hit| (i, *hit)))
            .collect();
        for (i, fault) in faults.iter_mut().enumerate() {
            let over = fault.over();
            let elsewhere: Vec<usize> = injected
                .iter()
                .filter(|(other, _)| *other != i)
                .map(|(_, hit)| *hit)
                .collect();
            fault.step(&fleet, ending, &elsewhere).await;
            if !over && fault.over() {
                let at = began.elapsed().as_secs_f64();
                match (fault.recovery(), fault.slowest(&fleet)) {
                    (Some(took), Some(slowest)) => println!(
                        "soak: {at:7.1} s  {} #{i} recovered from in {:.2} s (last: {slowest})",
                        fault.kind.name(),
                        took.as_secs_f64()
                    ),
                    _ if fault.stuck(&fleet).is_empty() => println!(
                        "soak: {at:7.1} s  {} #{i} over (what it hit was under another fault)",
                        fault.kind.name()
                    ),
                    _ => println!(
                        "soak: {at:7.1} s  {} #{i} NOT recovered from: {} stuck",
                        fault.kind.name(),
                        fault.stuck(&fleet).join(", ")
                    ),
                }
            }
        }
        memory.sample(&fleet, now - began, false);
        if !ending && now >= next_fault {
            let active: Vec<Kind> = faults
                .iter()
                .filter(|fault| !fault.over())
                .map(|fault| fault.kind)
                .collect();
            if let Some(kind) = draw.next(&active) {
                let at = began.elapsed().as_secs_f64();
                println!("soak: {at:7.1} s  {} #{}", kind.name(), faults.len());
                let fault = Fault::inject(kind, &fleet, &mut draw, held, &events_in);
                // A component not yet back from an earlier fault is now this one's.
                for earlier in &mut faults {
                    earlier.excuse(fault.hits());
                }
                faults.push(fault);
                held += 1;
            }
            next_fault = now + draw.pause(Duration::from_secs(2), Duration::from_secs(6));
        }
        if ending && faults.iter().all(Fault::over) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    memory.sample(&fleet, began.elapsed(), true);
    for fault in &faults {
        let who = fault.stuck(&fleet);
        if !who.is_empty() {
            stuck.push(format!(
                "{} at {:.1} s: {} not working again within {} s",
                fault.kind.name(),
                (fault.began - began).as_secs_f64(),
                who.join(", "),
                faults::RECOVERY_BOUND.as_secs()
            ));
        }
    }

    // One consumer per queue, as the broker lists them (a consumer coming back after the
    // last fault may take a moment).
    let mut consumers = Err(String::from("not read"));
    let read_until = Instant::now() + Duration::from_secs(15);
    while Instant::now() < read_until {
        consumers = tokio::task::block_in_place(|| fleet.consumers()).map(|queues| {
            queues
                .into_iter()
                .filter(|(queue, count)| {
                    let (least, most) = expected_consumers(queue);
                    *count < least || *count > most
                })
                .collect::<Vec<_>>()
        });
        if consumers.as_ref().is_ok_and(Vec::is_empty) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let queues_read = tokio::task::block_in_place(|| fleet.consumers())
        .map(|queues| queues.len())
        .unwrap_or(0);

    // The senders stop: calls in flight end, a job being published is tried until then.
    for member in &mut fleet.members {
        if matches!(member.role, Role::Publisher | Role::Caller) {
            member.component.finish();
        }
    }
    let mut finishing: BTreeMap<usize, bool> = fleet
        .members
        .iter()
        .enumerate()
        .filter(|(_, member)| matches!(member.role, Role::Publisher | Role::Caller))
        .map(|(i, _)| (i, false))
        .collect();
    let stop_until = Instant::now() + Duration::from_secs(45);
    while Instant::now() < stop_until && finishing.values().any(|done| !done) {
        for (i, member) in fleet.members.iter_mut().enumerate() {
            for (_, line) in member.component.fresh() {
                ledger.record(&line);
                if line == "published" || line == "calls done" {
                    finishing.insert(i, true);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (i, done) in &finishing {
        if !done {
            stuck.push(format!(
                "{} did not finish within 45 s of its stop",
                fleet.members[*i].label
            ));
        }
    }
    // Every confirmed job handled, or a minute without news.
    let mut quiet = Instant::now();
    while !ledger.complete() && quiet.elapsed() < Duration::from_secs(60) {
        for member in &mut fleet.members {
            for (_, line) in member.component.fresh() {
                if ledger.record(&line) == Progress::Yes {
                    quiet = Instant::now();
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Late duplicates: a moment more.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for member in &mut fleet.members {
        for (_, line) in member.component.fresh() {
            ledger.record(&line);
        }
    }
    fleet.close().await;
    let report = Report::new(
        settings,
        started.elapsed(),
        &ledger,
        &faults,
        &fleet,
        &reconnections,
        &memory,
        consumers.map(|wrong| (queues_read, wrong)),
        stuck,
    );
    let gaps: Vec<String> = gaps
        .iter()
        .map(|(from, to)| format!("{from}-{to}"))
        .collect();
    println!(
        "soak: the group answered a ping only in part at (s): {}",
        gaps.join(", ")
    );
    drop(fleet);
    report.print();
    report
}

/// Takes in every line the components printed since the last look: the ledger's, each
/// fault's recovery clock's, and their reconnections.
fn read_lines(
    fleet: &mut Fleet,
    ledger: &mut Ledger,
    faults: &mut [Fault],
    reconnections: &mut [u64],
) {
    for (i, member) in fleet.members.iter_mut().enumerate() {
        for (at, line) in member.component.fresh() {
            if line.starts_with("link reconnecting") {
                reconnections[i] += 1;
            }
            if ledger.record(&line) == Progress::Yes {
                for fault in faults.iter_mut() {
                    fault.progress(i, at);
                }
            }
        }
    }
}

/// The members' resident memory (KiB) through the run, sampled every 5 s.
#[derive(Debug, Default)]
pub(super) struct Memory {
    samples: Vec<(Duration, Vec<Option<u64>>)>,
}

impl Memory {
    /// Samples every member at `at` into the run, if 5 s passed since the last sample
    /// or `now`.
    fn sample(&mut self, fleet: &Fleet, at: Duration, now: bool) {
        let due = now
            || self
                .samples
                .last()
                .is_none_or(|(last, _)| at >= *last + Duration::from_secs(5));
        if due {
            let kib = fleet
                .members
                .iter()
                .map(|member| resident_kib(member.component.pid()))
                .collect();
            self.samples.push((at, kib));
        }
    }

    /// Member `i`'s highest resident memory within `from..to` of the run.
    pub(super) fn peak(&self, i: usize, from: Duration, to: Duration) -> Option<u64> {
        self.samples
            .iter()
            .filter(|(at, _)| (from..to).contains(at))
            .filter_map(|(_, kib)| kib[i])
            .max()
    }

    /// Member `i`'s last resident memory: `None` once it was gone.
    pub(super) fn last(&self, i: usize) -> Option<u64> {
        self.samples.last().and_then(|(_, kib)| kib[i])
    }
}
