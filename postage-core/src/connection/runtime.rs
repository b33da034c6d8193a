//! The runtime lapin's connections run on.

use std::sync::OnceLock;

use crate::error::{Error, Result};

/// Postage's own runtime, one worker thread, made once and never shut down: for the
/// connections of a current-thread application runtime (see [`lapin_runtime`]), and for
/// a close that must outlive its caller. (With lapin's I/O on threads of its own, postage
/// ran every connection here: an I/O thread (re)connecting or closing as the
/// application's runtime shut down found its task cancelled and panicked. An I/O loop
/// that is a task ends with its runtime, its host resolved by tokio: see `dial::stream`.)
pub(super) fn own_runtime() -> Result<&'static tokio::runtime::Runtime> {
    static RUNTIME: OnceLock<std::io::Result<tokio::runtime::Runtime>> = OnceLock::new();
    let runtime = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("postage-lapin")
            .enable_all()
            .build()
    });
    runtime.as_ref().map_err(|error| {
        Error::config(
            "runtime",
            format!("cannot start the runtime for lapin's connections: {error}"),
        )
    })
}

/// The runtime a new lapin connection's I/O loop and tasks run on, as lapin takes it:
/// the application's own when it is a multi-thread runtime, so every frame in or out is
/// a task of the runtime its callers and handlers run on, not a wake-up of another thread
/// (patches/README.md has the figures); [`own_runtime`] otherwise. A current-thread
/// runtime gets postage's own: one blocking call there (a handler that sleeps, a
/// synchronous command) would stop its connections' heartbeats with it.
pub(super) fn lapin_runtime() -> Result<async_rs::TokioRuntime> {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            Ok(async_rs::Runtime::tokio_with_handle(handle))
        }
        _ => own_runtime()
            .map(|runtime| async_rs::Runtime::tokio_with_handle(runtime.handle().clone())),
    }
}
