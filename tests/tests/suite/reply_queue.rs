//! RPC answers over a private reply queue, against the real broker: one queue per
//! producer whatever the number of calls, answers matched by correlation id, timeouts and
//! retries as over direct reply-to, the queue gone with the producer's connection.

use std::time::Duration;

use futures_util::future::join_all;
use postage_core::{
    Config, Connection, Error, Processor, Producer, Queue, ReplyQueue, RpcOptions, processor,
};
use postage_tests::{connect, exchange, rabbitmqctl, unique};

struct Doubler;

#[processor]
impl Doubler {
    #[rpc_handler("command", "double")]
    fn double(&self, n: i64) -> i64 {
        n * 2
    }
}

/// The broker-named exclusive queues (`amq.gen-...`) owned by the connections named
/// `name` (tests run in parallel in one process: each names its own): the private reply
/// queues of their producers.
fn my_reply_queues(name: &str) -> Vec<String> {
    let connections: Vec<String> = rabbitmqctl(&["list_connections", "pid", "client_properties"])
        .lines()
        .filter(|line| line.contains(name))
        .filter_map(|line| line.split('\t').next())
        .map(str::to_owned)
        .collect();
    rabbitmqctl(&["list_queues", "name", "owner_pid"])
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .filter(|(name, owner)| {
            name.starts_with("amq.gen-") && connections.iter().any(|c| c == owner)
        })
        .map(|(name, _)| name.to_owned())
        .collect()
}

#[tokio::test]
async fn private_reply_queue_answers_many_calls_over_one_queue() {
    let server = connect().await;
    let ex = exchange("replyq");
    let key = unique("key");
    let doubler = Processor::builder(&server, Doubler)
        .bind(
            ex.clone(),
            Queue::new(unique("replyq")).auto_delete(true),
            key.as_str(),
        )
        .concurrency(4)
        .build()
        .await
        .unwrap();
    let handle = doubler.handle();
    let running = tokio::spawn(doubler.run());

    // A name of its own, to tell its queues from those of tests running beside it.
    let name = unique("replyq-client");
    let config = Config {
        connection_name: Some(name.clone()),
        ..Config::from_env().unwrap()
    };
    let client = Connection::connect(&config).await.unwrap();
    let producer = Producer::builder(&client)
        .destination(ex.clone(), key.as_str())
        .reply_queue(ReplyQueue::Private)
        .build()
        .await
        .unwrap();
    let answers = join_all((0..50_i64).map(|n| {
        let producer = producer.clone();
        async move { producer.call::<i64>("double", n).await }
    }))
    .await;
    for (n, answer) in answers.into_iter().enumerate() {
        assert_eq!(answer.unwrap(), n as i64 * 2);
    }
    let sequential: i64 = producer.call("double", 21).await.unwrap();
    assert_eq!(sequential, 42);

    let mine = my_reply_queues(&name);
    assert_eq!(
        mine.len(),
        1,
        "one private reply queue per producer: {mine:?}"
    );

    // No answer within the timeout: re-sent, then a timeout, over the same queue.
    let options = RpcOptions::new()
        .key("nobody")
        .timeout(Duration::from_millis(200))
        .max_retry(1);
    let error = producer
        .call_with::<i64>("double", 1, options)
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::RpcTimeout { attempts: 2, .. }),
        "{error:?}"
    );
    assert_eq!(my_reply_queues(&name), mine);

    client.close().await.unwrap();
    let mut gone = false;
    for _ in 0..50 {
        if !my_reply_queues(&name).contains(&mine[0]) {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "the private reply queue outlived its connection");

    handle.shutdown();
    running.await.unwrap().unwrap();
    server.close().await.unwrap();
}
