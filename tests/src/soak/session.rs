//! One soak as it runs: the fleet, the ledger, the faults drawn so far and what was seen,
//! moved on phase by phase (faults under traffic, consumers read back, senders stopped,
//! every confirmed job awaited).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use super::faults::{Draw, Fault, Kind, RECOVERY_BOUND};
use super::fleet::{Fleet, Role, expected_consumers};
use super::ledger::{Ledger, Progress};
use super::memory::Memory;

/// The ids of the jobs held past the consumer timeout (the publishers' start at 1e9,
/// 2e9 and 3e9).
const HELD_IDS: u64 = 9_000_000_000;

/// How long the callers and publishers may take to finish once told to stop: a call's
/// bound, and a publish under way through a fault's end.
const STOPPING: Duration = Duration::from_secs(45);

/// A soak under way.
#[derive(Debug)]
pub(super) struct Session {
    pub(super) fleet: Fleet,
    pub(super) ledger: Ledger,
    pub(super) faults: Vec<Fault>,
    pub(super) memory: Memory,
    /// Each member's reconnections (`link reconnecting`).
    pub(super) reconnections: Vec<u64>,
    /// Components stuck: not working again after a fault, or not finishing.
    pub(super) stuck: Vec<String>,
    /// When (seconds into the run, from-to) the group answered a ping only in part.
    pub(super) gaps: Vec<(u64, u64)>,
    /// The queues read back with their consumers, and those with too many or too few.
    pub(super) consumers: Result<(usize, Vec<(String, u32)>), String>,
    events_in: UnboundedSender<(Instant, String)>,
    events: UnboundedReceiver<(Instant, String)>,
    began: Instant,
    next_held: u64,
}

impl Session {
    /// A session of `fleet`, whose own lines (pings, held jobs) come on `events`.
    pub(super) fn new(
        fleet: Fleet,
        events_in: UnboundedSender<(Instant, String)>,
        events: UnboundedReceiver<(Instant, String)>,
    ) -> Self {
        Self {
            reconnections: vec![0; fleet.members.len()],
            fleet,
            ledger: Ledger::default(),
            faults: Vec::new(),
            memory: Memory::default(),
            stuck: Vec::new(),
            gaps: Vec::new(),
            consumers: Err("not read".into()),
            events_in,
            events,
            began: Instant::now(),
            next_held: HELD_IDS,
        }
    }

