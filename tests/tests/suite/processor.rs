//! Processors against the real broker: every dispatch rule of the wire contract, RPC
//! answers and failures, filters, concurrency, control commands.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use postage_core::lapin::options::{BasicConsumeOptions, BasicPublishOptions};
use postage_core::lapin::types::FieldTable;
use postage_core::lapin::{BasicProperties, options::QueueDeclareOptions};
use postage_core::{
    Consumer, ControlPolicy, Error, Exchange, Exit, Filtered, Fingerprint, HandlerError, Message,
    Metadata, Processor, ProcessorBuilder, ProcessorHandle, Producer, Queue, Reply, ReplyQueue,
    Route, RpcOptions, RpcResult, processor,
};
use postage_tests::{connect, exchange, next_within, unique};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const QUIET: Duration = Duration::from_millis(500);

#[derive(Debug, Serialize, Deserialize)]
struct Sum {
    a: i64,
    b: i64,
}

/// A processor that reports every call on a channel.
struct Probe {
    events: mpsc::UnboundedSender<String>,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
}

impl Probe {
    fn note(&self, event: impl Into<String>) {
        let _ = self.events.send(event.into());
    }
}

fn upper(mut message: Message) -> Filtered {
    if let Some(Value::String(text)) = message.content.get_mut("parameters") {
        *text = text.to_uppercase();
    }
    Filtered::Pass(message)
}

fn skip_secret(message: Message) -> Filtered {
    if message.raw_parameters() == "SECRET" {
        Filtered::Skip
    } else {
        Filtered::Pass(message)
    }
}

fn reject_bad(message: Message) -> Filtered {
    if message.raw_parameters() == "BAD" {
        Filtered::Reject("bad word".into())
    } else {
        Filtered::Pass(message)
    }
}

/// A filter of the message and its metadata: only senders that say who they are.
fn needs_user(message: Message, metadata: &Metadata) -> Filtered {
    match metadata.user_id() {
        Some(_) => Filtered::Pass(message),
        None => Filtered::Reject("no user_id".into()),
    }
}

fn explode(_: Message) -> Filtered {
    panic!("a filter panicked on purpose")
}

impl Probe {
    /// A filter with the processor's state, async.
    async fn audit(&self, message: Message, metadata: &Metadata) -> Filtered {
        tokio::task::yield_now().await;
        self.note(format!(
            "audit {} user={}",
            message.name,
            metadata.user_id().unwrap_or("<none>")
        ));
        Filtered::Pass(message)
    }
}

#[processor]
impl Probe {
    #[message_handler("command", "guarded", filter = Self::audit, filter = needs_user)]
    fn guarded(&self, text: String) {
        self.note(format!("guarded {text}"));
    }

    #[message_handler("command", "boom", filter = explode)]
    fn boom(&self, _text: String) {
        self.note("boom ran");
    }

    #[message_handler("command", "twice")]
    fn first(&self, text: String) {
        self.note(format!("first {text}"));
    }

    #[message_handler("command", "twice")]
    async fn second(&self, text: String, metadata: &Metadata) {
        self.note(format!("second {text} via {}", metadata.routing_key()));
    }

    #[message_handler("command", "body", full_body)]
    fn body(&self, message: Message) {
        self.note(format!(
            "body from {} pid {}",
            message.fingerprint.name, message.fingerprint.pid
        ));
    }

    #[message_handler("command", "filtered", filter = upper, filter = skip_secret, filter = reject_bad)]
    fn filtered(&self, text: String) {
        self.note(format!("filtered {text}"));
    }

    #[message_handler("command", "fails")]
    fn fails(&self, text: String) -> Result<(), String> {
        self.note(format!("fails {text}"));
        Err("failed on purpose".into())
    }

    #[message_handler("command", "typed")]
    fn typed(&self, sum: Sum) {
        self.note(format!("typed {}", sum.a + sum.b));
    }

    #[message_handler("status", "online")]
    fn online(&self, _content: Value, metadata: &Metadata) {
        self.note(format!("online redelivered={}", metadata.redelivered()));
    }

    #[message_handler("command", "slow")]
    async fn slow_message(&self, millis: u64) {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_in_flight.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(millis)).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.note("slow done");
    }
}

