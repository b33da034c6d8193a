//! Order per key while scaling out, against the real broker: `ordered_by` at concurrency
//! 8 with random handler delays (and plain concurrency 8 as the control that reorders),
//! keys in parallel, requeues and retries within a key, a single-active-consumer queue's
//! standby taking over from a SIGKILLed instance (separate processes), and partitions
//! over the consistent-hash exchange shared by instances that join and leave.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postage_core::{
    Connection, Exchange, HandlerError, Metadata, Partitions, Processor, ProcessorBuilder,
    ProcessorHandle, Producer, Queue, RetryPolicy, Route, processor,
};
use postage_tests::{binary, connect, delete_queue_and_retries, exchange, unique};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Semaphore;

#[derive(Debug, Deserialize)]
struct Step {
    key: u64,
    seq: u64,
    /// `"requeue"`: its first run asks for a requeue; `"retry"`: its first attempt fails
    /// and is retried through a delay queue; `"hold"`: it waits for the test's gate.
    #[serde(default)]
    then: Option<String>,
}

/// What a handler run did: `(key, seq, attempt, started)`; `started` false is its end.
type Event = (u64, u64, u32, bool);

/// Records every handler run's start and end, in the order they happen.
struct Recorder {
    events: Mutex<Vec<Event>>,
    requeued: Mutex<BTreeSet<(u64, u64)>>,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
    gate: Semaphore,
}

impl Recorder {
    fn note(&self, event: Event) {
        self.events.lock().unwrap().push(event);
    }
}

#[processor]
impl Recorder {
    #[message_handler("command", "step")]
    async fn step(&self, step: Step, metadata: &Metadata) -> Result<(), HandlerError> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_in_flight.fetch_max(now, Ordering::SeqCst);
        self.note((step.key, step.seq, metadata.attempt(), true));
        tokio::time::sleep(Duration::from_micros(fastrand::u64(0..=5_000))).await;
        let outcome = match step.then.as_deref() {
            Some("requeue") if self.requeued.lock().unwrap().insert((step.key, step.seq)) => {
                Err(HandlerError::error("asks for a requeue").requeue())
            }
            Some("retry") if metadata.attempt() == 1 => {
                Err(HandlerError::error("fails once").retry_after(Duration::from_millis(200)))
            }
            Some("hold") => match self.gate.acquire().await {
                Ok(_pass) => Ok(()),
                Err(closed) => Err(HandlerError::error(closed.to_string())),
            },
            _ => Ok(()),
        };
        self.note((step.key, step.seq, metadata.attempt(), false));
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        outcome
    }
}

struct Harness {
    producer: Producer,
    handle: ProcessorHandle,
    run: tokio::task::JoinHandle<postage_core::Result<postage_core::Exit>>,
    recorder: Arc<Recorder>,
    queue: String,
}

/// A recorder at concurrency 8 on a queue of its own, adjusted by `adjust`.
async fn start(
    adjust: impl FnOnce(ProcessorBuilder<Recorder>) -> ProcessorBuilder<Recorder>,
) -> Harness {
    let connection = connect().await;
    let ex = exchange("ordered");
    let queue = unique("ordered-q");
    let recorder = Recorder {
        events: Mutex::default(),
        requeued: Mutex::default(),
        in_flight: AtomicUsize::new(0),
        most_in_flight: AtomicUsize::new(0),
        gate: Semaphore::new(0),
    };
    let builder = Processor::builder(&connection, recorder)
        .bind(
            ex.clone(),
            Queue::new(queue.clone()).auto_delete(true),
            "step",
        )
        .concurrency(8)
        .prefetch(64);
    let processor = adjust(builder).build().await.unwrap();
    let handle = processor.handle();
    let recorder = Arc::clone(processor.state());
    let run = tokio::spawn(processor.run());
    let producer = Producer::builder(&connection)
        .destination(ex, "step")
        .build()
        .await
        .unwrap();
    Harness {
        producer,
        handle,
        run,
        recorder,
        queue,
    }
}

