//! GenericApplication end to end: instances of the `group_app` demo as real processes,
//! driven through the `postage` CLI and a producer, against the real broker.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postage_app::GENERIC_APPLICATION_EXCHANGE;
use postage_core::{Producer, Route};
use postage_tests::{binary, connect, rabbitmqctl, unique};
use serde_json::Value;

const PATIENCE: Duration = Duration::from_secs(10);

/// A binary of the workspace, built by `cargo build --workspace` (scripts/test.sh does).
/// One running `group_app`, its output collected line by line.
struct App {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    pid: String,
    host: String,
}

impl App {
    fn start(name: &str, groups: &[&str]) -> Self {
        let mut command = Command::new(binary("group_app"));
        command
            .args(["--name", name])
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for group in groups {
            command.args(["--group", group]);
        }
        let mut child = command.spawn().expect("group_app starts");
        let stdout = child.stdout.take().expect("stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let mut app = Self {
            child,
            lines,
            pid: String::new(),
            host: String::new(),
        };
        let ready = app
            .wait_line(|l| l.starts_with("ready "))
            .expect("the app gets ready");
        let (pid, host) = ready["ready ".len()..].split_once('@').expect("pid@host");
        app.pid = pid.to_owned();
        app.host = host.to_owned();
        app
    }

    /// `pid@host`: this instance's own address.
    fn uid(&self) -> String {
        format!("{}@{}", self.pid, self.host)
    }

