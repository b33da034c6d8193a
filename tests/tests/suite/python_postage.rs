//! The real Python peer: the original Python Postage 1.2.1 from PyPI, on pika 0.13.1 and
//! Python 2.7, unconverted (`scripts/python-postage.sh` installs it), talking to postage's
//! demos, its `postage` tool and its library through the broker the suite runs on.
//!
//! The Python programs are in `tests/python/`, equivalents of Postage's echo demos with
//! the names of `demos/src/lib.rs`. Each test runs in a virtual host of its own, made for
//! it and deleted after it, so the demos' fixed names (`echo-exchange`, `echo-queue`)
//! meet neither another test of this module nor the demos' own end-to-end tests, which
//! run in `/` from another test binary, perhaps at the same time.
//!
//! Where Python 2.7 is missing, each test says on the runner's standard error that it did
//! not run against Python Postage, and fails when `CI` is set. Where the broker refuses
//! the queues Python Postage declares (read from the broker: a Python Postage consumer
//! tries and the refusal is printed), the tests that need a Python receiver say so and
//! skip; the others run.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use postage_core::{
    Config, Connection, Exchange, Fingerprint, Processor, Producer, Queue, processor,
};
use postage_tests::{binary, rabbitmqctl, test_node, try_ctl, unique};

/// How long a program may take to print an expected line.
const PATIENCE: Duration = Duration::from_secs(30);

/// How long a one-shot program (a sender, a `postage` command) may run before it is
/// stopped: longer than Postage's RPC timeout (30 s), so a call that is only answered
/// after a timeout and a re-send shows as slow rather than as lost.
const ONE_SHOT: Duration = Duration::from_secs(40);

/// What `scripts/python-postage.sh` provided.
#[derive(Debug)]
pub(super) struct PythonPostage {
    python: PathBuf,
    pythonpath: String,
}

impl PythonPostage {
    /// `tests/python/<program>` run by Python 2.7 with the library on its path, unbuffered,
    /// writing no `.pyc` beside the sources, in virtual host `vhost`.
    pub(super) fn command(&self, program: &str, vhost: &Vhost) -> Command {
        let mut command = Command::new(&self.python);
        command
            .arg("-u")
            .arg(programs().join(program))
            .env("PYTHONPATH", &self.pythonpath)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("POSTAGE_VHOST", &vhost.name);
        command
    }
}

fn programs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("python")
}

/// Writes a line straight to the process's standard error, past the test harness's
/// capture, so it shows whether the test passes or not.
fn announce(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

pub(super) fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// The Python peer, installed once per run; `None` (after saying so loudly) where it
/// cannot be had, which fails the test instead when `CI` is set.
pub(super) fn peer(test: &str) -> Option<&'static PythonPostage> {
    static PEER: OnceLock<Result<PythonPostage, String>> = OnceLock::new();
    let found = PEER.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/python-postage.sh");
        let output = Command::new(&script)
            .output()
            .unwrap_or_else(|e| panic!("{} runs: {e}", script.display()));
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let field = |name: &str| {
            stdout
                .lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix('='))
                .map(str::to_owned)
        };
        match (output.status.code(), field("PYTHON"), field("PYTHONPATH")) {
            (Some(0), Some(python), Some(pythonpath)) => Ok(PythonPostage {
                python: python.into(),
                pythonpath,
            }),
            (code, ..) => {
                // The script's own words, once; each test then says it did not run.
                announce(stderr.trim_end());
                Err(match code {
                    Some(3) => "no Python 2.7 on this machine (scripts/python-postage.sh \
                                exited 3)"
                        .to_owned(),
                    _ => format!(
                        "scripts/python-postage.sh could not install Python Postage \
                         (exit {code:?}){}",
                        if stdout.is_empty() {
                            String::new()
                        } else {
                            format!(": {stdout}")
                        }
                    ),
                })
            }
        }
    });
    match found {
        Ok(peer) => Some(peer),
        Err(why) if in_ci() => panic!(
            "python_postage::{test} cannot run against Python Postage, and CI must not pass \
             without it: {why}"
        ),
        Err(why) => {
            announce(&format!(
                "python_postage::{test}: DID NOT RUN against Python Postage: {why}; it \
                 passes here without testing anything (with CI set, it fails)"
            ));
            None
        }
    }
}

