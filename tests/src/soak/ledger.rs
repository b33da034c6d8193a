//! The ledger: every message the fleet sends and every call it makes, with its fate, read
//! from the lines the components print.

use std::collections::HashMap;

/// How long a caller's call may take: two attempts of 3 s (`fault_component caller`) and a
/// second of slack for a send under way.
pub(super) const CALL_BOUND_MS: u64 = 2 * 3000 + 1000;

/// How long a ping of the application group may take: `Producer::gather` waits up to 1 s
/// to send and 1 s more for the answers, and a second of slack.
pub(super) const PING_BOUND_MS: u64 = 2 * 1000 + 1000;

/// What became of one message.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Fate {
    /// The broker confirmed it to its publisher.
    confirmed: bool,
    /// Its publisher stopped before the broker confirmed it.
    unconfirmed: bool,
    /// How many times its worker handled it.
    handled: u32,
}

/// Every message and call of a soak, with its fate.
#[derive(Debug, Default)]
pub(super) struct Ledger {
    messages: HashMap<u64, Fate>,
    calls: u64,
    failed_calls: u64,
    pings: u64,
    unanswered_pings: u64,
    longest_call_ms: u64,
    longest_ping_ms: u64,
    past_bound: Vec<String>,
}

/// What a line told of a component's work: it did some (handled, confirmed, answered), or
/// nothing the recovery clock waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Progress {
    Yes,
    No,
}

impl Ledger {
    /// Writes down what `line` (of a component, or of the soak's own pinger) says.
    pub(super) fn record(&mut self, line: &str) -> Progress {
        let mut words = line.split_whitespace();
        let (word, number) = (words.next(), words.next().and_then(|n| n.parse().ok()));
        let ms = || words.clone().next().and_then(|n| n.parse::<u64>().ok());
        match (word, number) {
            (Some("confirmed"), Some(id)) => {
                self.messages.entry(id).or_default().confirmed = true;
                Progress::Yes
            }
            (Some("unconfirmed"), Some(id)) => {
                self.messages.entry(id).or_default().unconfirmed = true;
                Progress::No
            }
            (Some("handled"), Some(id)) => {
                self.messages.entry(id).or_default().handled += 1;
                Progress::Yes
            }
            (Some(word @ ("answered" | "failed")), Some(_)) => {
                let ms = ms().unwrap_or(u64::MAX);
                self.calls += 1;
                self.longest_call_ms = self.longest_call_ms.max(ms);
                if ms > CALL_BOUND_MS {
                    self.past_bound.push(line.to_owned());
                }
                if word == "failed" {
                    self.failed_calls += 1;
                    Progress::No
                } else {
                    Progress::Yes
                }
            }
            // The soak's own `ping ANSWERS MS`: the group's members that answered.
            (Some("ping"), Some(answers)) => {
                let ms = ms().unwrap_or(u64::MAX);
                self.pings += 1;
                self.longest_ping_ms = self.longest_ping_ms.max(ms);
                if ms > PING_BOUND_MS {
                    self.past_bound.push(line.to_owned());
                }
                if answers < 2 {
                    self.unanswered_pings += 1;
                    Progress::No
                } else {
                    Progress::Yes
                }
            }
            _ => Progress::No,
        }
    }

    /// Messages sent: confirmed, or tried until their publisher stopped.
    pub(super) fn sent(&self) -> usize {
        self.messages
            .values()
            .filter(|fate| fate.confirmed || fate.unconfirmed)
            .count()
    }

    /// Messages the broker confirmed.
    pub(super) fn confirmed(&self) -> usize {
        self.messages.values().filter(|fate| fate.confirmed).count()
    }

    /// Confirmed messages no worker handled, in order.
    pub(super) fn lost(&self) -> Vec<u64> {
        let mut lost: Vec<u64> = self
            .messages
            .iter()
            .filter(|(_, fate)| fate.confirmed && fate.handled == 0)
            .map(|(id, _)| *id)
            .collect();
        lost.sort_unstable();
        lost
    }

    /// Handlings past each message's first.
    pub(super) fn duplicated(&self) -> u64 {
        self.messages
            .values()
            .map(|fate| u64::from(fate.handled.saturating_sub(1)))
            .sum()
    }

    /// Messages handled that no publisher said it sent (none should be).
    pub(super) fn unknown(&self) -> usize {
        self.messages
            .values()
            .filter(|fate| !fate.confirmed && !fate.unconfirmed && fate.handled > 0)
            .count()
    }

    /// Unconfirmed messages that were handled all the same (at least once).
    pub(super) fn unconfirmed_handled(&self) -> usize {
        self.messages
            .values()
            .filter(|fate| fate.unconfirmed && fate.handled > 0)
            .count()
    }

    /// Calls and pings that ended, each with an answer or an error.
    pub(super) fn calls(&self) -> u64 {
        self.calls + self.pings
    }

    /// (calls, failed, longest ms) of the callers.
    pub(super) fn caller_calls(&self) -> (u64, u64, u64) {
        (self.calls, self.failed_calls, self.longest_call_ms)
    }

    /// (pings, not answered by both members, longest ms) of the group.
    pub(super) fn group_pings(&self) -> (u64, u64, u64) {
        (self.pings, self.unanswered_pings, self.longest_ping_ms)
    }

    /// The lines of calls that took longer than their bound.
    pub(super) fn past_bound(&self) -> &[String] {
        &self.past_bound
    }

    /// Whether every confirmed message was handled.
    pub(super) fn complete(&self) -> bool {
        self.messages
            .values()
            .all(|fate| !fate.confirmed || fate.handled > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fates_are_counted_from_the_lines() {
        let mut ledger = Ledger::default();
        for line in [
            "confirmed 1",
            "confirmed 2",
            "confirmed 3",
            "unconfirmed 4",
            "handled 1",
            "handled 1",
            "handled 2",
            "handled 4",
            "link reconnecting 120",
        ] {
            ledger.record(line);
        }
        assert_eq!(ledger.sent(), 4);
        assert_eq!(ledger.confirmed(), 3);
        assert_eq!(ledger.lost(), vec![3]);
        assert_eq!(ledger.duplicated(), 1);
        assert_eq!(ledger.unconfirmed_handled(), 1);
        assert_eq!(ledger.unknown(), 0);
        assert!(!ledger.complete());
        assert_eq!(ledger.record("handled 3"), Progress::Yes);
        assert!(ledger.complete());
    }

    #[test]
    fn calls_past_their_bound_are_named() {
        let mut ledger = Ledger::default();
        assert_eq!(ledger.record("answered 0 12"), Progress::Yes);
        assert_eq!(ledger.record("failed 1 6100 rpc timed out"), Progress::No);
        ledger.record("answered 2 7001");
        assert_eq!(ledger.record("ping 2 40"), Progress::Yes);
        assert_eq!(ledger.record("ping 1 1003"), Progress::No);
        ledger.record("ping 0 3500");
        assert_eq!(ledger.calls(), 6);
        assert_eq!(ledger.caller_calls(), (3, 1, 7001));
        assert_eq!(ledger.group_pings(), (3, 2, 3500));
        assert_eq!(ledger.past_bound(), ["answered 2 7001", "ping 0 3500"]);
    }
}
