//! Channels owned by a producer or consumer.

use std::ops::Deref;
use std::sync::Arc;

use crate::sync::Locked;

/// A channel owned by a producer or consumer: when it is dropped the channel is closed
/// explicitly, and the connection's close waits for that.
#[derive(Debug)]
pub(crate) struct ChannelLease {
    pub(super) channel: lapin::Channel,
    pub(super) closing: Arc<Locked<Vec<tokio::task::JoinHandle<()>>>>,
    /// Unique in the process: tells deliveries of a channel from those of the channel
    /// before it (delivery tags start again at 1 on each channel).
    pub(super) serial: u64,
}

impl ChannelLease {
    /// This lease's number, unique in the process.
    pub(crate) fn serial(&self) -> u64 {
        self.serial
    }
}

impl Deref for ChannelLease {
    type Target = lapin::Channel;

    fn deref(&self) -> &lapin::Channel {
        &self.channel
    }
}

impl Drop for ChannelLease {
    fn drop(&mut self) {
        if !self.channel.status().connected() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let channel = self.channel.clone();
        let task = runtime.spawn(async move {
            let _ = channel.close(200, "postage: released".into()).await;
        });
        self.closing.with(|tasks| {
            tasks.retain(|t| !t.is_finished());
            tasks.push(task);
        });
    }
}
