//! The table of calls waiting for their answers, by correlation id.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use crate::sync::Locked;

/// How many waiters a table holds before it first drops those past their time.
const FIRST_SWEEP: usize = 256;

/// The calls of one caller waiting for their answers: correlation ids unique in the
/// process and over restarts, and for each the waiter `W` an answer goes to. A waiter
/// is removed when its answer comes or its call forgets it, and expires at the time it
/// was given: a call nobody awaits any more cannot hold its place for ever.
#[derive(Debug)]
pub(crate) struct Calls<W> {
    prefix: String,
    next_id: AtomicU64,
    waiting: Locked<Table<W>>,
}

#[derive(Debug)]
struct Table<W> {
    /// Keyed by the id the call holds too, shared.
    waiters: HashMap<Arc<str>, (Instant, W)>,
    /// The size at which expired waiters are dropped next.
    sweep_at: usize,
}

impl<W> Calls<W> {
    pub(crate) fn new() -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        Self {
            prefix: format!("{:x}.{nanos:x}", std::process::id()),
            next_id: AtomicU64::new(0),
            waiting: Locked::new(Table {
                waiters: HashMap::new(),
                sweep_at: FIRST_SWEEP,
            }),
        }
    }

    /// A correlation id no other call of this process has used.
    pub(crate) fn next_id(&self) -> Arc<str> {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{}.{n}", self.prefix).into()
    }

    /// Registers (or replaces) the waiter of `id`, valid until `until`.
    pub(crate) fn wait(&self, id: &Arc<str>, until: Instant, waiter: W) {
        self.waiting.with(|table| {
            if table.waiters.len() >= table.sweep_at {
                let now = Instant::now();
                table.waiters.retain(|_, (until, _)| *until > now);
                table.sweep_at = (table.waiters.len() * 2).max(FIRST_SWEEP);
            }
            table.waiters.insert(Arc::clone(id), (until, waiter));
        });
    }

    /// The waiter of `id`, removed, unless it expired.
    pub(crate) fn take(&self, id: &str) -> Option<W> {
        let (until, waiter) = self.waiting.with(|table| table.waiters.remove(id))?;
        (until > Instant::now()).then_some(waiter)
    }

    /// What `look` makes of the waiter of `id`, left in place, unless it expired.
    pub(crate) fn with<R>(&self, id: &str, look: impl FnOnce(&W) -> R) -> Option<R> {
        self.waiting.with(|table| {
            let (until, waiter) = table.waiters.get(id)?;
            (*until > Instant::now()).then(|| look(waiter))
        })
    }

    /// Forgets the waiter of `id`.
    pub(crate) fn forget(&self, id: &str) {
        self.waiting.with(|table| table.waiters.remove(id));
    }

    /// Keeps only the waiters `keep` says yes to.
    pub(crate) fn retain(&self, mut keep: impl FnMut(&W) -> bool) {
        self.waiting
            .with(|table| table.waiters.retain(|_, (_, waiter)| keep(waiter)));
    }

    /// Removes and returns the waiters `take` says yes to, expired or not.
    pub(crate) fn take_where(&self, mut take: impl FnMut(&W) -> bool) -> Vec<W> {
        self.waiting.with(|table| {
            let ids: Vec<Arc<str>> = table
                .waiters
                .iter()
                .filter(|(_, (_, waiter))| take(waiter))
                .map(|(id, _)| Arc::clone(id))
                .collect();
            ids.iter()
                .filter_map(|id| table.waiters.remove(id))
                .map(|(_, waiter)| waiter)
                .collect()
        })
    }

    /// How many calls wait.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.waiting.with(|t| t.waiters.len())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn an_answer_reaches_its_waiter_once() {
        let calls = Calls::new();
        let id = calls.next_id();
        calls.wait(&id, Instant::now() + Duration::from_secs(5), 7);
        assert_eq!(calls.take(&id), Some(7));
        assert_eq!(calls.take(&id), None);
        assert_ne!(calls.next_id(), id);
    }

    #[tokio::test]
    async fn expired_waiters_get_nothing_and_are_swept() {
        let calls = Calls::new();
        let past = Instant::now();
        for n in 0..FIRST_SWEEP * 4 {
            calls.wait(&n.to_string().into(), past, n);
        }
        assert_eq!(calls.take("0"), None, "an expired waiter gets no answer");
        assert!(
            calls.len() <= FIRST_SWEEP,
            "{} expired waiters kept",
            calls.len()
        );
    }
}
