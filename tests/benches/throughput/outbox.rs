//! Effects exactly once, and what they cost: a handler that inserts a row and sends a
//! message downstream through the outbox, in an inbox's transaction (`postage-outbox`),
//! on SQLite and on PostgreSQL, against the same handler without them (it decodes and
//! counts); and the relay's lag at that rate: how long the oldest message waited to be
//! published (its largest reading during the run), and how long after the last handler's
//! commit the outbox was empty.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use postage_core::{Exchange, HandlerError, Processor, Queue, processor};
use postage_outbox::{Relay, Store, Tx, sqlx};
use postage_tests::bench::Reading;
use postage_tests::postgres;
use tokio::sync::Notify;

use crate::Plan;
use crate::report::{Better, Meter, Sample, figure, median, rates, rounds};
use crate::setup::{Bench, PREFETCH};

/// Counts what it handled, and says when it has seen its target.
#[derive(Clone)]
struct Count {
    seen: Arc<AtomicUsize>,
    target: usize,
    done: Arc<Notify>,
}

impl Count {
    fn one(&self) {
        if self.seen.fetch_add(1, Ordering::Relaxed) + 1 == self.target {
            self.done.notify_one();
        }
    }
}

/// The handler with effects: a row, and a message downstream, exactly once.
struct Effects {
    count: Count,
    downstream: Exchange,
}

#[processor]
impl Effects {
    #[message_handler("command", "reading")]
    async fn reading(&self, reading: Reading, tx: Tx) -> Result<(), HandlerError> {
        sqlx::query("INSERT INTO bench_rows (seq) VALUES ($1)")
            .bind(i64::try_from(reading.seq).unwrap_or_default())
            .execute(&mut *tx.conn().await?)
            .await
            .map_err(|e| HandlerError::error(e.to_string()))?;
        tx.command(&self.downstream, "noted", "noted", reading.seq)
            .await?;
        self.count.one();
        Ok(())
    }
}

/// The same handler without a database: it decodes and counts.
struct Plain {
    count: Count,
}

#[processor]
impl Plain {
    #[message_handler("command", "reading")]
    fn reading(&self, reading: Reading) {
        std::hint::black_box(&reading);
        self.count.one();
    }
}

/// Which database a run's store is on.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Sqlite,
    Postgres,
}

impl Bench {
    /// The figures of both databases (PostgreSQL's when `scripts/postgres.sh` can start
    /// one).
    pub(crate) async fn outbox(&self, plan: Plan) {
        self.outbox_on(plan, Kind::Sqlite).await;
        self.outbox_on(plan, Kind::Postgres).await;
    }

    async fn outbox_on(&self, plan: Plan, kind: Kind) {
        let (exchange, queue) = self.topology("outbox", "reading-0").await;
        let (downstream, sink) = self.topology("outbox-down", "noted").await;
        let count = plan.dispatch / 4;
        let lags = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sides = ["outbox", "plain"];
        let runs = rounds(plan, &sides, async |side, warm_up| {
            let n = if warm_up { count / 4 } else { count }.max(1);
            self.fill(&exchange, "reading-0", &queue, n, 100).await;
            let sample = if side == 0 {
                let (sample, lag) = self
                    .with_effects(kind, &exchange, &queue, &downstream, n)
                    .await;
                lags.lock().unwrap().push(lag);
                sample
            } else {
                self.plain(&exchange, &queue, n).await
            };
            self.purge(&sink).await;
            sample
        })
        .await;
        let name = match kind {
            Kind::Sqlite => "outbox SQLite",
            Kind::Postgres => "outbox PostgreSQL",
        };
        figure(
            &format!("{name}: inbox + handler (a row) + outbox (a message), 100 B"),
            "msg/s",
            Better::Higher,
            rates(&runs[0]),
            &[("same handler without them", rates(&runs[1]))],
        );
        let lags = lags.lock().unwrap().clone();
        let oldest = median(
            lags.iter()
                .map(|(oldest, _)| oldest.as_secs_f64() * 1e3)
                .collect(),
        );
        let drain = median(
            lags.iter()
                .map(|(_, drain)| drain.as_secs_f64() * 1e3)
                .collect(),
        );
        println!(
            "{name} relay lag at that rate: oldest waiting message {oldest:.1} ms (largest reading), \
             outbox empty {drain:.1} ms after the last commit"
        );
        self.delete(&queue).await;
        self.delete(&sink).await;
    }