    fn wait_line(&self, wanted: impl Fn(&str) -> bool) -> Option<String> {
        let start = Instant::now();
        while start.elapsed() < PATIENCE {
            if let Some(line) = self.lines.lock().unwrap().iter().find(|l| wanted(l)) {
                return Some(line.clone());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    fn count(&self, line: &str) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| *l == line)
            .count()
    }

    fn hellos(&self, prefix: &str) -> Vec<String> {
        let wanted = format!("hello {prefix}");
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with(&wanted))
            .cloned()
            .collect()
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the CLI; returns its exit code and standard output.
fn cli(args: &[&str]) -> (i32, String) {
    let (code, out, _) = cli_all(args);
    (code, out)
}

/// Runs the CLI; returns its exit code, standard output and standard error.
fn cli_all(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(binary("postage"))
        .args(args)
        .output()
        .expect("postage runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn cli_ok(args: &[&str]) -> String {
    let (code, out) = cli(args);
    assert_eq!(code, 0, "postage {args:?} failed");
    out
}

/// Waits until `done` holds or the patience runs out, then says whether it held.
fn eventually(mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < PATIENCE {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    done()
}

/// Lets in-flight messages land before asserting that something did not arrive.
fn settle() {
    std::thread::sleep(Duration::from_millis(400));
}

async fn producer() -> Producer {
    let connection = connect().await;
    Producer::builder(&connection)
        .destination(GENERIC_APPLICATION_EXCHANGE, "unused")
        .reliable(true)
        .build()
        .await
        .expect("producer")
}

async fn hello(producer: &Producer, key: &str, text: &str) {
    producer
        .command_to(Route::key(key), "hello", text)
        .await
        .expect("routed");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_address_reaches_what_the_contract_says() {
    let name = unique("app");
    let apps: Vec<App> = (0..3).map(|_| App::start(&name, &[])).collect();
    let host = apps[0].host.clone();
    let producer = producer().await;

    for i in 0..30 {
        hello(&producer, &format!("{name}/rr"), &format!("rr-{i}")).await;
    }
    assert!(eventually(|| apps
        .iter()
        .map(|a| a.hellos("rr-").len())
        .sum::<usize>()
        >= 30));
    settle();
    let mut all: Vec<String> = apps.iter().flat_map(|a| a.hellos("rr-")).collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 30, "every message handled exactly once");
    assert_eq!(
        apps.iter().map(|a| a.hellos("rr-").len()).sum::<usize>(),
        30,
        "no duplicates"
    );
    assert!(
        apps.iter().all(|a| !a.hellos("rr-").is_empty()),
        "each instance gets some"
    );

    for (key, text) in [
        (name.clone(), "fan-name"),
        (format!("@{host}"), "fan-host"),
        (format!("{name}@{host}"), "fan-name-host"),
    ] {
        hello(&producer, &key, text).await;
        assert!(
            eventually(|| apps.iter().all(|a| a.count(&format!("hello {text}")) == 1)),
            "{key} reaches all three"
        );
    }
    hello(&producer, &format!("{name}@{host}/rr"), "rr-name-host").await;
    assert!(eventually(|| apps
        .iter()
        .map(|a| a.count("hello rr-name-host"))
        .sum::<usize>()
        == 1));
    hello(&producer, &apps[1].uid(), "only-you").await;
    settle();
    let got: Vec<usize> = apps.iter().map(|a| a.count("hello only-you")).collect();
    assert_eq!(got, vec![0, 1, 0], "P@H reaches only that process");
}

#[tokio::test(flavor = "multi_thread")]
async fn groups_at_start_and_joined_and_left_at_run_time() {
    let name = unique("grp");
    let (a, b, c) = (
        App::start(&name, &["g"]),
        App::start(&name, &["g"]),
        App::start(&name, &[]),
    );
    let producer = producer().await;
    let fanout = format!("{name}#g");
    let round_robin = format!("{name}#g/rr");

    hello(&producer, &fanout, "group-all").await;
    assert!(eventually(
        || a.count("hello group-all") == 1 && b.count("hello group-all") == 1
    ));
    hello(&producer, &round_robin, "group-one").await;
    assert!(eventually(|| a.count("hello group-one")
        + b.count("hello group-one")
        == 1));
    settle();
    assert_eq!(
        c.count("hello group-all") + c.count("hello group-one"),
        0,
        "not a member"
    );

    cli_ok(&["join-group", &c.uid(), "g"]);
    assert!(c.wait_line(|l| l == "join_group g").is_some());
    hello(&producer, &fanout, "joined-all").await;
    assert!(
        eventually(|| [&a, &b, &c]
            .iter()
            .all(|x| x.count("hello joined-all") == 1)),
        "the fanout key reaches the new member"
    );
    for i in 0..12 {
        hello(&producer, &round_robin, &format!("joined-rr-{i}")).await;
    }
    assert!(eventually(|| [&a, &b, &c]
        .iter()
        .map(|x| x.hellos("joined-rr-").len())
        .sum::<usize>()
        == 12));
    assert!(
        !c.hellos("joined-rr-").is_empty(),
        "the round-robin key reaches the new member too"
    );

    cli_ok(&["leave-group", &c.uid(), "g"]);
    assert!(c.wait_line(|l| l == "leave_group g").is_some());
    hello(&producer, &fanout, "left-all").await;
    for i in 0..12 {
        hello(&producer, &round_robin, &format!("left-rr-{i}")).await;
    }
    assert!(eventually(
        || a.count("hello left-all") == 1 && b.count("hello left-all") == 1
    ));
    assert!(
        eventually(|| a.hellos("left-rr-").len() + b.hellos("left-rr-").len() == 12),
        "the others keep serving the group"
    );
    settle();
    assert_eq!(
        c.count("hello left-all") + c.hellos("left-rr-").len(),
        0,
        "neither key reaches it after leaving"
    );
    drop((a, b, c));
    rabbitmqctl(&["delete_queue", &fanout]);
}

#[tokio::test(flavor = "multi_thread")]
async fn ping_and_components_list_every_instance() {
    let name = unique("ping");
    let apps: Vec<App> = (0..3).map(|_| App::start(&name, &["blue"])).collect();
    let out = cli_ok(&["--json", "ping", &name, "--wait", "1"]);
    let mut pids: Vec<String> = out
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).expect("one JSON object a line")["pid"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    pids.sort();
    let mut expected: Vec<String> = apps.iter().map(|a| a.pid.clone()).collect();
    expected.sort();
    assert_eq!(pids, expected, "every instance answers the fanout ping");

    let out = cli_ok(&["--json", "components", "--wait", "1"]);
    let mine: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|c| c["fingerprint"]["name"] == name.as_str())
        .collect();
    assert_eq!(mine.len(), 3, "{out}");
    for component in &mine {
        assert_eq!(component["groups"], serde_json::json!(["blue"]));
        let handlers: BTreeSet<String> = component["handlers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                format!(
                    "{}:{}/{}",
                    h["category"].as_str().unwrap(),
                    h["type"].as_str().unwrap(),
                    h["name"].as_str().unwrap()
                )
            })
            .collect();
        for expected in [
            "rpc:command/ping",
            "rpc:command/describe",
            "message:command/hello",
            "message:command/join_group",
        ] {
            assert!(
                handlers.contains(expected),
                "{expected} missing from {handlers:?}"
            );
        }
    }
    let text = cli_ok(&["components"]);
    assert!(
        text.lines()
            .filter(|l| l.starts_with(&format!("{name} ")))
            .count()
            == 3,
        "{text}"
    );
    drop(apps);
    rabbitmqctl(&["delete_queue", &format!("{name}#blue")]);
}

#[tokio::test(flavor = "multi_thread")]
async fn quit_stops_one_and_restart_brings_it_back_in_place() {
    let name = unique("ctl");
    let mut apps: Vec<App> = (0..3).map(|_| App::start(&name, &[])).collect();
    cli_ok(&["quit", &apps[0].uid()]);
    assert!(apps[0].wait_line(|l| l == "quit").is_some());
    assert!(
        eventually(|| apps[0].child.try_wait().ok().flatten().is_some()),
        "the process ended"
    );
    let answers = cli_ok(&["ping", &name, "--wait", "1"]);
    assert_eq!(
        answers.lines().count(),
        2,
        "the other two keep serving: {answers}"
    );

    let before = apps[1]
        .lines
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.starts_with("ready "))
        .count();
    cli_ok(&["restart", &apps[1].uid()]);
    assert!(eventually(|| apps[1]
        .lines
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.starts_with("ready "))
        .count()
        == before + 1));
    assert!(
        apps[1].child.try_wait().unwrap().is_none(),
        "the same process goes on"
    );
    let ready = apps[1]
        .lines
        .lock()
        .unwrap()
        .iter()
        .rev()
        .find(|l| l.starts_with("ready "))
        .cloned()
        .unwrap();
    assert_eq!(
        ready,
        format!("ready {}", apps[1].uid()),
        "same pid after the restart"
    );
    let answers = cli_ok(&["--json", "ping", &apps[1].uid(), "--wait", "1"]);
    assert_eq!(answers.lines().count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_fails_clearly() {
    let (code, _) = cli(&["send", &unique("nobody"), "hello"]);
    assert_eq!(code, 4, "an unroutable key");
    let (code, _) = cli(&["rpc", &unique("nobody"), "ping", "--timeout", "0.5"]);
    assert_eq!(code, 4, "an unroutable call");
    let (code, _) = cli(&["--url", "amqp://guest:guest@127.0.0.1:1/", "ping", "x"]);
    assert_eq!(code, 5, "no broker there");
    let (code, _) = cli(&["send", "k", "c", "--params", "{not json"]);
    assert_eq!(code, 2, "bad parameters");
    // A key that routes to a queue nobody reads: the call times out.
    let connection = connect().await;
    let name = unique("mute");
    let unread = postage_core::Consumer::builder(&connection)
        .bind(
            GENERIC_APPLICATION_EXCHANGE,
            postage_core::Queue::new(unique("unread")).auto_delete(true),
            name.as_str(),
        )
        .build()
        .await
        .unwrap();
    let (code, _) = cli(&["rpc", &name, "ping", "--timeout", "0.5"]);
    assert_eq!(code, 3, "no answer in time");
    drop(unread);
    // A command the component has no handler for: an error answer at once.
    let name = unique("typo");
    let app = App::start(&name, &[]);
    let (code, out) = cli(&["--json", "rpc", &name, "no-such-rpc", "--timeout", "5"]);
    assert_eq!(code, 1, "an error answer");
    let answer: Value = serde_json::from_str(out.trim()).expect("the error answer as JSON");
    assert_eq!(answer["type"], "error");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("\"no-such-rpc\""),
        "{answer}"
    );
    drop(app);
    connection.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_tool_speaks_as_its_login_on_any_exchange_and_tells_of_fanouts() {
    use postage_app::GenericApplication;
    use postage_core::{ControlPolicy, Fingerprint, Queue};

    // The login's user_id is on what the tool and producers send, so a policy naming it
    // obeys our own `postage quit`.
    let connection = connect().await;
    let login = connection.config().user.clone();
    let name = unique("guarded");
    let fingerprint = Fingerprint::new(&name, "application").with_pid(unique("pid"));
    let app = GenericApplication::builder(&connection, fingerprint)
        .control_policy(ControlPolicy::Users(vec![login.clone()]))
        .stop_on_signals(false)
        .build()
        .await
        .unwrap();
    let uid = app.addresses().uid().name().to_owned();
    let running = tokio::spawn(app.run());
    cli_ok(&["quit", &uid]);
    let exit = tokio::time::timeout(PATIENCE, running)
        .await
        .expect("the application quits")
        .unwrap()
        .unwrap();
    assert_eq!(exit, postage_core::Exit::Quit);

    // Declared as the tool declares an exchange it is given: Postage's defaults.
    let ex = postage_core::Exchange::named(unique("tool"));
    let key = unique("key");
    let mut reader = postage_core::Consumer::builder(&connection)
        .bind(
            ex.clone(),
            Queue::new(unique("tool-q")).auto_delete(true),
            key.as_str(),
        )
        .build()
        .await
        .unwrap();
    reader.start().await.unwrap();
    producer()
        .await
        .command_to(
            postage_core::Route::pairs([(ex.clone(), key.clone())]),
            "hello",
            "x",
        )
        .await
        .unwrap();
    // --exchange is global: before or after the subcommand.
    cli_ok(&["--exchange", ex.name(), "send", &key, "hello"]);
    cli_ok(&["send", &key, "hello", "--exchange", ex.name()]);
    for _ in 0..3 {
        let delivery = postage_tests::next_within(&mut reader, PATIENCE)
            .await
            .expect("a message");
        assert_eq!(
            delivery.properties().user_id().as_ref().map(|u| u.as_str()),
            Some(login.as_str())
        );
        delivery.ack().await.unwrap();
    }
    reader.close().await.unwrap();
    let channel = connection.open_channel().await.unwrap();
    channel
        .exchange_delete(ex.name().into(), Default::default())
        .await
        .unwrap();

    // A fanout key reaches every instance; the tool says how many answered.
    let name = unique("fanned");
    let apps: Vec<App> = (0..2).map(|_| App::start(&name, &[])).collect();
    let (code, out, err) = cli_all(&["rpc", &name, "ping"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&name), "{out}");
    assert!(err.contains("2 components answered"), "{err}");
    drop(apps);

    // Nothing running: an empty list, not an error.
    let vhost = unique("empty-vhost");
    rabbitmqctl(&["add_vhost", &vhost]);
    rabbitmqctl(&["set_permissions", "-p", &vhost, &login, ".*", ".*", ".*"]);
    let port = std::env::var("POSTAGE_PORT").unwrap_or_else(|_| "5672".into());
    let url = format!("amqp://guest:guest@127.0.0.1:{port}/{vhost}");
    let (code, out, err) = cli_all(&["--url", &url, "--json", "components", "--wait", "0.5"]);
    rabbitmqctl(&["delete_vhost", &vhost]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "[]");
    connection.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn queues_and_bindings_are_the_contracts_table() {
    let name = unique("tbl");
    let app = App::start(&name, &["g"]);
    let (p, h) = (&app.pid, &app.host);
    let listing = rabbitmqctl(&[
        "list_bindings",
        "source_name",
        "destination_name",
        "routing_key",
    ]);
    let mut mine: Vec<(String, String, String)> = listing
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            let ours = [
                name.clone(),
                format!("{name}@{h}"),
                format!("{p}@{h}"),
                format!("{name}#g"),
            ];
            (f.len() == 3 && ours.iter().any(|q| q == f[1]))
                .then(|| (f[0].to_owned(), f[1].to_owned(), f[2].to_owned()))
        })
        .collect();
    mine.sort();
    let gae = "generic-application-exchange".to_owned();
    let mut expected = vec![
        (gae.clone(), name.clone(), format!("{name}/rr")),
        (gae.clone(), format!("{name}@{h}"), format!("{name}@{h}/rr")),
        (gae.clone(), format!("{p}@{h}"), name.clone()),
        (gae.clone(), format!("{p}@{h}"), format!("@{h}")),
        (gae.clone(), format!("{p}@{h}"), format!("{name}@{h}")),
        (gae.clone(), format!("{p}@{h}"), format!("{p}@{h}")),
        (gae.clone(), format!("{p}@{h}"), format!("{name}#g")),
        (gae.clone(), format!("{name}#g"), format!("{name}#g/rr")),
        // postage's one addition: discovery, on an exchange of its own.
        (
            "postage-discovery".to_owned(),
            format!("{p}@{h}"),
            String::new(),
        ),
    ];
    // Every queue is also bound to the default exchange under its own name.
    for queue in [
        name.clone(),
        format!("{name}@{h}"),
        format!("{p}@{h}"),
        format!("{name}#g"),
    ] {
        expected.push((String::new(), queue.clone(), queue));
    }
    expected.sort();
    assert_eq!(mine, expected);
    let queues = rabbitmqctl(&["list_queues", "name", "auto_delete"]);
    for (queue, auto_delete) in [
        (name.clone(), "true"),
        (format!("{name}@{h}"), "true"),
        (format!("{p}@{h}"), "true"),
        (format!("{name}#g"), "false"),
    ] {
        assert!(
            queues
                .lines()
                .any(|l| l == format!("{queue}\t{auto_delete}")),
            "{queue} auto_delete={auto_delete} in {queues}"
        );
    }
    drop(app);
    rabbitmqctl(&["delete_queue", &format!("{name}#g")]);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_logging_producer_hears_of_groups() {
    use postage_app::GenericApplication;
    use postage_core::{Consumer, Fingerprint, Queue};
    use postage_tests::{drain, exchange};

    let connection = connect().await;
    let logs = exchange("logs");
    let mut log_reader = Consumer::builder(&connection)
        .bind(
            logs.clone(),
            Queue::new(unique("log")).auto_delete(true),
            "log",
        )
        .build()
        .await
        .unwrap();
    log_reader.start().await.unwrap();
    let logger = Producer::builder(&connection)
        .destination(logs, "log")
        .build()
        .await
        .unwrap();
    let name = unique("logged");
    let fingerprint = Fingerprint::new(&name, "application").with_pid(unique("pid"));
    let app = GenericApplication::builder(&connection, fingerprint)
        .logger(logger)
        .build()
        .await
        .unwrap();
    let uid = app.addresses().uid().name().to_owned();
    let handle = app.handle();
    let running = tokio::spawn(app.run());
    let producer = producer().await;
    producer
        .command_to(
            Route::key(&uid),
            "join_group",
            serde_json::json!({"group_name": "g"}),
        )
        .await
        .unwrap();
    producer
        .command_to(
            Route::key(&uid),
            "leave_group",
            serde_json::json!({"group_name": "g"}),
        )
        .await
        .unwrap();
    let lines = drain(&mut log_reader, Duration::from_millis(800)).await;
    assert_eq!(
        lines,
        vec![
            format!("Joining group {name}#g"),
            format!("Leaving group {name}#g")
        ]
    );
    handle.shutdown();
    running.await.unwrap().unwrap();
    rabbitmqctl(&["delete_queue", &format!("{name}#g")]);
}

#[tokio::test(flavor = "multi_thread")]
async fn control_commands_can_be_restricted_to_some_users() {
    use postage_app::GenericApplication;
    use postage_core::lapin::BasicProperties;
    use postage_core::lapin::options::BasicPublishOptions;
    use postage_core::{ControlPolicy, Fingerprint};

    let connection = connect().await;
    let name = unique("guarded");
    let fingerprint = Fingerprint::new(&name, "application").with_pid(unique("pid"));
    let app = GenericApplication::builder(&connection, fingerprint)
        .control_policy(ControlPolicy::Users(vec!["admin".into()]))
        .stop_on_signals(false)
        .build()
        .await
        .unwrap();
    let uid = app.addresses().uid().name().to_owned();
    let handle = app.handle();
    let running = tokio::spawn(app.run());
    let producer = producer().await;
    let publish = |name: &str, parameters: serde_json::Value| {
        let body = serde_json::to_vec(&serde_json::json!({"type": "command", "name": name, "category": "message", "content": {"parameters": parameters}})).unwrap();
        let channel = producer
            .channel()
            .expect("a producer on a connection")
            .clone();
        let uid = uid.clone();
        async move {
            channel
                .basic_publish(
                    GENERIC_APPLICATION_EXCHANGE.name().into(),
                    uid.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default().with_user_id("guest".into()),
                )
                .await
                .unwrap();
        }
    };
    publish("join_group", serde_json::json!({"group_name": "g"})).await;
    publish("quit", serde_json::json!({})).await;
    let ping = producer
        .call_with::<Value>(
            "ping",
            serde_json::json!({}),
            postage_core::RpcOptions::new().key(&uid),
        )
        .await
        .unwrap();
    assert_eq!(
        ping["name"],
        name.as_str(),
        "still serving after an unauthorised quit"
    );
    let out = cli_ok(&["--json", "rpc", &uid, "describe"]);
    let description: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        description["value"]["groups"],
        serde_json::json!([]),
        "the unauthorised join was ignored"
    );
    handle.shutdown();
    running.await.unwrap().unwrap();
}

