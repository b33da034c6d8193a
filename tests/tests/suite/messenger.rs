//! Messenger-style addressing and delivery tracking: route and rewrite tables (Qpid
//! Proton's documented examples), tracker states from publisher confirms, explicit
//! accept and reject, the windows, timeouts and interrupts, against the real broker.

use std::time::Duration;

use postage_core::lapin::types::LongString;
use postage_core::{
    Config, Connection, Error, Queue,
    channel::{Channel, DeliveryStatus, Envelope},
    messenger::{ADDRESS_HEADER, Messenger, RouteTable},
};
use postage_tests::{connect, unique};

const PATIENCE: Duration = Duration::from_secs(30);

/// `amqp://host:port/name` on the test broker.
fn address(connection: &Connection, name: &str) -> String {
    format!("amqp://{}/{name}", connection.host())
}

/// A queue of this test, gone when its connection closes.
async fn exclusive_queue(connection: &Connection, prefix: &str) -> (Channel, String) {
    let channel = Channel::open(connection).await.unwrap();
    let name = channel
        .declare_queue(&Queue::new(unique(prefix)).exclusive(true))
        .await
        .unwrap();
    (channel, name)
}

/// How many messages wait in `queue` (not counting those delivered and unsettled).
async fn ready(channel: &Channel, queue: &str) -> u32 {
    channel
        .lapin()
        .queue_declare(
            queue.into(),
            postage_core::lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .unwrap()
        .message_count()
}

#[test]
fn the_route_table_matches_messengers_documented_examples() {
    let mut routes = RouteTable::new();
    routes.add("foo", "amqp://foo.com");
    routes.add("bar/*", "amqp://bar.com/$1");
    routes.add("amqp://%/*", "amqp://user:password@proxy/$1/$2");

    for (address, routed) in [
        // "Any message sent to foo will be routed to amqp://foo.com"
        ("foo", Some("amqp://foo.com")),
        ("foobar", None),
        // "bar/<path> ... to the corresponding path within the amqp://bar.com domain"
        ("bar/baz", Some("amqp://bar.com/baz")),
        ("bar/baz/qux", Some("amqp://bar.com/baz/qux")),
        ("bar", None),
        // "Route all addresses through a single proxy while preserving the original
        // destination": % stops at the first /, * takes the rest.
        (
            "amqp://host/queue",
            Some("amqp://user:password@proxy/host/queue"),
        ),
        (
            "amqp://host:5672/a/b",
            Some("amqp://user:password@proxy/host:5672/a/b"),
        ),
        ("amqp://host", None),
        ("amqps://host/queue", None),
    ] {
        assert_eq!(routes.apply(address).as_deref(), routed, "{address}");
    }

    // The other documented rules.
    let mut others = RouteTable::new();
    others.add("amqp:*", "amqps:$1");
    assert_eq!(
        others.apply("amqp://host/queue").as_deref(),
        Some("amqps://host/queue")
    );
    let mut credentials = RouteTable::new();
    credentials.add("amqp://foo.com/*", "amqp://user:password@foo.com/$1");
    credentials.add("amqp://*", "amqp://user:password@$1");
    assert_eq!(
        credentials.apply("amqp://foo.com/orders").as_deref(),
        Some("amqp://user:password@foo.com/orders")
    );
    assert_eq!(
        credentials.apply("amqp://bar.com/orders").as_deref(),
        Some("amqp://user:password@bar.com/orders")
    );
    let mut everything = RouteTable::new();
    everything.add("*", "amqp://user:password@broker/$1");
    assert_eq!(
        everything.apply("queue").as_deref(),
        Some("amqp://user:password@broker/queue")
    );
    // The table's Debug output does not show the passwords it holds.
    assert!(!format!("{everything:?}").contains("password@"));
}

#[test]
fn the_first_matching_rule_wins() {
    let mut routes = RouteTable::new();
    routes.add("bar/*", "amqp://first/$1");
    routes.add("bar/%", "amqp://second/$1");
    routes.add("*", "amqp://fallback/$1");
    assert_eq!(routes.apply("bar/q").as_deref(), Some("amqp://first/q"));
    assert_eq!(
        routes.apply("baz/q").as_deref(),
        Some("amqp://fallback/baz/q")
    );

    let mut messenger = Messenger::new(Config::default());
    messenger.route("*", "amqp://everything/$1");
    messenger.route("foo", "amqp://never");
    assert_eq!(messenger.routed("foo"), "amqp://everything/foo");
}

#[test]
fn the_default_rewrite_strips_credentials() {
    let mut messenger = Messenger::new(Config::default());
    assert_eq!(
        messenger.rewritten("amqp://user:password@host:5672/queue"),
        "amqp://host:5672/queue"
    );
    assert_eq!(
        messenger.rewritten("amqps://user@host/queue"),
        "amqps://host/queue"
    );
    assert_eq!(
        messenger.rewritten("amqp://host/queue"),
        "amqp://host/queue"
    );
    assert_eq!(messenger.rewritten("queue"), "queue");
    // A rewrite rule replaces the default for the addresses it matches.
    messenger.rewrite("amqp://%@secret/*", "$2");
    assert_eq!(messenger.rewritten("amqp://u:p@secret/q"), "q");
    assert_eq!(messenger.rewritten("amqp://u:p@other/q"), "amqp://other/q");
}

#[tokio::test]
async fn receivers_see_the_address_without_credentials() {
    let connection = connect().await;
    let (channel, queue) = exclusive_queue(&connection, "rewrite").await;
    let messenger = Messenger::with_connection(&connection).await.unwrap();
    let config = connection.config();
    let with_credentials = format!(
        "amqp://{}:{}@{}/{queue}",
        config.user,
        config.password.expose(),
        connection.host()
    );

    let tracker = messenger
        .put(&with_credentials, Envelope::text("hello"))
        .await
        .unwrap();
    assert_eq!(tracker.settled().await, DeliveryStatus::Accepted);

    let message = channel.get(&queue).await.unwrap().expect("delivered");
    assert_eq!(
        message.header_str(ADDRESS_HEADER),
        Some(address(&connection, &queue).as_str())
    );
    message.ack().await.unwrap();
    messenger.stop().await.unwrap();
    connection.close().await.unwrap();
}

#[tokio::test]
async fn a_routed_put_arrives_with_its_original_address() {
    let connection = connect().await;
    let (channel, queue) = exclusive_queue(&connection, "routed").await;
    let mut messenger = Messenger::with_connection(&connection).await.unwrap();
    messenger.route("orders/*", &format!("amqp://{}/$1", connection.host()));

    let tracker = messenger
        .put(&format!("orders/{queue}"), Envelope::text("one book"))
        .await
        .unwrap();
    messenger.send().await.unwrap();
    assert_eq!(tracker.status(), DeliveryStatus::Accepted);
    assert_eq!(messenger.outgoing(), 0);

    let message = channel.get(&queue).await.unwrap().expect("delivered");
    assert_eq!(message.text().unwrap(), "one book");
    let original = format!("orders/{queue}");
    assert_eq!(message.header_str(ADDRESS_HEADER), Some(original.as_str()));
    message.ack().await.unwrap();
    messenger.stop().await.unwrap();
    connection.close().await.unwrap();
}

#[tokio::test]
async fn trackers_resolve_to_accepted_unroutable_and_rejected() {
    let connection = connect().await;
    let (channel, routable) = exclusive_queue(&connection, "routable").await;
    // A queue that refuses every message: no room, and it says so.
    let full = channel
        .declare_queue(
            &Queue::new(unique("full"))
                .exclusive(true)
                .argument("x-max-length", 0_i64)
                .argument("x-overflow", LongString::from("reject-publish")),
        )
        .await
        .unwrap();
    let messenger = Messenger::with_connection(&connection).await.unwrap();

    let accepted = messenger
        .put(&address(&connection, &routable), Envelope::text("kept"))
        .await
        .unwrap();
    let unroutable = messenger
        .put(
            &address(&connection, &unique("no-such-queue")),
            Envelope::text("lost"),
        )
        .await
        .unwrap();
    let rejected = messenger
        .put(&address(&connection, &full), Envelope::text("refused"))
        .await
        .unwrap();

    assert_eq!(accepted.settled().await, DeliveryStatus::Accepted);
    assert_eq!(unroutable.settled().await, DeliveryStatus::Unroutable);
    assert_eq!(rejected.settled().await, DeliveryStatus::Rejected);
    assert_eq!(ready(&channel, &routable).await, 1);
    messenger.stop().await.unwrap();
    connection.close().await.unwrap();
}

#[tokio::test]
async fn received_messages_are_accepted_or_rejected_explicitly() {
    let connection = connect().await;
    let messenger = Messenger::with_connection(&connection).await.unwrap();
    let queue = messenger
        .subscribe_queue(
            &address(&connection, ""),
            &Queue::new(unique("inbox")).exclusive(true),
        )
        .await
        .unwrap();
    for text in ["accept me", "reject me"] {
        messenger
            .put(&address(&connection, &queue), Envelope::text(text))
            .await
            .unwrap();
    }
    messenger.send().await.unwrap();

    let first = tokio::time::timeout(PATIENCE, messenger.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.text().unwrap(), "accept me");
    first.ack().await.unwrap();
    let second = tokio::time::timeout(PATIENCE, messenger.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.text().unwrap(), "reject me");
    second.reject(false).await.unwrap();

    // Both settled: neither waits in the queue nor comes again.
    let channel = Channel::open(&connection).await.unwrap();
    assert_eq!(ready(&channel, &queue).await, 0);
    assert!(messenger.get().is_none());
    messenger.stop().await.unwrap();
    connection.close().await.unwrap();
}

#[tokio::test]
async fn a_subscription_whose_queue_is_deleted_ends_with_an_error() {
    let connection = connect().await;
    let (channel, queue) = exclusive_queue(&connection, "deleted").await;
    let messenger = Messenger::with_connection(&connection).await.unwrap();
    messenger
        .subscribe(&address(&connection, &queue))
        .await
        .unwrap();
    channel.delete_queue(&queue).await.unwrap();
    let ended = tokio::time::timeout(PATIENCE, messenger.recv())
        .await
        .expect("recv hears of it");
    assert!(
        matches!(&ended, Err(Error::SubscriptionEnded { queue: q }) if *q == queue),
        "{ended:?}"
    );
    messenger.stop().await.unwrap();
    connection.close().await.unwrap();
}

#[tokio::test]
async fn the_incoming_window_bounds_unsettled_messages() {
    let connection = connect().await;
    let (channel, queue) = exclusive_queue(&connection, "window-in").await;
    let messenger = Messenger::with_connection(&connection)
        .await
        .unwrap()
        .incoming_window(1);
    for n in 0..3 {
        messenger
            .put(&address(&connection, &queue), Envelope::text(n.to_string()))
            .await
            .unwrap();
    }
    messenger.send().await.unwrap();
    messenger
        .subscribe(&address(&connection, &queue))
        .await
        .unwrap();

    for n in 0..3 {
        let message = tokio::time::timeout(PATIENCE, messenger.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(message.text().unwrap(), n.to_string());
        // With one message unsettled, the broker holds back the rest.
        assert_eq!(ready(&channel, &queue).await, 2 - n);
        message.ack().await.unwrap();
    }
    messenger.stop().await.unwrap();
    connection.close().await.unwrap();
}

#[tokio::test]
async fn the_outgoing_window_bounds_unconfirmed_sends() {
    let connection = connect().await;
    let (_channel, queue) = exclusive_queue(&connection, "window-out").await;
    let messenger = Messenger::with_connection(&connection)
        .await
        .unwrap()
        .outgoing_window(1);
    let mut previous = messenger
        .put(&address(&connection, &queue), Envelope::text("0"))
        .await
        .unwrap();
    for n in 1..20 {
        let tracker = messenger
            .put(&address(&connection, &queue), Envelope::text(n.to_string()))
            .await
            .unwrap();
        // A put waits for room: the one before it is settled by now.
        assert_eq!(previous.status(), DeliveryStatus::Accepted, "message {n}");
        assert!(messenger.outgoing() <= 1);
        previous = tracker;
    }
    messenger.stop().await.unwrap();
    connection.close().await.unwrap();
}

#[tokio::test]
async fn blocking_calls_time_out_and_can_be_interrupted() {
    let connection = connect().await;
    let (_channel, queue) = exclusive_queue(&connection, "quiet").await;

    let waiting = Messenger::with_connection(&connection)
        .await
        .unwrap()
        .timeout(Some(Duration::from_millis(200)));
    waiting
        .subscribe(&address(&connection, &queue))
        .await
        .unwrap();
    assert!(matches!(waiting.recv().await, Err(Error::Timeout { .. })));
    waiting.stop().await.unwrap();

    let blocked = Messenger::with_connection(&connection).await.unwrap();
    blocked
        .subscribe(&address(&connection, &queue))
        .await
        .unwrap();
    // From another task, while recv waits (or before: then the next blocking call).
    let interrupter = blocked.interrupter();
    let other = tokio::spawn(async move { interrupter.interrupt() });
    let outcome = tokio::time::timeout(PATIENCE, blocked.recv())
        .await
        .unwrap();
    assert!(
        matches!(outcome, Err(Error::Interrupted { .. })),
        "{outcome:?}"
    );
    other.await.unwrap();
    // Interrupted once, the messenger works on.
    blocked
        .put(&address(&connection, &queue), Envelope::text("after"))
        .await
        .unwrap();
    let message = tokio::time::timeout(PATIENCE, blocked.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(message.text().unwrap(), "after");
    message.ack().await.unwrap();
    blocked.stop().await.unwrap();
    connection.close().await.unwrap();
}

/// One broker of two goes away: puts to it wait at most the messenger's timeout, and puts
/// to the other go on meanwhile (each broker has a lock of its own).
#[tokio::test(flavor = "multi_thread")]
async fn a_broker_away_holds_up_only_its_own_puts_and_no_longer_than_the_timeout() {
    const NODE: (&str, u16, u16) = ("postage-messenger-away", 5781, 25781);
    let _node = postage_tests::OwnNode::start(NODE.0, NODE.1, NODE.2, "");
    let connection = connect().await;
    let timeout = Duration::from_secs(2);
    let messenger = Messenger::with_connection(&connection)
        .await
        .unwrap()
        .timeout(Some(timeout));
    let (_here, here) = exclusive_queue(&connection, "near").await;
    let away_queue = unique("away");
    let away = format!("amqp://127.0.0.1:{}/{away_queue}", NODE.1);
    // Reached once, so the messenger holds a connection to it.
    let reached = messenger.put(&away, Envelope::text("first")).await.unwrap();
    reached.settled().await;
    let stopped = tokio::task::spawn_blocking(|| postage_tests::ctl(NODE.0, &["stop_app"]));
    stopped.await.unwrap();

    let began = std::time::Instant::now();
    let blocked = messenger.put(&away, Envelope::text("second"));
    let near = async {
        // Once the put to the stopped broker waits for its reconnection.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let tracker = messenger
            .put(&address(&connection, &here), Envelope::text("near"))
            .await
            .unwrap();
        (tracker.settled().await, began.elapsed())
    };
    let (blocked, (near, near_after)) = tokio::time::timeout(Duration::from_secs(20), async {
        tokio::join!(blocked, near)
    })
    .await
    .expect("both puts end");
    assert_eq!(near, DeliveryStatus::Accepted);
    assert!(
        near_after < timeout,
        "the put to the broker that answers waited {near_after:?}"
    );
    assert!(
        matches!(blocked, Err(Error::Timeout { .. })),
        "the put to the broker away ends at its timeout: {blocked:?}"
    );
    assert!(began.elapsed() < timeout * 3, "{:?}", began.elapsed());
}