    /// One run with effects on a fresh database: its rate, and the relay's lag.
    async fn with_effects(
        &self,
        kind: Kind,
        exchange: &Exchange,
        queue: &Queue,
        downstream: &Exchange,
        n: usize,
    ) -> (Sample, (Duration, Duration)) {
        let (store, cleanup) = match kind {
            Kind::Sqlite => {
                let path = std::env::temp_dir().join(format!("{}.db", self.name("outbox")));
                let store = Store::sqlite(&path).await.expect("a SQLite store");
                (store, Cleanup::File(path))
            }
            Kind::Postgres => {
                let database = postgres::Database::create(&self.name("outbox")).await;
                let store = Store::postgres(&database.url)
                    .await
                    .expect("a PostgreSQL store");
                (store, Cleanup::Database(database))
            }
        };
        sqlx::query("CREATE TABLE bench_rows (seq BIGINT NOT NULL)")
            .execute(store.pool())
            .await
            .expect("the table");
        let relay = Relay::builder(&store, &self.postage)
            .build()
            .await
            .expect("a relay");
        let metrics = relay.metrics().clone();
        let relay = relay.spawn();
        let count = Count {
            seen: Arc::default(),
            target: n,
            done: Arc::default(),
        };
        let processor = Processor::builder(
            &self.postage,
            Effects {
                count: count.clone(),
                downstream: downstream.clone(),
            },
        )
        .bind(exchange.clone(), queue.clone(), "reading-0")
        .prefetch(PREFETCH)
        .inbox(store.clone())
        .build()
        .await
        .expect("a processor");
        let stop = processor.handle();
        let meter = Meter::start();
        let running = tokio::spawn(processor.run());
        let mut oldest = Duration::ZERO;
        let done = count.done.notified();
        tokio::pin!(done);
        loop {
            tokio::select! {
                () = &mut done => break,
                () = tokio::time::sleep(Duration::from_millis(20)) => oldest = oldest.max(metrics.lag()),
            }
        }
        let sample = meter.stop(n);
        let last_commit = Instant::now();
        while store
            .status()
            .await
            .map_or(true, |status| status.pending > 0)
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let drain = last_commit.elapsed();
        stop.shutdown();
        let _ = running.await;
        drop(relay);
        store.pool().close().await;
        cleanup.run().await;
        (sample, (oldest, drain))
    }

    /// One run of the plain handler.
    async fn plain(&self, exchange: &Exchange, queue: &Queue, n: usize) -> Sample {
        let count = Count {
            seen: Arc::default(),
            target: n,
            done: Arc::default(),
        };
        let processor = Processor::builder(
            &self.postage,
            Plain {
                count: count.clone(),
            },
        )
        .bind(exchange.clone(), queue.clone(), "reading-0")
        .prefetch(PREFETCH)
        .build()
        .await
        .expect("a processor");
        let stop = processor.handle();
        let meter = Meter::start();
        let running = tokio::spawn(processor.run());
        count.done.notified().await;
        let sample = meter.stop(n);
        stop.shutdown();
        let _ = running.await;
        sample
    }
}

/// What a run leaves behind.
enum Cleanup {
    File(std::path::PathBuf),
    Database(postgres::Database),
}

impl Cleanup {
    async fn run(self) {
        match self {
            Self::File(path) => {
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                }
            }
            Self::Database(database) => database.drop_now().await,
        }
    }
}
