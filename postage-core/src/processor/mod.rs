//! Running a component: a processor consumes its queues and dispatches each message to
//! the handlers its `#[processor]` impl blocks registered, per the Postage wire contract.

mod acks;
mod builder;
mod claims;
mod control;
mod copies;
mod dispatch;
mod ordered;
mod reply;
mod retry;
mod run;
mod table;
pub(crate) mod testing;
mod timers;

pub use self::builder::{DEFAULT_MAX_BODY, ProcessorBuilder};
pub use self::control::ControlPolicy;
pub use self::ordered::ORDERED_BACKLOG;
pub use self::retry::{ATTEMPT_HEADER, ERROR_HEADER, RetryPolicy};
pub use self::table::HandlerInfo;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

use self::table::HandlerTable;
use crate::asyncapi::Component;
use crate::connection::Connection;
use crate::consumer::Consumer;
use crate::handler::{Disposition, States};
use crate::producer::Producer;
use crate::telemetry::{Telemetry, Watched};
use crate::wire::{Encoder, Fingerprint};

/// Why [`Processor::run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Exit {
    /// A `quit` command arrived.
    Quit,
    /// [`ProcessorHandle::shutdown`] was called.
    Shutdown,
    /// The broker cancelled the consumer or closed its channel.
    ConsumerClosed,
}

/// Stops a running processor from elsewhere (it stops taking deliveries, finishes the
/// handlers in flight, and [`Processor::run`] returns [`Exit::Shutdown`]), and tells how
/// much it holds.
#[derive(Debug, Clone)]
pub struct ProcessorHandle {
    stop: Arc<Stop>,
}

impl ProcessorHandle {
    /// Asks the processor to stop.
    pub fn shutdown(&self) {
        self.stop.requested.store(true, Ordering::SeqCst);
        self.stop.wake.notify_one();
    }

    /// How many deliveries the processor keeps records of now: those its handlers run,
    /// those finished and waiting for a coalesced acknowledgement, and the records of
    /// settled ones it needs to acknowledge safely. Bounded by the prefetch, whatever
    /// the traffic, a handler that never finishes included.
    pub fn tracked_deliveries(&self) -> usize {
        self.stop.tracked.load(Ordering::Relaxed)
    }
}

/// What a handle shares with its processor: a stop request (a flag read between
/// deliveries, and a wake-up for a waiting loop), and the size of its records.
#[derive(Debug, Default)]
struct Stop {
    requested: AtomicBool,
    wake: Notify,
    tracked: Arc<AtomicUsize>,
}

/// A processor asked to stop is draining: the health endpoint's `/health/ready` answers
/// 503 from that moment (before its consumers are cancelled), so an orchestrator sends it
/// no more work while the handlers in flight finish.
impl Watched for Stop {
    fn readiness(&self) -> Option<Result<(), String>> {
        self.requested
            .load(Ordering::SeqCst)
            .then(|| Err("draining: stopping, finishing the handlers in flight".to_owned()))
    }
}

/// Who may send the control commands, how big a body may be, and how a stop goes.
#[derive(Debug, Clone)]
struct Limits {
    control: ControlPolicy,
    max_body: usize,
    stop_on_signals: bool,
    shutdown_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            control: ControlPolicy::Anyone,
            max_body: DEFAULT_MAX_BODY,
            stop_on_signals: false,
            shutdown_timeout: Duration::from_secs(30),
        }
    }
}

/// A component: a value whose `#[processor]` impl blocks declare handlers, consuming its
/// queues. Several processors run side by side on one runtime with `tokio::join!`.
///
/// ```no_run
/// use postage_core::{processor, Connection, Exchange, HandlerError, Processor};
///
/// const ECHO: Exchange = Exchange::new("echo-exchange");
///
/// struct Echo;
///
/// #[processor]
/// impl Echo {
///     #[message_handler("command", "echo")]
///     fn echo(&self, text: String) {
///         println!("{text}");
///     }
///
///     #[rpc_handler("command", "upper")]
///     async fn upper(&self, text: String) -> Result<String, HandlerError> {
///         Ok(text.to_uppercase())
///     }
/// }
///
/// # async fn demo() -> postage_core::Result<()> {
/// let connection = Connection::from_env().await?;
/// let echo = Processor::builder(&connection, Echo)
///     .bind(ECHO, "echo-queue", "echo-rk")
///     .build()
///     .await?;
/// echo.run().await?; // until a `quit` command
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Processor<P> {
    connection: Connection,
    shared: Arc<Shared<P>>,
    consumer: Consumer,
    prefetch: u16,
    concurrency: usize,
    /// The key deliveries run in order by, if any.
    ordered: Option<ordered::KeyOf>,
    /// The partitions whose share this processor reads, if any.
    partitions: Option<crate::topology::Partitions>,
    limits: Limits,
    stop: Arc<Stop>,
}

#[derive(Debug)]
struct Shared<P> {
    state: Arc<P>,
    table: HandlerTable,
    /// Where the answers to RPC calls go.
    answers: Producer,
    /// What moves messages to their retry and dead-letter queues.
    copies: copies::Copies,
    encoder: Arc<dyn Encoder>,
    fingerprint: Arc<Fingerprint>,
    /// How failed messages are retried and dead-lettered.
    retry: RetryPolicy,
    /// Whether rejected messages go to their queue's `.dead` queue.
    dead_letters: bool,
    /// What becomes of a message whose handler failed without saying.
    on_failure: Disposition,
    /// How long a handler may run, unless its marker says.
    handler_timeout: Option<Duration>,
    /// The shared values handlers take as `State<T>`.
    states: Arc<States>,
    /// The metrics endpoint its connection reports to, if any.
    telemetry: Option<Arc<Telemetry>>,
    /// Where its message handlers record what they handled, in their unit of work.
    inbox: Option<Arc<dyn crate::inbox::Inbox>>,
}

/// What the loop does with one delivery before handing it to the handlers.
enum Control {
    Quit,
    Restart,
}

impl<P: Send + Sync + 'static> Processor<P> {
    /// A handle that stops [`Processor::run`] from another task.
    pub fn handle(&self) -> ProcessorHandle {
        ProcessorHandle {
            stop: Arc::clone(&self.stop),
        }
    }

    /// The processor's consumer: bind and unbind queues at run time through it.
    pub fn consumer(&self) -> &Consumer {
        &self.consumer
    }

    /// The processor's state.
    pub fn state(&self) -> &Arc<P> {
        &self.shared.state
    }

    /// Every message this processor answers to (its handlers', built-ins left out).
    pub fn handlers(&self) -> Vec<HandlerInfo> {
        self.shared.table.describe()
    }

    /// What this processor answers to, for an API document: its bindings and its
    /// handlers with their schemas, under its fingerprint's name.
    pub fn api(&self) -> Component {
        Component::from_registrations(
            self.shared.fingerprint.name.clone(),
            self.shared.table.registrations(),
        )
        .with_bindings(&self.consumer.bindings())
    }
}
