use crate::{
    Connection, Error, PromiseResolver,
    channel::Reply,
    connection_step::ConnectionStep,
    internal_rpc::InternalRPCHandle,
    promise::Cancelable,
    types::{ChannelId, FrameSize},
};
use amq_protocol::{
    frame::{AMQPFrame, ProtocolVersion},
    protocol::{AMQPClass, basic::AMQPMethod, connection},
};
use std::{
    collections::{HashMap, VecDeque},
    fmt,
    ops::Deref,
    sync::{Arc, Mutex, MutexGuard},
    task::{Poll, Waker},
};
use tracing::trace;

pub(crate) struct ExpectedReply(
    pub(crate) Reply,
    pub(crate) Box<dyn Cancelable + Send + Sync>,
);

impl fmt::Debug for ExpectedReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ExpectedReply").field(&self.0).finish()
    }
}

#[derive(Clone, Default)]
pub(crate) struct Frames(Arc<Mutex<Inner>>);

impl Frames {
    /// With `queued_publishes` (a high-water mark in bytes), a publish is queued rather than
    /// waited for, and frames leave in the order they were issued.
    pub(crate) fn new(queued_publishes: Option<usize>) -> Self {
        let frames = Self::default();
        frames.lock_inner().backlog = queued_publishes.map(Backlog::new);
        frames
    }

    pub(crate) fn push(
        &self,
        channel_id: ChannelId,
        frame: AMQPFrame,
        canceler: Box<dyn Cancelable + Send + Sync>,
        expected_reply: Option<ExpectedReply>,
        resolver: Option<PromiseResolver<()>>,
    ) {
        self.lock_inner()
            .push(channel_id, frame, canceler, expected_reply, resolver);
    }

    /// The backlog of queued publishes, when publishes are queued rather than waited for.
    pub(crate) fn backlog(&self) -> Option<Backlog> {
        self.lock_inner().backlog.clone()
    }

    /// Returns the backlog when publishes are queued rather than waited for.
    pub(crate) fn push_frames(
        &self,
        channel_id: ChannelId,
        frames: Vec<AMQPFrame>,
        resolver: PromiseResolver<()>,
    ) -> Option<Backlog> {
        self.lock_inner().push_frames(channel_id, frames, resolver)
    }

    pub(crate) fn retry(&self, frame: FrameEntry) {
        self.lock_inner().retry_frames.push_back(frame);
    }

    pub(crate) fn pop(&self, flow: bool) -> Option<FrameEntry> {
        self.lock_inner().pop(flow)
    }

    pub(crate) fn find_connection_step(&self, channel_id: ChannelId) -> Option<ConnectionStep> {
        match self.find_expected_reply(channel_id, |reply| {
            matches!(&reply.0, Reply::ConnectionStep(..))
        }) {
            Some(Reply::ConnectionStep(step)) => Some(step),
            _ => None,
        }
    }

    pub(crate) fn connection_resolver(
        &self,
        channel_id: ChannelId,
    ) -> Option<PromiseResolver<Connection>> {
        let resolver = self
            .find_connection_step(channel_id)
            .map(ConnectionStep::into_connection_resolver);
        // We carry the Connection here to drop the lock() above before dropping the Connection
        resolver.map(|(resolver, _connection)| resolver)
    }

    pub(crate) fn clear_connection_steps(&self, error: &Error) {
        // Each call to connection_resolver() removes one step from expected_replies[0],
        // so this loop always terminates.
        while let Some(resolver) = self.connection_resolver(0) {
            resolver.reject(error.clone());
        }
    }

