//! Timers against the real broker: `#[timer(every = "...")]` methods run every period
//! while their processor runs, go on after a failure or a panic, and stop with it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use postage_core::{Exit, Processor, Queue, processor};
use postage_tests::{connect, exchange, unique};

#[derive(Default)]
struct Clock {
    ticks: AtomicU32,
    failures: AtomicU32,
}

#[processor]
impl Clock {
    #[timer(every = "100ms")]
    async fn tick(&self) {
        tokio::task::yield_now().await;
        self.ticks.fetch_add(1, Ordering::SeqCst);
    }

    #[timer(every = "150ms")]
    fn flaky(&self) -> Result<(), String> {
        let n = self.failures.fetch_add(1, Ordering::SeqCst);
        if n % 2 == 1 {
            panic!("a timer panicked on purpose");
        }
        Err("a timer failed on purpose".into())
    }
}

#[tokio::test]
async fn timers_tick_while_the_processor_runs_and_stop_with_it() {
    let connection = connect().await;
    let processor = Processor::builder(&connection, Clock::default())
        .bind(
            exchange("clock"),
            Queue::new(unique("clock-q")).auto_delete(true),
            "tick",
        )
        .build()
        .await
        .unwrap();
    let clock: Arc<Clock> = Arc::clone(processor.state());
    let handle = processor.handle();
    assert_eq!(
        clock.ticks.load(Ordering::SeqCst),
        0,
        "no tick before the run"
    );
    let running = tokio::spawn(processor.run());
    let started = std::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(1050)).await;
    handle.shutdown();
    assert_eq!(running.await.unwrap().unwrap(), Exit::Shutdown);
    let ticks = clock.ticks.load(Ordering::SeqCst);
    // One per period of the time it ran (a loaded machine makes the sleep longer); the
    // first comes one period after the start.
    let periods = (started.elapsed().as_millis() / 100) as u32;
    assert!(
        (periods / 2..=periods + 1).contains(&ticks),
        "{ticks} ticks in {periods} periods"
    );
    let failures = clock.failures.load(Ordering::SeqCst);
    assert!(
        failures >= 4,
        "a failing and panicking timer goes on: {failures} runs"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        clock.ticks.load(Ordering::SeqCst),
        ticks,
        "stopped with the processor"
    );
    assert_eq!(clock.failures.load(Ordering::SeqCst), failures);
}
