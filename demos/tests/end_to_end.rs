//! Every demo pair, run end to end as real processes against the broker.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a demo may take to print an expected line before the test fails.
const PATIENCE: Duration = Duration::from_secs(30);

/// The demos share `echo-queue`, so they run one pair at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

struct Receiver {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Receiver {
    fn start(program: &str) -> Self {
        Self::start_with(program, &[])
    }

    fn start_with(program: &str, args: &[&str]) -> Self {
        let mut child = Command::new(program)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("the demo starts");
        let stdout = child.stdout.take().expect("stdout");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let mut receiver = Self { child, lines };
        receiver.expect_line("waiting for messages");
        receiver
    }

    /// Reads lines until one equals `wanted`; panics on end of output or after
    /// [`PATIENCE`] without it, so a stuck demo fails the test instead of hanging it.
    fn expect_line(&mut self, wanted: &str) -> Vec<String> {
        let mut seen = Vec::new();
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line == wanted => return seen,
                Ok(line) => seen.push(line),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    panic!(
                        "the demo did not print {wanted:?} within {PATIENCE:?}; it printed {seen:?}"
                    );
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("the demo ended before printing {wanted:?}; it printed {seen:?}")
                }
            }
        }
    }

    /// Waits for the process to exit by itself, within `limit`.
    fn wait_exit(mut self, limit: Duration) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                assert!(status.success(), "the receiver exited with {status}");
                return;
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                panic!("the receiver did not stop after quit");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Receiver {
    /// A failed test leaves no receiver behind to take the next test's messages.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .expect("the demo runs");
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn basic_echo() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut receiver = Receiver::start(env!("CARGO_BIN_EXE_basic_echo_receive"));
    run(env!("CARGO_BIN_EXE_basic_echo_send"), &[]);
    receiver.expect_line("A test message");
    run(env!("CARGO_BIN_EXE_basic_echo_send"), &["--quit"]);
    receiver.expect_line("quit");
    receiver.wait_exit(Duration::from_secs(10));
}

#[test]
fn advanced_echo_shares_and_fans_out() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut first = Receiver::start(env!("CARGO_BIN_EXE_advanced_echo_receive"));
    let mut second = Receiver::start(env!("CARGO_BIN_EXE_advanced_echo_receive"));
    run(env!("CARGO_BIN_EXE_advanced_echo_send"), &[]);
    // The shared message was sent before the fanout one; once both receivers printed the
    // fanout, give the shared one a moment to be handled before asking them to quit.
    let mut first_saw = first.expect_line("A fanout test message");
    let mut second_saw = second.expect_line("A fanout test message");
    std::thread::sleep(Duration::from_millis(300));
    run(env!("CARGO_BIN_EXE_advanced_echo_send"), &["--quit"]);
    first_saw.push("A fanout test message".into());
    second_saw.push("A fanout test message".into());
    first_saw.extend(first.expect_line("quit"));
    second_saw.extend(second.expect_line("quit"));
    let count = |seen: &[String], text: &str| seen.iter().filter(|l| *l == text).count();
    for seen in [&first_saw, &second_saw] {
        assert_eq!(
            count(seen, "A fanout test message"),
            1,
            "every receiver gets the fanout: {seen:?}"
        );
        assert!(
            seen.iter()
                .any(|l| l.starts_with("Message fingerprint: name=echo_send type=application")),
            "{seen:?}"
        );
    }
    assert_eq!(
        count(&first_saw, "A single test message") + count(&second_saw, "A single test message"),
        1,
        "the shared queue delivers once: {first_saw:?} {second_saw:?}"
    );
    first.wait_exit(Duration::from_secs(10));
    second.wait_exit(Duration::from_secs(10));
}

#[test]
fn rpc_echo() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut receiver = Receiver::start(env!("CARGO_BIN_EXE_rpc_echo_receive"));
    let answer = run(env!("CARGO_BIN_EXE_rpc_echo_send"), &[]);
    assert_eq!(answer.trim(), "RPC message received");
    receiver.expect_line("RPC test message");
    receiver.expect_line("replied");
    run(env!("CARGO_BIN_EXE_rpc_echo_send"), &["--quit"]);
    receiver.expect_line("quit");
    receiver.wait_exit(Duration::from_secs(10));
}

/// Sends one command to the echo receivers with postage itself.
fn send_command(name: &str) {
    with_broker(|connection| async move {
        let producer =
            demos::echo_producer(&connection, postage_core::Fingerprint::new("test", "test"))
                .await
                .expect("producer");
        producer
            .producer()
            .command(name, serde_json::json!({}))
            .await
            .expect("sent");
    });
}