    pub(crate) fn retry_connection_header(&self) -> bool {
        let mut inner = self.lock_inner();
        let resolver = inner.expected_replies.get(&0).and_then(|replies| {
            replies.iter().find_map(|reply| match &reply.0 {
                Reply::ConnectionStep(ConnectionStep::ProtocolHeader(resolver, _)) => {
                    Some(resolver.clone())
                }
                _ => None,
            })
        });
        let Some(resolver) = resolver else {
            return false;
        };

        // Keep the expected reply and its original connection promise. The old
        // header may still be queued or partially written on the previous socket.
        inner
            .frames
            .retain(|frame| !matches!(frame.frame, AMQPFrame::ProtocolHeader(_)));
        inner
            .retry_frames
            .retain(|frame| !matches!(frame.frame, AMQPFrame::ProtocolHeader(_)));
        inner.retry_frames.push_front(FrameEntry::new(
            AMQPFrame::ProtocolHeader(ProtocolVersion::amqp_0_9_1()),
            FrameSending::new(Some(Box::new(resolver)), None),
        ));
        true
    }

    pub(crate) fn find_expected_reply<P: FnMut(&ExpectedReply) -> bool>(
        &self,
        channel_id: ChannelId,
        finder: P,
    ) -> Option<Reply> {
        self.lock_inner()
            .expected_replies
            .get_mut(&channel_id)
            .and_then(|replies| {
                replies
                    .iter()
                    .position(finder)
                    .and_then(|idx| replies.remove(idx))
            })
            .map(|t| t.0)
    }

    pub(crate) fn next_expected_close_ok_reply(
        &self,
        channel_id: ChannelId,
        error: Error,
    ) -> Option<Reply> {
        self.lock_inner()
            .next_expected_close_ok_reply(channel_id, error)
    }

    pub(crate) fn has_pending(&self) -> bool {
        self.lock_inner().has_pending()
    }

    /// Whether `pop(flow)` has a frame to give.
    pub(crate) fn has_sendable(&self, flow: bool) -> bool {
        self.lock_inner().has_sendable(flow)
    }

    pub(crate) fn drop_pending(&self, error: Error, internal_rpc: &InternalRPCHandle) {
        self.lock_inner().drop_pending(error, internal_rpc);
    }

    pub(crate) fn take_expected_replies(
        &self,
        channel_id: ChannelId,
    ) -> Option<VecDeque<ExpectedReply>> {
        self.lock_inner().expected_replies.remove(&channel_id)
    }

    pub(crate) fn clear_expected_replies(&self, channel_id: ChannelId, error: Error) {
        if let Some(replies) = self.take_expected_replies(channel_id) {
            Self::cancel_expected_replies(replies, error)
        }
    }

    pub(crate) fn clear_all_expected_replies(&self, error: Error) {
        self.lock_inner().clear_all_expected_replies(error)
    }

    pub(crate) fn cancel_expected_replies(replies: VecDeque<ExpectedReply>, error: Error) {
        Inner::cancel_expected_replies(replies, error)
    }

    pub(crate) fn drop_frames_for_channel(&self, channel_id: ChannelId, error: Error) {
        self.lock_inner().drop_frames_for_channel(channel_id, error)
    }

    pub(crate) fn poison_channel(&self, channel_id: ChannelId, error: Error) {
        self.lock_inner().channels_poison.insert(channel_id, error);
    }

    pub(crate) fn poison(&self) -> Option<Error> {
        self.lock_inner().poison.clone()
    }

    pub(crate) fn drop_poison(&self) {
        self.lock_inner().poison.take();
    }

    pub(crate) fn drop_channel_poison(&self, channel_id: ChannelId) {
        self.lock_inner().channels_poison.remove(&channel_id);
    }

    fn lock_inner(&self) -> MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub(crate) struct FrameEntry {
    frame: AMQPFrame,
    sending: FrameSending,
}

impl From<AMQPFrame> for FrameEntry {
    fn from(frame: AMQPFrame) -> Self {
        (frame, None).into()
    }
}

impl From<(AMQPFrame, Option<PromiseResolver<()>>)> for FrameEntry {
    fn from(entry: (AMQPFrame, Option<PromiseResolver<()>>)) -> Self {
        Self::new(entry.0, FrameSending::new(None, entry.1))
    }
}

impl Deref for FrameEntry {
    type Target = AMQPFrame;

    fn deref(&self) -> &Self::Target {
        &self.frame
    }
}

impl FrameEntry {
    fn new(frame: AMQPFrame, sending: FrameSending) -> Self {
        Self { frame, sending }
    }

