use crate::Result;
use std::{
    panic,
    sync::{Arc, Mutex, MutexGuard},
    thread,
};
use tracing::error;

/// The I/O loop's thread, or where its task reports its end.
pub(crate) enum JoinHandle {
    Thread(thread::JoinHandle<Result<()>>),
    Task(flume::Receiver<Result<()>>),
}

/// Where the I/O loop's task reports its end.
pub(crate) struct Done(flume::Sender<Result<()>>);

impl Done {
    pub(crate) fn finish(self, result: Result<()>) {
        let _ = self.0.send(result);
    }
}

impl JoinHandle {
    pub(crate) fn task() -> (Self, Done) {
        let (sender, receiver) = flume::bounded(1);
        (Self::Task(receiver), Done(sender))
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

    pub(crate) fn wait(&self, context: &'static str) -> Result<()> {
        let handle = match self.take() {
            // A task that ended without reporting was dropped with its runtime.
            Some(JoinHandle::Task(done)) => return done.recv().unwrap_or(Ok(())),
            Some(JoinHandle::Thread(handle)) => Some(handle),
            None => None,
        };
        if let Some(handle) = handle
            && handle.thread().id() != thread::current().id()
        {
            match handle.join() {
                Ok(res) => return res,
                Err(e) => {
                    if let Some(msg) = e.downcast_ref::<&str>() {
                        error!(%context, panic = msg, "Thread panicked");
                    } else if let Some(msg) = e.downcast_ref::<String>() {
                        error!(%context, panic = msg.as_str(), "Thread panicked");
                    } else {
                        error!(%context, "Thread panicked with unknown payload");
                    }
                    panic::resume_unwind(e);
                }
            }
        }
        Ok(())
    }

    fn lock_inner(&self) -> MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}
