//! The components' resident memory through a soak, and whether it stayed flat.

use std::time::Duration;

use super::fleet::Fleet;

/// The shortest run whose memory is judged: in shorter ones the components are still
/// warming up (90 s runs measured 28-49 MiB in the second quarter, 32-53 MiB in the
/// last, with no leak behind it).
const JUDGED_FROM: Duration = Duration::from_secs(10 * 60);

/// How much a component's resident memory may grow from its peak in the second quarter
/// of the run to its peak in the last and still count as flat: half of it, or 16 MiB,
/// whichever is more. The first quarter is warming up, and the allocator's arenas move
/// resident memory up and down in 8 MiB steps without a leak: a component whose
/// connection is closed 60 times goes from 16 MiB to 45-66 MiB within a minute and stays
/// there.
fn flat(early_kib: u64, late_kib: u64) -> bool {
    late_kib <= early_kib + (early_kib / 2).max(16 * 1024)
}

/// The members' resident memory (KiB) through the run, sampled every 5 s.
#[derive(Debug, Default)]
pub(super) struct Memory {
    samples: Vec<(Duration, Vec<Option<u64>>)>,
}

impl Memory {
    /// Samples every member at `at` into the run, if 5 s passed since the last sample
    /// or `now`.
    pub(super) fn sample(&mut self, fleet: &Fleet, at: Duration, now: bool) {
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
    fn peak(&self, i: usize, from: Duration, to: Duration) -> Option<u64> {
        self.samples
            .iter()
            .filter(|(at, _)| (from..to).contains(at))
            .filter_map(|(_, kib)| kib[i])
            .max()
    }

    /// Each member's figures (MiB: peak of the second quarter of a run of `run`, peak of
    /// the last, at the end), whether they were judged, and what failed: memory that grew,
    /// a component gone before the end.
    pub(super) fn verdict(&self, fleet: &Fleet, run: Duration) -> (Vec<String>, bool, Vec<String>) {
        let judged = run >= JUDGED_FROM;
        let (mut figures, mut failures) = (Vec::new(), Vec::new());
        for (i, member) in fleet.members.iter().enumerate() {
            let second = self.peak(i, run / 4, run / 2);
            let last = self.peak(i, run * 3 / 4, Duration::MAX);
            let end = self.samples.last().and_then(|(_, kib)| kib[i]);
            let (Some(second), Some(last), Some(end)) = (second, last, end) else {
                failures.push(format!("{} was gone before the end", member.label));
                continue;
            };
            let mib = |kib: u64| kib as f64 / 1024.0;
            figures.push(format!(
                "{} {:.0}/{:.0}/{:.0}",
                member.label,
                mib(second),
                mib(last),
                mib(end)
            ));
            if judged && !flat(second, last) {
                failures.push(format!(
                    "{}'s resident memory grew from {second} KiB (peak of the second quarter) to {last} KiB (of the last)",
                    member.label
                ));
            }
        }
        (figures, judged, failures)
    }
}

/// The resident memory of process `pid`, in KiB.
fn resident_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_flat_within_half_or_16_mib() {
        assert!(flat(20_000, 36_000));
        assert!(!flat(20_000, 40_000));
        assert!(flat(100_000, 150_000));
        assert!(!flat(100_000, 150_001));
    }

    #[test]
    fn this_process_has_resident_memory() {
        assert!(resident_kib(std::process::id()).is_some_and(|kib| kib > 0));
    }
}
