//! Fleets of Postage components addressable by name, host, process and group, as Python
//! Postage's `GenericApplication`, plus discovery of the live ones.
//!
//! Every application with fingerprint name `N`, pid `P` on host `H` reads three queues
//! bound to [`GENERIC_APPLICATION_EXCHANGE`] (see [`Addresses`]), so other components
//! reach it by routing key: `N` (every `N`), `N/rr` (one `N` in turn), `@H`, `N@H`,
//! `N@H/rr`, `P@H`, and per group `G`: `N#G` and `N#G/rr`. Groups can be joined and left
//! at run time, round robin included.
//!
//! ```no_run
//! use postage_app::GenericApplication;
//! use postage_core::{processor, Connection, Fingerprint};
//!
//! struct Worker;
//!
//! #[processor]
//! impl Worker {
//!     #[message_handler("command", "work")]
//!     fn work(&self, job: String) {
//!         println!("working on {job}");
//!     }
//! }
//!
//! # async fn demo() -> postage_core::Result<()> {
//! let connection = Connection::from_env().await?;
//! let app = GenericApplication::builder(&connection, Fingerprint::new("worker", "application"))
//!     .group("night-shift")
//!     .handlers(Worker)
//!     .build()
//!     .await?;
//! app.run().await?; // until `quit`
//! # Ok(()) }
//! ```

mod addresses;
mod application;
pub mod dashboard;
mod discovery;

pub use addresses::{Addresses, DISCOVERY_EXCHANGE, GENERIC_APPLICATION_EXCHANGE};
pub use application::{Description, GenericApplication, GenericApplicationBuilder};
pub use discovery::{components, pings};