/// A group whose queue the broker refuses (declared elsewhere with other arguments) is
/// not joined: the application does not list it, and keeps nothing bound for it; a group
/// the broker takes is joined.
#[tokio::test(flavor = "multi_thread")]
async fn a_group_the_broker_refuses_is_not_recorded_as_joined() {
    use postage_core::lapin::options::QueueDeclareOptions;
    use postage_core::lapin::types::{AMQPValue, FieldTable};
    let connection = connect().await;
    let name = unique("refusedgroup");
    let app = postage_app::GenericApplication::builder(
        &connection,
        postage_core::Fingerprint::new(&name, "application"),
    )
    .stop_on_signals(false)
    .build()
    .await
    .unwrap();
    let uid = app.addresses().uid().name().to_owned();
    let group_queue = app.addresses().group_queue("taken").name().to_owned();
    let handle = app.handle();
    let running = tokio::spawn(app.run());
    // Declared first, with an argument postage does not ask for: its declaration is refused.
    let channel = connection.open_channel().await.unwrap();
    let mut arguments = FieldTable::default();
    arguments.insert("x-max-length".into(), AMQPValue::LongLongInt(1));
    channel
        .queue_declare(
            group_queue.as_str().into(),
            // Durable, which every broker takes; refused to postage for its argument.
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            arguments,
        )
        .await
        .unwrap();
    let producer = producer().await;
    let to_app = || Route::key(uid.clone());
    producer
        .command_to(
            to_app(),
            "join_group",
            serde_json::json!({"group_name": "taken"}),
        )
        .await
        .unwrap();
    producer
        .command_to(
            to_app(),
            "join_group",
            serde_json::json!({"group_name": "free"}),
        )
        .await
        .unwrap();
    let groups = || async {
        let described = producer
            .call_with::<Value>(
                "describe",
                serde_json::json!({}),
                postage_core::RpcOptions::new().key(&uid),
            )
            .await
            .unwrap();
        described["groups"].clone()
    };
    let deadline = Instant::now() + PATIENCE;
    while groups().await != serde_json::json!(["free"]) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(groups().await, serde_json::json!(["free"]));
    let bound = postage_tests::binding_keys(GENERIC_APPLICATION_EXCHANGE.name(), &uid);
    assert!(
        !bound.iter().any(|key| key.ends_with("#taken")),
        "nothing stays bound for the refused group: {bound:?}"
    );
    handle.shutdown();
    running.await.unwrap().unwrap();
    rabbitmqctl(&["delete_queue", &group_queue]);
    let _ = channel.close(200, "done".into()).await;
}
