//! Postage's control commands (`quit`, `restart`), who may send them, and signals.

use super::{Control, ProcessorHandle};
use crate::connection::Connection;
use crate::error::{Error, Result};
use crate::wire::{COMMAND, Category, Message};

/// Who may send `quit` and `restart` (and, in a GenericApplication, `join_group` and
/// `leave_group`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlPolicy {
    /// Nobody: the commands are ignored (not even acknowledged as control commands;
    /// handlers of the same name still run).
    Off,
    /// Any sender.
    Anyone,
    /// Only messages whose AMQP `user_id` (which RabbitMQ validates against the sender's
    /// login) is one of these; others are acknowledged, ignored and logged.
    Users(Vec<String>),
}

impl ControlPolicy {
    /// Whether a message sent with `user_id` may control the component.
    pub fn allows(&self, user_id: Option<&str>) -> bool {
        match self {
            Self::Off => false,
            Self::Anyone => true,
            Self::Users(users) => user_id.is_some_and(|id| users.iter().any(|u| u == id)),
        }
    }
}

/// Shuts the processor down on the first SIGTERM or SIGINT.
pub(super) fn watch_signals(handle: ProcessorHandle) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let listen = |kind: SignalKind| {
        signal(kind)
            .map_err(|e| Error::config("stop_on_signals", format!("cannot listen to signals: {e}")))
    };
    let (mut term, mut int) = (
        listen(SignalKind::terminate())?,
        listen(SignalKind::interrupt())?,
    );
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping"),
            _ = int.recv() => tracing::info!("SIGINT: stopping"),
        }
        // The process is ending: never ready again, whatever else still runs in it.
        crate::telemetry::terminating();
        handle.shutdown();
    });
    Ok(())
}

pub(super) fn control_command(message: &Message) -> Option<Control> {
    if message.category != Category::Message || message.kind != COMMAND {
        return None;
    }
    match message.name.as_str() {
        "quit" => Some(Control::Quit),
        "restart" => Some(Control::Restart),
        _ => None,
    }
}

/// Replaces the process with a new run of the same program and arguments.
pub(super) async fn restart(connection: &Connection) {
    let _ = connection.close().await;
    let program = std::env::current_exe()
        .map(|p| {
            let text = p.to_string_lossy();
            text.strip_suffix(" (deleted)")
                .map_or(p.clone(), Into::into)
        })
        .unwrap_or_default();
    let to_c = |s: &std::ffi::OsStr| std::ffi::CString::new(s.as_encoded_bytes().to_vec()).ok();
    let args: Option<Vec<_>> = std::env::args_os().map(|a| to_c(&a)).collect();
    match (to_c(program.as_os_str()), args) {
        (Some(program), Some(args)) => {
            tracing::info!(program = ?program, "restarting");
            let Err(error) = nix::unistd::execv(&program, &args);
            tracing::error!(%error, "restart failed");
        }
        _ => tracing::error!("restart failed: the program path or an argument holds a NUL byte"),
    }
}
