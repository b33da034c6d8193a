//! The SDK's transport: sends in three modes, calls, and non-blocking requests.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use lapin::BasicProperties;
use lapin::types::ShortString;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::server::{Request, Server};
use super::{DEFAULT_CALL_TIMEOUT, FANOUT_EXCHANGE, Mode, Target};
use crate::config::Config;
use crate::connection::Connection;
use crate::deadline::instant_after;
use crate::error::{Error, Result};
use crate::producer::{Producer, Publish};
use crate::rpc::{Destination, Heard, Replies, ReplyQueue};
use crate::sync::Locked;

/// An answer to a [`Transport::request`], delivered to [`Transport::responses`] or
/// [`Transport::on_response`].
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    correlation_id: String,
    body: Vec<u8>,
}

impl Response {
    /// The id [`Transport::request`] returned for the request this answers.
    pub fn correlation_id(&self) -> &str {
        &self.correlation_id
    }

    /// The raw body.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The body decoded from JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.body).map_err(|source| Error::Payload {
            what: format!("the answer to request {:?}", self.correlation_id),
            source,
        })
    }
}

/// The answers to non-blocking requests, in arrival order: a [`Stream`], or read with
/// [`Responses::next`].
#[derive(Debug)]
pub struct Responses {
    receiver: mpsc::Receiver<Response>,
}

impl Responses {
    /// The next answer; `None` once the transport is closed or a newer [`Responses`]
    /// took over.
    pub async fn next(&mut self) -> Option<Response> {
        self.receiver.recv().await
    }
}

impl Stream for Responses {
    type Item = Response;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Response>> {
        self.receiver.poll_recv(cx)
    }
}

/// Who waits for the answer to a correlation id, sent for the reply consumer of `epoch`.
#[derive(Debug)]
enum Waiter {
    /// A [`Transport::call`], awaiting this one answer.
    Call {
        epoch: u64,
        answer: oneshot::Sender<Heard>,
    },
    /// A [`Transport::request`], whose answer goes to the responses sink.
    Request {
        epoch: u64,
        correlation_id: Arc<str>,
        sink: Arc<Locked<Sink>>,
    },
}

impl crate::rpc::Waiter for Waiter {
    fn epoch(&self) -> u64 {
        match self {
            Self::Call { epoch, .. } | Self::Request { epoch, .. } => *epoch,
        }
    }

    /// The simple client's servers always answer with the correlation id.
    fn destination(&self) -> Option<Destination> {
        None
    }

    fn hear(self, heard: Heard) {
        match (self, heard) {
            (Self::Call { answer, .. }, heard) => {
                let _ = answer.send(heard);
            }
            (
                Self::Request {
                    correlation_id,
                    sink,
                    ..
                },
                Heard::Answer(body),
            ) => sink.with(|sink| {
                sink.take(Response {
                    correlation_id: correlation_id.to_string(),
                    body,
                });
            }),
            (Self::Request { .. }, _) => {}
        }
    }
}

/// How many answers to requests wait to be read, in a [`Responses`] or before there is
/// one; past that the eldest goes, with a warning.
pub const RESPONSE_BUFFER: usize = 1024;

/// Where answers to requests go: the latest [`Responses`], or a backlog until there is one.
#[derive(Debug, Default)]
struct Sink {
    sender: Option<mpsc::Sender<Response>>,
    backlog: VecDeque<Response>,
}

impl Sink {
    /// Hands `response` to the latest [`Responses`], or keeps it for one to come.
    fn take(&mut self, response: Response) {
        let response = match &self.sender {
            Some(sender) => match sender.try_send(response) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(response)) => {
                    tracing::warn!(
                        correlation_id = response.correlation_id,
                        "dropping an answer: {RESPONSE_BUFFER} wait to be read"
                    );
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(response)) => response,
            },
            None => response,
        };
        self.sender = None;
        self.keep(response);
    }

    /// Keeps `response` for a [`Responses`] to come, the eldest dropped when full.
    fn keep(&mut self, response: Response) {
        if self.backlog.len() >= RESPONSE_BUFFER
            && let Some(dropped) = self.backlog.pop_front()
        {
            tracing::warn!(
                correlation_id = dropped.correlation_id,
                "dropping the eldest unread answer: {RESPONSE_BUFFER} wait to be read"
            );
        }
        self.backlog.push_back(response);
    }
}

