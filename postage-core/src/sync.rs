//! The one lock policy of the crate: a [`Locked`] value behind a std mutex, reached
//! through a closure, that a panic elsewhere can never make unusable.
//!
//! The workspace's other crates (postage-app) hold their shared state in it too, through
//! the hidden `postage_core::__private::Locked`: one policy, written once, rather than a
//! copy per crate that could drift.

use std::sync::{Mutex, PoisonError};

/// A value shared between tasks and threads, locked only for the length of a closure
/// that never awaits.
///
/// A std mutex is poisoned when a thread panics while holding it. Every closure postage
/// runs under a `Locked` leaves its value consistent at each step (an insert, a remove,
/// a swap), so the value is still good then: it is used as it is. No caller skips its
/// work because of an earlier panic (a call left unregistered would only time out, with
/// nothing said).
#[derive(Debug, Default)]
pub struct Locked<T>(Mutex<T>);

impl<T> Locked<T> {
    /// `value`, shared from now on.
    pub const fn new(value: T) -> Self {
        Self(Mutex::new(value))
    }

    /// Runs `f` with the value, locked for that long.
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let mut guard = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut guard)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_while_locked_leaves_the_value_usable() {
        let locked = std::sync::Arc::new(Locked::new(vec![1]));
        let held = std::sync::Arc::clone(&locked);
        let panicked = std::thread::spawn(move || {
            held.with(|v| {
                v.push(2);
                panic!("a bug while locked");
            })
        })
        .join();
        assert!(panicked.is_err());
        locked.with(|v| v.push(3));
        assert_eq!(locked.with(|v| v.clone()), [1, 2, 3]);
    }
}