#[processor]
impl Probe {
    #[rpc_handler("command", "sum")]
    async fn sum(&self, sum: Sum) -> Result<i64, HandlerError> {
        sum.a
            .checked_add(sum.b)
            .ok_or_else(|| HandlerError::error("overflow"))
    }

    #[rpc_handler("command", "echo")]
    async fn echo(&self, value: Value) -> Value {
        value
    }

    #[rpc_handler("command", "explode")]
    fn explode(&self, _value: Value) -> Result<i64, std::io::Error> {
        Err(std::io::Error::other("boom"))
    }

    #[rpc_handler("command", "panic")]
    fn panics(&self, _value: Value) -> i64 {
        panic!("panicked on purpose")
    }

    #[rpc_handler("command", "later")]
    async fn later(&self, reply: Reply) {
        let _ = reply.success("answered first").await;
        self.note("worked after the reply");
    }

    #[rpc_handler("command", "raw")]
    fn raw(&self, _value: Value) -> RpcResult {
        RpcResult::exception("KeyError", "made by hand")
    }
}

/// A processor under test, with its own exchange, queue and dead-letter queue.
struct Harness {
    producer: Producer,
    events: mpsc::UnboundedReceiver<String>,
    dead: Consumer,
    handle: ProcessorHandle,
    run: JoinHandle<postage_core::Result<Exit>>,
    probe: Arc<Probe>,
    exchange: Exchange,
    key: String,
}

async fn start(concurrency: usize) -> Harness {
    start_with(concurrency, |builder| builder).await
}

/// Like [`start`], with the processor builder adjusted by `adjust`.
async fn start_with(
    concurrency: usize,
    adjust: impl FnOnce(ProcessorBuilder<Probe>) -> ProcessorBuilder<Probe>,
) -> Harness {
    let connection = connect().await;
    let ex = exchange("proc");
    let key = unique("key");
    let dead_letters = exchange("dead");
    let dead_queue = Queue::new(unique("dlq")).auto_delete(true);
    let mut dead = Consumer::builder(&connection)
        .bind(dead_letters.clone(), dead_queue, "dead")
        .build()
        .await
        .unwrap();
    dead.start().await.unwrap();
    let queue = Queue::new(unique("proc-q"))
        .auto_delete(true)
        .dead_letter(&dead_letters, "dead");
    let (sender, events) = mpsc::unbounded_channel();
    let builder = Processor::builder(
        &connection,
        Probe {
            events: sender,
            in_flight: AtomicUsize::new(0),
            most_in_flight: AtomicUsize::new(0),
        },
    )
    .bind(ex.clone(), queue, key.clone())
    .concurrency(concurrency)
    .prefetch(50)
    .fingerprint(Fingerprint::new("probe", "test"));
    let processor = adjust(builder).build().await.unwrap();
    let handle = processor.handle();
    let probe = Arc::clone(processor.state());
    let run = tokio::spawn(processor.run());
    let producer = Producer::builder(&connection)
        .destination(ex.clone(), key.clone())
        .fingerprint(Fingerprint::new("prober", "test"))
        .rpc_defaults(Duration::from_secs(5), 0)
        .build()
        .await
        .unwrap();
    let _ = &mut dead;
    Harness {
        producer,
        events,
        dead,
        handle,
        run,
        probe,
        exchange: ex,
        key,
    }
}

impl Harness {
    async fn events(&mut self) -> Vec<String> {
        let mut seen = Vec::new();
        while let Ok(Some(event)) = tokio::time::timeout(QUIET, self.events.recv()).await {
            seen.push(event);
        }
        seen.sort();
        seen
    }

    /// Names of the messages that were rejected (dead-lettered), in order.
    async fn rejected(&mut self) -> Vec<String> {
        let mut names = Vec::new();
        while let Some(delivery) = next_within(&mut self.dead, QUIET).await {
            names.push(
                delivery
                    .message()
                    .map(|m| m.name)
                    .unwrap_or_else(|_| "<malformed>".into()),
            );
            delivery.ack().await.unwrap();
        }
        names
    }

    async fn stop(self) {
        self.handle.shutdown();
        assert_eq!(self.run.await.unwrap().unwrap(), Exit::Shutdown);
    }