    /// Faults drawn from `draw` for `duration` under the fleet's traffic (longer while a
    /// kind has yet to be injected, by at most a minute: long faults on a node can fill a
    /// short soak), then each healed and recovered from (or given up on after
    /// [`RECOVERY_BOUND`]).
    pub(super) async fn faults(&mut self, draw: &mut Draw, duration: Duration) {
        self.began = Instant::now();
        let end = self.began + duration;
        let mut next_fault =
            self.began + draw.pause(Duration::from_secs(3), Duration::from_secs(6));
        loop {
            let now = Instant::now();
            self.read();
            let ending =
                now >= end && (self.every_kind_injected() || now >= end + Duration::from_secs(60));
            self.step_faults(ending).await;
            self.memory.sample(&self.fleet, now - self.began, false);
            if !ending && now >= next_fault {
                self.inject(draw);
                next_fault = now + draw.pause(Duration::from_secs(2), Duration::from_secs(6));
            }
            if ending && self.faults.iter().all(Fault::over) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.memory.sample(&self.fleet, self.began.elapsed(), true);
        for fault in &self.faults {
            let who = fault.stuck(&self.fleet);
            if !who.is_empty() {
                self.stuck.push(format!(
                    "{} at {:.1} s: {} not working again within {} s",
                    fault.kind.name(),
                    (fault.began - self.began).as_secs_f64(),
                    who.join(", "),
                    RECOVERY_BOUND.as_secs()
                ));
            }
        }
    }

    /// Reads the queues' consumers back from the broker until each queue has those it
    /// should, for at most 15 s (a consumer coming back after the last fault may take a
    /// moment).
    pub(super) async fn read_consumers(&mut self) {
        let until = Instant::now() + Duration::from_secs(15);
        loop {
            self.consumers = tokio::task::block_in_place(|| self.fleet.consumers()).map(|queues| {
                let read = queues.len();
                let wrong = queues
                    .into_iter()
                    .filter(|(queue, count)| {
                        let (least, most) = expected_consumers(queue);
                        *count < least || *count > most
                    })
                    .collect();
                (read, wrong)
            });
            let right = matches!(&self.consumers, Ok((_, wrong)) if wrong.is_empty());
            if right || Instant::now() >= until {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Stops the callers and publishers (calls in flight end, a job being published is
    /// tried until then) and waits until each says it finished.
    pub(super) async fn stop_senders(&mut self) {
        let mut sending = BTreeSet::new();
        for (i, member) in self.fleet.members.iter_mut().enumerate() {
            if matches!(member.role, Role::Publisher | Role::Caller) {
                member.component.finish();
                sending.insert(i);
            }
        }
        let until = Instant::now() + STOPPING;
        while !sending.is_empty() && Instant::now() < until {
            for (i, member) in self.fleet.members.iter_mut().enumerate() {
                for (_, line) in member.component.fresh() {
                    self.ledger.record(&line);
                    if line == "published" || line == "calls done" {
                        sending.remove(&i);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for i in sending {
            self.stuck.push(format!(
                "{} did not finish within {} s of its stop",
                self.fleet.members[i].label,
                STOPPING.as_secs()
            ));
        }
    }

    /// Waits until every confirmed job was handled, or a minute passed without a job
    /// handled; then a second more for late duplicates.
    pub(super) async fn drain(&mut self) {
        let mut news = Instant::now();
        while !self.ledger.complete() && news.elapsed() < Duration::from_secs(60) {
            if self.take_lines() {
                news = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        self.take_lines();
        self.fleet.close().await;
    }

    /// Records what the members printed since the last look; whether any worked.
    fn take_lines(&mut self) -> bool {
        let mut worked = false;
        for member in &mut self.fleet.members {
            for (_, line) in member.component.fresh() {
                worked |= self.ledger.record(&line) == Progress::Yes;
            }
        }
        worked
    }

    /// Takes in every line printed since the last look, the members' and the soak's own:
    /// into the ledger, each fault's recovery clock, the reconnections and the group's
    /// gaps.
    fn read(&mut self) {
        for (i, member) in self.fleet.members.iter_mut().enumerate() {
            for (at, line) in member.component.fresh() {
                if line.starts_with("link reconnecting") {
                    self.reconnections[i] += 1;
                }
                if self.ledger.record(&line) == Progress::Yes {
                    for fault in &mut self.faults {
                        fault.progress(i, at);
                    }
                }
            }
        }
        let apps: Vec<usize> = (0..self.fleet.members.len())
            .filter(|i| self.fleet.members[*i].role == Role::App)
            .collect();
        while let Ok((at, line)) = self.events.try_recv() {
            let progress = self.ledger.record(&line);
            if !line.starts_with("ping") {
                continue;
            }
            if progress == Progress::Yes {
                // Both members answered: the group works.
                for fault in &mut self.faults {
                    for app in &apps {
                        fault.progress(*app, at);
                    }
                }
            } else {
                let second = at.saturating_duration_since(self.began).as_secs();
                match self.gaps.last_mut() {
                    Some((_, last)) if *last + 2 >= second => *last = second,
                    _ => self.gaps.push((second, second)),
                }
            }
        }
    }

    /// Moves every fault on (healing all at once when `ending`), and says when one is over.
    async fn step_faults(&mut self, ending: bool) {
        let injected: Vec<(usize, usize)> = self
            .faults
            .iter()
            .enumerate()
            .filter(|(_, fault)| fault.injected())
            .flat_map(|(i, fault)| fault.hits().iter().map(move |hit| (i, *hit)))
            .collect();
        for (i, fault) in self.faults.iter_mut().enumerate() {
            let over = fault.over();
            let elsewhere: Vec<usize> = injected
                .iter()
                .filter(|(other, _)| *other != i)
                .map(|(_, hit)| *hit)
                .collect();
            fault.step(&self.fleet, ending, &elsewhere).await;
            if over || !fault.over() {
                continue;
            }
            let at = self.began.elapsed().as_secs_f64();
            let kind = fault.kind.name();
            let stuck = fault.stuck(&self.fleet);
            match (fault.recovery(), fault.slowest(&self.fleet)) {
                (Some(took), Some(last)) => println!(
                    "soak: {at:7.1} s  {kind} #{i} recovered from in {:.2} s (last: {last})",
                    took.as_secs_f64()
                ),
                _ if stuck.is_empty() => {
                    println!(
                        "soak: {at:7.1} s  {kind} #{i} over (what it hit was under another fault)"
                    );
                }
                _ => println!(
                    "soak: {at:7.1} s  {kind} #{i} NOT recovered from: {} stuck",
                    stuck.join(", ")
                ),
            }
        }
    }

    /// Whether every kind of fault has been injected at least once.
    fn every_kind_injected(&self) -> bool {
        Kind::ALL
            .iter()
            .all(|kind| self.faults.iter().any(|fault| fault.kind == *kind))
    }

    /// Injects the next fault the draw allows beside those not over yet.
    fn inject(&mut self, draw: &mut Draw) {
        let active: Vec<Kind> = self
            .faults
            .iter()
            .filter(|fault| !fault.over())
            .map(|fault| fault.kind)
            .collect();
        let Some(kind) = draw.next(&active) else {
            return;
        };
        let at = self.began.elapsed().as_secs_f64();
        println!("soak: {at:7.1} s  {} #{}", kind.name(), self.faults.len());
        let fault = Fault::inject(kind, &self.fleet, draw, self.next_held, &self.events_in);
        self.next_held += 1;
        // A component not yet back from an earlier fault is now this one's.
        for earlier in &mut self.faults {
            earlier.excuse(fault.hits());
        }
        self.faults.push(fault);
    }

    /// The group's gaps, as `from-to` seconds.
    pub(super) fn gaps(&self) -> String {
        let gaps: Vec<String> = self
            .gaps
            .iter()
            .map(|(from, to)| format!("{from}-{to}"))
            .collect();
        gaps.join(", ")
    }
}
