//! A clean stop loses nothing: SIGTERM during a burst leaves every message either handled
//! and acknowledged, or still in its queue.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postage_core::{Consumer, Exchange, Producer, Queue, Route};
use postage_tests::{connect, next_within, unique};

const SENT: u64 = 400;

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_a_burst_loses_nothing() {
    let queue = unique("sigterm");
    let mut worker = Command::new(env!("CARGO_BIN_EXE_sigterm_worker"))
        .arg(&queue)
        .stdout(Stdio::piped())
        .spawn()
        .expect("the worker starts");
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = Arc::clone(&lines);
    let stdout = worker.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    let waited = |what: &dyn Fn(&[String]) -> bool| {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if what(&lines.lock().unwrap()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    };
    assert!(waited(&|l| l.iter().any(|x| x == "ready")));

    let connection = connect().await;
    let producer = Producer::builder(&connection)
        .destination(Exchange::DEFAULT, queue.clone())
        .reliable(true)
        .build()
        .await
        .unwrap();
    // Sent while the worker runs, so SIGTERM comes in the middle of the burst however
    // fast each side is (on a loaded machine the worker kept up with a sender that had
    // to finish first).
    let sending = tokio::spawn(async move {
        for n in 0..SENT {
            producer
                .command_to(Route::Default, "work", n)
                .await
                .unwrap();
        }
    });
    assert!(waited(&|l| l.len() > 40), "the worker got going");
    let status = Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = worker.wait().unwrap();
    sending.await.unwrap();
    assert!(
        exit.success(),
        "the worker stops cleanly on SIGTERM: {exit}"
    );

    let handled: Vec<u64> = lines
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| l.strip_prefix("handled ")?.parse().ok())
        .collect();
    assert!(
        lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l == "stopped Shutdown")
    );
    let handled_set: BTreeSet<u64> = handled.iter().copied().collect();
    assert_eq!(handled.len(), handled_set.len(), "nothing handled twice");
    assert!((handled.len() as u64) < SENT, "stopped during the burst");

    let mut left = Consumer::builder(&connection)
        .bind(Exchange::DEFAULT, Queue::new(queue.clone()), queue.clone())
        .prefetch(100)
        .build()
        .await
        .unwrap();
    left.start().await.unwrap();
    let mut remaining = BTreeSet::new();
    while let Some(delivery) = next_within(&mut left, Duration::from_millis(500)).await {
        remaining.insert(delivery.message().unwrap().parameters::<u64>().unwrap());
        delivery.ack().await.unwrap();
    }
    assert!(
        handled_set.is_disjoint(&remaining),
        "a handled message was left unacknowledged"
    );
    let all: BTreeSet<u64> = handled_set.union(&remaining).copied().collect();
    assert_eq!(
        all.len() as u64,
        SENT,
        "every message handled or still queued"
    );
    eprintln!(
        "sent {SENT}, handled before SIGTERM {}, still queued {}, lost 0",
        handled.len(),
        remaining.len()
    );
    left.channel()
        .queue_delete(queue.as_str().into(), Default::default())
        .await
        .unwrap();
}
