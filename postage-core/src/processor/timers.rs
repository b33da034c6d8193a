//! A processor's timers: each `#[timer(every = "...")]` method runs on a task of its own
//! every period while the processor runs, and stops with it.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use super::table::HandlerTable;
use crate::handler::{Outcome, TimerRegistration};

/// The running timers of a processor.
#[derive(Debug)]
pub(super) struct Timers {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Timers {
    /// Starts every timer of `table`; the first tick comes one period from now.
    pub(super) fn start(table: &HandlerTable) -> Self {
        let (stop, stopped) = watch::channel(false);
        let tasks = table
            .timers
            .iter()
            .map(|(timer, state)| tokio::spawn(tick(timer, Arc::clone(state), stopped.clone())))
            .collect();
        Self { stop, tasks }
    }

    /// Stops the timers: a tick in progress may finish within `bound`, then is dropped.
    pub(super) async fn stop(self, bound: Duration) {
        let _ = self.stop.send(true);
        let all = futures_util::future::join_all(self.tasks);
        if tokio::time::timeout(bound, all).await.is_err() {
            tracing::warn!("a timer still ran at the shutdown timeout; cancelled");
        }
    }
}

/// Runs `timer` every period until told to stop; a failure or panic is logged and the
/// timer goes on.
async fn tick(
    timer: &'static TimerRegistration,
    state: Arc<dyn Any + Send + Sync>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut every =
        tokio::time::interval_at(crate::deadline::instant_after(timer.every), timer.every);
    every.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = stopped.wait_for(|stop| *stop) => return,
            _ = every.tick() => {}
        }
        // A stop lets the tick in progress finish: the caller bounds the wait.
        let outcome = AssertUnwindSafe((timer.call)(Arc::clone(&state)))
            .catch_unwind()
            .await;
        match outcome {
            Ok(Outcome::Failed(error)) => {
                tracing::warn!(timer = timer.method, at = timer.location, %error, "timer failed");
            }
            Ok(_) => {}
            Err(_) => {
                tracing::error!(timer = timer.method, at = timer.location, "timer panicked");
            }
        }
    }
}
