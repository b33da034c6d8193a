//! The GenericApplication: a processor on the addressing scheme's queues, with the
//! built-in `ping`, `describe`, `join_group` and `leave_group` commands.

use std::collections::BTreeSet;
use std::sync::OnceLock;

// The workspace's one lock policy (recovers a poisoned lock, never skips), shared from core.
use postage_core::__private::Locked;
use postage_core::asyncapi::Component;
use postage_core::{
    Connection, ConsumerHandle, ControlPolicy, Exit, Fingerprint, HandlerError, HandlerInfo,
    Metadata, Processor, ProcessorBuilder, ProcessorHandle, Producer, processor,
};
use serde::{Deserialize, Serialize};

use crate::addresses::{Addresses, DISCOVERY_EXCHANGE, GENERIC_APPLICATION_EXCHANGE};

/// What `describe` answers: who the application is, its groups, and every message it
/// answers to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Description {
    /// The application's fingerprint.
    pub fingerprint: Fingerprint,
    /// The groups it belongs to now.
    pub groups: Vec<String>,
    /// Every (category, type, name) it handles.
    pub handlers: Vec<serde_json::Value>,
    /// Its bindings and handlers with their schemas, for an AsyncAPI document
    /// (`postage asyncapi`); absent from applications that predate it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<Component>,
    /// Where its connection serves `/metrics` ([`postage_core::Config::metrics`]), for
    /// `postage dashboard`'s rates; absent when it serves none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Seconds since it started; absent from applications that predate it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime: Option<f64>,
}

/// The parameters of `join_group` and `leave_group`.
#[derive(Debug, Deserialize)]
struct GroupName {
    group_name: String,
}

/// The state of the built-in handlers.
#[derive(Debug)]
struct Builtins {
    fingerprint: Fingerprint,
    addresses: Addresses,
    groups: Locked<BTreeSet<String>>,
    consumer: OnceLock<ConsumerHandle>,
    handlers: OnceLock<Vec<HandlerInfo>>,
    /// Its API without bindings, which `describe` reads at the time.
    api: OnceLock<Component>,
    logger: OnceLock<Producer>,
    control: OnceLock<ControlPolicy>,
    /// Where its connection serves metrics, if it does.
    metrics: Option<std::net::SocketAddr>,
    started: std::time::Instant,
}

impl Builtins {
    /// Whether the sender of a group command may send it; logs a refusal.
    fn allowed(&self, command: &str, metadata: &Metadata) -> bool {
        let user = metadata.user_id();
        let allowed = self.control.get().is_none_or(|policy| policy.allows(user));
        if !allowed {
            tracing::warn!(
                command,
                user = user.unwrap_or("<none>"),
                "ignoring a group command from a sender not allowed to send it"
            );
        }
        allowed
    }

    fn consumer(&self) -> Result<&ConsumerHandle, HandlerError> {
        self.consumer
            .get()
            .ok_or_else(|| HandlerError::error("the application is not running yet"))
    }

    async fn log(&self, line: String) {
        tracing::info!(name = %self.fingerprint.name, "{line}");
        if let Some(logger) = self.logger.get()
            && let Err(error) = logger.command("log", &line).await
        {
            tracing::warn!(%error, "the logging producer failed");
        }
    }

    fn groups(&self) -> Vec<String> {
        self.groups.with(|g| g.iter().cloned().collect())
    }

    /// Whether the application is in `group`.
    fn is_member(&self, group: &str) -> bool {
        self.groups.with(|groups| groups.contains(group))
    }

    /// Records that the application is in `group`, or not: once the broker took the
    /// change, never before.
    fn mark(&self, group: &str, member: bool) {
        self.groups.with(|groups| {
            if member {
                groups.insert(group.to_owned());
            } else {
                groups.remove(group);
            }
        });
    }
}

#[processor]
impl Builtins {
    /// Answers the application's fingerprint.
    #[rpc_handler("command", "ping")]
    fn ping(&self) -> Fingerprint {
        self.fingerprint.clone()
    }

    /// Answers who the application is, its groups and its handlers.
    #[rpc_handler("command", "describe")]
    fn describe(&self) -> Result<Description, HandlerError> {
        let handlers = self.handlers.get().map(Vec::as_slice).unwrap_or_default();
        Ok(Description {
            fingerprint: self.fingerprint.clone(),
            groups: self.groups(),
            handlers: handlers
                .iter()
                .map(serde_json::to_value)
                .collect::<Result<_, _>>()?,
            api: self.api.get().map(|api| {
                let bindings = self.consumer().map(|c| c.bindings()).unwrap_or_default();
                api.clone().with_bindings(&bindings)
            }),
            metrics: self.metrics,
            uptime: Some(self.started.elapsed().as_secs_f64()),
        })
    }

    /// Joins a group: both its keys reach this application from now on.
    #[message_handler("command", "join_group")]
    async fn join_group(&self, group: GroupName, metadata: &Metadata) -> Result<(), HandlerError> {
        let group = group.group_name;
        if !self.allowed("join_group", metadata) || self.is_member(&group) {
            return Ok(());
        }
        let consumer = self.consumer()?;
        let bindings = self.addresses.group_bindings(&group);
        for (bound, (queue, key)) in bindings.iter().enumerate() {
            if let Err(error) = consumer
                .bind(&GENERIC_APPLICATION_EXCHANGE, queue, key)
                .await
            {
                // Refused: what was bound for the group goes, and it is not joined.
                for (queue, key) in &bindings[..bound] {
                    let _ = consumer
                        .unbind(&GENERIC_APPLICATION_EXCHANGE, queue.name(), key)
                        .await;
                }
                return Err(error.into());
            }
        }
        self.mark(&group, true);
        self.log(format!(
            "Joining group {}",
            self.addresses.group_key(&group)
        ))
        .await;
        Ok(())
    }

