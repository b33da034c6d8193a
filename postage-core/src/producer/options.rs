//! What a call asks for: the producer's RPC settings, and the options of one call.

use std::sync::Arc;
use std::time::Duration;

use crate::producer::Route;
use crate::rpc::ReplyQueue;

/// How long an RPC call waits and how often it is re-sent.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RpcSettings {
    pub(crate) timeout: Duration,
    pub(crate) max_retry: u32,
    pub(crate) reply_queue: ReplyQueue,
}

impl Default for RpcSettings {
    /// Postage's defaults: 30 s, re-sent up to 4 times; answers over a private queue.
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            max_retry: 4,
            reply_queue: ReplyQueue::default(),
        }
    }
}

/// Per-call RPC settings: route, timeout and retries, each defaulting to the producer's;
/// progress beats for a long call.
#[derive(Debug, Clone, Default)]
pub struct RpcOptions {
    pub(super) route: Option<Route>,
    pub(super) timeout: Option<Duration>,
    pub(super) max_retry: Option<u32>,
    pub(super) reply_queue: Option<ReplyQueue>,
    pub(super) progress: Option<Duration>,
    pub(super) answer_within: Option<Duration>,
    pub(super) on_progress: Option<OnProgress>,
}

/// How long a call that asked for progress beats waits for its answer at most, unless
/// [`RpcOptions::answer_within`] says.
pub const DEFAULT_ANSWER_WITHIN: Duration = Duration::from_secs(3600);

/// What a call does with each progress value.
#[derive(Clone)]
pub(super) struct OnProgress(pub(super) Arc<dyn Fn(serde_json::Value) + Send + Sync>);

impl std::fmt::Debug for OnProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnProgress(..)")
    }
}

impl RpcOptions {
    /// The producer's defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sends the call along `route`; only its first (exchange, key) pair is used.
    #[must_use]
    pub fn route(mut self, route: Route) -> Self {
        self.route = Some(route);
        self
    }

    /// Sends the call with routing key `key` on the producer's first exchange.
    #[must_use]
    pub fn key(self, key: impl Into<String>) -> Self {
        self.route(Route::Key(key.into()))
    }

    /// How long each attempt waits for the answer (Postage: 30 s).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Where this call's answer comes back, instead of the producer's
    /// [`ReplyQueue`]. Python Postage 1.x receivers, which answer without a correlation
    /// id, need nothing set: a call to one is sent again on a queue of its own, and the
    /// producer calls it so from then on.
    #[must_use]
    pub fn reply_queue(mut self, reply_queue: ReplyQueue) -> Self {
        self.reply_queue = Some(reply_queue);
        self
    }

    /// How many times the call is re-sent after a timeout (Postage: 4).
    #[must_use]
    pub fn max_retry(mut self, max_retry: u32) -> Self {
        self.max_retry = Some(max_retry);
        self
    }

    /// A long call that shows it is alive: the call asks its server (in the header
    /// [`PROGRESS_HEADER`](crate::PROGRESS_HEADER); nothing changes for a caller that
    /// does not ask, a Python Postage one included) for a progress beat every `interval`
    /// while the handler runs. The call's timeout then bounds the wait for the first beat
    /// (or the answer); after each beat the call waits at most two intervals for the
    /// next, and for the answer at most [`RpcOptions::answer_within`] in all (default
    /// [`DEFAULT_ANSWER_WITHIN`], an hour), which is also the handler's deadline. So a
    /// ten-minute handler is not cut off by a 30 s timeout, and a server killed mid-call
    /// is noticed an interval after its last beat was due, not at the end of the timeout:
    /// the call is then sent again as after a timeout, up to its retries. A server that
    /// does not know beats (Python Postage) sends none: the call times out as any other.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use postage_core::{Connection, Exchange, Producer, RpcOptions};
    ///
    /// const REPORTS: Exchange = Exchange::new("reports-exchange");
    ///
    /// # async fn demo() -> postage_core::Result<()> {
    /// let connection = Connection::from_env().await?;
    /// let producer = Producer::builder(&connection)
    ///     .destination(REPORTS, "reports")
    ///     .build()
    ///     .await?;
    /// let options = RpcOptions::new()
    ///     .timeout(Duration::from_secs(30))
    ///     .progress(Duration::from_secs(5))
    ///     .answer_within(Duration::from_secs(20 * 60))
    ///     .on_progress(|value| println!("progress: {value}"));
    /// let report: String = producer.call_with("build_report", 300, options).await?;
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn progress(mut self, interval: Duration) -> Self {
        self.progress = Some(interval.max(crate::rpc::progress::MIN_BEAT));
        self
    }

    /// How long a call with [`RpcOptions::progress`] waits for its answer in all,
    /// however long its beats keep coming.
    #[must_use]
    pub fn answer_within(mut self, limit: Duration) -> Self {
        self.answer_within = Some(limit);
        self
    }

    /// Runs `on_progress` with each beat of a call with [`RpcOptions::progress`], as it
    /// comes: the value the handler gave [`Reply::progress`](crate::Reply::progress), or
    /// `null` for a plain beat. It runs on the task awaiting the answer: keep it short.
    #[must_use]
    pub fn on_progress(
        mut self,
        on_progress: impl Fn(serde_json::Value) + Send + Sync + 'static,
    ) -> Self {
        self.on_progress = Some(OnProgress(Arc::new(on_progress)));
        self
    }
}