/// Runs `work` on a runtime of its own with a connection to the broker.
fn with_broker<F, T>(work: impl FnOnce(postage_core::Connection) -> F) -> T
where
    F: std::future::Future<Output = T>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let connection = postage_core::Connection::from_env().await.expect("broker");
        let done = work(connection.clone()).await;
        connection.close().await.expect("closed");
        done
    })
}

/// Sends `flaky_worker` a command, as `postage send --exchange flaky-exchange flaky` does.
fn send_flaky(name: &str, parameters: serde_json::Value) {
    with_broker(|connection| async move {
        let producer = postage_core::Producer::builder(&connection)
            .destination(postage_core::Exchange::new("flaky-exchange"), "flaky")
            .build()
            .await
            .expect("producer");
        producer.command(name, parameters).await.expect("sent");
    });
}

/// Takes the message of job `id` out of `flaky-queue.dead`: the error header it carries.
fn dead_letter_of(id: u32) -> Option<String> {
    with_broker(|connection| async move {
        let channel = connection.open_channel().await.expect("channel");
        let mut found = None;
        while let Ok(Some(message)) = channel
            .basic_get(
                "flaky-queue.dead".into(),
                postage_core::lapin::options::BasicGetOptions { no_ack: true },
            )
            .await
        {
            let body = String::from_utf8_lossy(&message.delivery.data).into_owned();
            if body.contains(&format!("\"id\": {id}")) || body.contains(&format!("\"id\":{id}")) {
                let headers = message.properties.headers().clone().unwrap_or_default();
                found = match headers.inner().get(postage_core::ERROR_HEADER) {
                    Some(postage_core::lapin::types::AMQPValue::LongString(error)) => {
                        Some(error.to_string())
                    }
                    other => Some(format!("{other:?}")),
                };
            }
        }
        found
    })
}

#[test]
fn flaky_worker_retries_with_backoff_then_dead_letters() {
    // Its own queue: no need to wait for the echo demos' turn.
    let id = std::process::id();
    let mut worker = Receiver::start(env!("CARGO_BIN_EXE_flaky_worker"));
    send_flaky("work", serde_json::json!({ "id": id }));
    worker.expect_line(&format!("attempt 1 id={id}"));
    let first = Instant::now();
    worker.expect_line(&format!("attempt 2 id={id}"));
    assert!(
        first.elapsed() >= Duration::from_millis(900),
        "the first retry waits 1 s"
    );
    worker.expect_line(&format!("attempt 3 id={id}"));
    assert!(
        first.elapsed() >= Duration::from_millis(2900),
        "the second waits 2 s more"
    );
    worker.expect_line(&format!("done id={id}"));
    send_flaky("quit", serde_json::json!({}));
    worker.expect_line("quit");
    worker.wait_exit(Duration::from_secs(10));

    let mut failing = Receiver::start_with(env!("CARGO_BIN_EXE_flaky_worker"), &["--always-fail"]);
    let id = id + 1;
    send_flaky("work", serde_json::json!({ "id": id }));
    for attempt in 1..=3 {
        failing.expect_line(&format!("attempt {attempt} id={id}"));
    }
    send_flaky("quit", serde_json::json!({}));
    let after = failing.expect_line("quit");
    assert!(after.is_empty(), "no fourth attempt: {after:?}");
    failing.wait_exit(Duration::from_secs(10));
    let error = dead_letter_of(id).expect("the job is in flaky-queue.dead");
    assert!(error.contains("failed at attempt 3 on purpose"), "{error}");
}

#[test]
fn restart_replaces_the_process_in_place() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut receiver = Receiver::start(env!("CARGO_BIN_EXE_rpc_echo_receive"));
    let pid = receiver.child.id();
    let started = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    send_command("restart");
    // The same process (same pid, same pipe) prints its start-up line again: a new run.
    receiver.expect_line("waiting for messages");
    assert!(
        receiver.child.try_wait().expect("wait").is_none(),
        "still running"
    );
    let now = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    assert_eq!(
        started.split(' ').nth(21),
        now.split(' ').nth(21),
        "same process, not a new one"
    );
    let answer = run(env!("CARGO_BIN_EXE_rpc_echo_send"), &[]);
    assert_eq!(answer.trim(), "RPC message received");
    send_command("quit");
    receiver.expect_line("quit");
    receiver.wait_exit(Duration::from_secs(10));
}

