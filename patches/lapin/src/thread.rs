//! The handle on the I/O loop's task: how [`crate::Connection::run`] waits for its end.

use crate::Result;
use std::sync::{Arc, Mutex, MutexGuard};

/// Where the I/O loop's task reports its end.
pub(crate) struct Done(flume::Sender<Result<()>>);

impl Done {
    pub(crate) fn finish(self, result: Result<()>) {
        let _ = self.0.send(result);
    }
}

/// The receiving end of [`Done`].
pub(crate) struct JoinHandle(flume::Receiver<Result<()>>);

impl JoinHandle {
    pub(crate) fn new() -> (Self, Done) {
        let (sender, receiver) = flume::bounded(1);
        (Self(receiver), Done(sender))
    }
}

type Inner = Option<JoinHandle>;

#[derive(Clone)]
pub(crate) struct ThreadHandle(Arc<Mutex<Inner>>);

impl Default for ThreadHandle {
    fn default() -> Self {
        Self(Arc::new(Mutex::new(None)))
    }
}

impl ThreadHandle {
    pub(crate) fn register(&self, handle: JoinHandle) {
        *self.lock_inner() = Some(handle);
    }

    fn take(&self) -> Option<JoinHandle> {
        self.lock_inner().take()
    }

    /// Blocks the calling thread until the I/O loop's task has ended.
    pub(crate) fn wait(&self, _context: &'static str) -> Result<()> {
        match self.take() {
            // A task that ended without reporting was dropped with its runtime.
            Some(handle) => handle.0.recv().unwrap_or(Ok(())),
            None => Ok(()),
        }
    }

    fn lock_inner(&self) -> MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}