    fn reject(&self, error: Error) {
        self.sending.reject(error)
    }

    pub(crate) fn into_serialized_frame(self, sz: FrameSize) -> (FrameSize, FrameSending) {
        (sz, self.sending)
    }
}

impl FrameEntry {
    fn is_publish(&self) -> bool {
        matches!(
            self.frame,
            AMQPFrame::Method(_, AMQPClass::Basic(AMQPMethod::Publish(_)))
        )
    }

    fn is_content(&self) -> bool {
        matches!(self.frame, AMQPFrame::Header(..) | AMQPFrame::Body(..))
    }

    fn is_connection_close(&self) -> bool {
        matches!(
            self.frame,
            AMQPFrame::Method(_, AMQPClass::Connection(connection::AMQPMethod::Close(_)))
        )
    }
}

impl fmt::Display for FrameEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.frame.fmt(f)
    }
}

pub(crate) struct FrameSending {
    canceler: Option<Box<dyn Cancelable + Send + Sync>>,
    resolver: Option<PromiseResolver<()>>,
    // A queued publish's bytes, counted in the backlog until its last frame is sent or dropped.
    _backlog: Option<BacklogShare>,
}

impl FrameSending {
    fn new(
        canceler: Option<Box<dyn Cancelable + Send + Sync>>,
        resolver: Option<PromiseResolver<()>>,
    ) -> Self {
        Self {
            canceler,
            resolver,
            _backlog: None,
        }
    }

    pub(crate) fn reject(&self, error: Error) {
        if let Some(resolver) = self.resolver.as_ref() {
            resolver.reject(error);
        } else if let Some(canceler) = self.canceler.as_ref() {
            canceler.cancel(error);
        }
    }

    pub(crate) fn resolve(&self) {
        if let Some(resolver) = self.resolver.as_ref() {
            resolver.resolve(());
        }
    }
}

#[derive(Default)]
struct Inner {
    /* Header frames must follow basic.publish frames directly, otherwise RabbitMQ-server send us an UNEXPECTED_FRAME */
    /* After sending the Header frame, we need to send the associated Body frames before anything else for the same reason */
    publish_frames: VecDeque<FrameEntry>,
    retry_frames: VecDeque<FrameEntry>,
    frames: VecDeque<FrameEntry>,
    low_prio_frames: VecDeque<FrameEntry>,
    expected_replies: HashMap<ChannelId, VecDeque<ExpectedReply>>,
    poison: Option<Error>,
    channels_poison: HashMap<ChannelId, Error>,
    /* With queued publishes: every frame goes to `frames`, in the order issued, and pop keeps that order */
    backlog: Option<Backlog>,
    /* Without flow (channel.flow): publishes, and every later frame of their channels, held back in order */
    held_frames: VecDeque<FrameEntry>,
    held_channels: HashMap<ChannelId, usize>,
}

impl fmt::Debug for Frames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("Frames");
        if let Ok(inner) = self.0.try_lock() {
            debug.field("expected_replies", &inner.expected_replies);
        }
        debug.finish()
    }
}

impl Inner {
    fn push(
        &mut self,
        channel_id: ChannelId,
        frame: AMQPFrame,
        canceler: Box<dyn Cancelable + Send + Sync>,
        expected_reply: Option<ExpectedReply>,
        resolver: Option<PromiseResolver<()>>,
    ) {
        let sending = FrameSending::new(Some(canceler), resolver);
        if let Some(error) = self.check_poison(channel_id) {
            trace!(channel=%channel_id, frame=?frame, "Discarding frame because of poisoning");
            if let Some(reply) = expected_reply {
                Self::cancel_expected_reply(reply, error.clone());
            }
            sending.reject(error);
            return;
        }

        self.frames.push_back(FrameEntry::new(frame, sending));
        if let Some(reply) = expected_reply {
            trace!(
                channel=%channel_id,
                expected_reply=?reply,
                "state is now waiting"
            );
            self.expected_replies
                .entry(channel_id)
                .or_default()
                .push_back(reply);
        }
    }