/// Removes a call's waiter when the call ends early (error, timeout, cancellation).
struct Forget<'a> {
    replies: &'a Replies<Waiter>,
    correlation_id: &'a str,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.replies.waiters.forget(self.correlation_id);
    }
}

/// The SDK's transport: a channel on a broker connection that sends to [`Target`]s in
/// the three [`Mode`]s, makes non-blocking requests, and serves targets. Clones share the
/// channel.
///
/// ```no_run
/// use postage_core::{Config, client::{Mode, Target, Transport}};
/// use serde_json::{json, Value};
///
/// # async fn demo() -> postage_core::Result<()> {
/// let transport = Transport::connect(&Config::from_env()?).await?;
/// let iaas = Target::new("iaas");
/// let body = json!({"cpu": 2, "mem": 4096, "disk": 40});
///
/// let answer: Value = transport.call(&iaas, &body).await?; // mode "rpc"
/// transport.cast(&iaas, &body).await?; // one server gets it
/// transport.fanout(&iaas, &body).await?; // every server gets it
/// let same = transport.send(&iaas, &body, Mode::Rpc).await?; // Some(answer)
///
/// // Non-blocking: answers reach the callback while this task goes on.
/// transport.on_response(|response| println!("receive message: {:?}", response.json::<Value>()));
/// transport.request(&iaas, &body).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Transport {
    inner: Arc<Inner>,
    timeout: Duration,
}

#[derive(Debug)]
struct Inner {
    connection: Connection,
    owns_connection: bool,
    /// Publishes with confirms, `mandatory`, on the publishing connection, and reopens
    /// its channel after a reconnection.
    producer: Producer,
    closed: AtomicBool,
    /// The answers, over direct reply-to on the producer's channel (RabbitMQ wants them
    /// consumed on the channel that publishes the calls), read by a task of their own so
    /// that requests' answers come while no call waits.
    replies: Arc<Replies<Waiter>>,
    /// Where the answers to requests go.
    sink: Arc<Locked<Sink>>,
    /// Kept while the transport lives: its reader stops when it is dropped.
    _reading: oneshot::Sender<Heard>,
}

impl Transport {
    /// Connects to the first of `config`'s hosts that answers (the SDK's
    /// `get_transport(conf)`: hosts, port, user, password, virtual host, heartbeat).
    /// [`close`](Self::close) closes that connection.
    pub async fn connect(config: &Config) -> Result<Self> {
        let connection = Connection::connect(config).await?;
        Self::open(connection, true).await
    }

    /// A transport on an existing connection, which [`close`](Self::close) leaves open.
    pub async fn new(connection: &Connection) -> Result<Self> {
        Self::open(connection.clone(), false).await
    }

    async fn open(connection: Connection, owns_connection: bool) -> Result<Self> {
        let producer = Producer::builder(&connection)
            .reliable(true)
            .build()
            .await?;
        let replies = Arc::new(Replies::new(ReplyQueue::DirectReplyTo));
        let (reading, until) = oneshot::channel();
        tokio::spawn(Arc::clone(&replies).read_until(until));
        Ok(Self {
            inner: Arc::new(Inner {
                connection,
                owns_connection,
                producer,
                closed: AtomicBool::new(false),
                replies,
                sink: Arc::default(),
                _reading: reading,
            }),
            timeout: DEFAULT_CALL_TIMEOUT,
        })
    }

    /// A copy whose calls wait `timeout` for their answer (default 30 s).
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends `body` as JSON in `mode`: for [`Mode::Rpc`] waits for the answer and returns
    /// it, otherwise returns `None` once the broker has the message (the SDK's
    /// `send_message(message, mode)`).
    pub async fn send(
        &self,
        target: &Target,
        body: &impl Serialize,
        mode: Mode,
    ) -> Result<Option<Value>> {
        match mode {
            Mode::Rpc => self.call(target, body).await.map(Some),
            Mode::Cast => self.cast(target, body).await.map(|()| None),
            Mode::Fanout => self.fanout(target, body).await.map(|()| None),
        }
    }

