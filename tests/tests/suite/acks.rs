//! A processor coalesces acknowledgements (`basic.ack` with `multiple`) but never
//! acknowledges a message whose handler has not finished, whatever order the deliveries
//! of several queues reach it in; the broker's own counts say so.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use postage_core::{Exit, Processor, ProcessorHandle, Producer, Queue, Route, processor};
use postage_tests::{connect, exchange, message_counts, rabbitmqctl, test_node, unique};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// Message 0 waits until released; every other one finishes at once.
struct Work {
    finished: AtomicUsize,
    release: Notify,
}

#[processor]
impl Work {
    #[message_handler("command", "work")]
    async fn work(&self, n: u64) {
        if n == 0 {
            self.release.notified().await;
        }
        self.finished.fetch_add(1, Ordering::SeqCst);
    }
}

/// Messages ready and unacknowledged in `queue`, as the broker counts them.
fn counts(queue: &str) -> (u64, u64) {
    message_counts(&test_node(), queue)
}

/// Polls `condition` every 200 ms for up to 10 s.
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    for _ in 0..50 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("not reached in 10 s: {what}");
}

/// A running `Work` processor (prefetch 20, 4 at a time) reading `queues` of a new
/// exchange, each bound with its key, and a reliable producer to that exchange.
struct Running {
    work: Arc<Work>,
    handle: ProcessorHandle,
    run: JoinHandle<postage_core::Result<Exit>>,
    producer: Producer,
}

async fn serve(queues: &[(Queue, &str)], shutdown_timeout: Duration) -> Running {
    let connection = connect().await;
    let ex = exchange("acks");
    let work = Work {
        finished: AtomicUsize::new(0),
        release: Notify::new(),
    };
    let mut builder = Processor::builder(&connection, work)
        .prefetch(20)
        .concurrency(4)
        .shutdown_timeout(shutdown_timeout);
    for (queue, key) in queues {
        builder = builder.bind(ex.clone(), queue.clone(), *key);
    }
    let processor = builder.build().await.unwrap();
    let (work, handle) = (Arc::clone(processor.state()), processor.handle());
    let run = tokio::spawn(processor.run());
    let producer = Producer::builder(&connection)
        .destination(ex, queues[0].1)
        .reliable(true)
        .build()
        .await
        .unwrap();
    Running {
        work,
        handle,
        run,
        producer,
    }
}

impl Running {
    fn finished(&self) -> usize {
        self.work.finished.load(Ordering::SeqCst)
    }

    async fn stop(self) {
        self.handle.shutdown();
        assert_eq!(self.run.await.unwrap().unwrap(), Exit::Shutdown);
    }
}

#[tokio::test]
async fn a_slow_handler_holds_back_only_its_own_acknowledgement() {
    let (q1, q2) = (unique("acks-a"), unique("acks-b"));
    let running = serve(
        &[
            (Queue::new(q1.clone()).auto_delete(true), "a"),
            (Queue::new(q2.clone()).auto_delete(true), "b"),
        ],
        Duration::from_secs(5),
    )
    .await;

    // Message 0 first, then 199 more spread over both queues, so deliveries of the two
    // queues interleave on the processor's channel.
    for n in 0..200u64 {
        let key = if n % 3 == 0 { "a" } else { "b" };
        running
            .producer
            .command_to(Route::key(key), "work", n)
            .await
            .unwrap();
    }
    eventually("199 handlers finished", || running.finished() == 199).await;
    // Everything but message 0 is acknowledged; message 0 still holds its place.
    eventually("only the running message unacknowledged", || {
        let ((r1, u1), (r2, u2)) = (counts(&q1), counts(&q2));
        r1 + r2 == 0 && u1 + u2 == 1 && u1 == 1
    })
    .await;

    running.work.release.notify_one();
    eventually("every message acknowledged", || {
        counts(&q1) == (0, 0) && counts(&q2) == (0, 0)
    })
    .await;
    assert_eq!(running.finished(), 200);

    // The channel survived every acknowledgement (an ack of an unknown tag closes it).
    running
        .producer
        .command_to(Route::key("b"), "work", 1000u64)
        .await
        .unwrap();
    eventually("the next message handled", || running.finished() == 201).await;
    eventually("it is acknowledged too", || counts(&q2) == (0, 0)).await;
    running.stop().await;
}

#[tokio::test]
async fn a_stop_acknowledges_what_finished_and_leaves_the_rest_to_the_broker() {
    let queue = unique("acks-stop");
    let running = serve(
        &[(Queue::new(queue.clone()), "a")],
        Duration::from_millis(300),
    )
    .await;
    for n in 0..10u64 {
        running.producer.command("work", n).await.unwrap();
    }
    eventually("9 handlers finished", || running.finished() == 9).await;
    running.stop().await;
    // Message 0 never finished: it is back in the queue, and only it.
    eventually("message 0 back in its queue", || counts(&queue) == (1, 0)).await;
    rabbitmqctl(&["delete_queue", &queue]);
}

#[tokio::test]
async fn a_handler_that_never_finishes_leaves_the_records_bounded() {
    let queue = unique("acks-stuck");
    let running = serve(
        &[(Queue::new(queue.clone()).auto_delete(true), "a")],
        Duration::from_millis(300),
    )
    .await;
    // Message 0 never finishes while 5,000 more go through the other three slots.
    let total = 5_000u64;
    for n in 0..=total {
        running.producer.command("work", n).await.unwrap();
    }
    for _ in 0..300 {
        if running.finished() == total as usize {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        running.finished(),
        total as usize,
        "every other message handled"
    );
    // The prefetch (20) bounds what is unsettled; the records must not grow with the
    // traffic behind the one that never ends.
    let tracked = running.handle.tracked_deliveries();
    assert!(
        tracked <= 2 * 20,
        "{tracked} deliveries tracked after {total} went by a stuck handler"
    );
    eventually("only the stuck message unacknowledged", || {
        counts(&queue) == (0, 1)
    })
    .await;
    running.stop().await;
}