    fn push_frames(
        &mut self,
        channel_id: ChannelId,
        mut frames: Vec<AMQPFrame>,
        resolver: PromiseResolver<()>,
    ) -> Option<Backlog> {
        let last_frame = frames.pop();

        if let Some(error) = self.check_poison(channel_id) {
            trace!(channel=%channel_id, frames=?frames, "Discarding frames because of poisoning");
            resolver.reject(error);
            return None;
        }

        if let Some(backlog) = self.backlog.clone() {
            let bytes = frames.iter().chain(&last_frame).map(Backlog::weight).sum();
            let share = backlog.add(bytes);
            self.frames.extend(frames.into_iter().map(FrameEntry::from));
            if let Some(last_frame) = last_frame {
                let mut sending = FrameSending::new(None, Some(resolver));
                sending._backlog = Some(share);
                self.frames.push_back(FrameEntry::new(last_frame, sending));
            } else {
                resolver.resolve(());
            }
            return Some(backlog);
        }

        for frame in frames {
            self.low_prio_frames.push_back(frame.into());
        }

        if let Some(last_frame) = last_frame {
            self.low_prio_frames
                .push_back((last_frame, Some(resolver)).into());
        } else {
            resolver.resolve(());
        }
        None
    }

    fn check_poison(&self, channel_id: ChannelId) -> Option<Error> {
        self.channels_poison
            .get(&channel_id)
            .or(self.poison.as_ref())
            .cloned()
    }

    fn pop(&mut self, flow: bool) -> Option<FrameEntry> {
        if self.backlog.is_some() {
            return self.pop_in_order(flow);
        }
        if let Some(frame) = self
            .retry_frames
            .pop_front()
            .or_else(|| self.publish_frames.pop_front())
            .or_else(|| self.frames.pop_front())
        {
            return Some(frame);
        }
        if flow && let Some(frame) = self.low_prio_frames.pop_front() {
            // If the next frame is a header, that means we're a basic.publish
            // Header frame needs to follow directly the basic.publish frame, and Body frames
            // need to be sent just after those or the AMQP server will close the connection.
            // Push the header into publish_frames which is there to handle just that.
            if self
                .low_prio_frames
                .front()
                .map(|frame| frame.is_header())
                .unwrap_or(false)
            {
                while let Some(next_frame) = self.low_prio_frames.pop_front() {
                    match *next_frame {
                        AMQPFrame::Header(..) | AMQPFrame::Body(..) => {
                            self.publish_frames.push_back(next_frame);
                        }
                        _ => {
                            // We've exhausted Body frames for this publish, push back the next one and exit
                            self.low_prio_frames.push_front(next_frame);
                            break;
                        }
                    }
                }
            }
            return Some(frame);
        }
        None
    }

    /// pop() with queued publishes: each channel's frames leave in the order they were
    /// issued, and a connection.close after all of them. Without flow, a publish is held
    /// back with every later frame of its channel, and other channels' frames go on.
    fn pop_in_order(&mut self, flow: bool) -> Option<FrameEntry> {
        if let Some(frame) = self
            .retry_frames
            .pop_front()
            .or_else(|| self.publish_frames.pop_front())
        {
            return Some(frame);
        }
        self.hold_back(flow);
        // Held frames were issued before any left in `frames` of their channels.
        let from_held = flow && !self.held_frames.is_empty();
        let frame = if from_held {
            self.pop_held()
        } else {
            self.frames.pop_front()
        }?;
        if frame.is_publish() {
            // The content header and body frames must follow their basic.publish at once.
            loop {
                let queue = if from_held {
                    &self.held_frames
                } else {
                    &self.frames
                };
                if !queue.front().is_some_and(|next| next.is_content()) {
                    break;
                }
                let next = if from_held {
                    self.pop_held()
                } else {
                    self.frames.pop_front()
                };
                self.publish_frames.extend(next);
            }
        }
        Some(frame)
    }