    /// Calls `target` and decodes its JSON answer into `T`. No server queue is
    /// [`Error::Unroutable`]; no answer within the timeout is [`Error::Timeout`].
    pub async fn call<T: DeserializeOwned>(
        &self,
        target: &Target,
        body: &impl Serialize,
    ) -> Result<T> {
        let correlation_id = self.next_id();
        let (answer, mut receiver) = oneshot::channel();
        let _forget = Forget {
            replies: &self.inner.replies,
            correlation_id: &correlation_id,
        };
        // One deadline for the call: the request's publish and confirm, and the answer.
        let deadline = instant_after(self.timeout);
        let operation = || format!("calling target {:?}", target.name());
        let publish = async {
            let reply_to = self
                .expect_answer(&correlation_id, |epoch| Waiter::Call { epoch, answer })
                .await?;
            self.publish(target, body, Some((reply_to, &correlation_id)))
                .await
        };
        match tokio::time::timeout_at(deadline, publish).await {
            Ok(published) => published?,
            Err(_) => return Err(self.inner.connection.overdue(operation(), self.timeout)),
        }
        let waited = self.inner.replies.wait(&mut receiver);
        let answer = match tokio::time::timeout_at(deadline, waited).await {
            Ok(Heard::Answer(answer)) => answer,
            Ok(_) => return Err(Error::Closed("the transport's reply consumer")),
            Err(_) => {
                return Err(Error::Timeout {
                    operation: format!("waiting for the answer of target {:?}", target.name()),
                    timeout: self.timeout,
                });
            }
        };
        serde_json::from_slice(&answer).map_err(|source| Error::Payload {
            what: format!("the answer of target {:?}", target.name()),
            source,
        })
    }

    /// Sends `body` to one server of `target`; returns once the broker has it in the
    /// target's queue (no such queue is [`Error::Unroutable`]).
    pub async fn cast(&self, target: &Target, body: &impl Serialize) -> Result<()> {
        self.publish(target, body, None).await
    }

    /// Sends `body` to every server of `target` now running; returns once the broker has
    /// it. With no server running, nobody gets it.
    pub async fn fanout(&self, target: &Target, body: &impl Serialize) -> Result<()> {
        let body = json_body(body)?;
        let properties = BasicProperties::default().with_content_type(JSON.into());
        let key = target.fanout_key();
        let publish = Publish::new(FANOUT_EXCHANGE, &key, &body, properties);
        self.live()?.send(publish).await
    }

    /// Sends a call to `target` without waiting for its answer, and returns its
    /// correlation id; the answer goes to [`responses`](Self::responses) or
    /// [`on_response`](Self::on_response) (the SDK's `send_request`).
    pub async fn request(&self, target: &Target, body: &impl Serialize) -> Result<String> {
        let correlation_id = self.next_id();
        let sink = Arc::clone(&self.inner.sink);
        let waiter = |epoch| Waiter::Request {
            epoch,
            correlation_id: Arc::clone(&correlation_id),
            sink,
        };
        let sent = async {
            let reply_to = self.expect_answer(&correlation_id, waiter).await?;
            self.publish(target, body, Some((reply_to, &correlation_id)))
                .await
        };
        match sent.await {
            Ok(()) => Ok(correlation_id.to_string()),
            Err(error) => {
                self.inner.replies.waiters.forget(&correlation_id);
                Err(error)
            }
        }
    }

    /// The answers to [`request`](Self::request)s from now on, and those that came while
    /// nobody listened. Only the latest `Responses` gets answers; an older one ends.
    pub fn responses(&self) -> Responses {
        let (sender, receiver) = mpsc::channel(RESPONSE_BUFFER);
        self.inner.sink.with(|sink| {
            for response in sink.backlog.drain(..) {
                let _ = sender.try_send(response);
            }
            sink.sender = Some(sender);
        });
        Responses { receiver }
    }