#[test]
fn iaas_server_answers_the_iaas_client() {
    // Its own queue (`iaas`): no need to wait for the echo demos' turn.
    let mut server = Receiver::start(env!("CARGO_BIN_EXE_iaas_server"));
    let answer = run(env!("CARGO_BIN_EXE_iaas_client"), &[]);
    let answer: serde_json::Value = serde_json::from_str(answer.trim()).expect("a JSON answer");
    assert_eq!(
        answer,
        serde_json::json!({"ip": "172.30.40.201", "user": "cloud", "password": "123456"})
    );

    let status = Command::new("kill")
        .args(["-INT", &server.child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let printed = server.expect_line("quit");
    let request = printed
        .iter()
        .find_map(|line| line.strip_prefix("receive message: "))
        .unwrap_or_else(|| panic!("the server printed the request: {printed:?}"));
    let request: serde_json::Value = serde_json::from_str(request).expect("JSON");
    assert_eq!(
        request,
        serde_json::json!({"cpu": 2, "mem": 4096, "disk": 40, "os": {"type": "ubuntu", "version": "14.04"}})
    );
    server.wait_exit(Duration::from_secs(10));
}

/// Runs `program` with `env` set, expecting it to stop at start: exit code 1 and exactly
/// one line on stderr, `Error: ` and what to change, never a panic trace.
fn refused_start(program: &str, env: &[(&str, &str)], wanted: &str) {
    // Five times: lapin's I/O thread used to panic when it was reconnecting as the
    // program's runtime shut down, now and then.
    for _ in 0..5 {
        let output = Command::new(program)
            .envs(env.iter().copied())
            .env_remove("RUST_LOG")
            .output()
            .expect("the demo runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line: {stderr}");
        assert!(
            lines[0].starts_with("Error: ") && lines[0].contains(wanted),
            "{stderr}"
        );
    }
}

#[test]
fn a_refused_start_is_one_readable_line_without_a_panic_trace() {
    refused_start(
        env!("CARGO_BIN_EXE_rpc_echo_receive"),
        &[("POSTAGE_VHOST", "postage-no-such-vhost")],
        "refused virtual host \"postage-no-such-vhost\" (POSTAGE_VHOST)",
    );
    refused_start(
        env!("CARGO_BIN_EXE_rpc_echo_receive"),
        &[("POSTAGE_PASSWORD", "not-the-password")],
        "(POSTAGE_USER, POSTAGE_PASSWORD)",
    );
    // Where the broker refuses transient shared queues (RabbitMQ 4.0 as the project's
    // scripts run it; 4.3.6 permits them by default), forcing them makes the broker close
    // the whole connection.
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    let denies = match var("POSTAGE_RABBITMQ_DENY_TRANSIENT").as_str() {
        "1" => true,
        "0" => false,
        _ => {
            matches!(var("POSTAGE_RABBITMQ").as_str(), "4" | "4.0")
                && var("POSTAGE_RABBITMQ_PERMIT_DEPRECATED") != "1"
        }
    };
    if denies {
        refused_start(
            env!("CARGO_BIN_EXE_iaas_server"),
            &[("POSTAGE_QUEUE_SHAPE", "transient")],
            "refused to declare queue \"iaas\"",
        );
    }
}

/// Sends `ordered_worker` a command, as `postage send --exchange steps-exchange step` does.
fn send_steps(commands: Vec<(&'static str, serde_json::Value)>) {
    with_broker(|connection| async move {
        let producer = postage_core::Producer::builder(&connection)
            .destination(postage_core::Exchange::new("steps-exchange"), "step")
            .build()
            .await
            .expect("producer");
        for (name, parameters) in commands {
            producer.command(name, parameters).await.expect("sent");
        }
    });
}

#[test]
fn ordered_worker_keeps_each_keys_order() {
    // Its own queue (`steps`): no need to wait for the echo demos' turn.
    let mut worker = Receiver::start_with(
        env!("CARGO_BIN_EXE_ordered_worker"),
        &["--concurrency", "8"],
    );
    let run = std::process::id();
    let keys: Vec<String> = (0..4).map(|k| format!("{run}-{k}")).collect();
    let mut steps = Vec::new();
    for seq in 0..30 {
        for key in &keys {
            steps.push(("step", serde_json::json!({"key": key, "seq": seq})));
        }
    }
    send_steps(steps);
    let mut lines = Vec::new();
    while lines.len() < keys.len() * 30 {
        match worker.lines.recv_timeout(PATIENCE) {
            Ok(line) if line.starts_with("key=") => lines.push(line),
            Ok(_) => {}
            Err(_) => panic!("the demo printed only {lines:?}"),
        }
    }
    send_steps(vec![("quit", serde_json::json!({}))]);
    worker.expect_line("quit");
    for key in &keys {
        let seqs: Vec<u32> = lines
            .iter()
            .filter_map(|line| line.strip_prefix(&format!("key={key} seq=")))
            .map(|seq| seq.parse().expect("a number"))
            .collect();
        assert_eq!(
            seqs,
            (0..30).collect::<Vec<_>>(),
            "key {key} in order: {lines:?}"
        );
    }
    worker.wait_exit(Duration::from_secs(10));
}
