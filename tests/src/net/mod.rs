//! Faults at the network, made by the tests themselves, on this machine only: a TCP
//! [`Relay`] between components and the broker whose faults are switched while they run
//! (latency with jitter, a bandwidth cap, one-way silence, frames held back, a cut after
//! N bytes, a cut or a reset), and a network [`Namespace`] a component runs in, whose
//! link can be made a black hole (packets vanish, nothing is reset), and the
//! `fault_component` processes put behind them ([`Component`]).
//!
//! A relayed connection can be picked by a marker its handshake carries (a connection
//! name of the test's own, which postage sends in its client properties; a publishing
//! connection adds ` publishing`), so a test can fault one connection of a process and
//! leave the others alone. Everything a test makes is removed when its value is dropped,
//! however the test ends.

mod component;
mod namespace;
mod relay;

pub use self::component::Component;
pub use self::namespace::Namespace;
pub use self::relay::{Direction, Links, Relay, Toxic};
