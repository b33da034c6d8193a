//! The soak's report: faults by kind with their recovery times as percentiles, the
//! ledger's figures, consumers, memory, and what failed.

use std::fmt::Write;
use std::time::Duration;

use super::Settings;
use super::faults::{Fault, Kind};
use super::session::Session;

/// The value at percentile `p` (nearest rank) of `sorted`.
fn percentile(sorted: &[Duration], p: usize) -> Duration {
    let rank = (sorted.len() * p).div_ceil(100).max(1);
    sorted[rank.min(sorted.len()) - 1]
}

/// What a soak found.
#[derive(Debug)]
pub struct Report {
    lines: Vec<String>,
    failures: Vec<String>,
    last: String,
}

impl Report {
    /// The report of `session`, a soak of `settings` that took `took` in all.
    pub(super) fn new(settings: Settings, took: Duration, session: &Session) -> Self {
        let Session {
            fleet,
            ledger,
            faults,
            memory,
            reconnections,
            stuck,
            consumers,
            ..
        } = session;
        let mut lines = Vec::new();
        let mut failures = stuck.clone();
        lines.push(format!(
            "soak report: seed {}, {} s of faults, {} faults injected, {} s in all",
            settings.seed,
            settings.duration.as_secs(),
            faults.len(),
            took.as_secs()
        ));
        lines.push(format!(
            "  {:<22} {:>5} {:>8} {:>8} {:>8}",
            "fault", "count", "p50 s", "p90 s", "max s"
        ));
        for kind in Kind::ALL {
            let of_kind: Vec<&Fault> = faults.iter().filter(|f| f.kind == kind).collect();
            let mut times: Vec<Duration> = of_kind.iter().filter_map(|f| f.recovery()).collect();
            times.sort();
            let figures = if times.is_empty() {
                format!("{:>8} {:>8} {:>8}", "-", "-", "-")
            } else {
                format!(
                    "{:>8.2} {:>8.2} {:>8.2}",
                    percentile(&times, 50).as_secs_f64(),
                    percentile(&times, 90).as_secs_f64(),
                    times[times.len() - 1].as_secs_f64()
                )
            };
            lines.push(format!(
                "  {:<22} {:>5} {figures}",
                kind.name(),
                of_kind.len()
            ));
            if of_kind.is_empty() {
                failures.push(format!("no {} was injected", kind.name()));
            }
        }
        lines.push(
            "  (recovery: from the heal until every component the fault hit worked again)".into(),
        );
        for fault in faults {
            if let Some(error) = &fault.error {
                failures.push(format!(
                    "{} could not be made or healed: {error}",
                    fault.kind.name()
                ));
            }
        }
        let lost = ledger.lost();
        lines.push(format!(
            "  messages: {} sent, {} confirmed, {} lost, {} duplicated, {} unconfirmed ones handled all the same",
            ledger.sent(),
            ledger.confirmed(),
            lost.len(),
            ledger.duplicated(),
            ledger.unconfirmed_handled()
        ));
        if !lost.is_empty() {
            let some: Vec<String> = lost.iter().take(20).map(u64::to_string).collect();
            failures.push(format!(
                "{} confirmed jobs never handled: {}",
                lost.len(),
                some.join(" ")
            ));
        }
        if ledger.unknown() > 0 {
            failures.push(format!(
                "{} jobs handled that no publisher sent",
                ledger.unknown()
            ));
        }
        let (calls, failed, longest) = ledger.caller_calls();
        lines.push(format!(
            "  calls: {calls} RPC calls, {failed} ended with an error within their bound, the longest {longest} ms (bound {} ms)",
            super::ledger::CALL_BOUND_MS
        ));
        let (pings, unanswered, longest) = ledger.group_pings();
        lines.push(format!(
            "  group pings: {pings}, {unanswered} not answered by both members, the longest {longest} ms (bound {} ms)",
            super::ledger::PING_BOUND_MS
        ));
        for line in ledger.past_bound().iter().take(20) {
            failures.push(format!("past its bound: {line}"));
        }
        let reconnected: Vec<String> = fleet
            .members
            .iter()
            .zip(reconnections.iter())
            .map(|(member, n)| format!("{} {n}", member.label))
            .collect();
        lines.push(format!("  reconnections: {}", reconnected.join(", ")));
        match consumers.clone() {
            Ok((queues, wrong)) if wrong.is_empty() => lines.push(format!(
                "  consumers: {queues} queues read back, one consumer each (the group's shared queues: its two members)"
            )),
            Ok((queues, wrong)) => {
                lines.push(format!("  consumers: {queues} queues read back"));
                failures.push(format!("queues with the wrong number of consumers: {wrong:?}"));
            }
            Err(error) => failures.push(format!("consumers could not be read: {error}")),
        }
        let (figures, judged, grew) = memory.verdict(fleet, settings.duration);
        failures.extend(grew);
        lines.push(format!(
            "  resident memory, MiB, peak of the second quarter / peak of the last / at the end{}: {}",
            if judged {
                ""
            } else {
                " (not judged under 10 minutes)"
            },
            figures.join(", ")
        ));
        for failure in &failures {
            lines.push(format!("  FAILED: {failure}"));
        }
        let last = format!(
            "soak: {} sent, {} confirmed, {} lost, {} duplicated, {} calls, {} past their bound",
            ledger.sent(),
            ledger.confirmed(),
            lost.len(),
            ledger.duplicated(),
            ledger.calls(),
            ledger.past_bound().len()
        );
        Self {
            lines,
            failures,
            last,
        }
    }

    /// Prints the report, its summary line last.
    pub fn print(&self) {
        let mut text = String::new();
        for line in &self.lines {
            let _ = writeln!(text, "{line}");
        }
        let _ = writeln!(text, "{}", self.last);
        print!("{text}");
    }

    /// Whether nothing was lost, late, stuck, doubled up or leaking.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    /// What failed, one line each.
    pub fn failures(&self) -> &[String] {
        &self.failures
    }

    /// The summary line: `soak: N sent, N confirmed, 0 lost, D duplicated, C calls, 0 past
    /// their bound`.
    pub fn last_line(&self) -> &str {
        &self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let times: Vec<Duration> = (1..=10).map(Duration::from_secs).collect();
        assert_eq!(percentile(&times, 50), Duration::from_secs(5));
        assert_eq!(percentile(&times, 90), Duration::from_secs(9));
        assert_eq!(percentile(&times[..1], 90), Duration::from_secs(1));
    }
}
