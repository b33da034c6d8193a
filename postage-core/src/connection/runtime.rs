//! The runtime lapin's connections run on.

use std::sync::OnceLock;

use crate::error::{Error, Result};

/// The runtime lapin runs its connections' tasks on: postage's own, one worker thread,
/// made once and never shut down. On the application's runtime, a lapin I/O thread that
/// was (re)connecting or closing when that runtime shut down (an error exit from `main`,
/// a restart) found its task cancelled and panicked, printing a backtrace.
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

/// [`own_runtime`], as lapin takes it.
pub(super) fn lapin_runtime() -> Result<async_rs::TokioRuntime> {
    own_runtime().map(|runtime| async_rs::Runtime::tokio_with_handle(runtime.handle().clone()))
}
