//! Long calls that show they are alive, against the real broker: a caller that asks for
//! progress beats gets them while the handler runs, with the values the handler gives
//! `Reply::progress`, and is not cut off by its call timeout; a caller that does not ask
//! (as every Python Postage caller) is sent nothing new; a server SIGKILLed mid-call is
//! noticed a beat later, not at the end of the call's timeout.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use postage_core::lapin::BasicProperties;
use postage_core::lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use postage_core::lapin::types::{AMQPValue, FieldTable};
use postage_core::{
    Connection, Error, Exchange, HandlerError, PROGRESS_HEADER, Processor, ProcessorHandle,
    Producer, Queue, Reply, ReplyQueue, RpcOptions, processor,
};
use postage_tests::{binary, connect, unique};
use serde_json::{Value, json};

/// Works for the milliseconds it is given, telling its progress at each third.
struct Long;

#[processor]
impl Long {
    #[rpc_handler("command", "long")]
    async fn long(&self, ms: u64, reply: Reply) -> Result<(), HandlerError> {
        for third in 1..=3 {
            tokio::time::sleep(Duration::from_millis(ms / 3)).await;
            if third < 3 {
                reply.progress(json!({"third": third})).await?;
            }
        }
        reply.success(ms).await?;
        Ok(())
    }
}

/// Runs `Long` on a queue of its own; returns its routing key and handle.
async fn serve(connection: &Connection) -> (String, ProcessorHandle) {
    let key = unique("long");
    let long = Processor::builder(connection, Long)
        .bind(
            Exchange::DEFAULT,
            Queue::new(key.as_str()).auto_delete(true),
            key.as_str(),
        )
        .concurrency(4)
        .build()
        .await
        .unwrap();
    let handle = long.handle();
    tokio::spawn(long.run());
    (key, handle)
}

/// A call of `long` for `ms` that asks for a beat every 200 ms and times out after 1 s;
/// what it answered and the beats it saw.
async fn call_with_beats(
    producer: &Producer,
    ms: u64,
    reply_queue: ReplyQueue,
) -> (postage_core::Result<u64>, Vec<Value>) {
    let beats = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&beats);
    let options = RpcOptions::new()
        .timeout(Duration::from_secs(1))
        .max_retry(0)
        .reply_queue(reply_queue)
        .progress(Duration::from_millis(200))
        .on_progress(move |value| seen.lock().unwrap().push(value));
    let answer = producer.call_with::<u64>("long", ms, options).await;
    let beats = beats.lock().unwrap().clone();
    (answer, beats)
}

#[tokio::test]
async fn a_call_with_beats_outlives_its_timeout_and_sees_the_handlers_progress() {
    let connection = connect().await;
    let (key, server) = serve(&connection).await;
    let producer = Producer::builder(&connection)
        .destination(Exchange::DEFAULT, key.as_str())
        .build()
        .await
        .unwrap();

    // A 10-minute handler and a 30 s timeout, shortened: 6 s and 1 s; on the shared reply
    // queue, on one of its own and over direct reply-to, side by side.
    let (shared, own, direct) = tokio::join!(
        call_with_beats(&producer, 6000, ReplyQueue::Private),
        call_with_beats(&producer, 6000, ReplyQueue::PerCall),
        call_with_beats(&producer, 6000, ReplyQueue::DirectReplyTo),
    );
    for (how, (answer, beats)) in [("shared", shared), ("own", own), ("direct", direct)] {
        assert_eq!(answer.unwrap(), 6000, "{how}");
        let plain = beats.iter().filter(|b| b.is_null()).count();
        // A beat every 200 ms for 6 s: 30, give or take a busy machine.
        assert!(plain >= 10, "{how}: {plain} plain beats in 6 s");
        let told: Vec<&Value> = beats.iter().filter(|b| !b.is_null()).collect();
        assert_eq!(told, [&json!({"third": 1}), &json!({"third": 2})], "{how}");
        eprintln!(
            "{how} reply queue: {plain} plain beats, {} values",
            told.len()
        );
    }

    // Without beats the same call is cut off by its timeout.
    let cut = producer
        .call_with::<u64>(
            "long",
            3000,
            RpcOptions::new()
                .timeout(Duration::from_secs(1))
                .max_retry(0),
        )
        .await;
    assert!(matches!(cut, Err(Error::RpcTimeout { .. })), "{cut:?}");
    server.shutdown();
}

