//! Instants a duration from now, computed without overflow. `Instant + Duration` panics
//! past what the clock can hold, and `Duration::MAX` is how a user says "no limit" (a
//! handler timeout, an RPC or publish timeout, a deadline header far in the future): it
//! must never panic the task that reads it.

use std::time::Duration;

use tokio::time::Instant;

/// How far ahead [`instant_after`] stands in for an instant the clock cannot hold: about
/// thirty years, as tokio's own "far future".
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// The instant `after` from now, or `None` when the clock cannot hold it: no limit.
pub(crate) fn deadline_after(after: Duration) -> Option<Instant> {
    Instant::now().checked_add(after)
}

/// The instant `after` from now, or, when the clock cannot hold it, one so far ahead that
/// it never comes: for the places that need an instant, not an optional one.
pub(crate) fn instant_after(after: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(after)
        .unwrap_or_else(|| now + after.min(FAR_FUTURE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_limit_is_no_deadline() {
        assert_eq!(deadline_after(Duration::MAX), None);
    }

    #[test]
    fn no_limit_is_an_instant_that_never_comes() {
        let far = instant_after(Duration::MAX);
        assert!(far > Instant::now() + Duration::from_secs(86_400 * 365 * 29));
    }

    #[test]
    fn a_short_wait_is_an_exact_instant() {
        let before = Instant::now();
        let at = instant_after(Duration::from_secs(5));
        assert!(at >= before + Duration::from_secs(5));
        assert!(deadline_after(Duration::from_secs(5)).is_some());
    }
}
