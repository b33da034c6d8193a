//! The RPC engine every caller and every answering side shares: correlation ids made and
//! matched in one table whose waiters expire ([`Calls`]), the reply queues answers come
//! back on ([`ReplyQueue`]), and the return address an answer goes to ([`ReturnAddress`]).
//!
//! The front ends are [`Producer::call`](crate::Producer::call) and its kin (Postage
//! RPC, `producer/call.rs`; [`Producer::gather`](crate::Producer::gather) collects the
//! answers of every component a fanout key reaches, which `postage ping`, `postage rpc`
//! and `postage_app::components` use), the simple client's
//! [`Transport`](crate::client::Transport) on the calling side, and the processor and the simple client's
//! [`Server`](crate::client::Server) on the answering side.
//!
//! An answer without a correlation id (Python Postage 1.x receivers send them) is taken
//! only by a call that has a reply queue of its own ([`ReplyQueue::PerCall`]); on a
//! shared reply queue it is dropped and logged, since it may answer an earlier call that
//! gave up, and must never reach a later one.

mod answer;
mod calls;
mod reply;

pub(crate) use self::answer::ReturnAddress;
pub(crate) use self::calls::Calls;
pub use self::reply::ReplyQueue;
pub(crate) use self::reply::{DIRECT_REPLY_TO, start_reply_consumer};