/// Orders by the step's `key`.
fn by_key(builder: ProcessorBuilder<Recorder>) -> ProcessorBuilder<Recorder> {
    builder.ordered_by(|message, _| message.raw_parameters()["key"].as_u64())
}

impl Harness {
    async fn send(&self, key: u64, seq: u64, then: Option<&str>) {
        self.producer
            .command("step", json!({"key": key, "seq": seq, "then": then}))
            .await
            .unwrap();
    }

    /// Waits (at most 20 s) until `ends` handler runs have ended; returns every event.
    async fn wait_for(&self, ends: usize) -> Vec<Event> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let events = self.recorder.events.lock().unwrap().clone();
            let ended = events.iter().filter(|e| !e.3).count();
            if ended >= ends || Instant::now() > deadline {
                return events;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(self) {
        self.handle.shutdown();
        self.run.await.unwrap().unwrap();
        delete_queue_and_retries(&self.queue);
    }
}

/// Each key's starts, in the order they happened: `(seq, attempt)`.
fn starts_per_key(events: &[Event]) -> BTreeMap<u64, Vec<(u64, u32)>> {
    let mut starts: BTreeMap<u64, Vec<(u64, u32)>> = BTreeMap::new();
    for &(key, seq, attempt, started) in events {
        if started {
            starts.entry(key).or_default().push((seq, attempt));
        }
    }
    starts
}

/// Whether two runs of one key ever overlapped: each key's events must alternate, a start
/// then its own end.
fn overlapping_keys(events: &[Event]) -> Vec<u64> {
    let mut open: BTreeMap<u64, Option<u64>> = BTreeMap::new();
    let mut overlapping = BTreeSet::new();
    for &(key, seq, _, started) in events {
        let running = open.entry(key).or_default();
        match (started, *running) {
            (true, None) => *running = Some(seq),
            (false, Some(s)) if s == seq => *running = None,
            _ => {
                overlapping.insert(key);
            }
        }
    }
    overlapping.into_iter().collect()
}

const KEYS: u64 = 4;
const SEQS: u64 = 60;

/// Sends `SEQS` steps of each of `KEYS` keys, interleaved, and returns what ran.
async fn run_interleaved(harness: &Harness) -> Vec<Event> {
    for seq in 0..SEQS {
        for key in 0..KEYS {
            harness.send(key, seq, None).await;
        }
    }
    harness
        .wait_for(usize::try_from(KEYS * SEQS).unwrap())
        .await
}

#[tokio::test]
async fn steps_of_one_key_run_in_arrival_order_at_concurrency_8_and_keys_in_parallel() {
    let ordered = start(by_key).await;
    let events = run_interleaved(&ordered).await;
    let starts = starts_per_key(&events);
    let wanted: Vec<(u64, u32)> = (0..SEQS).map(|seq| (seq, 1)).collect();
    for key in 0..KEYS {
        assert_eq!(
            starts.get(&key),
            Some(&wanted),
            "key {key} in order, once each"
        );
    }
    assert_eq!(
        overlapping_keys(&events),
        Vec::<u64>::new(),
        "one run of a key at a time"
    );
    let most = ordered.recorder.most_in_flight.load(Ordering::SeqCst);
    assert!(
        most > 1 && most <= 8,
        "keys ran side by side, up to 8: {most} at most"
    );
    ordered.stop().await;

    // The control: the same at plain concurrency 8 reorders, so the check above can fail.
    let plain = start(|builder| builder).await;
    let events = run_interleaved(&plain).await;
    let starts = starts_per_key(&events);
    let reordered = (0..KEYS)
        .filter(|key| starts.get(key) != Some(&wanted))
        .count();
    assert!(
        reordered > 0 || !overlapping_keys(&events).is_empty(),
        "plain concurrency 8 kept every key's order: this test could not see a reorder"
    );
    plain.stop().await;
}

#[tokio::test]
async fn a_held_key_holds_up_only_its_own_later_steps() {
    let harness = start(by_key).await;
    harness.send(1, 0, Some("hold")).await;
    harness.send(1, 1, None).await;
    for seq in 0..20 {
        harness.send(2, seq, None).await;
    }
    // Key 2's steps all run while key 1's first is held; key 1's second waits for it.
    let events = harness.wait_for(20).await;
    let starts = starts_per_key(&events);
    assert_eq!(starts[&2].len(), 20, "key 2 is not held up: {events:?}");
    assert_eq!(
        starts[&1],
        vec![(0, 1)],
        "key 1's second waits behind its first"
    );
    harness.recorder.gate.add_permits(1);
    let events = harness.wait_for(22).await;
    assert_eq!(starts_per_key(&events)[&1], vec![(0, 1), (1, 1)]);
    harness.stop().await;
}

#[tokio::test]
async fn a_requeued_step_runs_again_before_the_next_of_its_key() {
    let harness = start(by_key).await;
    harness.send(5, 0, Some("requeue")).await;
    for seq in 1..4 {
        harness.send(5, seq, None).await;
    }
    let events = harness.wait_for(5).await;
    assert_eq!(
        starts_per_key(&events)[&5],
        vec![(0, 1), (0, 1), (1, 1), (2, 1), (3, 1)],
        "the requeued step runs again, here, before the next of its key"
    );
    assert_eq!(overlapping_keys(&events), Vec::<u64>::new());
    harness.stop().await;
}

#[tokio::test]
async fn a_retried_step_goes_behind_but_no_later_step_overlaps_its_attempt() {
    let harness = start(|builder| {
        by_key(builder).retry(
            RetryPolicy::new()
                .attempts(2)
                .backoff(Duration::from_millis(200), Duration::from_millis(200)),
        )
    })
    .await;
    harness.send(9, 0, Some("retry")).await;
    for seq in 1..4 {
        harness.send(9, seq, None).await;
    }
    let events = harness.wait_for(5).await;
    // What the documentation promises: the failed attempt is settled (its copy in the
    // delay queue) before the next step of its key starts; the retry comes back at the
    // tail, after the steps that were behind it.
    assert_eq!(
        starts_per_key(&events)[&9],
        vec![(0, 1), (1, 1), (2, 1), (3, 1), (0, 2)],
    );
    assert_eq!(overlapping_keys(&events), Vec::<u64>::new());
    harness.stop().await;
}

/// A `fault_component` process, its output lines gathered with the time they came.
struct Instance {
    child: Child,
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl Instance {
    async fn start(args: &[&str]) -> Self {
        let mut child = Command::new(binary("fault_component"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("fault_component starts");
        let stdout = child.stdout.take().expect("its output");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push((Instant::now(), line));
            }
        });
        let instance = Self { child, lines };
        let ready = instance
            .until(Duration::from_secs(20), |lines| {
                lines.iter().any(|(_, line)| line == "ready")
            })
            .await;
        assert!(ready, "fault_component {args:?} serves");
        instance
    }

