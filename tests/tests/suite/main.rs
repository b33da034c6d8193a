//! The integration tests, one binary with a module per area (one link instead of twenty),
//! against the real RabbitMQ the suite runs on (`scripts/test.sh` starts it; see README).
//!
//! `broker_faults` closes every connection of the shared broker and restarts it, so
//! `scripts/test.sh` runs it on its own (`-- broker_faults::`) after the rest
//! (`-- --skip broker_faults::`). Tests that need nodes of their own (a cluster, frozen
//! nodes, TLS, a short consumer timeout, a two-minute outage) start them with
//! `scripts/node.sh`.

mod acks;
mod application;
mod asyncapi;
mod broker_faults;
mod broker_versions;
mod channel_loss;
mod client;
mod client_recovery;
mod cluster;
mod config;
mod dashboard;
mod deadlines;
mod flow_control;
mod fuzz;
mod harness;
mod heartbeat;
mod lowlevel;
mod macro_pass;
mod macro_ui;
mod messenger;
mod metrics;
mod network_faults;
mod ordered;
mod outbox;
mod processor;
mod producer_consumer;
mod progress;
mod python_postage;
mod reply_queue;
mod retries;
mod scheduled;
mod shutdown;
mod supervision;
mod timers;
mod tls;
#[cfg(feature = "otel")]
mod trace_context;
mod wire;
