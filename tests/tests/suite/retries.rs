//! Dispositions and retries against the real broker: retries wait in delay queues and
//! come back with their attempt counted, spent and bad messages end in the `.dead`
//! queue with their reason, a waiting retry outlives its processor, a handler past its
//! timeout is cancelled and retried, and an RPC call nobody serves is answered at once.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use postage_core::lapin::BasicProperties;
use postage_core::lapin::options::{BasicGetOptions, BasicPublishOptions};
use postage_core::lapin::types::AMQPValue;
use postage_core::{
    ATTEMPT_HEADER, Config, Connection, Disposition, ERROR_HEADER, Error, Exchange, Exit,
    HandlerError, Host, Metadata, Processor, ProcessorHandle, Producer, Queue, RetryPolicy,
    processor,
};
use postage_tests::net::{Direction, Links, Relay, Toxic};
use postage_tests::{
    broker_address, connect, exchange, message_counts, rabbitmqctl, test_node, unique,
};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

#[derive(Debug, Deserialize)]
struct Job {
    id: u32,
}

/// What a worker saw: the job, the attempt, and when.
type Seen = (u32, u32, Instant);

/// Fails each job's first `fails` attempts (every attempt when `None`), the way it is
/// told to per job id: 1 and 2 fail with the default disposition, 3 is rejected, 4 is
/// requeued once, 5 waits a delay of its own, 6 sleeps past its timeout at first.
struct Worker {
    fails: Option<u32>,
    seen: mpsc::UnboundedSender<Seen>,
    requeued: Mutex<bool>,
}

#[processor]
impl Worker {
    #[message_handler("command", "work")]
    fn work(&self, job: Job, metadata: &Metadata) -> Result<Disposition, HandlerError> {
        let _ = self.seen.send((job.id, metadata.attempt(), Instant::now()));
        if job.id == 3 {
            return Err(HandlerError::error("no such job").reject());
        }
        if job.id == 4 {
            let mut requeued = self.requeued.lock().unwrap();
            if !*requeued {
                *requeued = true;
                return Ok(Disposition::Requeue);
            }
            return Ok(Disposition::Ack);
        }
        if job.id == 5 && metadata.attempt() == 1 {
            return Err(HandlerError::error("busy").retry_after(Duration::from_millis(700)));
        }
        match self.fails {
            Some(fails) if metadata.attempt() > fails => Ok(Disposition::Ack),
            _ => Err(HandlerError::error(format!(
                "job {} failed at attempt {}",
                job.id,
                metadata.attempt()
            ))),
        }
    }

    #[message_handler("command", "sleepy", timeout = "300ms")]
    async fn sleepy(&self, job: Job, metadata: &Metadata) {
        let _ = self.seen.send((job.id, metadata.attempt(), Instant::now()));
        if metadata.attempt() == 1 {
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
    }

    #[rpc_handler("command", "reserve")]
    fn reserve(&self, job: Job) -> u32 {
        job.id
    }
}

/// A worker on queue `queue` (bound to `exchange` with key `work`).
struct Running {
    seen: mpsc::UnboundedReceiver<Seen>,
    handle: ProcessorHandle,
    run: JoinHandle<postage_core::Result<Exit>>,
}

async fn run_worker(
    connection: &Connection,
    exchange: &Exchange,
    queue: Queue,
    fails: Option<u32>,
    policy: RetryPolicy,
) -> Running {
    let (sender, seen) = mpsc::unbounded_channel();
    let worker = Worker {
        fails,
        seen: sender,
        requeued: Mutex::new(false),
    };
    let processor = Processor::builder(connection, worker)
        .bind(exchange.clone(), queue, "work")
        .retry(policy)
        .build()
        .await
        .unwrap();
    let handle = processor.handle();
    let run = tokio::spawn(processor.run());
    Running { seen, handle, run }
}

impl Running {
    /// Every (job, attempt, when) seen until `quiet` passes without one.
    async fn seen(&mut self, quiet: Duration) -> Vec<Seen> {
        let mut seen = Vec::new();
        while let Ok(Some(one)) = tokio::time::timeout(quiet, self.seen.recv()).await {
            seen.push(one);
        }
        seen
    }