    /// Waits until `done` holds for the lines so far (at most `patience`).
    async fn until(&self, patience: Duration, done: impl Fn(&[(Instant, String)]) -> bool) -> bool {
        let deadline = Instant::now() + patience;
        while Instant::now() < deadline {
            let lines = self.lines.lock().unwrap().clone();
            if done(&lines) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// The steps it handled, per key, in the order it printed them.
    fn handled(&self) -> BTreeMap<u64, Vec<u64>> {
        let mut handled: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for (_, line) in self.lines.lock().unwrap().iter() {
            let mut words = line.split(' ');
            if words.next() == Some("handled")
                && let (Some(Ok(key)), Some(Ok(seq))) =
                    (words.next().map(str::parse), words.next().map(str::parse))
            {
                handled.entry(key).or_default().push(seq);
            }
        }
        handled
    }

    fn count(&self) -> usize {
        self.handled().values().map(Vec::len).sum()
    }

    /// SIGKILL: no goodbye to the broker.
    fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Publishes `seqs` steps of each of `keys` keys, interleaved, persistent and confirmed,
/// to exchange `name` with key `key`.
async fn publish_steps(connection: &Connection, name: &str, key: &str, keys: u64, seqs: u64) {
    let producer = Producer::builder(connection)
        .destination(Exchange::named(name.to_owned()), key.to_owned())
        .reliable(true)
        .persistent(true)
        .build()
        .await
        .unwrap();
    for seq in 0..seqs {
        for k in 0..keys {
            producer
                .command("step", json!({"key": k, "seq": seq}))
                .await
                .unwrap();
        }
    }
}

/// Each key's steps, as handled by the instances in turn: nothing lost, and each
/// instance's steps of a key in order, each taking up at most where the one before it
/// left off (a step handled but not yet acknowledged when its instance died comes again).
fn check_handover(turns: &[BTreeMap<u64, Vec<u64>>], keys: u64, seqs: u64) {
    for key in 0..keys {
        let mut next = 0;
        for (turn, handled) in turns.iter().enumerate() {
            let steps = handled.get(&key).cloned().unwrap_or_default();
            if let Some(&first) = steps.first() {
                assert!(
                    first <= next,
                    "key {key}: instance {turn} skipped to {first}, from {next}"
                );
            }
            assert!(
                steps.windows(2).all(|w| w[0] < w[1]),
                "key {key}: instance {turn} out of order: {steps:?}"
            );
            if let Some(&last) = steps.last() {
                next = next.max(last + 1);
            }
        }
        assert_eq!(next, seqs, "key {key}: every step handled");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_standby_takes_over_in_order_when_the_active_instance_is_killed() {
    let name = unique("sac");
    let mut active = Instance::start(&["ordered", &name]).await;
    let standby = Instance::start(&["ordered", &name]).await;
    let connection = connect().await;
    let (keys, seqs) = (10, 60);
    let publishing = {
        let (connection, name) = (connection.clone(), name.clone());
        tokio::spawn(async move { publish_steps(&connection, &name, "step", keys, seqs).await })
    };
    assert!(
        active
            .until(Duration::from_secs(20), |lines| lines.len() > 150)
            .await,
        "the active instance handles steps"
    );
    // The broker hands the standby the queue as soon as the killed one's socket closes:
    // lines the standby reads after this can be its first steps, not a breach.
    let killed = Instant::now();
    active.kill();
    publishing.await.unwrap();
    let total = usize::try_from(keys * seqs).unwrap();
    let handled = active.count();
    standby
        .until(Duration::from_secs(30), |_| {
            handled + standby.count() >= total
        })
        .await;
    // Let the last redeliveries, if any, come too.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(standby.count() > 0, "the standby took over");
    let early = standby
        .lines
        .lock()
        .unwrap()
        .iter()
        .filter(|(at, line)| *at < killed && line.starts_with("handled "))
        .count();
    assert_eq!(
        early, 0,
        "the standby handled nothing while the active one lived"
    );
    check_handover(&[active.handled(), standby.handled()], keys, seqs);
    drop(standby);
    remove(&connection, std::slice::from_ref(&name), &name).await;
}

/// Deletes `queues` and `exchange`.
async fn remove(connection: &Connection, queues: &[String], exchange: &str) {
    let channel = connection.open_channel().await.unwrap();
    for queue in queues {
        let _ = channel
            .queue_delete(queue.as_str().into(), Default::default())
            .await;
    }
    let _ = channel
        .exchange_delete(exchange.into(), Default::default())
        .await;
}

/// What the instances of a fleet handled, `(instance, key, seq)`, in order.
type Log = Arc<Mutex<Vec<(usize, u64, u64)>>>;

/// An instance of a partitioned fleet: records `(instance, key, seq)` in one log shared by
/// the instances, in the order they handle them.
struct Member {
    instance: usize,
    log: Log,
}

#[processor]
impl Member {
    #[message_handler("command", "step")]
    async fn step(&self, step: Step) {
        tokio::time::sleep(Duration::from_micros(fastrand::u64(0..=5_000))).await;
        self.log
            .lock()
            .unwrap()
            .push((self.instance, step.key, step.seq));
    }
}

/// Starts instance `instance` of the fleet reading `partitions`, on a connection of its
/// own (claims are held per connection).
async fn member(
    partitions: &Partitions,
    instance: usize,
    log: &Log,
) -> (
    ProcessorHandle,
    tokio::task::JoinHandle<postage_core::Result<postage_core::Exit>>,
) {
    let connection = connect().await;
    let processor = Processor::builder(
        &connection,
        Member {
            instance,
            log: Arc::clone(log),
        },
    )
    .partitions(partitions.clone())
    .concurrency(4)
    .ordered_by(|_, metadata| metadata.routing_key().to_owned())
    .build()
    .await
    .unwrap();
    (processor.handle(), tokio::spawn(processor.run()))
}

fn handled_by(log: &Mutex<Vec<(usize, u64, u64)>>, instance: usize) -> usize {
    log.lock()
        .unwrap()
        .iter()
        .filter(|e| e.0 == instance)
        .count()
}

async fn until(patience: Duration, done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + patience;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done()
}

#[tokio::test(flavor = "multi_thread")]
async fn partitions_are_shared_and_keep_each_keys_order_as_instances_join_and_leave() {
    let partitions =
        Partitions::new(unique("parts"), 6).rebalance_every(Duration::from_millis(100));
    let log = Arc::new(Mutex::new(Vec::new()));
    let (first, first_run) = member(&partitions, 0, &log).await;
    let connection = connect().await;
    let producer = Producer::builder(&connection)
        .destination(partitions.exchange(), "")
        .reliable(true)
        .persistent(true)
        .build()
        .await
        .unwrap();
    let (keys, seqs) = (12u64, 80u64);
    let publishing = tokio::spawn(async move {
        for seq in 0..seqs {
            for key in 0..keys {
                producer
                    .command_to(
                        Route::key(format!("key-{key}")),
                        "step",
                        json!({"key": key, "seq": seq}),
                    )
                    .await
                    .unwrap();
            }
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
    });
    assert!(until(Duration::from_secs(10), || handled_by(&log, 0) > 100).await);
    // A second instance joins: the first gives half the partitions up, in order.
    let (second, second_run) = member(&partitions, 1, &log).await;
    assert!(
        until(Duration::from_secs(10), || handled_by(&log, 1) > 50).await,
        "the second instance took a share"
    );
    let first_after_join = handled_by(&log, 0);
    assert!(
        until(Duration::from_secs(5), || handled_by(&log, 0)
            > first_after_join)
        .await,
        "the first instance kept a share"
    );
    // The first leaves: the second takes every partition.
    first.shutdown();
    first_run.await.unwrap().unwrap();
    publishing.await.unwrap();
    let total = usize::try_from(keys * seqs).unwrap();
    until(Duration::from_secs(20), || {
        log.lock().unwrap().len() >= total
    })
    .await;
    second.shutdown();
    second_run.await.unwrap().unwrap();
    let log = log.lock().unwrap().clone();
    for key in 0..keys {
        let seen: Vec<u64> = log.iter().filter(|e| e.1 == key).map(|e| e.2).collect();
        assert_eq!(
            seen,
            (0..seqs).collect::<Vec<_>>(),
            "key {key}: every step once, in order, across both instances"
        );
    }
    let mut queues: Vec<String> = (0..partitions.count())
        .map(|p| partitions.queue(p).name().to_owned())
        .collect();
    queues.push(format!("{}.members", partitions.name()));
    remove(&connection, &queues, partitions.name()).await;
}