    /// Without flow, moves the frames at the front of `frames` that must wait to `held_frames`.
    fn hold_back(&mut self, flow: bool) {
        if flow {
            return;
        }
        while let Some(frame) = self.frames.front() {
            let channel_id = frame.channel_id();
            let hold = frame.is_publish()
                || self.held_channels.contains_key(&channel_id)
                || (frame.is_connection_close() && !self.held_frames.is_empty());
            if !hold {
                break;
            }
            self.held_frames.extend(self.frames.pop_front());
            *self.held_channels.entry(channel_id).or_default() += 1;
        }
    }

    fn pop_held(&mut self) -> Option<FrameEntry> {
        let frame = self.held_frames.pop_front()?;
        let channel_id = frame.channel_id();
        if let Some(count) = self.held_channels.get_mut(&channel_id) {
            *count -= 1;
            if *count == 0 {
                self.held_channels.remove(&channel_id);
            }
        }
        Some(frame)
    }

    fn has_sendable(&mut self, flow: bool) -> bool {
        if self.backlog.is_some() {
            self.hold_back(flow);
        }
        !(self.retry_frames.is_empty() && self.publish_frames.is_empty() && self.frames.is_empty())
            || (flow && !(self.low_prio_frames.is_empty() && self.held_frames.is_empty()))
    }

    fn has_pending(&self) -> bool {
        !(self.retry_frames.is_empty()
            && self.publish_frames.is_empty()
            && self.frames.is_empty()
            && self.low_prio_frames.is_empty()
            && self.held_frames.is_empty())
    }

    fn drop_pending(&mut self, error: Error, internal_rpc: &InternalRPCHandle) {
        Self::drop_pending_frames(&mut self.retry_frames, error.clone(), internal_rpc);
        Self::drop_pending_frames(&mut self.publish_frames, error.clone(), internal_rpc);
        Self::drop_pending_frames(&mut self.frames, error.clone(), internal_rpc);
        Self::drop_pending_frames(&mut self.low_prio_frames, error.clone(), internal_rpc);
        Self::drop_pending_frames(&mut self.held_frames, error.clone(), internal_rpc);
        self.held_channels.clear();
        self.clear_all_expected_replies(error.clone());
        self.poison = Some(error);
    }

    fn drop_pending_frames(
        frames: &mut VecDeque<FrameEntry>,
        error: Error,
        internal_rpc: &InternalRPCHandle,
    ) {
        for frame in std::mem::take(frames) {
            match frame.frame {
                AMQPFrame::Method(channel_id, AMQPClass::Basic(AMQPMethod::Cancel(cancel))) => {
                    internal_rpc.deregister_consumer(channel_id, cancel.consumer_tag);
                    frame.sending.resolve();
                }
                _ => frame.reject(error.clone()),
            }
        }
    }

    fn drop_frames_for_channel(&mut self, channel_id: ChannelId, error: Error) {
        Self::drop_pending_frames_for_channel(channel_id, &mut self.retry_frames, error.clone());
        Self::drop_pending_frames_for_channel(channel_id, &mut self.publish_frames, error.clone());
        Self::drop_pending_frames_for_channel(channel_id, &mut self.frames, error.clone());
        Self::drop_pending_frames_for_channel(channel_id, &mut self.low_prio_frames, error.clone());
        Self::drop_pending_frames_for_channel(channel_id, &mut self.held_frames, error.clone());
        self.held_channels.remove(&channel_id);
    }

    fn drop_pending_frames_for_channel(
        channel_id: ChannelId,
        frames: &mut VecDeque<FrameEntry>,
        error: Error,
    ) {
        frames.retain(|frame| {
            if frame.channel_id() == channel_id {
                frame.reject(error.clone());
                false
            } else {
                true
            }
        })
    }