/// What the broker says when Python Postage declares a queue its way (neither durable nor
/// exclusive), asked once per run by `declare_probe.py`; `None` where it takes them.
pub(super) fn refusal(peer: &PythonPostage) -> Option<&'static str> {
    static REFUSAL: OnceLock<Option<String>> = OnceLock::new();
    REFUSAL
        .get_or_init(|| {
            let vhost = Vhost::new("py-probe");
            let queue = unique("py-probe");
            let mut probe = Running::start("declare_probe.py", {
                let mut command = peer.command("declare_probe.py", &vhost);
                command.arg(&queue);
                command
            });
            let done = probe.finish(ONE_SHOT);
            match done.stdout.iter().find_map(|l| l.strip_prefix("refused: ")) {
                // pika prints the broker's text as a Python string: one line here.
                Some(why) => Some(why.replace("\\n", " ")),
                None => {
                    assert_eq!(
                        done.stdout,
                        ["declared"],
                        "declare_probe.py answered oddly: {done:?}"
                    );
                    None
                }
            }
        })
        .as_deref()
}

/// Says that `test` is skipped on this broker and why, in the broker's words.
pub(super) fn skip_for_refusal(test: &str, why: &str) {
    announce(&format!(
        "python_postage::{test}: SKIPPED on this broker (port {}, node {}): it refuses the \
         queues Python Postage declares (neither durable nor exclusive), so no Python \
         receiver can run here; the broker said: {why}",
        std::env::var("POSTAGE_PORT").unwrap_or_else(|_| "5672".into()),
        test_node()
    ));
}

/// A virtual host of a test's own, with the suite's user allowed everything in it; deleted
/// (with all its queues and exchanges) when dropped.
pub(super) struct Vhost {
    pub(super) name: String,
}

impl Vhost {
    pub(super) fn new(prefix: &str) -> Self {
        let name = unique(prefix);
        let user = Config::from_env().expect("POSTAGE_* settings").user;
        rabbitmqctl(&["add_vhost", &name]);
        rabbitmqctl(&["set_permissions", "-p", &name, &user, ".*", ".*", ".*"]);
        Self { name }
    }

    /// A connection of the test process to this virtual host.
    pub(super) async fn connect(&self) -> Connection {
        postage_tests::init_tracing();
        let mut config = Config::from_env().expect("POSTAGE_* settings");
        config.vhost.clone_from(&self.name);
        Connection::connect(&config)
            .await
            .expect("the broker answers in the test's virtual host")
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let _ = try_ctl(&test_node(), &["delete_vhost", &self.name]);
    }
}

/// A program a test started; killed when dropped, however the test ends.
pub(super) struct Running {
    name: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    printed: Vec<String>,
    stderr: Arc<Mutex<String>>,
}

/// How a one-shot program ended.
#[derive(Debug)]
struct Finished {
    /// `None`: it was still running after its time and was killed.
    status: Option<ExitStatus>,
    stdout: Vec<String>,
    stderr: String,
}