    /// Calls `callback` with each answer to a [`request`](Self::request), on a task of
    /// its own, and returns at once (the SDK's `receive_response(on_response)`). Takes
    /// over from any earlier [`responses`](Self::responses).
    pub fn on_response(
        &self,
        mut callback: impl FnMut(Response) + Send + 'static,
    ) -> JoinHandle<()> {
        let mut responses = self.responses();
        tokio::spawn(async move {
            while let Some(response) = responses.next().await {
                callback(response);
            }
        })
    }

    /// Declares `target`'s queue and this server's private fanout queue, ready to
    /// [`serve`](Server::serve).
    pub async fn server(&self, target: &Target) -> Result<Server> {
        Server::declare(&self.inner.connection, target).await
    }

    /// Serves `target` until the channel closes: each message's JSON body goes to
    /// `handler`, and for a call its return value is the answer (the SDK's
    /// `start_consume_message`). See [`Server::serve`].
    pub async fn serve<F, Fut, R>(&self, target: &Target, handler: F) -> Result<()>
    where
        F: Fn(Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send,
        R: Serialize,
    {
        self.server(target).await?.serve(handler).await
    }

    /// Waits until the broker has every message sent, then closes the channel, and the
    /// connection if [`connect`](Self::connect) opened it.
    pub async fn close(&self) -> Result<()> {
        self.inner.closed.store(true, Ordering::SeqCst);
        self.inner.producer.close().await?;
        // The end of the answers: a `Responses` stream ends.
        self.inner.sink.with(|sink| sink.sender = None);
        if self.inner.owns_connection {
            self.inner.connection.close().await?;
        }
        Ok(())
    }

    /// The connection the transport is on.
    pub fn connection(&self) -> &Connection {
        &self.inner.connection
    }

    /// The transport's channel now, for anything this API does not wrap (after a
    /// reconnection the transport opens another); `None` never, as its producer is on a
    /// connection.
    pub fn channel(&self) -> Option<lapin::Channel> {
        self.inner.producer.channel()
    }

    fn next_id(&self) -> Arc<str> {
        self.inner.replies.waiters.next_id()
    }

    /// The producer, unless the transport was closed.
    fn live(&self) -> Result<&Producer> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(Error::Closed("the transport"));
        }
        Ok(&self.inner.producer)
    }

    /// Registers the waiter of call `id` (made by `waiter` for the reply consumer's
    /// epoch) until the transport's call timeout, before the call goes, and returns the
    /// `reply_to` address its answer comes back to: direct reply-to on the producer's
    /// live channel.
    async fn expect_answer(
        &self,
        id: &Arc<str>,
        waiter: impl FnOnce(u64) -> Waiter,
    ) -> Result<ShortString> {
        let lease = self.live()?.live_channel().await?;
        let replies = &self.inner.replies;
        let (reply_to, epoch) = replies.address(&self.inner.connection, &lease).await?;
        let until = instant_after(self.timeout);
        replies.waiters.wait(id, until, waiter(epoch));
        Ok(reply_to)
    }

    /// Publishes `body` to `target`'s queue (`mandatory`; for a call, with its `reply_to`
    /// and correlation id) and waits for the broker's confirm, within the producer's
    /// publish timeout.
    async fn publish(
        &self,
        target: &Target,
        body: &impl Serialize,
        call: Option<(ShortString, &str)>,
    ) -> Result<()> {
        let body = json_body(body)?;
        let producer = self.live()?;
        let mut properties = BasicProperties::default().with_content_type(JSON.into());
        if let Some((reply_to, id)) = call {
            properties = properties
                .with_reply_to(reply_to)
                .with_correlation_id(id.into());
        }
        let publish = Publish::new("", target.name(), &body, properties);
        producer.send(publish.mandatory(producer.reliable())).await
    }
}

/// The content type of the simple client's bodies.
const JSON: &str = "application/json";

/// `body` as JSON.
fn json_body(body: &impl Serialize) -> Result<Vec<u8>> {
    serde_json::to_vec(body).map_err(|source| Error::Payload {
        what: "a request".to_owned(),
        source,
    })
}
