//! Effects exactly once (`postage-outbox`), on SQLite and on PostgreSQL, against the real
//! broker: a component killed 100 times while 2,000 messages flow leaves one row and one
//! downstream record per message; a rolled-back transaction publishes nothing; a broker
//! outage of 30 s delays the relay and loses nothing; duplicates run once.
//!
//! PostgreSQL is the server `scripts/postgres.sh` starts (`POSTAGE_POSTGRES_URL`, else
//! the script is run and prints it); each test makes a database of its own there.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use postage_core::channel::{Channel, Envelope};
use postage_core::{
    Config, Connection, Exchange, HandlerError, Host, Processor, Producer, Queue, processor,
};
use postage_outbox::sqlx::{self, Row};
use postage_outbox::{Relay, Store, Tx};
use postage_tests::{
    OwnNode, binary, connect, fetch, postgres, sample, start_app, try_ctl, unique, with_metrics,
};

/// Where a test keeps its data: a SQLite file or a PostgreSQL database of its own.
enum Db {
    Sqlite(PathBuf),
    Postgres(postgres::Database),
}

impl Db {
    fn sqlite(prefix: &str) -> Self {
        let path = std::env::temp_dir().join(format!("{}.db", unique(prefix)));
        Self::Sqlite(path)
    }

    async fn postgres(prefix: &str) -> Self {
        Self::Postgres(postgres::Database::create(&unique(prefix)).await)
    }

    /// A second database of the same kind, for a downstream component.
    async fn another(&self, prefix: &str) -> Self {
        match self {
            Self::Sqlite(_) => Self::sqlite(prefix),
            Self::Postgres(_) => Self::postgres(prefix).await,
        }
    }

    async fn store(&self) -> Store {
        match self {
            Self::Sqlite(path) => Store::sqlite(path).await,
            Self::Postgres(database) => Store::postgres(&database.url).await,
        }
        .expect("the store opens")
    }

    /// The command-line option a demo takes for it.
    fn args(&self) -> [String; 2] {
        match self {
            Self::Sqlite(path) => ["--db".into(), path.display().to_string()],
            Self::Postgres(database) => ["--postgres".into(), database.url.clone()],
        }
    }

    /// Rows of `table`: (all, distinct ids).
    async fn rows(&self, table: &str) -> (i64, i64) {
        let store = self.store().await;
        let row = sqlx::query(&format!("SELECT COUNT(*), COUNT(DISTINCT id) FROM {table}"))
            .fetch_one(store.pool())
            .await
            .expect("the table reads");
        let counts = (row.get(0), row.get(1));
        store.pool().close().await;
        counts
    }

    async fn drop_now(self) {
        match self {
            Self::Sqlite(path) => {
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                }
            }
            Self::Postgres(database) => database.drop_now().await,
        }
    }
}

/// A demo process whose output lines are counted by their first word.
struct Demo {
    child: Child,
}

