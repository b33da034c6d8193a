//! The RPC engine every caller and every answering side shares: one reply consumer per
//! caller with the calls waiting on it ([`Replies`], read by whichever call waits),
//! correlation ids made and matched in one table whose waiters expire ([`Calls`]), the
//! reply queues answers come back on ([`ReplyQueue`]), and the return address an answer
//! goes to ([`ReturnAddress`]).
//!
//! The front ends are [`Producer::call`](crate::Producer::call) and its kin (Postage
//! RPC, `producer/call.rs`; [`Producer::gather`](crate::Producer::gather) collects the
//! answers of every component a fanout key reaches, which `postage ping`, `postage rpc`
//! and `postage_app::components` use) and the simple client's
//! [`Transport`](crate::client::Transport) on the calling side, both holding a
//! [`Replies`]; the processor and the simple client's
//! [`Server`](crate::client::Server) on the answering side.
//!
//! ## Answers without a correlation id
//!
//! Python Postage 1.x receivers answer on `reply_to` without copying the call's
//! correlation id. Such an answer can be matched to its call only on a reply queue that
//! call has to itself, so a caller works with them by default, this way:
//!
//! 1. Calls go out on the caller's shared reply queue (private or direct reply-to), as
//!    postage receivers answer them with the correlation id.
//! 2. An answer without a correlation id on the shared queue is handed to no call (it
//!    may answer an earlier call that gave up). Every call waiting there whose
//!    destination (exchange and routing key) is not known to answer with an id is sent
//!    again at once, each on a reply queue of its own ([`ReplyQueue::PerCall`]'s
//!    queue): the answer on that queue is the call's, with an id or without.
//! 3. A destination that answered a call without a correlation id is remembered
//!    ([`Destinations`], per caller, bounded): calls to it get a queue of their own from
//!    then on. Once the caller has seen such an answer, a call that times out is sent
//!    again on a queue of its own too (a queue consumed by Python and postage
//!    instances alike may answer either way).
//!
//! The first call to a Python receiver so costs one extra round of sending; a call sent
//! again is handled again by its receiver, as any RPC retry is. A fleet of postage
//! components pays one relaxed atomic load per call and one short lock per answer.
//! [`Producer::gather`](crate::Producer::gather) always uses a queue per call.

mod answer;
mod caller;
mod calls;
mod destinations;
pub(crate) mod progress;
mod reply;

pub(crate) use self::answer::ReturnAddress;
pub(crate) use self::caller::{Heard, Replies, Waiter};
pub(crate) use self::calls::Calls;
pub(crate) use self::destinations::{Destination, Destinations};
pub use self::reply::ReplyQueue;
pub(crate) use self::reply::start_reply_consumer;