    async fn stop(self) {
        self.handle.shutdown();
        assert_eq!(self.run.await.unwrap().unwrap(), Exit::Shutdown);
    }
}

/// A worker on a durable queue of its own under [`policy`], and a producer to it.
struct Durable {
    connection: Connection,
    ex: Exchange,
    name: String,
    worker: Running,
    producer: Producer,
}

impl Durable {
    async fn start(prefix: &str, fails: Option<u32>) -> Self {
        let connection = connect().await;
        let ex = exchange(prefix);
        let name = unique(&format!("{prefix}-q"));
        let queue = Queue::new(name.as_str()).durable(true);
        let worker = run_worker(&connection, &ex, queue, fails, policy()).await;
        let producer = producer(&connection, &ex).await;
        Self {
            connection,
            ex,
            name,
            worker,
            producer,
        }
    }
}

/// The fast policy of these tests: no jitter, so the delays can be read back.
fn policy() -> RetryPolicy {
    RetryPolicy::new()
        .attempts(3)
        .backoff(Duration::from_millis(400), Duration::from_secs(10))
        .jitter(0.0)
}

async fn producer(connection: &Connection, exchange: &Exchange) -> Producer {
    Producer::builder(connection)
        .destination(exchange.clone(), "work")
        .rpc_defaults(Duration::from_secs(5), 0)
        .build()
        .await
        .unwrap()
}

/// Every message of queue `name` (none when it does not exist): its body as JSON,
/// attempt header and error header.
async fn read_queue(connection: &Connection, name: &str) -> Vec<(serde_json::Value, i64, String)> {
    let channel = connection.open_channel().await.unwrap();
    let mut found = Vec::new();
    loop {
        let message = match channel
            .basic_get(name.into(), BasicGetOptions { no_ack: true })
            .await
        {
            Ok(Some(message)) => message,
            Ok(None) => break,
            Err(error) if error.to_string().contains("NOT_FOUND") => return found,
            Err(error) => panic!("reading {name}: {error}"),
        };
        let headers = message
            .properties
            .headers()
            .clone()
            .unwrap_or_default()
            .inner()
            .clone();
        let attempt = match headers.get(ATTEMPT_HEADER) {
            Some(AMQPValue::LongLongInt(n)) => *n,
            other => panic!("attempt header {other:?}"),
        };
        let error = match headers.get(ERROR_HEADER) {
            Some(AMQPValue::LongString(text)) => text.to_string(),
            other => panic!("error header {other:?}"),
        };
        let body = serde_json::from_slice(&message.delivery.data)
            .unwrap_or_else(|_| json!(String::from_utf8_lossy(&message.delivery.data)));
        found.push((body, attempt, error));
    }
    let _ = channel.close(200, "read".into()).await;
    found
}

/// The attempts seen of job `id`, with the time since the first.
fn attempts_of(seen: &[Seen], id: u32) -> Vec<(u32, Duration)> {
    let mine: Vec<&Seen> = seen.iter().filter(|(job, ..)| *job == id).collect();
    let first = mine.first().map(|(.., at)| *at);
    mine.iter()
        .map(|(_, attempt, at)| (*attempt, at.duration_since(first.unwrap())))
        .collect()
}

#[tokio::test]
async fn a_failing_message_is_retried_with_backoff_on_classic_and_quorum_queues() {
    let connection = connect().await;
    for quorum in [false, true] {
        let ex = exchange("retry");
        let name = unique("retry-q");
        let queue = if quorum {
            Queue::new(name.as_str()).quorum()
        } else {
            Queue::new(name.as_str()).durable(true)
        };
        let mut worker = run_worker(&connection, &ex, queue, Some(2), policy()).await;
        let producer = producer(&connection, &ex).await;
        producer.command("work", json!({"id": 1})).await.unwrap();
        // Job 2 as Python Postage writes it: no headers of ours.
        let python = br#"{"type": "command", "name": "work", "category": "message", "version": "2", "fingerprint": {}, "content": {"parameters": {"id": 2}}}"#;
        producer
            .channel()
            .expect("a producer on a connection")
            .basic_publish(
                ex.name().into(),
                "work".into(),
                BasicPublishOptions::default(),
                python,
                BasicProperties::default().with_content_type("application/json".into()),
            )
            .await
            .unwrap();
        let seen = worker.seen(Duration::from_secs(2)).await;
        for id in [1, 2] {
            let attempts = attempts_of(&seen, id);
            let numbers: Vec<u32> = attempts.iter().map(|(attempt, _)| *attempt).collect();
            assert_eq!(numbers, [1, 2, 3], "quorum {quorum}, job {id}: {seen:?}");
            // 400 ms, then 800 ms more: the broker's TTL is exact to a few milliseconds.
            assert!(attempts[1].1 >= Duration::from_millis(380), "{attempts:?}");
            assert!(attempts[2].1 >= Duration::from_millis(1150), "{attempts:?}");
        }
        assert!(
            read_queue(&connection, &format!("{name}.dead"))
                .await
                .is_empty()
        );
        let (ready, _) = postage_tests::message_counts(&postage_tests::test_node(), &name);
        assert_eq!(ready, 0, "nothing left in the work queue");
        worker.stop().await;
        postage_tests::delete_queue_and_retries(&name);
    }
}

#[tokio::test]
async fn spent_rejected_and_undecodable_messages_end_in_the_dead_letter_queue() {
    let Durable {
        connection,
        ex,
        name,
        mut worker,
        producer,
    } = Durable::start("dead", None).await;
    producer.command("work", json!({"id": 1})).await.unwrap();
    producer.command("work", json!({"id": 3})).await.unwrap();
    // A payload that never decodes is bad input: never retried.
    producer
        .command("work", json!({"id": "one"}))
        .await
        .unwrap();
    producer
        .channel()
        .expect("a producer on a connection")
        .basic_publish(
            ex.name().into(),
            "work".into(),
            BasicPublishOptions::default(),
            b"not json at all",
            BasicProperties::default(),
        )
        .await
        .unwrap();
    let seen = worker.seen(Duration::from_secs(2)).await;
    let numbers: Vec<u32> = attempts_of(&seen, 1).iter().map(|(a, _)| *a).collect();
    assert_eq!(numbers, [1, 2, 3], "{seen:?}");
    assert_eq!(attempts_of(&seen, 3).len(), 1, "a rejection is not retried");
    let mut dead = read_queue(&connection, &format!("{name}.dead")).await;
    dead.sort_by_key(|(_, _, error)| error.clone());
    let summary: Vec<(i64, &str)> = dead.iter().map(|(_, a, e)| (*a, e.as_str())).collect();
    assert_eq!(summary.len(), 4, "{summary:?}");
    assert!(
        summary.contains(&(3, "job 1 failed at attempt 3 (attempt 3, the last)")),
        "{summary:?}"
    );
    assert!(summary.contains(&(1, "no such job")), "{summary:?}");
    assert!(
        summary
            .iter()
            .any(|(a, e)| *a == 1 && e.starts_with("payload does not decode")),
        "{summary:?}"
    );
    assert!(
        summary
            .iter()
            .any(|(a, e)| *a == 1 && e.contains("not a Postage message") || e.contains("expected")),
        "{summary:?}"
    );
    // The body is kept as it was sent.
    assert!(
        dead.iter()
            .any(|(body, ..)| body["content"]["parameters"]["id"] == 1),
        "{dead:?}"
    );
    worker.stop().await;
    postage_tests::delete_queue_and_retries(&name);
}

#[tokio::test]
async fn requeue_and_a_delay_of_its_own() {
    let Durable {
        name,
        mut worker,
        producer,
        ..
    } = Durable::start("requeue", Some(0)).await;
    producer.command("work", json!({"id": 4})).await.unwrap();
    producer.command("work", json!({"id": 5})).await.unwrap();
    let seen = worker.seen(Duration::from_secs(2)).await;
    // Requeued: delivered again at once, the same attempt.
    let requeued: Vec<u32> = attempts_of(&seen, 4).iter().map(|(a, _)| *a).collect();
    assert_eq!(requeued, [1, 1], "{seen:?}");
    let delayed = attempts_of(&seen, 5);
    assert_eq!(delayed.len(), 2, "{seen:?}");
    assert_eq!(delayed[1].0, 2);
    assert!(delayed[1].1 >= Duration::from_millis(680), "{delayed:?}");
    let queues = postage_tests::rabbitmqctl(&["list_queues", "name"]);
    assert!(
        queues.contains(&format!("{name}.delay.800ms")),
        "a delay of its own waits in the ladder's queue at or above it: {queues}"
    );
    worker.stop().await;
    postage_tests::delete_queue_and_retries(&name);
}

#[tokio::test]
async fn a_retry_waiting_in_its_delay_queue_outlives_its_processor() {
    let connection = connect().await;
    let ex = exchange("outlive");
    let name = unique("outlive-q");
    let queue = Queue::new(name.as_str()).durable(true);
    let slow = RetryPolicy::new()
        .backoff(Duration::from_secs(2), Duration::from_secs(2))
        .jitter(0.0);
    let mut first = run_worker(&connection, &ex, queue.clone(), Some(1), slow.clone()).await;
    let producer = producer(&connection, &ex).await;
    producer.command("work", json!({"id": 7})).await.unwrap();
    let seen = first.seen(Duration::from_millis(500)).await;
    assert_eq!(attempts_of(&seen, 7).len(), 1, "{seen:?}");
    first.stop().await;
    // The retry waits on the broker, not in the stopped process.
    let mut second = run_worker(&connection, &ex, queue, Some(1), slow).await;
    let seen = second.seen(Duration::from_secs(3)).await;
    let numbers: Vec<u32> = attempts_of(&seen, 7).iter().map(|(a, _)| *a).collect();
    assert_eq!(numbers, [2], "{seen:?}");
    second.stop().await;
    postage_tests::delete_queue_and_retries(&name);
}

#[tokio::test]
async fn a_handler_past_its_timeout_is_cancelled_and_retried() {
    let Durable {
        name,
        mut worker,
        producer,
        ..
    } = Durable::start("timeout", None).await;
    producer.command("sleepy", json!({"id": 8})).await.unwrap();
    let seen = worker.seen(Duration::from_secs(2)).await;
    let attempts = attempts_of(&seen, 8);
    let numbers: Vec<u32> = attempts.iter().map(|(a, _)| *a).collect();
    assert_eq!(numbers, [1, 2], "{seen:?}");
    // Cancelled at 300 ms, then the 400 ms backoff.
    assert!(attempts[1].1 >= Duration::from_millis(680), "{attempts:?}");
    assert!(attempts[1].1 < Duration::from_secs(20), "{attempts:?}");
    assert_eq!(worker.handle.tracked_deliveries(), 0);
    worker.stop().await;
    postage_tests::delete_queue_and_retries(&name);
}

#[tokio::test]
async fn an_rpc_call_to_a_command_nobody_handles_is_answered_with_an_error_naming_it() {
    let connection = connect().await;
    let ex = exchange("typo");
    let name = unique("typo-q");
    let worker = run_worker(
        &connection,
        &ex,
        Queue::new(name.as_str()).auto_delete(true),
        None,
        policy(),
    )
    .await;
    let producer = Producer::builder(&connection)
        .destination(ex.clone(), "work")
        // Postage's defaults: a timeout would take 30 s times five.
        .build()
        .await
        .unwrap();
    assert_eq!(
        producer
            .call::<u32>("reserve", json!({"id": 9}))
            .await
            .unwrap(),
        9
    );
    let typo = producer.call::<u32>("reserv", json!({"id": 9})).await;
    match typo {
        Err(Error::RemoteError { message, .. }) => {
            assert!(message.contains("\"reserv\""), "{message}")
        }
        other => panic!("expected an error result naming the command, got {other:?}"),
    }
    worker.stop().await;
}

/// Waits (up to 30 s) until queue `name` holds `count` messages, and reads them.
async fn await_messages(
    connection: &Connection,
    name: &str,
    count: usize,
) -> Vec<(serde_json::Value, i64, String)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = tokio::task::spawn_blocking({
            let name = name.to_owned();
            move || {
                rabbitmqctl(&["list_queues", "name", "messages_ready"])
                    .lines()
                    .find_map(|line| {
                        let (queue, ready) = line.split_once('\t')?;
                        (queue == name).then(|| ready.parse::<usize>().unwrap_or(0))
                    })
                    .unwrap_or(0)
            }
        })
        .await
        .unwrap();
        if ready >= count || Instant::now() > deadline {
            return read_queue(connection, name).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The broker refuses every dead-letter copy (a policy: `max-length` 0, `overflow`
/// `reject-publish` on the `.dead` queue): a spent message is not lost, it goes back to
/// its queue, again and again, until the broker takes its copy.
#[tokio::test(flavor = "multi_thread")]
async fn a_dead_letter_copy_the_broker_refuses_leaves_the_original_on_its_queue() {
    let mut durable = Durable::start("refused", None).await;
    let dead = format!("{}.dead", durable.name);
    let refusal = unique("refuse");
    let pattern = format!("^{}$", dead.replace('.', "\\."));
    tokio::task::spawn_blocking({
        let (refusal, pattern) = (refusal.clone(), pattern.clone());
        move || {
            rabbitmqctl(&[
                "set_policy",
                &refusal,
                &pattern,
                r#"{"max-length": 0, "overflow": "reject-publish"}"#,
                "--apply-to",
                "queues",
            ])
        }
    })
    .await
    .unwrap();
    durable
        .producer
        .command("work", json!({"id": 1}))
        .await
        .unwrap();
    // Attempts 1 and 2 wait in delay queues; attempt 3, the last, is refused its dead
    // letter and comes back (after a pause) as the same attempt 3.
    let mut attempts = Vec::new();
    let until = tokio::time::Instant::now() + Duration::from_secs(6);
    while let Ok(Some((_, attempt, _))) =
        tokio::time::timeout_at(until, durable.worker.seen.recv()).await
    {
        attempts.push(attempt);
    }
    assert!(
        attempts.len() >= 4 && attempts[..3] == [1, 2, 3] && attempts[3..].iter().all(|a| *a == 3),
        "the spent message comes back while its copy is refused: attempts {attempts:?}"
    );
    durable.worker.stop().await;
    let counts = tokio::task::spawn_blocking({
        let name = durable.name.clone();
        move || message_counts(&test_node(), &name)
    })
    .await
    .unwrap();
    assert_eq!(
        counts,
        (1, 0),
        "(ready, unacknowledged): the message is still on its queue"
    );
    assert!(read_queue(&durable.connection, &dead).await.is_empty());

    // Once the broker takes the copy, the message ends in its dead-letter queue.
    tokio::task::spawn_blocking(move || rabbitmqctl(&["clear_policy", &refusal]))
        .await
        .unwrap();
    let worker = run_worker(
        &durable.connection,
        &durable.ex,
        Queue::new(durable.name.as_str()).durable(true),
        None,
        policy(),
    )
    .await;
    let dead_letters = await_messages(&durable.connection, &dead, 1).await;
    let found: Vec<(serde_json::Value, i64)> = dead_letters
        .iter()
        .map(|(body, attempt, _)| (body["content"]["parameters"]["id"].clone(), *attempt))
        .collect();
    assert_eq!(found, [(json!(1), 3)]);
    worker.stop().await;
}

/// A copy whose publishing connection is lost before the broker confirms it (its frames
/// held at a relay, then the connection cut) leaves its original unacknowledged on its
/// queue; the message comes back and is moved again once the connection is back.
#[tokio::test(flavor = "multi_thread")]
async fn a_copy_lost_with_its_publishing_connection_leaves_the_original_on_its_queue() {
    let relay = Relay::start(broker_address()).await;
    let marker = unique("copylost");
    let mut config = Config::from_env().unwrap();
    config.hosts = vec![Host {
        name: "127.0.0.1".into(),
        port: relay.address().port(),
    }];
    config.connection_name = Some(marker.clone());
    let connection = Connection::connect(&config).await.unwrap();
    let direct = connect().await;
    let ex = exchange("copylost");
    let name = unique("copylost-q");
    let dead = format!("{name}.dead");
    // One attempt: each failure is dead-lettered at once.
    let mut worker = run_worker(
        &connection,
        &ex,
        Queue::new(name.as_str()).durable(true),
        None,
        policy().attempts(1),
    )
    .await;
    let producer = producer(&direct, &ex).await;

    // Job 1 is moved as usual: the processor's copies now have a channel of their own.
    producer.command("work", json!({"id": 1})).await.unwrap();
    assert_eq!(await_messages(&direct, &dead, 1).await.len(), 1);
    assert!(matches!(worker.seen.recv().await, Some((1, 1, _))));

    // Job 2's copy is written, and held on its way to the broker.
    let publishing = format!("{marker} publishing");
    relay.add(Links::marked(&publishing), Direction::Upstream, Toxic::Hold);
    producer.command("work", json!({"id": 2})).await.unwrap();
    let (id, attempt, _) = tokio::time::timeout(Duration::from_secs(10), worker.seen.recv())
        .await
        .expect("job 2 is handled")
        .unwrap();
    assert_eq!((id, attempt), (2, 1));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let counts = tokio::task::spawn_blocking({
        let name = name.clone();
        move || message_counts(&test_node(), &name)
    })
    .await
    .unwrap();
    assert_eq!(
        counts,
        (0, 1),
        "(ready, unacknowledged): the original waits for its copy's confirm"
    );
    relay.cut(Links::marked(&publishing));

    let dead_letters = await_messages(&direct, &dead, 1).await;
    let ids: Vec<serde_json::Value> = dead_letters
        .iter()
        .map(|(body, _, _)| body["content"]["parameters"]["id"].clone())
        .collect();
    assert!(
        ids.contains(&json!(2)),
        "job 2 is dead-lettered, not lost: {ids:?}"
    );
    worker.stop().await;
    let _ = connection.close().await;
}

/// A retried message whose queue refuses it as its delay ends (a policy: `max-length` 0,
/// `overflow` `reject-publish` on the work queue, the way a queue whose node is down
/// cannot take it) is not dropped: its delay queue dead-letters at least once, keeps it
/// and offers it again until the queue takes it, however long that is: here past the
/// minute after which a queue TTL would have deleted the delay queue, message and all
/// (a quorum queue's TTL is not renewed by declaring it). RabbitMQ offers it again every
/// `dead_letter_worker_publisher_confirm_timeout` (3 minutes by default; 1 s here, set
/// on the broker before the delay queue exists).
#[tokio::test(flavor = "multi_thread")]
async fn a_retried_message_its_queue_refuses_as_its_delay_ends_comes_back_later() {
    tokio::task::spawn_blocking(|| {
        rabbitmqctl(&[
            "eval",
            "application:set_env(rabbit, dead_letter_worker_publisher_confirm_timeout, 1000).",
        ])
    })
    .await
    .unwrap();
    let connection = connect().await;
    let ex = exchange("refusedback");
    let name = unique("refusedback-q");
    let delay = Duration::from_secs(5);
    let policy = RetryPolicy::new()
        .attempts(3)
        .backoff(delay, delay)
        .jitter(0.0);
    let mut worker = run_worker(
        &connection,
        &ex,
        Queue::new(name.as_str()).durable(true),
        Some(1),
        policy,
    )
    .await;
    let producer = producer(&connection, &ex).await;
    producer.command("work", json!({"id": 1})).await.unwrap();
    let (_, attempt, first) = tokio::time::timeout(Duration::from_secs(5), worker.seen.recv())
        .await
        .expect("the first attempt within 5 s")
        .unwrap();
    assert_eq!(attempt, 1);

    let refusal = unique("refuse");
    let pattern = format!("^{}$", name.replace('.', "\\."));
    tokio::task::spawn_blocking({
        let (refusal, pattern) = (refusal.clone(), pattern.clone());
        move || {
            rabbitmqctl(&[
                "set_policy",
                &refusal,
                &pattern,
                r#"{"max-length": 0, "overflow": "reject-publish"}"#,
                "--apply-to",
                "queues",
            ])
        }
    })
    .await
    .unwrap();
    assert!(
        first.elapsed() < delay - Duration::from_millis(500),
        "the refusing policy must be in place before the delay ends (it took {:?})",
        first.elapsed()
    );
    // The delay ends while the queue refuses; it takes the message again 62 s later,
    // past the 65 s after the delay queue was declared that a queue TTL of its delay
    // and a minute would have allowed it.
    tokio::time::sleep_until((first + delay + Duration::from_secs(62)).into()).await;
    tokio::task::spawn_blocking(move || rabbitmqctl(&["clear_policy", &refusal]))
        .await
        .unwrap();
    let back = tokio::time::timeout(Duration::from_secs(15), worker.seen.recv()).await;
    assert!(
        matches!(back, Ok(Some((1, 2, _)))),
        "the retried message comes back once its queue takes it again: {back:?}"
    );
    worker.stop().await;
    let _ =
        tokio::task::spawn_blocking(move || postage_tests::delete_queue_and_retries(&name)).await;
}