impl Demo {
    fn start(name: &str, args: &[String], lines: Option<Arc<Lines>>) -> Self {
        let mut child = Command::new(binary(name))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the demo starts");
        let stdout = child.stdout.take().expect("its output");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(lines) = &lines {
                    lines.add(&line);
                }
            }
        });
        Self { child }
    }

    fn kill(&mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Lines a demo printed, by first word.
#[derive(Default)]
struct Lines(std::sync::Mutex<HashMap<String, usize>>);

impl Lines {
    fn add(&self, line: &str) {
        let word = line.split_whitespace().next().unwrap_or("").to_owned();
        *self.0.lock().unwrap().entry(word).or_default() += 1;
    }

    fn count(&self, word: &str) -> usize {
        self.0.lock().unwrap().get(word).copied().unwrap_or(0)
    }
}

/// Waits up to `wait` for `done`.
async fn until(wait: Duration, mut done: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        if done().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    done().await
}

const MESSAGES: i64 = 2000;
const KILLS: usize = 100;

/// The worker demo, killed with SIGKILL at random moments `KILLS` times while `MESSAGES`
/// jobs flow, leaves one row per job, and the ledger demo (its own inbox) one record.
async fn crash_loop(db: Db) {
    let ledger_db = db.another("outbox-ledger").await;
    let names = unique("outbox-crash");
    let (jobs_exchange, jobs_queue) = (format!("{names}-jobs-ex"), format!("{names}-jobs"));
    let (ledger_exchange, ledger_queue) = (format!("{names}-ledger-ex"), format!("{names}-ledger"));
    let recorded = Arc::new(Lines::default());
    let mut ledger_args = ledger_db.args().to_vec();
    ledger_args.extend([
        "--queue".into(),
        ledger_queue.clone(),
        "--exchange".into(),
        ledger_exchange.clone(),
    ]);
    let _ledger = Demo::start("outbox_ledger", &ledger_args, Some(Arc::clone(&recorded)));
    let mut worker_args = db.args().to_vec();
    worker_args.extend([
        "--queue".into(),
        jobs_queue.clone(),
        "--exchange".into(),
        jobs_exchange.clone(),
        "--to-exchange".into(),
        ledger_exchange.clone(),
        "--relay-instance".into(),
        format!("{names}-worker"),
    ]);
    let done = Arc::new(Lines::default());
    let start_worker = || Demo::start("outbox_worker", &worker_args, Some(Arc::clone(&done)));
    let mut worker = start_worker();
    assert!(
        until(Duration::from_secs(30), async || recorded.count("waiting")
            == 1
            && done.count("waiting") == 1)
        .await,
        "the demos start"
    );

    let connection = connect().await;
    let producer = Producer::builder(&connection)
        .destination(Exchange::named(jobs_exchange.as_str()), "job")
        .reliable(true)
        .build()
        .await
        .unwrap();
    let started = Instant::now();
    let sending = tokio::spawn(async move {
        for id in 0..MESSAGES {
            producer
                .command("job", serde_json::json!({ "id": id }))
                .await
                .unwrap();
            // Spread over about the kills' time.
            if id % 40 == 0 {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    });
    for _ in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(fastrand::u64(50..450))).await;
        worker.kill();
        worker = start_worker();
    }
    let killing = started.elapsed();
    sending.await.unwrap();
    let handled_while_killing = done.count("done");
    let all_recorded = until(Duration::from_secs(120), async || {
        ledger_db.rows("ledger").await.1 == MESSAGES
    })
    .await;
    // Late duplicates, if any, would arrive now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rows, distinct_rows) = db.rows("jobs_done").await;
    let (records, distinct_records) = ledger_db.rows("ledger").await;
    eprintln!(
        "crash loop: {KILLS} kills in {killing:.1?}; {handled_while_killing} handler runs \
         committed or not while killing, {} in all; {rows} rows ({distinct_rows} ids), \
         {records} records ({distinct_records} ids) after {:.1?}",
        done.count("done"),
        started.elapsed()
    );
    assert!(all_recorded, "every job reaches the ledger");
    assert_eq!(
        (rows, distinct_rows),
        (MESSAGES, MESSAGES),
        "one row per job"
    );
    assert_eq!(
        (records, distinct_records),
        (MESSAGES, MESSAGES),
        "one ledger record per job"
    );
    // What `postage outbox status` says of the worker's outbox: nothing left to send.
    let status = Command::new(binary("postage"))
        .args(["--json", "outbox", "status"])
        .args(db.args())
        .output()
        .expect("postage runs");
    let status: serde_json::Value =
        serde_json::from_slice(&status.stdout).expect("postage outbox status prints JSON");
    eprintln!("crash loop: postage outbox status: {status}");
    assert_eq!(status["pending"], 0, "the outbox is empty: {status}");
    assert_eq!(
        status["sent"], MESSAGES,
        "every job's record was sent: {status}"
    );
    drop(worker);
    delete_queues(&connection, &[&jobs_queue, &ledger_queue]).await;
    connection.close().await.unwrap();
    db.drop_now().await;
    ledger_db.drop_now().await;
}

#[tokio::test]
async fn crash_loop_sqlite() {
    crash_loop(Db::sqlite("outbox-worker")).await;
}

#[tokio::test]
async fn crash_loop_postgres() {
    crash_loop(Db::postgres("outbox-worker").await).await;
}

/// Records each `note` it handles in its transaction, and counts its runs.
struct Notes {
    runs: Arc<AtomicUsize>,
}

#[processor]
impl Notes {
    #[message_handler("command", "note")]
    async fn note(&self, id: i64, tx: Tx) -> Result<(), HandlerError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        sqlx::query("INSERT INTO notes (id) VALUES ($1)")
            .bind(id)
            .execute(&mut *tx.conn().await?)
            .await
            .map_err(|e| HandlerError::error(e.to_string()))?;
        Ok(())
    }
}

