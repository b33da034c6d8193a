//! A clean stop loses nothing: SIGTERM during a burst leaves every message either handled
//! and acknowledged, or still in its queue; a drain answers `/health/ready` with 503 before
//! it cancels its consumers, and a stop with SIGKILL after a grace period loses nothing.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postage_core::{Consumer, Exchange, Producer, Queue, Route};
use postage_tests::{connect, consumers_of, get, next_within, unique};

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

/// A Kubernetes-style stop, shortened: SIGTERM, then SIGKILL after this long.
const GRACE: Duration = Duration::from_secs(8);

#[tokio::test(flavor = "multi_thread")]
async fn a_sigterm_drains_not_ready_first_and_a_stop_with_sigkill_after_loses_nothing() {
    let queue = unique("drain");
    // Handlers in flight get 5 s to finish.
    let mut worker = Command::new(env!("CARGO_BIN_EXE_sigterm_worker"))
        .args([queue.as_str(), "5000"])
        .env("POSTAGE_METRICS", "127.0.0.1:0")
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
    let seen = |line: &str| lines.lock().unwrap().iter().any(|l| l == line);
    let waited = |what: &dyn Fn() -> bool| {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if what() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    };
    assert!(waited(&|| seen("ready")), "the worker started");
    let health: std::net::SocketAddr = lines
        .lock()
        .unwrap()
        .iter()
        .find_map(|l| l.strip_prefix("health ")?.parse().ok())
        .expect("the worker serves health probes");
    assert!(
        waited(&|| get(health, "/health/ready").0 == 200),
        "ready while consuming"
    );

    let connection = connect().await;
    let producer = Producer::builder(&connection)
        .destination(Exchange::DEFAULT, queue.clone())
        .reliable(true)
        .build()
        .await
        .unwrap();
    // One handler finishes within the drain bound, one would not.
    producer.command("slow", 3000_u64).await.unwrap();
    producer.command("slow", 60_000_u64).await.unwrap();
    assert!(waited(
        &|| seen("started slow 3000") && seen("started slow 60000")
    ));

    let terminated = Instant::now();
    kill("-TERM", &worker);
    // Not ready from the moment it drains: 503 while its handlers still run.
    let (status, body) = loop {
        let (status, body) = get(health, "/health/ready");
        if status != 200 || terminated.elapsed() > Duration::from_secs(1) {
            break (status, body);
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(status, 503, "not ready while draining: {body}");
    assert!(body.contains("draining"), "{body}");
    assert!(
        !seen("handled slow 3000"),
        "answered before the handler finished"
    );
    // Its consumer is cancelled first, while the handlers go on.
    assert!(
        waited(&|| consumers_of(&queue) == Some(0)),
        "the consumer is cancelled"
    );
    assert!(
        worker.try_wait().unwrap().is_none(),
        "cancelled while the handler past the drain bound still runs"
    );

    // SIGKILL after the grace period, as Kubernetes does; the worker is gone before.
    let exit = loop {
        if let Some(exit) = worker.try_wait().unwrap() {
            break Some(exit);
        }
        if terminated.elapsed() > GRACE {
            kill("-KILL", &worker);
            let _ = worker.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let exit = exit.expect("the worker exits within its drain bound, before SIGKILL");
    assert!(exit.success(), "the worker exits 0: {exit}");
    eprintln!("SIGTERM to exit: {:?}", terminated.elapsed());
    assert!(
        seen("handled slow 3000"),
        "the handler within the bound finished"
    );
    assert!(seen("stopped Shutdown"));
    assert!(!seen("handled slow 60000"));

    // The message whose handler outlasted the bound waits in its queue again.
    let mut left = Consumer::builder(&connection)
        .bind(Exchange::DEFAULT, Queue::new(queue.clone()), queue.clone())
        .build()
        .await
        .unwrap();
    left.start().await.unwrap();
    let mut remaining = Vec::new();
    while let Some(delivery) = next_within(&mut left, Duration::from_millis(500)).await {
        remaining.push(delivery.message().unwrap().parameters::<u64>().unwrap());
        delivery.ack().await.unwrap();
    }
    assert_eq!(remaining, [60_000], "nothing lost, nothing done twice");
    left.channel()
        .queue_delete(queue.as_str().into(), Default::default())
        .await
        .unwrap();
}

/// Sends `signal` (`-TERM`, `-KILL`) to `child`.
fn kill(signal: &str, child: &std::process::Child) {
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// A program that ends while its connections are being dialled (a refused start, with the
/// publishing connection on its way) ends quietly. lapin's resolver panicked on the
/// runtime's thread when the runtime ended during a resolution, its trace on the
/// terminal, about one run in ten here.
#[test]
fn a_program_ending_while_it_dials_prints_nothing() {
    for delay_us in [0, 300, 1_000, 3_000].repeat(15) {
        let output = Command::new(env!("CARGO_BIN_EXE_fault_component"))
            .args(["dialling", &unique("dialling"), &delay_us.to_string()])
            .env_remove("RUST_LOG")
            .output()
            .expect("fault_component runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "ended {delay_us} µs in: {stderr}");
        assert_eq!(stderr, "", "ended {delay_us} µs in");
    }
}