impl Finished {
    fn succeeded(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
}

impl Running {
    pub(super) fn start(name: &str, mut command: Command) -> Self {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{name} starts: {e}"));
        let stdout = child.stdout.take().expect("stdout");
        let mut errors = child.stderr.take().expect("stderr");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let collected = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut buffer = [0; 4096];
            while let Ok(n @ 1..) = errors.read(&mut buffer) {
                if let Ok(mut text) = collected.lock() {
                    text.push_str(&String::from_utf8_lossy(&buffer[..n]));
                }
            }
        });
        Self {
            name: name.to_owned(),
            child,
            lines,
            printed: Vec::new(),
            stderr,
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Reads lines until one equals `wanted` and returns those before it; fails the test
    /// on end of output or after [`PATIENCE`], with what the program printed.
    pub(super) fn expect_line(&mut self, wanted: &str) -> Vec<String> {
        let mut seen = Vec::new();
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.printed.push(line.clone());
                    if line == wanted {
                        return seen;
                    }
                    seen.push(line);
                }
                Err(error) => panic!(
                    "{} did not print {wanted:?} ({}); it printed {:?}, and on stderr:\n{}",
                    self.name,
                    match error {
                        mpsc::RecvTimeoutError::Timeout => "not within 30 s",
                        mpsc::RecvTimeoutError::Disconnected => "it ended",
                    },
                    self.printed,
                    self.stderr()
                ),
            }
        }
    }

    /// Its process id.
    pub(super) fn id(&self) -> u32 {
        self.child.id()
    }

    /// The next line, within [`PATIENCE`].
    pub(super) fn next_line(&mut self) -> String {
        let line = self.lines.recv_timeout(PATIENCE).unwrap_or_else(|_| {
            panic!(
                "{} printed nothing more; it printed {:?}, and on stderr:\n{}",
                self.name,
                self.printed,
                self.stderr()
            )
        });
        self.printed.push(line.clone());
        line
    }

    /// Waits until the program exits, within `limit` (it is killed after that), and
    /// returns how, with everything it printed.
    fn finish(&mut self, limit: Duration) -> Finished {
        let deadline = Instant::now() + limit;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break None;
                }
            }
        };
        // The readers end with the pipes: collect what is left of the output.
        let mut stdout = std::mem::take(&mut self.printed);
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
            stdout.push(line);
        }
        std::thread::sleep(Duration::from_millis(50));
        Finished {
            status,
            stdout,
            stderr: self.stderr(),
        }
    }

    /// [`Running::finish`], failing the test unless the program exited successfully.
    fn succeed(&mut self, limit: Duration) -> Finished {
        let done = self.finish(limit);
        assert!(
            done.succeeded(),
            "{} {}; it printed {:?}, and on stderr:\n{}",
            self.name,
            match done.status {
                Some(status) => format!("exited with {status}"),
                None => format!("did not finish within {limit:?} and was stopped"),
            },
            done.stdout,
            done.stderr
        );
        done
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A workspace program (a demo, the `postage` tool) in virtual host `vhost`.
pub(super) fn postage_program(name: &str, vhost: &Vhost) -> Command {
    let mut command = Command::new(binary(name));
    command.env("POSTAGE_VHOST", &vhost.name);
    command
}

#[test]
fn postage_rpc_echo_send_calls_python_rpc_echo_receive() {
    let test = "postage_rpc_echo_send_calls_python_rpc_echo_receive";
    let Some(peer) = peer(test) else { return };
    if let Some(why) = refusal(peer) {
        return skip_for_refusal(test, why);
    }
    let vhost = Vhost::new("py-recv");
    let mut receiver = Running::start(
        "Python rpc_echo_receive.py",
        peer.command("rpc_echo_receive.py", &vhost),
    );
    receiver.expect_line("waiting for messages");

    let started = Instant::now();
    let mut sender = Running::start("rpc_echo_send", postage_program("rpc_echo_send", &vhost));
    let sent = sender.succeed(ONE_SHOT);
    let took = started.elapsed();
    assert_eq!(
        sent.stdout,
        ["RPC message received"],
        "postage's rpc_echo_send prints Python's answer; on stderr:\n{}",
        sent.stderr
    );
    // README: "the first call to a Python receiver costs one extra round", not a timeout.
    assert!(
        took < Duration::from_secs(10),
        "the answer came only after {took:?} (Postage's timeout is 30 s): {}",
        sent.stderr
    );
    receiver.expect_line("RPC test message");
    receiver.expect_line("replied");

    let mut quit = {
        let mut command = postage_program("rpc_echo_send", &vhost);
        command.arg("--quit");
        Running::start("rpc_echo_send --quit", command)
    };
    quit.succeed(ONE_SHOT);
    receiver.expect_line("quit");
    let done = receiver.succeed(Duration::from_secs(10));
    // The call, and at most the one re-send README promises ("the first call to a Python
    // receiver costs one extra round"), nothing more.
    let handled = done
        .stdout
        .iter()
        .filter(|l| *l == "RPC test message")
        .count();
    announce(&format!(
        "python_postage::{test}: Python handled the call {handled} time(s); the answer came in {took:?}"
    ));
    assert!(
        (1..=2).contains(&handled),
        "Python handled the call {handled} times: {:?}",
        done.stdout
    );
}

#[test]
fn python_rpc_echo_send_calls_postage_rpc_echo_receive() {
    let test = "python_rpc_echo_send_calls_postage_rpc_echo_receive";
    let Some(peer) = peer(test) else { return };
    let vhost = Vhost::new("py-send");
    let mut receiver = Running::start(
        "rpc_echo_receive",
        postage_program("rpc_echo_receive", &vhost),
    );
    receiver.expect_line("waiting for messages");

    let mut sender = Running::start(
        "Python rpc_echo_send.py",
        peer.command("rpc_echo_send.py", &vhost),
    );
    let sent = sender.succeed(ONE_SHOT);
    assert_eq!(sent.stdout, ["RPC message received"], "{sent:?}");
    receiver.expect_line("RPC test message");
    receiver.expect_line("replied");

    // README: a call to a command the receiver has no handler for "is answered at once
    // with an error result naming the command (... a Python Postage caller reads it as an
    // error result)".
    let started = Instant::now();
    let mut typo = Running::start("Python rpc_echo_send.py --command reserv", {
        let mut command = peer.command("rpc_echo_send.py", &vhost);
        command.args(["--command", "reserv"]);
        command
    });
    let typo = typo.finish(ONE_SHOT);
    let took = started.elapsed();
    assert_eq!(typo.status.and_then(|s| s.code()), Some(1), "{typo:?}");
    let [failed] = &typo.stdout[..] else {
        panic!("one line: {typo:?}")
    };
    let result: serde_json::Value = failed
        .strip_prefix("RPC failed: ")
        .and_then(|json| serde_json::from_str(json).ok())
        .unwrap_or_else(|| panic!("an error result: {failed}"));
    assert_eq!(result["type"], "error", "{result}");
    assert!(
        result["message"]
            .as_str()
            .is_some_and(|m| m.contains("reserv")),
        "{result}"
    );
    assert!(
        took < Duration::from_secs(10),
        "answered at once, not after {took:?}"
    );

    let mut quit = {
        let mut command = peer.command("rpc_echo_send.py", &vhost);
        command.arg("--quit");
        Running::start("Python rpc_echo_send.py --quit", command)
    };
    quit.succeed(ONE_SHOT);
    let before_quit = receiver.expect_line("quit");
    assert!(before_quit.is_empty(), "{before_quit:?}");
    receiver.succeed(Duration::from_secs(10));
}

/// Runs `postage ARGS` in `vhost` to its end: its standard output, trimmed.
fn postage_tool(vhost: &Vhost, args: &[&str]) -> String {
    let mut command = postage_program("postage", vhost);
    command.args(args);
    let done = Running::start(&format!("postage {}", args.join(" ")), command).succeed(ONE_SHOT);
    done.stdout.join("\n")
}

#[test]
fn postage_rpc_and_ping_reach_a_python_generic_application() {
    let test = "postage_rpc_and_ping_reach_a_python_generic_application";
    let Some(peer) = peer(test) else { return };
    if let Some(why) = refusal(peer) {
        return skip_for_refusal(test, why);
    }
    let vhost = Vhost::new("py-app");
    let name = unique("pyapp");
    let mut app = Running::start("Python generic_app.py", {
        let mut command = peer.command("generic_app.py", &vhost);
        command.arg(&name);
        command
    });
    let queues = app.next_line();
    let queues: Vec<&str> = queues
        .strip_prefix("queues ")
        .unwrap_or_else(|| panic!("generic_app.py names its queues first: {queues:?}"))
        .split(' ')
        .collect();
    let [sid, hid, uid] = queues[..] else {
        panic!("three queues: {queues:?}")
    };
    let (pid, host) = uid.split_once('@').expect("P@H");
    assert_eq!(
        (sid, hid),
        (name.as_str(), format!("{name}@{host}").as_str())
    );
    app.expect_line("waiting for messages");
    // The queues exist and are read, as the broker tells (Python Postage consumes once
    // per binding: four consumers on P@H).
    for queue in [sid, hid, uid] {
        assert!(
            consumers_in(&vhost, queue).is_some_and(|n| n >= 1),
            "{queue} is read"
        );
    }

    // `postage rpc` to its unique queue (key P@H) and to its system-wide queue N (key N/rr).
    let mut user = String::new();
    for key in [uid.to_owned(), format!("{name}/rr")] {
        let fingerprint = postage_tool(&vhost, &["rpc", &key, "ping"]);
        let fingerprint: serde_json::Value = serde_json::from_str(&fingerprint)
            .unwrap_or_else(|e| panic!("ping answers a fingerprint: {e}: {fingerprint}"));
        assert_eq!(fingerprint["name"], name.as_str(), "{fingerprint}");
        assert_eq!(fingerprint["pid"], pid, "{fingerprint}");
        assert_eq!(fingerprint["host"], host, "{fingerprint}");
        assert_eq!(fingerprint["vhost"], vhost.name.as_str(), "{fingerprint}");
        user = fingerprint["user"].as_str().unwrap_or_default().to_owned();
    }
    let parameters = r#"{"text":"from postage","n":[1,2]}"#;
    let echoed = postage_tool(
        &vhost,
        &["rpc", &format!("{name}/rr"), "echo", "--params", parameters],
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&echoed).ok(),
        serde_json::from_str::<serde_json::Value>(parameters).ok(),
        "{echoed}"
    );
    assert!(app.next_line().starts_with("echo "), "{:?}", app.printed);

    // `postage ping` by the unique key and the round-robin one: one line, this app.
    for key in [uid.to_owned(), format!("{name}/rr")] {
        let pinged = postage_tool(&vhost, &["ping", &key]);
        assert_eq!(
            pinged,
            format!(
                "{name} {uid} type=application user={user} vhost={}",
                vhost.name
            ),
            "ping {key}"
        );
    }

    postage_tool(&vhost, &["quit", &name]);
    app.expect_line("quit");
    app.succeed(Duration::from_secs(10));
}