    async fn publish_raw(&self, body: &[u8], properties: BasicProperties) {
        self.producer
            .channel()
            .expect("a producer on a connection")
            .basic_publish(
                self.exchange.name().into(),
                self.key.as_str().into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn every_handler_for_a_message_runs() {
    let mut h = start(1).await;
    h.producer.command("twice", "hello").await.unwrap();
    let key = h.key.clone();
    assert_eq!(
        h.events().await,
        vec!["first hello".to_owned(), format!("second hello via {key}")]
    );
    assert!(h.rejected().await.is_empty());
    h.stop().await;
}

#[tokio::test]
async fn full_body_handler_sees_the_fingerprint() {
    let mut h = start(1).await;
    h.producer.command("body", json!({})).await.unwrap();
    assert_eq!(
        h.events().await,
        vec![format!("body from prober pid {}", std::process::id())]
    );
    h.stop().await;
}

#[tokio::test]
async fn filters_rewrite_skip_and_reject() {
    let mut h = start(1).await;
    for text in ["quiet", "secret", "bad"] {
        h.producer.command("filtered", text).await.unwrap();
    }
    assert_eq!(
        h.events().await,
        vec!["filtered QUIET"],
        "rewritten; secret skipped; bad rejected"
    );
    assert_eq!(
        h.rejected().await,
        vec!["filtered"],
        "only the rejected one is dead-lettered"
    );
    h.stop().await;
}

#[tokio::test]
async fn filters_see_metadata_and_state_and_a_panicking_one_rejects_its_message() {
    let mut h = start(1).await;
    let login = h
        .producer
        .connection()
        .expect("a producer on a connection")
        .config()
        .user
        .clone();
    h.producer.command("guarded", "hi").await.unwrap();
    let anonymous = br#"{"type": "command", "name": "guarded", "category": "message", "content": {"parameters": "anon"}}"#;
    h.publish_raw(
        anonymous,
        BasicProperties::default().with_content_type("application/json".into()),
    )
    .await;
    h.producer.command("boom", "x").await.unwrap();
    h.producer
        .command("typed", json!({"a": 1, "b": 1}))
        .await
        .unwrap();
    assert_eq!(
        h.events().await,
        vec![
            "audit guarded user=<none>".to_owned(),
            format!("audit guarded user={login}"),
            "guarded hi".to_owned(),
            "typed 2".to_owned(),
        ],
        "the producer says who sent it; the anonymous one and the panic are rejected"
    );
    assert_eq!(h.rejected().await, vec!["guarded", "boom"]);
    h.stop().await;
}

#[tokio::test]
async fn unmatched_messages_are_acknowledged() {
    let mut h = start(1).await;
    h.producer
        .command("nobody-handles-this", "x")
        .await
        .unwrap();
    h.producer
        .publish(
            Message::rpc_command("no-rpc-handler", 1).unwrap(),
            &Route::Default,
        )
        .await
        .unwrap();
    h.producer.status(Route::Default, "online").await.unwrap();
    assert_eq!(h.events().await, vec!["online redelivered=false"]);
    assert!(
        h.rejected().await.is_empty(),
        "unmatched messages are acknowledged, not rejected"
    );
    h.stop().await;
}

#[tokio::test]
async fn failing_and_undecodable_messages_are_rejected_and_serving_goes_on() {
    let mut h = start(1).await;
    h.producer.command("fails", "once").await.unwrap();
    h.producer.command("typed", json!({"a": 1})).await.unwrap(); // lacks "b"
    h.publish_raw(b"not json at all", BasicProperties::default())
        .await;
    h.producer
        .command("typed", json!({"a": 1, "b": 2}))
        .await
        .unwrap();
    assert_eq!(h.events().await, vec!["fails once", "typed 3"]);
    assert_eq!(h.rejected().await, vec!["fails", "typed", "<malformed>"]);
    h.stop().await;
}

#[tokio::test]
async fn rpc_answers_success_error_and_exceptions() {
    let mut h = start(1).await;
    assert_eq!(
        h.producer
            .call::<i64>("sum", Sum { a: 2, b: 3 })
            .await
            .unwrap(),
        5
    );
    assert_eq!(
        h.producer
            .rpc("sum", Sum { a: i64::MAX, b: 1 })
            .await
            .unwrap(),
        RpcResult::error("overflow")
    );
    match h
        .producer
        .call::<i64>("sum", Sum { a: i64::MAX, b: 1 })
        .await
    {
        Err(Error::RemoteError { message, .. }) => assert_eq!(message, "overflow"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        h.producer.rpc("explode", 0).await.unwrap(),
        RpcResult::exception("Error", "boom")
    );
    match h.producer.rpc("panic", 0).await.unwrap() {
        RpcResult::Exception { kind, message } => assert_eq!(
            (kind.as_str(), message.as_str()),
            ("Panic", "panicked on purpose")
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        h.producer.rpc("raw", 0).await.unwrap(),
        RpcResult::exception("KeyError", "made by hand")
    );
    match h.producer.rpc("sum", "not a sum").await.unwrap() {
        RpcResult::Exception { message, .. } => {
            assert!(message.contains("does not decode"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    // Exceptions and panics reject their delivery; errors are answers like any other.
    assert_eq!(h.rejected().await, vec!["explode", "panic", "raw", "sum"]);
    // The processor survived the panic.
    assert_eq!(
        h.producer
            .call::<Value>("echo", "still here")
            .await
            .unwrap(),
        json!("still here")
    );
    h.stop().await;
}

#[tokio::test]
async fn rpc_handler_replies_first_and_keeps_working() {
    let mut h = start(1).await;
    assert_eq!(
        h.producer.call::<String>("later", json!({})).await.unwrap(),
        "answered first"
    );
    assert_eq!(h.events().await, vec!["worked after the reply"]);
    assert!(h.rejected().await.is_empty());
    h.stop().await;
}

#[tokio::test]
async fn rpc_times_out_after_its_retries() {
    let connection = connect().await;
    let ex = exchange("silent");
    // A queue that takes the calls and never answers: it counts the attempts.
    let mut silent = Consumer::builder(&connection)
        .bind(
            ex.clone(),
            Queue::new(unique("silent")).auto_delete(true),
            "silent",
        )
        .build()
        .await
        .unwrap();
    silent.start().await.unwrap();
    // Each request is read as it comes: one left waiting would expire (it carries its
    // caller's deadline) and never be seen.
    let counting = tokio::spawn(async move {
        let mut sent = 0;
        while let Some(delivery) = next_within(&mut silent, Duration::from_secs(2)).await {
            sent += 1;
            delivery.ack().await.unwrap();
        }
        // Kept: with its queue gone the exchange would go too.
        (sent, silent)
    });
    let producer = Producer::builder(&connection)
        .destination(ex.clone(), "silent")
        .build()
        .await
        .unwrap();
    let options = RpcOptions::new()
        .timeout(Duration::from_millis(300))
        .max_retry(2);
    match producer
        .call_with::<Value>("echo", 1, options.clone())
        .await
    {
        Err(Error::RpcTimeout { attempts, .. }) => assert_eq!(attempts, 3),
        other => panic!("{other:?}"),
    }
    let (sent, _silent) = counting.await.unwrap();
    assert_eq!(sent, 3, "one send and two retries");
    match producer.rpc_with("echo", 1, options).await.unwrap() {
        RpcResult::Exception { kind, .. } => {
            assert_eq!(kind, "TimeoutError", "as Postage answers a timeout")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn two_hundred_concurrent_calls_each_get_their_answer() {
    let h = start(16).await;
    let calls = (0..200).map(|i| {
        let producer = h.producer.clone();
        async move { (i, producer.call::<i64>("sum", Sum { a: i, b: 1000 }).await) }
    });
    let answers = futures_util::future::join_all(calls).await;
    for (i, answer) in answers {
        assert_eq!(answer.unwrap(), i + 1000);
    }
    h.stop().await;
}

#[tokio::test]
async fn deferred_call_is_sent_now_and_awaited_later() {
    let h = start(1).await;
    let pending = h
        .producer
        .rpc_deferred("sum", Sum { a: 20, b: 22 }, RpcOptions::new())
        .await
        .unwrap();
    assert!(!pending.correlation_id().is_empty());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(pending.value::<i64>().await.unwrap(), 42);
    h.stop().await;
}

#[tokio::test]
async fn a_call_written_as_python_postage_writes_it_is_answered_on_its_queue() {
    let h = start(1).await;
    let channel = h.producer.channel().expect("a producer on a connection");
    // Postage 1.x: a private exclusive queue per call, no correlation id.
    let reply_queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let body = br#"{"category": "rpc", "fingerprint": {"host": "py-host", "name": "echo_send", "pid": "1234", "type": "application", "user": "bob", "vhost": "/"}, "name": "sum", "content": {"parameters": {"a": 40, "b": 2}}, "version": "2", "_reserved": {}, "type": "command"}"#;
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_reply_to(reply_queue.name().clone());
    h.publish_raw(body, properties).await;
    let mut replies = channel
        .basic_consume(
            reply_queue.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), replies.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        reply.properties.correlation_id().is_none(),
        "none was sent, none comes back"
    );
    let answer: Value = serde_json::from_slice(&reply.data).unwrap();
    assert_eq!(answer["type"], "result");
    assert_eq!(
        answer["content"],
        json!({"type": "success", "value": 42, "message": ""})
    );
    assert_eq!(answer["fingerprint"]["name"], "probe");
    h.stop().await;
}

/// Starts a receiver on `key` that answers as Python Postage 1.x does (on `reply_to`,
/// copying no correlation id) with `"<prefix> <asked>"`, or, with `correlated`, as
/// postage does. Each answer goes `delay` after its request.
async fn answerer(
    connection: &postage_core::Connection,
    ex: &Exchange,
    key: &str,
    prefix: &'static str,
    correlated: bool,
    delay: Duration,
) -> JoinHandle<()> {
    let mut requests = Consumer::builder(connection)
        .bind(ex.clone(), Queue::new(unique(key)).auto_delete(true), key)
        .build()
        .await
        .unwrap();
    requests.start().await.unwrap();
    let channel = connection.open_channel().await.unwrap();
    tokio::spawn(async move {
        while let Some(Ok(delivery)) = requests.next().await {
            let reply_to = delivery.properties().reply_to().clone().unwrap();
            let mut properties = BasicProperties::default();
            if correlated && let Some(id) = delivery.properties().correlation_id() {
                properties = properties.with_correlation_id(id.clone());
            }
            let asked: Value = delivery.message().unwrap().parameters().unwrap();
            delivery.ack().await.unwrap();
            let channel = channel.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let body = json!({
                    "type": "result", "name": "none", "category": "message", "version": "2",
                    "fingerprint": {}, "_reserved": {},
                    "content": {"type": "success", "value": format!("{prefix} {asked}"), "message": ""},
                });
                let _ = channel
                    .basic_publish(
                        "".into(),
                        reply_to,
                        BasicPublishOptions::default(),
                        &serde_json::to_vec(&body).unwrap(),
                        properties,
                    )
                    .await;
            });
        }
    })
}

#[tokio::test]
async fn an_answer_without_correlation_id_reaches_a_call_with_a_reply_queue_of_its_own() {
    let connection = connect().await;
    let ex = exchange("pyrecv");
    let python = answerer(&connection, &ex, "py", "python", false, Duration::ZERO).await;
    let producer = Producer::builder(&connection)
        .destination(ex, "py")
        .build()
        .await
        .unwrap();
    // A reply queue per call asked for, as Python Postage 1.x makes them.
    let compatible = RpcOptions::new().reply_queue(ReplyQueue::PerCall);
    assert_eq!(
        producer
            .call_with::<String>("echo", "hi", compatible)
            .await
            .unwrap(),
        "python \"hi\""
    );
    python.abort();
}

/// A caller with no option set calls Python-style receivers (no correlation id) and
/// postage-style ones (with it) on the same producer, many calls at once over every call
/// path and both shared reply queues: each call gets its own answer, and none waits out
/// Postage's 30 s timeout.
#[tokio::test(flavor = "multi_thread")]
async fn answers_without_correlation_id_reach_calls_made_with_the_defaults() {
    let connection = connect().await;
    let ex = exchange("pydefault");
    let python = answerer(
        &connection,
        &ex,
        "py",
        "python",
        false,
        Duration::from_millis(20),
    )
    .await;
    let postage = answerer(
        &connection,
        &ex,
        "rs",
        "postage",
        true,
        Duration::from_millis(20),
    )
    .await;
    for reply_queue in [ReplyQueue::Private, ReplyQueue::DirectReplyTo] {
        let producer = Producer::builder(&connection)
            .destination(ex.clone(), "rs")
            .reply_queue(reply_queue)
            .build()
            .await
            .unwrap();
        let to_python = || RpcOptions::new().key("py").timeout(Duration::from_secs(20));
        let calls = (0..48).map(|n| {
            let producer = producer.clone();
            async move {
                let answer = match n % 4 {
                    0 => producer.call_with::<String>("echo", n, to_python()).await,
                    1 => {
                        let pending = producer.rpc_deferred("echo", n, to_python()).await.unwrap();
                        pending.value::<String>().await
                    }
                    2 => producer.call::<String>("echo", n).await,
                    _ => match producer.rpc_with("echo", n, RpcOptions::new()).await {
                        Ok(RpcResult::Success { value, .. }) => {
                            Ok(value.as_str().unwrap().to_owned())
                        }
                        other => panic!("call {n}: {other:?}"),
                    },
                };
                (n, answer)
            }
        });
        let started = std::time::Instant::now();
        for (n, answer) in futures_util::future::join_all(calls).await {
            let from = if n % 4 < 2 { "python" } else { "postage" };
            assert_eq!(
                answer.unwrap(),
                format!("{from} {n}"),
                "{reply_queue:?}, call {n}"
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{reply_queue:?}: no call waited out a timeout ({:?})",
            started.elapsed()
        );
        // Learned: the next call to the Python receiver is answered at once too.
        let again = producer.call_with::<String>("echo", 100, to_python()).await;
        assert_eq!(again.unwrap(), "python 100");
    }
    python.abort();
    postage.abort();
}

#[tokio::test]
async fn handlers_run_concurrently_up_to_the_limit() {
    let mut h = start(3).await;
    for _ in 0..9 {
        h.producer.command("slow", 150).await.unwrap();
    }
    let done = h.events().await;
    assert_eq!(done.len(), 9);
    assert_eq!(h.probe.most_in_flight.load(Ordering::SeqCst), 3);
    h.stop().await;
}

#[tokio::test]
async fn quit_makes_run_return_after_in_flight_work() {
    let mut h = start(2).await;
    h.producer.command("slow", 300).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    h.producer.command("quit", json!({})).await.unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(5), &mut h.run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(exit, Exit::Quit);
    assert_eq!(
        h.events().await,
        vec!["slow done"],
        "the handler in flight finished first"
    );
}

struct Quiet;

#[processor]
impl Quiet {
    #[rpc_handler("command", "ping")]
    fn ping(&self, _value: Value) -> &'static str {
        "pong"
    }
}

#[tokio::test]
async fn several_processors_share_one_process_and_control_commands_can_be_off() {
    let connection = connect().await;
    let ex = exchange("multi");
    let (sender, mut events) = mpsc::unbounded_channel();
    let probe = Processor::builder(
        &connection,
        Probe {
            events: sender,
            in_flight: AtomicUsize::new(0),
            most_in_flight: AtomicUsize::new(0),
        },
    )
    .bind(
        ex.clone(),
        Queue::new(unique("p")).auto_delete(true),
        "probe",
    )
    .build()
    .await
    .unwrap();
    let quiet = Processor::builder(&connection, Quiet)
        .bind(
            ex.clone(),
            Queue::new(unique("q")).auto_delete(true),
            "quiet",
        )
        .control_commands(false)
        .build()
        .await
        .unwrap();
    let quiet_handle = quiet.handle();
    let both = tokio::spawn(async move { tokio::join!(probe.run(), quiet.run()) });
    let producer = Producer::builder(&connection)
        .destination(ex.clone(), "probe")
        .build()
        .await
        .unwrap();
    assert_eq!(
        producer
            .call_with::<String>("ping", 0, RpcOptions::new().key("quiet"))
            .await
            .unwrap(),
        "pong"
    );
    producer.command("twice", "x").await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .unwrap()
            .is_some()
    );
    // quit stops the probe; the quiet one ignores it and keeps serving.
    producer.command("quit", json!({})).await.unwrap();
    producer
        .command_to(Route::key("quiet"), "quit", json!({}))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        producer
            .call_with::<String>("ping", 0, RpcOptions::new().key("quiet"))
            .await
            .unwrap(),
        "pong"
    );
    quiet_handle.shutdown();
    let (probe_exit, quiet_exit) = tokio::time::timeout(Duration::from_secs(5), both)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (probe_exit.unwrap(), quiet_exit.unwrap()),
        (Exit::Quit, Exit::Shutdown)
    );
}

#[derive(Debug)]
struct Twice;

#[processor]
impl Twice {
    #[rpc_handler("command", "same")]
    fn one(&self, _value: Value) -> i64 {
        1
    }
}

#[processor]
impl Twice {
    #[rpc_handler("command", "same")]
    fn two(&self, _value: Value) -> i64 {
        2
    }
}

#[tokio::test]
async fn two_rpc_handlers_for_one_command_fail_at_start_naming_both() {
    let connection = connect().await;
    let error = Processor::builder(&connection, Twice)
        .build()
        .await
        .expect_err("conflicting handlers");
    let text = error.to_string();
    assert!(
        matches!(
            error,
            Error::DuplicateHandler {
                command: "same",
                ..
            }
        ),
        "{text}"
    );
    assert!(
        text.contains("one at") && text.contains("two at") && text.contains("processor.rs"),
        "{text}"
    );
}

#[tokio::test]
async fn every_kind_of_bad_input_is_rejected_and_serving_goes_on() {
    let mut h = start_with(1, |b| b.max_body_size(4096)).await;
    let json = || BasicProperties::default().with_content_type("application/json".into());
    let valid_call = |name: &str| {
        format!(
            r#"{{"type": "command", "name": "{name}", "category": "rpc", "version": "2", "fingerprint": {{}}, "content": {{"parameters": {{"a": 1, "b": 2}}}}, "_reserved": {{}}}}"#
        )
    };
    let bad: Vec<(Vec<u8>, BasicProperties)> = vec![
        (b"not json".to_vec(), json()),
        (b"[1, 2, 3]".to_vec(), json()),
        (vec![0xff, 0xfe, b'{'], json()),
        (br#"{"name": "sum", "category": "message"}"#.to_vec(), json()),
        (br#"{"type": "command", "name": ["sum"], "category": "message"}"#.to_vec(), json()),
        (br#"{"type": "command", "name": "sum", "category": "broadcast"}"#.to_vec(), json()),
        (valid_call("sum").into_bytes(), BasicProperties::default().with_content_type("text/plain".into())),
        (valid_call("sum").into_bytes(), json()), // an RPC without reply_to
        (format!(r#"{{"type": "command", "name": "typed", "category": "message", "content": {{"parameters": "{}"}}}}"#, "x".repeat(5000)).into_bytes(), json()),
    ];
    let count = bad.len();
    for (body, properties) in bad {
        h.publish_raw(&body, properties).await;
    }
    // An answer to a reply_to that no longer exists is dropped by the broker; serving goes on.
    h.publish_raw(
        valid_call("sum").as_bytes(),
        json().with_reply_to("gone-long-ago".into()),
    )
    .await;
    let rejected = h.rejected().await;
    assert_eq!(
        rejected.len(),
        count,
        "each bad delivery dead-lettered once: {rejected:?}"
    );
    assert_eq!(
        h.producer
            .call::<i64>("sum", Sum { a: 1, b: 1 })
            .await
            .unwrap(),
        2,
        "still serving"
    );
    h.stop().await;
}

#[tokio::test]
async fn control_commands_obey_only_allowed_users() {
    let h = start_with(1, |b| {
        b.control_policy(ControlPolicy::Users(vec!["admin".into()]))
    })
    .await;
    let quit = br#"{"type": "command", "name": "quit", "category": "message", "content": {"parameters": {}}}"#;
    let json = BasicProperties::default().with_content_type("application/json".into());
    // RabbitMQ lets a connection set only its own user name as user_id: here "guest".
    h.publish_raw(quit, json.clone().with_user_id("guest".into()))
        .await;
    h.publish_raw(quit, json.clone()).await;
    assert_eq!(
        h.producer
            .call::<i64>("sum", Sum { a: 2, b: 2 })
            .await
            .unwrap(),
        4,
        "an unauthorised quit is ignored"
    );
    assert!(!h.run.is_finished());
    h.stop().await;

    let mut allowed = start_with(1, |b| {
        b.control_policy(ControlPolicy::Users(vec!["guest".into()]))
    })
    .await;
    allowed
        .publish_raw(quit, json.with_user_id("guest".into()))
        .await;
    let exit = tokio::time::timeout(Duration::from_secs(5), &mut allowed.run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(exit, Exit::Quit);
}
