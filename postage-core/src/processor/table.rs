//! The handler table: every handler of a processor's `#[processor]` impl blocks, by
//! message kind and name, checked for conflicts when the processor is built.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::handler::{HandlerRegistration, States, TimerRegistration};
use crate::wire::Category;

/// One value whose `#[processor]` handlers a processor serves.
#[derive(Debug, Clone)]
pub(super) struct HandlerSet {
    pub(super) type_id: TypeId,
    pub(super) state: Arc<dyn Any + Send + Sync>,
}

impl HandlerSet {
    pub(super) fn of<Q: Send + Sync + 'static>(state: Arc<Q>) -> Self {
        Self {
            type_id: TypeId::of::<Q>(),
            state,
        }
    }
}

/// A registered handler and the value it is a method of.
#[derive(Debug)]
pub(super) struct Entry {
    pub(super) registration: &'static HandlerRegistration,
    pub(super) state: Arc<dyn Any + Send + Sync>,
    /// The handler as metrics and the inbox name it, `Processor::method`: formatted once
    /// here, and shared by every delivery's metrics.
    pub(super) label: Arc<str>,
}

/// The handlers a processor serves, by message.
#[derive(Debug, Default)]
pub(super) struct HandlerTable {
    /// name -> type -> handlers, for fire-and-forget messages.
    pub(super) message: HashMap<&'static str, HashMap<&'static str, Vec<Entry>>>,
    /// command name -> handler.
    pub(super) rpc: HashMap<&'static str, Entry>,
    /// The timers, with the values they are methods of.
    pub(super) timers: Vec<(&'static TimerRegistration, Arc<dyn Any + Send + Sync>)>,
}

impl HandlerTable {
    /// Collects the handlers of every set; two RPC handlers for one command are an error
    /// naming both.
    pub(super) fn new(sets: &[HandlerSet]) -> Result<Self> {
        let mut table = Self::default();
        for timer in inventory::iter::<TimerRegistration> {
            let id = (timer.processor)();
            if let Some(set) = sets.iter().find(|set| set.type_id == id) {
                table.timers.push((timer, Arc::clone(&set.state)));
            }
        }
        for registration in inventory::iter::<HandlerRegistration> {
            let id = (registration.processor)();
            let Some(set) = sets.iter().find(|set| set.type_id == id) else {
                continue;
            };
            let entry = Entry {
                registration,
                state: Arc::clone(&set.state),
                label: format!("{}::{}", registration.processor_name, registration.method).into(),
            };
            match registration.category {
                Category::Message => table
                    .message
                    .entry(registration.name)
                    .or_default()
                    .entry(registration.kind)
                    .or_default()
                    .push(entry),
                Category::Rpc => {
                    if let Some(first) = table.rpc.insert(registration.name, entry) {
                        let first = first.registration;
                        return Err(Error::DuplicateHandler {
                            processor: registration.processor_name,
                            command: registration.name,
                            first: format!(
                                "{}::{} at {}",
                                first.processor_name, first.method, first.location
                            ),
                            second: format!(
                                "{}::{} at {}",
                                registration.processor_name,
                                registration.method,
                                registration.location
                            ),
                        });
                    }
                }
            }
        }
        Ok(table)
    }

    /// Fails, naming the handler and the type, when a handler takes a `State<T>` that
    /// `states` does not hold.
    pub(super) fn check_states(&self, states: &States) -> Result<()> {
        let entries = self
            .message
            .values()
            .flat_map(|kinds| kinds.values().flatten())
            .chain(self.rpc.values());
        for entry in entries {
            let handler = entry.registration;
            for (id, name) in handler.states.iter().filter_map(|state| state()) {
                if id == std::any::TypeId::of::<crate::inbox::Given>() && !states.contains(id) {
                    return Err(Error::config(
                        "inbox",
                        format!(
                            "handler {}::{} at {} takes {name}, which needs an inbox: add \
                             .inbox(..) to the processor's builder",
                            handler.processor_name, handler.method, handler.location
                        ),
                    ));
                }
                if !states.contains(id) {
                    return Err(Error::config(
                        "with_state",
                        format!(
                            "handler {}::{} at {} takes State<{name}>, which the processor \
                             was not given: add .with_state(..) with one to its builder",
                            handler.processor_name, handler.method, handler.location
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    pub(super) fn message_handlers(&self, kind: &str, name: &str) -> &[Entry] {
        self.message
            .get(name)
            .and_then(|kinds| kinds.get(kind))
            .map_or(&[], Vec::as_slice)
    }

    pub(super) fn rpc_handler(&self, name: &str) -> Option<&Entry> {
        self.rpc.get(name)
    }

    /// Every handler, message handlers then RPC ones.
    pub(super) fn registrations(&self) -> impl Iterator<Item = &'static HandlerRegistration> {
        self.message
            .values()
            .flat_map(|kinds| kinds.values().flatten())
            .chain(self.rpc.values())
            .map(|entry| entry.registration)
    }

    /// Every (category, type, name) served, sorted: the processor's message API.
    pub(super) fn describe(&self) -> Vec<HandlerInfo> {
        let mut handlers: Vec<HandlerInfo> = self
            .registrations()
            .map(|registration| HandlerInfo {
                category: registration.category,
                kind: registration.kind,
                name: registration.name,
            })
            .collect();
        handlers.sort_by_key(|h| (h.category.as_str(), h.kind, h.name));
        handlers.dedup();
        handlers
    }
}

/// One message a processor answers to: its category, type and name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct HandlerInfo {
    /// Fire-and-forget or RPC.
    pub category: Category,
    /// The message type, such as `command`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The message name.
    pub name: &'static str,
}