    fn next_expected_close_ok_reply(
        &mut self,
        channel_id: ChannelId,
        error: Error,
    ) -> Option<Reply> {
        let expected_replies = self.expected_replies.get_mut(&channel_id)?;
        while let Some(reply) = expected_replies.pop_front() {
            match &reply.0 {
                Reply::ChannelCloseOk(_) => return Some(reply.0),
                Reply::BasicCancelOk(resolver) => resolver.resolve(()), // Channel close means consumer is canceled automatically
                _ => reply.1.cancel(error.clone()),
            }
        }
        None
    }

    fn clear_all_expected_replies(&mut self, error: Error) {
        for (_, replies) in self.expected_replies.drain() {
            Self::cancel_expected_replies(replies, error.clone());
        }
    }

    fn cancel_expected_replies(replies: VecDeque<ExpectedReply>, error: Error) {
        for reply in replies {
            Self::cancel_expected_reply(reply, error.clone());
        }
    }

    fn cancel_expected_reply(reply: ExpectedReply, error: Error) {
        let ExpectedReply(reply, cancel) = reply;
        match reply {
            Reply::BasicCancelOk(resolver) => resolver.resolve(()),
            _ => cancel.cancel(error.clone()),
        }
    }
}

/// The bytes of queued publishes not yet written on a connection, and the high-water mark
/// above which a publish waits, once queued, for the I/O loop to write them down.
#[derive(Clone)]
pub(crate) struct Backlog(Arc<(usize, Mutex<BacklogState>)>);

#[derive(Default)]
struct BacklogState {
    bytes: usize,
    waiting: Vec<Waker>,
}

impl Backlog {
    fn new(high_water_mark: usize) -> Self {
        Self(Arc::new((high_water_mark, Mutex::default())))
    }

    /// What a frame counts for: its payload and its frame's overhead, with an allowance
    /// for the method and content header frames' fields.
    fn weight(frame: &AMQPFrame) -> usize {
        match frame {
            AMQPFrame::Body(_, payload) => 8 + payload.len(),
            _ => 64,
        }
    }

    fn add(&self, bytes: usize) -> BacklogShare {
        self.lock_state().bytes += bytes;
        BacklogShare {
            backlog: self.clone(),
            bytes,
        }
    }