/// How many consumers read `queue` in `vhost`, read back from the broker (`None`: no
/// such queue).
fn consumers_in(vhost: &Vhost, queue: &str) -> Option<u32> {
    rabbitmqctl(&["list_queues", "-p", &vhost.name, "name", "consumers"])
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{queue}\t"))?.parse().ok())
}

/// The postage receiver of the mixed test: answers `echo` with its text and " echoed",
/// after a short delay that depends on the call, so answers come back out of order.
struct MixedEcho {
    handled: AtomicUsize,
}

#[processor]
impl MixedEcho {
    #[rpc_handler("command", "echo")]
    async fn echo(&self, text: String) -> String {
        self.handled.fetch_add(1, Ordering::SeqCst);
        let n: u64 = text
            .rsplit(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(n % 7)).await;
        format!("{text} echoed")
    }
}

/// How many calls the postage caller has in flight at once, per wave.
const IN_FLIGHT: usize = 64;
/// How many calls the Python caller makes, one after the other.
const PYTHON_CALLS: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_caller_and_a_postage_caller_share_a_postage_receiver() {
    let test = "a_python_caller_and_a_postage_caller_share_a_postage_receiver";
    let Some(peer) = peer(test) else { return };
    let vhost = tokio::task::block_in_place(|| Vhost::new("py-mixed"));
    let connection = vhost.connect().await;
    let exchange = Exchange::named(unique("py-mixed"));
    let key = unique("py-mixed-rk");
    let receiver = Processor::builder(
        &connection,
        MixedEcho {
            handled: AtomicUsize::new(0),
        },
    )
    .bind(
        exchange.clone(),
        Queue::new(unique("py-mixed-q")),
        key.clone(),
    )
    .concurrency(32)
    .prefetch(64)
    .fingerprint(Fingerprint::new("mixed_echo", "test"))
    .build()
    .await
    .expect("the receiver starts");
    let state = Arc::clone(receiver.state());
    let handle = receiver.handle();
    let serving = tokio::spawn(receiver.run());
    let producer = Producer::builder(&connection)
        .destination(exchange.clone(), key.clone())
        .fingerprint(Fingerprint::new("mixed_caller", "test"))
        .rpc_defaults(Duration::from_secs(10), 0)
        .build()
        .await
        .expect("the producer starts");

    let mut python = Running::start("Python rpc_echo_send.py --calls", {
        let mut command = peer.command("rpc_echo_send.py", &vhost);
        command.args([
            "--exchange",
            exchange.name(),
            "--key",
            &key,
            "--calls",
            &PYTHON_CALLS.to_string(),
            "--text",
            "python",
        ]);
        command
    });
    // Python's calls are flowing: now postage's join them, wave after wave, until Python
    // is done (at least two waves).
    let first = tokio::task::block_in_place(|| python.next_line());
    assert_eq!(first, "0: python 0 echoed", "{:?}", python.stderr());
    let mut waves = 0;
    let mut overlapped = 0;
    let mut sent = 0;
    loop {
        let python_running = python.child.try_wait().ok().flatten().is_none();
        if !python_running && waves >= 2 {
            break;
        }
        let calls = (0..IN_FLIGHT).map(|i| {
            let text = format!("postage {}", sent + i);
            let producer = &producer;
            async move {
                let answer: postage_core::Result<String> = producer.call("echo", &text).await;
                (text, answer)
            }
        });
        for (text, answer) in futures_util::future::join_all(calls).await {
            let answer = answer.unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(
                answer,
                format!("{text} echoed"),
                "each call gets its own answer"
            );
        }
        sent += IN_FLIGHT;
        waves += 1;
        if python_running && python.child.try_wait().ok().flatten().is_none() {
            overlapped += 1;
        }
        assert!(waves < 200, "the Python caller never finished");
    }
    // `done.stdout` holds everything Python printed, the first line included.
    let done = tokio::task::block_in_place(|| python.succeed(ONE_SHOT));
    let expected: Vec<String> = (0..PYTHON_CALLS)
        .map(|i| format!("{i}: python {i} echoed"))
        .collect();
    let wrong: Vec<(&String, Option<&String>)> = expected
        .iter()
        .zip(done.stdout.iter().map(Some).chain(std::iter::repeat(None)))
        .filter(|(wanted, got)| Some(*wanted) != *got)
        .collect();
    assert!(
        wrong.is_empty() && done.stdout.len() == PYTHON_CALLS,
        "Python gets each of its own answers, in order; (wanted, got): {wrong:?}; \
         {} lines, beyond the calls: {:?}",
        done.stdout.len(),
        done.stdout.get(PYTHON_CALLS..)
    );
    announce(&format!(
        "python_postage::{test}: {PYTHON_CALLS} Python calls one after the other, {sent} \
         postage calls in {waves} waves of {IN_FLIGHT} at once ({overlapped} waves wholly \
         while Python was calling)"
    ));
    assert!(
        overlapped >= 1,
        "no wave of postage calls ran entirely while Python was calling ({waves} waves)"
    );
    // Every call was handled once: nothing was sent again, nothing lost.
    assert_eq!(
        state.handled.load(Ordering::SeqCst),
        PYTHON_CALLS + sent,
        "{PYTHON_CALLS} Python calls and {sent} postage calls, each handled once"
    );
    handle.shutdown();
    serving
        .await
        .expect("the receiver's task")
        .expect("the receiver stops");
    connection.close().await.expect("closed");
}