/// A processor with an inbox on `store`, consuming a durable queue of its own bound to
/// a new exchange with key `note`; returns the exchange, its count of handler runs and
/// the queue's name.
async fn notes(
    connection: &Connection,
    store: &Store,
    prefix: &str,
) -> (Exchange, Arc<AtomicUsize>, String) {
    sqlx::query("CREATE TABLE IF NOT EXISTS notes (id BIGINT NOT NULL)")
        .execute(store.pool())
        .await
        .unwrap();
    let exchange = Exchange::named(unique(prefix));
    let queue = unique(prefix);
    let runs = Arc::new(AtomicUsize::new(0));
    let processor = Processor::builder(
        connection,
        Notes {
            runs: Arc::clone(&runs),
        },
    )
    .bind(
        exchange.clone(),
        Queue::new(queue.as_str()).durable(true),
        "note",
    )
    .inbox(store.clone())
    .handler_timeout(Duration::from_secs(30))
    .build()
    .await
    .unwrap();
    tokio::spawn(processor.run());
    (exchange, runs, queue)
}

/// Deletes the durable queues a test declared on the shared broker.
async fn delete_queues(connection: &Connection, queues: &[&str]) {
    let channel = Channel::open(connection).await.unwrap();
    for queue in queues {
        let _ = channel.delete_queue(queue).await;
    }
}

/// The same `message_id` published twice, and a body without one (as Python Postage
/// sends) published twice, each run once; distinct messages each run.
async fn duplicates_run_once(db: Db) {
    let store = db.store().await;
    let connection = connect().await;
    let (exchange, runs, queue) = notes(&connection, &store, "outbox-dup").await;
    let channel = Channel::open(&connection).await.unwrap();
    let note = |id: i64| {
        postage_core::Message::command("note", id)
            .unwrap()
            .to_json()
            .unwrap()
    };
    let with_id = |id: i64, message_id: &str| {
        Envelope::new(note(id))
            .content_type("application/json")
            .properties_from(
                postage_core::lapin::BasicProperties::default()
                    .with_content_type("application/json".into())
                    .with_message_id(message_id.into()),
            )
    };
    for envelope in [
        with_id(1, "the-same-id"),
        with_id(1, "the-same-id"),
        Envelope::new(note(2)).content_type("application/json"),
        Envelope::new(note(2)).content_type("application/json"),
    ] {
        channel
            .publish(exchange.name(), "note", envelope)
            .await
            .unwrap()
            .settled()
            .await;
    }
    // Two messages with the same content, each with an id of its own: both run.
    let producer = Producer::builder(&connection)
        .destination(exchange.clone(), "note")
        .build()
        .await
        .unwrap();
    producer.command("note", 3).await.unwrap();
    producer.command("note", 3).await.unwrap();
    let ran = until(Duration::from_secs(20), async || {
        db.rows("notes").await.0 >= 4
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let store_rows = sqlx::query("SELECT id, COUNT(*) FROM notes GROUP BY id ORDER BY id")
        .fetch_all(store.pool())
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get::<i64, _>(0), row.get::<i64, _>(1)))
        .collect::<Vec<_>>();
    eprintln!(
        "duplicates: {} handler runs; rows by id {store_rows:?}",
        runs.load(Ordering::SeqCst)
    );
    assert!(ran, "the notes are handled");
    assert_eq!(store_rows, vec![(1, 1), (2, 1), (3, 2)]);
    assert_eq!(
        runs.load(Ordering::SeqCst),
        4,
        "each duplicate was acknowledged unrun"
    );
    delete_queues(&connection, &[&queue]).await;
    connection.close().await.unwrap();
    db.drop_now().await;
}

