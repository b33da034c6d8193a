//! What the simple client sends to, and how.

use crate::topology::Queue;

/// What a message is sent to: a queue name, served by one or more
/// [`Server`](super::Server)s.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    queue: Queue,
}

impl Target {
    /// The target served from the queue `name` (declared with the default flags: not
    /// durable, not auto-delete).
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            queue: Queue::new(name),
        }
    }

    /// The target served from `queue`, declared with its flags by each server.
    pub fn with_queue(queue: Queue) -> Self {
        Self { queue }
    }

    /// The target's name: its queue's.
    pub fn name(&self) -> &str {
        self.queue.name()
    }

    /// The routing key of fanout messages on [`FANOUT_EXCHANGE`](super::FANOUT_EXCHANGE).
    pub fn fanout_key(&self) -> String {
        format!("{}.fanout", self.queue.name())
    }

    /// The queue servers consume.
    pub fn queue(&self) -> &Queue {
        &self.queue
    }
}

/// How [`Transport::send`](super::Transport::send) delivers a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Mode {
    /// One server handles it and its answer comes back.
    #[default]
    Rpc,
    /// One server handles it; nothing comes back.
    Cast,
    /// Every server of the target handles it; nothing comes back.
    Fanout,
}