/// How many calls a postage caller has in flight at once to a Python receiver.
const TO_PYTHON_IN_FLIGHT: usize = 64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_postage_calls_in_flight_to_a_python_receiver_each_get_their_own_answer() {
    let test = "many_postage_calls_in_flight_to_a_python_receiver_each_get_their_own_answer";
    let Some(peer) = peer(test) else { return };
    if let Some(why) = tokio::task::block_in_place(|| refusal(peer)) {
        return skip_for_refusal(test, why);
    }
    let vhost = tokio::task::block_in_place(|| Vhost::new("py-many"));
    let name = unique("pymany");
    let mut app = Running::start("Python generic_app.py", {
        let mut command = peer.command("generic_app.py", &vhost);
        command.arg(&name);
        command
    });
    tokio::task::block_in_place(|| app.expect_line("waiting for messages"));
    let connection = vhost.connect().await;
    // Python's answers carry no correlation id; the default producer, no option set.
    let producer = Producer::builder(&connection)
        .destination(
            postage_app::GENERIC_APPLICATION_EXCHANGE,
            format!("{name}/rr"),
        )
        .fingerprint(Fingerprint::new("many_caller", "test"))
        .build()
        .await
        .expect("the producer starts");
    let started = Instant::now();
    // Two waves: the first meets a receiver postage knows nothing of, the second one it
    // has learnt answers without an id.
    for wave in 0..2 {
        let calls = (0..TO_PYTHON_IN_FLIGHT).map(|i| {
            let text = format!("postage {wave}-{i}");
            let producer = &producer;
            async move {
                let answer: postage_core::Result<String> = producer.call("echo", &text).await;
                (text, answer)
            }
        });
        for (text, answer) in futures_util::future::join_all(calls).await {
            let answer = answer.unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(answer, text, "each call gets its own answer");
        }
    }
    let took = started.elapsed();
    producer
        .command("quit", serde_json::json!({}))
        .await
        .expect("quit sent");
    let done = tokio::task::block_in_place(|| {
        app.expect_line("quit");
        app.succeed(Duration::from_secs(10))
    });
    let handled = done
        .stdout
        .iter()
        .filter(|l| l.starts_with("echo postage "))
        .count();
    announce(&format!(
        "python_postage::{test}: {} calls answered in {took:?}; Python handled {handled} \
         (calls sent again on a queue of their own count twice)",
        2 * TO_PYTHON_IN_FLIGHT
    ));
    assert!(
        took < Duration::from_secs(20),
        "answered without waiting out Postage's 30 s timeout, not in {took:?}"
    );
    connection.close().await.expect("closed");
}