#[tokio::test]
async fn duplicates_run_once_sqlite() {
    duplicates_run_once(Db::sqlite("outbox-dup")).await;
}

#[tokio::test]
async fn duplicates_run_once_postgres() {
    duplicates_run_once(Db::postgres("outbox-dup").await).await;
}

/// Sends a note through the outbox in a transaction that rolls back (by hand, and by a
/// handler that fails after sending), then one that commits: only the last arrives.
async fn a_rolled_back_transaction_publishes_nothing(db: Db) {
    let downstream_db = db.another("outbox-rollback-down").await;
    let downstream = downstream_db.store().await;
    let store = db.store().await;
    let connection = connect().await;
    let (exchange, runs, queue) = notes(&connection, &downstream, "outbox-rollback").await;
    let _relay = Relay::builder(&store, &connection)
        .build()
        .await
        .unwrap()
        .spawn();

    let tx = store.begin().await.unwrap();
    tx.command(&exchange, "note", "note", 1).await.unwrap();
    tx.rollback().await.unwrap();
    {
        let dropped = store.begin().await.unwrap();
        dropped.command(&exchange, "note", "note", 2).await.unwrap();
    }
    let failed = Arc::new(AtomicUsize::new(0));
    let go = Exchange::named(unique("outbox-fails"));
    let go_queue = unique("outbox-fails");
    let failing = Processor::builder(
        &connection,
        FailsAfterSending {
            to: exchange.clone(),
            failed: Arc::clone(&failed),
        },
    )
    .bind(
        go.clone(),
        Queue::new(go_queue.as_str()).durable(true),
        "go",
    )
    .inbox(store.clone())
    .build()
    .await
    .unwrap();
    tokio::spawn(failing.run());
    Producer::builder(&connection)
        .destination(go, "go")
        .build()
        .await
        .unwrap()
        .command("go", 4)
        .await
        .unwrap();
    assert!(
        until(Duration::from_secs(20), async || failed
            .load(Ordering::SeqCst)
            == 1)
        .await,
        "the failing handler ran"
    );
    let committed = store.begin().await.unwrap();
    committed
        .command(&exchange, "note", "note", 3)
        .await
        .unwrap();
    committed.commit().await.unwrap();

    let arrived = until(Duration::from_secs(20), async || {
        runs.load(Ordering::SeqCst) >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = store.status().await.unwrap();
    let ids = sqlx::query("SELECT id FROM notes ORDER BY id")
        .fetch_all(downstream.pool())
        .await
        .unwrap()
        .iter()
        .map(|row| row.get::<i64, _>(0))
        .collect::<Vec<_>>();
    eprintln!("rollback: downstream ids {ids:?}; outbox {status:?}");
    assert!(arrived, "the committed note arrives");
    assert_eq!(
        ids,
        vec![3],
        "only the committed transaction's message was published"
    );
    assert_eq!((status.pending, status.sent), (0, 1));
    delete_queues(&connection, &[&queue, &go_queue]).await;
    connection.close().await.unwrap();
    db.drop_now().await;
    downstream_db.drop_now().await;
}

/// Sends note `id` through the outbox, then fails: its transaction rolls back.
struct FailsAfterSending {
    to: Exchange,
    failed: Arc<AtomicUsize>,
}

#[processor]
impl FailsAfterSending {
    #[message_handler("command", "go")]
    async fn go(&self, id: i64, tx: Tx) -> Result<(), HandlerError> {
        tx.command(&self.to, "note", "note", id).await?;
        self.failed.fetch_add(1, Ordering::SeqCst);
        Err(HandlerError::error("failing after sending, on purpose").reject())
    }
}

#[tokio::test]
async fn a_rolled_back_transaction_publishes_nothing_sqlite() {
    a_rolled_back_transaction_publishes_nothing(Db::sqlite("outbox-rollback")).await;
}

#[tokio::test]
async fn a_rolled_back_transaction_publishes_nothing_postgres() {
    a_rolled_back_transaction_publishes_nothing(Db::postgres("outbox-rollback").await).await;
}

/// The outage test's node of its own.
const NODE: (&str, u16, u16) = ("postage-outbox-outage", 5821, 25821);

/// A broker outage of 30 s: the relay publishes nothing meanwhile (the messages wait,
/// committed, in the outbox), then everything once the broker is back, none lost, none
/// handled twice downstream.
#[tokio::test]
async fn a_broker_outage_delays_the_relay_and_loses_nothing() {
    let (name, port, dist) = NODE;
    let _node = OwnNode::start(name, port, dist, "");
    let config = with_metrics(Config {
        hosts: vec![Host {
            name: "127.0.0.1".into(),
            port,
        }],
        ..Config::default()
    });
    let connection = Connection::connect(&config).await.unwrap();
    let db = Db::sqlite("outbox-outage");
    let downstream_db = db.another("outbox-outage-down").await;
    let store = db.store().await;
    let downstream = downstream_db.store().await;
    let (exchange, runs, _) = notes(&connection, &downstream, "outbox-outage").await;
    let relay = Relay::builder(&store, &connection).build().await.unwrap();
    let metrics = relay.metrics().clone();
    let _relay = relay.spawn();
    let send = async |ids: std::ops::Range<i64>| {
        for id in ids {
            let tx = store.begin().await.unwrap();
            tx.command(&exchange, "note", "note", id).await.unwrap();
            tx.commit().await.unwrap();
        }
    };
    send(0..100).await;
    assert!(
        until(Duration::from_secs(20), async || runs
            .load(Ordering::SeqCst)
            == 100)
        .await,
        "the first 100 arrive"
    );

    try_ctl(name, &["stop_app"]).expect("the node stops");
    let down = Instant::now();
    send(100..200).await;
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(down.elapsed())).await;
    let during = store.status().await.unwrap();
    let lag = metrics.lag();
    let endpoint = connection.metrics_address().expect("a metrics endpoint");
    let (_, text) = fetch(endpoint, "/metrics").await;
    let served = sample(
        &text,
        "postage_outbox_relay_lag_seconds",
        &[("relay", "default")],
    );
    start_app(name);
    let back = Instant::now();
    let all = until(Duration::from_secs(90), async || {
        downstream_db.rows("notes").await.1 == 200
    })
    .await;
    let caught_up = back.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rows, distinct) = downstream_db.rows("notes").await;
    eprintln!(
        "outage: during it {during:?}, relay lag {lag:.1?} (served: {served:?} s); all delivered {caught_up:.1?} after the broker came back; {rows} rows ({distinct} ids), {} handler runs",
        runs.load(Ordering::SeqCst)
    );
    assert_eq!(
        during.pending, 100,
        "the relay held the messages during the outage"
    );
    assert!(
        lag >= Duration::from_secs(15),
        "the lag metric shows the wait: {lag:?}"
    );
    assert!(
        served.is_some_and(|seconds| seconds >= 15.0),
        "the connection's metrics endpoint serves the lag: {served:?}"
    );
    assert!(all, "every message arrives after the outage");
    assert_eq!((rows, distinct), (200, 200), "none lost, none twice");
    connection.close().await.unwrap();
    db.drop_now().await;
    downstream_db.drop_now().await;
}