    /// Leaves a group: neither of its keys reaches this application any more. The group's
    /// shared queue keeps its binding for the other members.
    #[message_handler("command", "leave_group")]
    async fn leave_group(&self, group: GroupName, metadata: &Metadata) -> Result<(), HandlerError> {
        let group = group.group_name;
        if !self.allowed("leave_group", metadata) || !self.is_member(&group) {
            return Ok(());
        }
        let consumer = self.consumer()?;
        let uid = self.addresses.uid();
        consumer
            .unbind(
                &GENERIC_APPLICATION_EXCHANGE,
                uid.name(),
                &self.addresses.group_key(&group),
            )
            .await?;
        consumer
            .stop_consuming(self.addresses.group_queue(&group).name())
            .await?;
        self.mark(&group, false);
        self.log(format!(
            "Leaving group {}",
            self.addresses.group_key(&group)
        ))
        .await;
        Ok(())
    }
}

/// Configures a [`GenericApplication`]; made by [`GenericApplication::builder`].
#[derive(Debug)]
pub struct GenericApplicationBuilder {
    processor: ProcessorBuilder<Builtins>,
    addresses: Addresses,
    groups: Vec<String>,
    logger: Option<Producer>,
    control: Option<ControlPolicy>,
}

impl GenericApplicationBuilder {
    /// Joins `group` at start.
    #[must_use]
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.groups.push(group.into());
        self
    }

    /// Serves the handlers of `handlers`' `#[processor]` impls on the application's
    /// queues, besides the built-in ones.
    #[must_use]
    pub fn handlers<Q: Send + Sync + 'static>(mut self, handlers: Q) -> Self {
        self.processor = self.processor.handlers(handlers);
        self
    }

    /// How many messages may be in their handlers at once (default 1).
    #[must_use]
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.processor = self.processor.concurrency(concurrency);
        self
    }

    /// A producer that receives a `log` command for each group joined or left: Postage's
    /// logging producer hook.
    #[must_use]
    pub fn logger(mut self, logger: Producer) -> Self {
        self.logger = Some(logger);
        self
    }

    /// Who may send `quit`, `restart`, `join_group` and `leave_group` (default: anyone).
    #[must_use]
    pub fn control_policy(mut self, policy: ControlPolicy) -> Self {
        self.processor = self.processor.control_policy(policy.clone());
        self.control = Some(policy);
        self
    }

    /// Stops the application on SIGTERM or SIGINT, finishing the handlers in flight
    /// (default: yes).
    #[must_use]
    pub fn stop_on_signals(mut self, enabled: bool) -> Self {
        self.processor = self.processor.stop_on_signals(enabled);
        self
    }

    /// Declares the application's queues and bindings, its groups' included.
    pub async fn build(self) -> postage_core::Result<GenericApplication> {
        let mut processor = self.processor;
        for (queue, key) in self.addresses.bindings() {
            processor = processor.bind(GENERIC_APPLICATION_EXCHANGE, queue, key);
        }
        for group in &self.groups {
            for (queue, key) in self.addresses.group_bindings(group) {
                processor = processor.bind(GENERIC_APPLICATION_EXCHANGE, queue, key);
            }
        }
        processor = processor.bind(DISCOVERY_EXCHANGE, self.addresses.uid(), "");
        let processor = processor.build().await?;
        let builtins = processor.state();
        let _ = builtins.consumer.set(processor.consumer().handle());
        let _ = builtins.handlers.set(processor.handlers());
        let mut api = processor.api();
        api.bindings.clear();
        let _ = builtins.api.set(api);
        if let Some(logger) = self.logger {
            let _ = builtins.logger.set(logger);
        }
        if let Some(policy) = self.control {
            let _ = builtins.control.set(policy);
        }
        builtins.groups.with(|groups| groups.extend(self.groups));
        Ok(GenericApplication { processor })
    }
}

/// A component reachable through the GenericApplication addressing scheme.
#[derive(Debug)]
pub struct GenericApplication {
    processor: Processor<Builtins>,
}

impl GenericApplication {
    /// Starts configuring the application `fingerprint` names on `connection`; its pid
    /// and host (and so its addresses) come from the fingerprint too.
    pub fn builder(connection: &Connection, fingerprint: Fingerprint) -> GenericApplicationBuilder {
        let addresses = Addresses::of(&fingerprint);
        let builtins = Builtins {
            fingerprint: fingerprint.clone(),
            addresses: addresses.clone(),
            groups: Locked::new(BTreeSet::new()),
            consumer: OnceLock::new(),
            handlers: OnceLock::new(),
            api: OnceLock::new(),
            logger: OnceLock::new(),
            control: OnceLock::new(),
            metrics: connection.metrics_address(),
            started: std::time::Instant::now(),
        };
        GenericApplicationBuilder {
            processor: Processor::builder(connection, builtins)
                .fingerprint(fingerprint)
                .stop_on_signals(true),
            addresses,
            groups: Vec::new(),
            logger: None,
            control: None,
        }
    }

    /// The application's addresses.
    pub fn addresses(&self) -> &Addresses {
        &self.processor.state().addresses
    }

    /// The groups it belongs to now.
    pub fn groups(&self) -> Vec<String> {
        self.processor.state().groups()
    }

    /// A handle that stops [`GenericApplication::run`] from another task.
    pub fn handle(&self) -> ProcessorHandle {
        self.processor.handle()
    }

    /// Serves until `quit` or a shutdown; `restart` re-executes the program.
    pub async fn run(self) -> postage_core::Result<Exit> {
        self.processor.run().await
    }
}