    /// Waits until the backlog is at or below its high-water mark.
    pub(crate) async fn below_mark(&self) {
        std::future::poll_fn(|cx| {
            let mut state = self.lock_state();
            if state.bytes <= self.0.0 {
                return Poll::Ready(());
            }
            if !state.waiting.iter().any(|w| w.will_wake(cx.waker())) {
                state.waiting.push(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }

    fn lock_state(&self) -> MutexGuard<'_, BacklogState> {
        self.0.1.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A queued publish's part of the backlog, given back when dropped.
struct BacklogShare {
    backlog: Backlog,
    bytes: usize,
}

impl Drop for BacklogShare {
    fn drop(&mut self) {
        let waiting = {
            let mut state = self.backlog.lock_state();
            state.bytes -= self.bytes;
            if state.bytes <= self.backlog.0.0 {
                std::mem::take(&mut state.waiting)
            } else {
                Vec::new()
            }
        };
        waiting.into_iter().for_each(Waker::wake);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ConnectionState, ErrorKind, Promise};
    use amq_protocol::{
        frame::AMQPContentHeader,
        protocol::{basic, channel},
    };
    use std::{pin::pin, task::Context};

    fn push(frames: &Frames, channel_id: ChannelId, method: AMQPClass) {
        let (_promise, resolver) = Promise::<()>::new("test");
        let frame = AMQPFrame::Method(channel_id, method);
        frames.push(channel_id, frame, Box::new(resolver), None, None);
    }

    fn publish(
        frames: &Frames,
        channel_id: ChannelId,
        bodies: &[usize],
    ) -> (Promise<()>, Option<Backlog>) {
        let method = AMQPClass::Basic(AMQPMethod::Publish(basic::Publish::default()));
        let header = AMQPContentHeader {
            class_id: 60,
            body_size: bodies.iter().sum::<usize>() as u64,
            properties: Default::default(),
        };
        let mut publish = vec![
            AMQPFrame::Method(channel_id, method),
            AMQPFrame::Header(channel_id, header),
        ];
        publish.extend(
            bodies
                .iter()
                .map(|n| AMQPFrame::Body(channel_id, vec![0; *n])),
        );
        let (promise, resolver) = Promise::new("basic.publish");
        let backlog = frames.push_frames(channel_id, publish, resolver);
        (promise, backlog)
    }

    fn ack(frames: &Frames, channel_id: ChannelId) {
        push(
            frames,
            channel_id,
            AMQPClass::Basic(AMQPMethod::Ack(basic::Ack::default())),
        );
    }

    fn cancel(frames: &Frames, channel_id: ChannelId) {
        let cancel = AMQPMethod::Cancel(basic::Cancel::default());
        push(frames, channel_id, AMQPClass::Basic(cancel));
    }

    fn channel_close(frames: &Frames, channel_id: ChannelId) {
        let close = channel::AMQPMethod::Close(channel::Close::default());
        push(frames, channel_id, AMQPClass::Channel(close));
    }

    fn channel_open(frames: &Frames, channel_id: ChannelId) {
        let open = channel::AMQPMethod::Open(channel::Open::default());
        push(frames, channel_id, AMQPClass::Channel(open));
    }

    fn connection_close(frames: &Frames) {
        let close = connection::AMQPMethod::Close(connection::Close::default());
        push(frames, 0, AMQPClass::Connection(close));
    }

    fn heartbeat(frames: &Frames) {
        let (_promise, resolver) = Promise::<()>::new("test");
        frames.push(0, AMQPFrame::Heartbeat, Box::new(resolver), None, None);
    }

    /// Pops every frame `pop(flow)` gives, as "channel:name", each one written at once.
    fn drain(frames: &Frames, flow: bool) -> Vec<String> {
        std::iter::from_fn(|| frames.pop(flow))
            .map(|entry| {
                let name = match &*entry {
                    AMQPFrame::Method(_, AMQPClass::Basic(AMQPMethod::Publish(_))) => "publish",
                    AMQPFrame::Method(_, AMQPClass::Basic(AMQPMethod::Ack(_))) => "ack",
                    AMQPFrame::Method(_, AMQPClass::Basic(AMQPMethod::Cancel(_))) => "cancel",
                    AMQPFrame::Method(_, AMQPClass::Channel(channel::AMQPMethod::Open(_))) => {
                        "channel.open"
                    }
                    AMQPFrame::Method(_, AMQPClass::Channel(channel::AMQPMethod::Close(_))) => {
                        "channel.close"
                    }
                    AMQPFrame::Method(_, AMQPClass::Connection(_)) => "connection.close",
                    AMQPFrame::Header(..) => "header",
                    AMQPFrame::Body(..) => "body",
                    AMQPFrame::Heartbeat => "heartbeat",
                    _ => "other",
                };
                let label = format!("{}:{name}", entry.channel_id());
                let (_, sending) = entry.into_serialized_frame(0);
                sending.resolve();
                label
            })
            .collect()
    }

    fn queued() -> Frames {
        Frames::new(Some(1 << 20))
    }

    #[test]
    fn a_publish_is_not_overtaken_by_later_frames_of_its_channel() {
        let frames = queued();
        let _ = publish(&frames, 1, &[10]);
        ack(&frames, 1);
        ack(&frames, 2);
        cancel(&frames, 1);
        let _ = publish(&frames, 1, &[10]);
        channel_close(&frames, 1);
        connection_close(&frames);
        assert_eq!(
            drain(&frames, true),
            [
                "1:publish",
                "1:header",
                "1:body",
                "1:ack",
                "2:ack",
                "1:cancel",
                "1:publish",
                "1:header",
                "1:body",
                "1:channel.close",
                "0:connection.close",
            ]
        );
        assert!(!frames.has_pending());
    }

    #[test]
    fn without_flow_only_publishes_and_what_follows_them_on_their_channel_wait() {
        let frames = queued();
        let _ = publish(&frames, 1, &[10]);
        ack(&frames, 1);
        ack(&frames, 2);
        heartbeat(&frames);
        channel_open(&frames, 3);
        let _ = publish(&frames, 2, &[10]);
        ack(&frames, 2);
        cancel(&frames, 3);
        assert!(frames.has_sendable(false));
        assert_eq!(
            drain(&frames, false),
            ["2:ack", "0:heartbeat", "3:channel.open", "3:cancel"]
        );
        assert!(!frames.has_sendable(false));
        assert!(frames.has_pending());
        // Flow is back: what was held leaves first, in order, then what came after.
        ack(&frames, 1);
        assert_eq!(
            drain(&frames, true),
            [
                "1:publish",
                "1:header",
                "1:body",
                "1:ack",
                "2:publish",
                "2:header",
                "2:body",
                "2:ack",
                "1:ack",
            ]
        );
    }

    #[test]
    fn without_flow_a_connection_close_waits_for_held_publishes() {
        let frames = queued();
        let _ = publish(&frames, 1, &[10]);
        connection_close(&frames);
        assert_eq!(drain(&frames, false), Vec::<String>::new());
        assert_eq!(
            drain(&frames, true),
            ["1:publish", "1:header", "1:body", "0:connection.close"]
        );
    }

    #[test]
    fn a_publish_begun_before_flow_stops_is_finished() {
        let frames = queued();
        let _ = publish(&frames, 1, &[10, 10]);
        ack(&frames, 2);
        let first = frames.pop(true).map(|entry| entry.is_publish());
        assert_eq!(first, Some(true));
        assert_eq!(
            drain(&frames, false),
            ["1:header", "1:body", "1:body", "2:ack"]
        );
    }

    #[test]
    fn without_queued_publishes_flow_holds_back_publishes_only() {
        let frames = Frames::default();
        let (_promise, backlog) = publish(&frames, 1, &[10]);
        assert!(backlog.is_none());
        ack(&frames, 2);
        assert_eq!(drain(&frames, false), ["2:ack"]);
        assert!(!frames.has_sendable(false));
        assert!(frames.has_sendable(true));
        assert_eq!(drain(&frames, true), ["1:publish", "1:header", "1:body"]);
    }

    fn ready(future: std::pin::Pin<&mut impl Future<Output = ()>>) -> bool {
        future
            .poll(&mut Context::from_waker(Waker::noop()))
            .is_ready()
    }

    #[test]
    fn a_publish_above_the_mark_waits_until_the_backlog_is_written_down() {
        // A publish of 60 bytes counts for 196: 68 of body frame, 64 per other frame.
        let frames = Frames::new(Some(250));
        let (written, backlog) = publish(&frames, 1, &[60]);
        let backlog = backlog.expect("a backlog with queued publishes");
        assert!(ready(pin!(backlog.below_mark())));
        let (written_too, _) = publish(&frames, 1, &[60]);
        let mut below_mark = pin!(backlog.below_mark());
        assert!(!ready(below_mark.as_mut()));
        assert!(written.try_wait().is_none());
        // The first publish's frames are written: the backlog is back below its mark.
        for _ in 0..3 {
            let entry = frames.pop(true).expect("the first publish's frames");
            entry.into_serialized_frame(0).1.resolve();
        }
        assert!(matches!(written.try_wait(), Some(Ok(()))));
        assert!(written_too.try_wait().is_none());
        assert!(ready(below_mark.as_mut()));
    }

    #[test]
    fn a_dropped_publish_gives_back_its_backlog_and_fails_its_write() {
        let frames = Frames::new(Some(100));
        let (written, backlog) = publish(&frames, 1, &[200]);
        let backlog = backlog.expect("a backlog with queued publishes");
        let mut below_mark = pin!(backlog.below_mark());
        assert!(!ready(below_mark.as_mut()));
        let error: Error = ErrorKind::InvalidConnectionState(ConnectionState::Closed).into();
        frames.drop_frames_for_channel(1, error);
        assert!(matches!(written.try_wait(), Some(Err(_))));
        assert!(ready(below_mark.as_mut()));
        assert!(!frames.has_pending());
    }
}
