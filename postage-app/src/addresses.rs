//! The GenericApplication addressing scheme of the wire contract: queues and routing keys
//! derived from a fingerprint's name, pid and host.

use postage_core::{Exchange, ExchangeKind, Fingerprint, Queue};

/// The exchange every GenericApplication is bound to: direct, durable.
pub const GENERIC_APPLICATION_EXCHANGE: Exchange = Exchange::new("generic-application-exchange");

/// A fanout exchange every postage application's unique queue is bound to, so a
/// `describe` call reaches every live application of the virtual host (discovery). Python
/// Postage applications are not bound to it.
pub const DISCOVERY_EXCHANGE: Exchange =
    Exchange::new("postage-discovery").kind(ExchangeKind::Fanout);

/// The queue names and routing keys of one application (name `N`, pid `P`, host `H`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addresses {
    name: String,
    pid: String,
    host: String,
}

impl Addresses {
    /// The addresses of the application with this fingerprint.
    pub fn of(fingerprint: &Fingerprint) -> Self {
        Self {
            name: fingerprint.name.clone(),
            pid: fingerprint.pid.clone(),
            host: fingerprint.host.clone(),
        }
    }

    /// The system-wide queue `N`, shared by every application called `N`.
    pub fn sid(&self) -> Queue {
        Queue::new(self.name.clone()).auto_delete(true)
    }

    /// The host-wide queue `N@H`, shared by every `N` on host `H`.
    pub fn hid(&self) -> Queue {
        Queue::new(format!("{}@{}", self.name, self.host)).auto_delete(true)
    }

    /// The unique queue `P@H`, this process's own.
    pub fn uid(&self) -> Queue {
        Queue::new(format!("{}@{}", self.pid, self.host)).auto_delete(true)
    }

    /// The queue shared by the members of group `group`: `N#G`.
    pub fn group_queue(&self, group: &str) -> Queue {
        Queue::new(self.group_key(group))
    }

    /// The key reaching every member of `group`: `N#G`.
    pub fn group_key(&self, group: &str) -> String {
        format!("{}#{group}", self.name)
    }

    /// The key reaching one member of `group` in turn: `N#G/rr`.
    pub fn group_rr_key(&self, group: &str) -> String {
        format!("{}#{group}/rr", self.name)
    }

    /// Every (queue, routing key) binding on [`GENERIC_APPLICATION_EXCHANGE`], groups
    /// left out, in the wire contract's order.
    pub fn bindings(&self) -> Vec<(Queue, String)> {
        let (n, p, h) = (&self.name, &self.pid, &self.host);
        vec![
            (self.sid(), format!("{n}/rr")),
            (self.hid(), format!("{n}@{h}/rr")),
            (self.uid(), n.clone()),
            (self.uid(), format!("@{h}")),
            (self.uid(), format!("{n}@{h}")),
            (self.uid(), format!("{p}@{h}")),
        ]
    }

    /// The two bindings of a group: the unique queue with `N#G`, the group queue with
    /// `N#G/rr`.
    pub fn group_bindings(&self, group: &str) -> [(Queue, String); 2] {
        [
            (self.uid(), self.group_key(group)),
            (self.group_queue(group), self.group_rr_key(group)),
        ]
    }
}
