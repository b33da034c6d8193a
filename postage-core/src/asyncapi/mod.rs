//! The API as a document: an [AsyncAPI 3.0](https://www.asyncapi.com/docs/reference/specification/v3.0.0)
//! document of what components answer to, built from the handler registry: a channel per
//! binding (exchange, routing key, queue), an operation per handler (fire-and-forget, or
//! RPC with its reply), and the payload JSON Schemas derived from the handlers' Rust
//! types (through [`schemars`], where the type derives `JsonSchema`; an open schema
//! otherwise), inside Postage's message envelope.
//!
//! A program prints its own without a broker; `postage asyncapi KEY` builds one from
//! running components (over `describe`); [`breaking_changes`] (`postage asyncapi
//! --check FILE`) compares it with a saved one, so a project can hold its API in CI.
//!
//! ```
//! use postage_core::asyncapi::{Component, Document};
//! use postage_core::{Exchange, processor, schemars::JsonSchema};
//!
//! #[derive(serde::Deserialize, JsonSchema)]
//! struct Order {
//!     sku: String,
//!     quantity: u32,
//! }
//!
//! struct Shop;
//!
//! #[processor]
//! impl Shop {
//!     #[rpc_handler("command", "reserve")]
//!     fn reserve(&self, order: Order) -> bool {
//!         order.quantity > 0
//!     }
//! }
//!
//! let shop = Component::of::<Shop>("shop").bind(Exchange::new("shop-exchange"), "shop-queue", "shop");
//! let document = Document::new("Shop", "1.0.0").component(shop).to_json();
//! assert_eq!(document["asyncapi"], "3.0.0");
//! assert!(document["components"]["schemas"]["Order"].is_object());
//! ```

mod check;
mod document;
pub(crate) mod schema;

pub use self::check::breaking_changes;
pub use self::document::{ApiBinding, ApiHandler, Component, Document};