/// The messages a raw caller (as Python Postage's) gets on its reply queue for one call
/// of `long` for 1 s, with `headers`: for each, whether it carried the progress header.
async fn raw_call(connection: &Connection, key: &str, headers: FieldTable) -> Vec<bool> {
    let channel = connection.open_channel().await.unwrap();
    let reply = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut answers = channel
        .basic_consume(
            reply.name().clone(),
            "raw".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let body = json!({
        "type": "command", "name": "long", "category": "rpc", "version": "2",
        "fingerprint": {"name": "python", "type": "caller", "pid": "1", "host": "h",
                        "user": "u", "vhost": "/"},
        "content": {"parameters": 900}, "_reserved": {}
    });
    channel
        .basic_publish(
            "".into(),
            key.into(),
            BasicPublishOptions::default(),
            &serde_json::to_vec(&body).unwrap(),
            BasicProperties::default()
                .with_content_type("application/json".into())
                .with_reply_to(reply.name().clone())
                .with_headers(headers),
        )
        .await
        .unwrap();
    let mut seen = Vec::new();
    while let Ok(Some(Ok(delivery))) =
        tokio::time::timeout(Duration::from_secs(3), answers.next()).await
    {
        let beat = delivery
            .properties
            .headers()
            .as_ref()
            .is_some_and(|h| h.inner().contains_key(PROGRESS_HEADER));
        seen.push(beat);
        if !beat {
            break;
        }
    }
    let _ = channel.close(200, "done".into()).await;
    seen
}

#[tokio::test]
async fn a_caller_that_does_not_ask_for_beats_is_sent_only_its_answer() {
    let connection = connect().await;
    let (key, server) = serve(&connection).await;

    // As Python Postage calls: no header, so nothing but the answer.
    let python = raw_call(&connection, &key, FieldTable::default()).await;
    assert_eq!(python, [false], "only the answer");

    // The same call asking for a beat every 100 ms.
    let mut asking = FieldTable::default();
    asking.insert(PROGRESS_HEADER.into(), AMQPValue::LongLongInt(100));
    let beating = raw_call(&connection, &key, asking).await;
    assert_eq!(beating.last(), Some(&false), "the answer last: {beating:?}");
    let beats = beating.iter().filter(|b| **b).count();
    assert!(beats >= 4, "beats while the handler ran 0.9 s: {beating:?}");
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_killed_mid_call_is_noticed_a_beat_later() {
    let queue = unique("killed");
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
    let seen = |line: &str| lines.lock().unwrap().iter().any(|l| l == line);
    let waited = |what: &str| {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if seen(what) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    };
    assert!(waited("ready"));

    let connection = connect().await;
    let producer = Producer::builder(&connection)
        .destination(Exchange::DEFAULT, queue.as_str())
        .build()
        .await
        .unwrap();
    let timeout = Duration::from_secs(10);
    let calling = tokio::spawn(async move {
        let options = RpcOptions::new()
            .timeout(timeout)
            .max_retry(0)
            .progress(Duration::from_millis(200));
        let answer = producer.call_with::<u64>("long", 60_000, options).await;
        (answer, Instant::now())
    });
    assert!(waited("started long 60000"));
    std::thread::sleep(Duration::from_millis(500));
    let killed = Instant::now();
    let status = Command::new("kill")
        .args(["-KILL", &worker.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let _ = worker.wait();

    let (answer, ended) = calling.await.unwrap();
    assert!(
        matches!(answer, Err(Error::RpcTimeout { .. })),
        "{answer:?}"
    );
    let noticed = ended.duration_since(killed);
    eprintln!(
        "server SIGKILLed mid-call: noticed after {noticed:?} (beat 200 ms, timeout {timeout:?})"
    );
    assert!(
        noticed < timeout / 2,
        "noticed after {noticed:?}, not a beat or two after the kill"
    );
    let channel = connection.open_channel().await.unwrap();
    channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn postage_rpc_progress_prints_the_beats_as_they_come() {
    let connection = connect().await;
    let (key, server) = serve(&connection).await;
    let output = tokio::task::spawn_blocking(move || {
        Command::new(binary("postage"))
            .args(["--exchange", "", "rpc", &key, "long", "--params", "1500"])
            .args(["--timeout", "1", "--progress", "200ms"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.last(), Some(&"1500"), "{stdout}");
    assert!(lines.contains(&"... {\"third\":1}"), "{stdout}");
    assert!(
        lines.iter().filter(|l| **l == "... working").count() >= 3,
        "{stdout}"
    );
    server.shutdown();
}
