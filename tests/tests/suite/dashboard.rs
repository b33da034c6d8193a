//! `postage dashboard` in a real browser: headless Chromium (Debian's `chromium` and
//! `chromium-driver`, installed by `scripts/chromium.sh`) driven through WebDriver against
//! a fleet the test starts in a virtual host of its own (a postage GenericApplication
//! serving metrics and a Python Postage GenericApplication), and on a broker node of the
//! test's own that it restarts.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use postage_app::GenericApplication;
use postage_core::{Config, Connection, Exit, Fingerprint, Host, Password, Producer, processor};
use postage_tests::{OwnNode, binary, ctl, get, start_app, unique, with_metrics};

use crate::python_postage::{Running, Vhost, in_ci, peer, postage_program, refusal};

/// Bound of every wait on the page.
const PATIENCE: Duration = Duration::from_secs(20);

/// The handlers of the postage component the page watches.
struct Worker;

#[processor]
impl Worker {
    #[message_handler("command", "work")]
    fn work(&self, _job: u32) {}
}

/// chromedriver and the browser session it drives; both end when dropped.
struct Browser {
    driver: Child,
    client: Option<Client>,
}

impl Browser {
    /// A headless Chromium session, or `None` (said loudly) when the machine has none;
    /// under CI a missing browser fails the test.
    async fn start(test: &str) -> Option<Self> {
        let driver = Path::new("/usr/bin/chromedriver");
        if !driver.exists() {
            assert!(
                !in_ci(),
                "dashboard::{test}: no /usr/bin/chromedriver (scripts/chromium.sh installs it)"
            );
            eprintln!("dashboard::{test}: DID NOT RUN: no chromedriver; run scripts/chromium.sh");
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        // In a process group of its own with the browser it starts, all killed when done.
        let driver = Command::new(driver)
            .process_group(0)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let mut browser = Self {
            driver,
            client: None,
        };
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": "/usr/bin/chromium",
                "args": ["--headless", "--no-sandbox", "--disable-background-networking",
                         "--disable-dev-shm-usage", "--window-size=1400,900"],
            }),
        );
        let deadline = Instant::now() + PATIENCE;
        loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(capabilities.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
            {
                Ok(client) => {
                    browser.client = Some(client);
                    return Some(browser);
                }
                Err(error) if Instant::now() > deadline => {
                    panic!("chromedriver gives no session within {PATIENCE:?}: {error}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("a session")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Ok(id) = i32::try_from(self.driver.id()) {
            let _ = killpg(Pid::from_raw(id), Signal::SIGKILL);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// The dashboard `command` starts, and its address, as it prints it first.
fn dashboard(command: Command) -> (Running, String) {
    let mut running = Running::start("postage dashboard", command);
    let line = running.next_line();
    let url = line
        .strip_prefix("postage dashboard on ")
        .unwrap_or_else(|| panic!("the dashboard names its address first: {line:?}"))
        .to_owned();
    (running, url)
}

/// The text of the first element `css` finds, once one is there within [`PATIENCE`]
/// (found again when the page redraws it as it is read).
async fn text_of(client: &Client, css: &str) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let read = match client.find(Locator::Css(css)).await {
            Ok(element) => element.text().await,
            Err(error) => Err(error),
        };
        match read {
            Ok(text) => return text,
            Err(error) if Instant::now() > deadline => {
                panic!("the page shows {css} within {PATIENCE:?}: {error}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// The attribute `name` of the first element `css` finds, as [`text_of`] reads a text.
async fn attr_of(client: &Client, css: &str, name: &str) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let read = match client.find(Locator::Css(css)).await {
            Ok(element) => element.attr(name).await,
            Err(error) => Err(error),
        };
        match read {
            Ok(Some(value)) => return value,
            Ok(None) if Instant::now() > deadline => panic!("{css} has no {name}"),
            Err(error) if Instant::now() > deadline => {
                panic!("the page shows {css} within {PATIENCE:?}: {error}")
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Clicks the element `css` finds, found again while the page redraws it under the click
/// (it redraws the fleet at each event).
async fn click(client: &Client, css: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let clicked = match client.find(Locator::Css(css)).await {
            Ok(element) => element.click().await.map(drop),
            Err(error) => Err(error),
        };
        match clicked {
            Ok(()) => return,
            Err(error) if Instant::now() > deadline => panic!("{css} is not clicked: {error}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_lists_the_fleet_shows_a_rate_rising_and_quits_a_component() {
    let test = "the_page_lists_the_fleet_shows_a_rate_rising_and_quits_a_component";
    let Some(python) = peer(test) else { return };
    // A broker that refuses Python Postage's queues (4.0 as the suite sets it) still
    // tests the page with the postage component alone.
    let python = match tokio::task::block_in_place(|| refusal(python)) {
        Some(why) => {
            eprintln!(
                "dashboard::{test}: without a Python component on this broker, which \
                 refuses Python Postage's queues: {why}"
            );
            None
        }
        None => Some(python),
    };
    let Some(browser) = Browser::start(test).await else {
        return;
    };
    let vhost = tokio::task::block_in_place(|| Vhost::new("dash"));
    let mut config = with_metrics(Config::from_env().expect("POSTAGE_* settings"));
    config.vhost.clone_from(&vhost.name);
    let connection = Connection::connect(&config)
        .await
        .expect("the broker answers");

    let rust = unique("dashrs");
    let fingerprint = Fingerprint::new(&rust, "application");
    let app = GenericApplication::builder(&connection, fingerprint)
        .stop_on_signals(false)
        .handlers(Worker)
        .build()
        .await
        .expect("the application starts");
    let running = tokio::spawn(app.run());
    let py = unique("dashpy");
    let _python_app = python.map(|python| {
        let mut app = Running::start("Python generic_app.py", {
            let mut command = python.command("generic_app.py", &vhost);
            command.arg(&py);
            command
        });
        tokio::task::block_in_place(|| app.expect_line("waiting for messages"));
        app
    });
    let mut command = postage_program("postage", &vhost);
    command.args([
        "dashboard",
        "--listen",
        "127.0.0.1:0",
        "--allow-control",
        "--period",
        "0.5",
    ]);
    let (_dashboard, url) = tokio::task::block_in_place(|| dashboard(command));

    let client = browser.client();
    client.goto(&url).await.expect("the page loads");
    // Both components are listed, live, the Python one with its fingerprint.
    let row = |name: &str| format!("tr.component.live[data-name='{name}']");
    let listed = text_of(client, &row(&rust)).await;
    assert!(
        listed.contains("Worker::work") || listed.contains("work"),
        "{listed}"
    );
    if python.is_some() {
        let listed = text_of(client, &row(&py)).await;
        assert!(listed.contains(&py), "{listed}");
    }

    // Its queues' depth and consumers, from the broker.
    let queue = text_of(client, &format!("{} div.queue", row(&rust))).await;
    assert!(queue.ends_with(" / 1"), "one consumer on {queue}");

    // Traffic raises the postage component's rate.
    let producer = Producer::builder(&connection)
        .destination(postage_app::GENERIC_APPLICATION_EXCHANGE, &rust)
        .build()
        .await
        .expect("the producer starts");
    let rate_css = format!("{} td.rate", row(&rust));
    let deadline = Instant::now() + PATIENCE;
    let mut rate = 0.0;
    while rate <= 0.0 {
        assert!(
            Instant::now() < deadline,
            "the page shows no rate within {PATIENCE:?}"
        );
        for job in 0..20 {
            producer.command("work", job).await.expect("sent");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        rate = text_of(client, &rate_css)
            .await
            .trim()
            .parse()
            .unwrap_or(0.0);
    }

    // Its handlers' latency, from its handler duration histogram.
    let latency = text_of(client, &format!("{} div.handler-latency", row(&rust))).await;
    assert!(latency.contains(" ms"), "{latency}");

    // Join group, confirmed, with the group asked for: the page then lists the group.
    let group = unique("dashgroup");
    click(client, &format!("{} button.join_group", row(&rust))).await;
    client
        .send_alert_text(&group)
        .await
        .expect("the group is typed");
    client.accept_alert().await.expect("the group is given");
    client
        .accept_alert()
        .await
        .expect("the confirmation is accepted");
    let listed = text_of(client, &row(&rust)).await;
    let deadline = Instant::now() + PATIENCE;
    let mut listed = listed;
    while !listed.contains(&group) {
        assert!(
            Instant::now() < deadline,
            "the page shows no {group}: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        listed = text_of(client, &row(&rust)).await;
    }

    // Its API on a page of its own: the command it handles, with its parameter.
    let api = attr_of(client, &format!("{} a", row(&rust)), "href").await;
    client
        .goto(&format!("{}{}", url.trim_end_matches('/'), api))
        .await
        .expect("the API page loads");
    text_of(client, "#operations h2").await;
    let mut operations = Vec::new();
    for heading in client
        .find_all(Locator::Css("#operations h2"))
        .await
        .expect("its operations")
    {
        operations.push(heading.text().await.expect("an operation's name"));
    }
    assert!(
        operations.iter().any(|o| o.contains(".work.")),
        "{operations:?}"
    );
    client.goto(&url).await.expect("the page loads again");

    // The quit button, confirmed, stops the component it names.
    click(client, &format!("{} button.quit", row(&rust))).await;
    client
        .accept_alert()
        .await
        .expect("the confirmation is accepted");
    let exit = tokio::time::timeout(PATIENCE, running)
        .await
        .expect("the component quits")
        .expect("its task ends")
        .expect("it ends cleanly");
    assert_eq!(exit, Exit::Quit);
    // The page shows it gone; the Python component stays live.
    text_of(client, &format!("tr.component.gone[data-name='{rust}']")).await;
    if python.is_some() {
        text_of(client, &row(&py)).await;
    }
    if let Some(client) = browser.client.clone() {
        let _ = client.close().await;
    }
}

/// The broker node of the restart test's own.
const NODE: (&str, u16, u16) = ("postage-dash-restart", 5861, 25861);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_no_secret_keeps_controls_off_and_recovers_after_a_broker_restart() {
    let test = "the_page_shows_no_secret_keeps_controls_off_and_recovers_after_a_broker_restart";
    let Some(browser) = Browser::start(test).await else {
        return;
    };
    let (node, port, dist) = NODE;
    let _node = tokio::task::block_in_place(|| OwnNode::start(node, port, dist, ""));
    // A login whose password the page must never show.
    let (user, secret) = ("dashboard-user", unique("Secret-Pw"));
    tokio::task::block_in_place(|| {
        ctl(node, &["add_user", user, secret.as_str()]);
        ctl(
            node,
            &["set_permissions", "-p", "/", user, ".*", ".*", ".*"],
        );
    });
    let config = with_metrics(Config {
        hosts: vec![Host {
            name: "127.0.0.1".into(),
            port,
        }],
        user: user.into(),
        password: Password::new(secret.clone()),
        ..Config::default()
    });
    let connection = Connection::connect(&config)
        .await
        .expect("the node answers");
    let name = unique("dashrestart");
    let app = GenericApplication::builder(&connection, Fingerprint::new(&name, "application"))
        .stop_on_signals(false)
        .handlers(Worker)
        .build()
        .await
        .expect("the application starts");
    let stop = app.handle();
    let running = tokio::spawn(app.run());

    // The dashboard without --allow-control, given the password in its URL.
    let mut command = Command::new(binary("postage"));
    command.args([
        "--url",
        &format!("amqp://{user}:{secret}@127.0.0.1:{port}/%2f"),
        "dashboard",
        "--listen",
        "127.0.0.1:0",
        "--period",
        "0.5",
    ]);
    let (_dashboard, url) = tokio::task::block_in_place(|| dashboard(command));
    let client = browser.client();
    client.goto(&url).await.expect("the page loads");
    let row = format!("tr.component.live[data-name='{name}']");
    text_of(client, &row).await;
    text_of(client, "#broker.up").await;

    // No secret anywhere: not on the page, its data or the component's API.
    let address: std::net::SocketAddr = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .expect("the dashboard's address");
    let id = attr_of(client, &row, "data-id").await;
    let mut seen = vec![client.source().await.expect("the page's source")];
    for path in ["/", "/api/fleet", &format!("/api/asyncapi/{id}")] {
        let (status, body) = tokio::task::block_in_place(|| get(address, path));
        assert_eq!(status, 200, "{path}: {body}");
        seen.push(body);
    }
    for text in &seen {
        assert!(!text.contains(&secret), "the password shows: {text}");
    }
    // The login controls would be sent as is shown, but controls are off: no buttons,
    // and the dashboard refuses one asked for directly.
    assert!(seen[2].contains(user), "{}", seen[2]);
    assert!(
        client
            .find_all(Locator::Css("button.quit"))
            .await
            .expect("a search")
            .is_empty()
    );
    let refused = client
        .execute(
            "return fetch('/api/control', {method: 'POST', headers: {'content-type': \
             'application/json'}, body: JSON.stringify({id: arguments[0], command: 'quit'})})\
             .then((answer) => answer.status)",
            vec![serde_json::json!(id)],
        )
        .await
        .expect("the request is made");
    assert_eq!(refused, serde_json::json!(403));

    // The broker stops: the page says so and keeps the last known fleet; it starts
    // again: the page shows the component live again, found through the broker.
    tokio::task::block_in_place(|| ctl(node, &["stop_app"]));
    text_of(client, "#broker.down").await;
    // Polls fail meanwhile: nothing is marked gone on their account (two polls missed
    // would mark it so).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, body) = tokio::task::block_in_place(|| get(address, "/api/fleet"));
    assert!(body.contains("\"broker\":false"), "{body}");
    assert!(!body.contains("\"live\":false"), "{body}");
    text_of(client, &row).await;
    tokio::task::block_in_place(|| start_app(node));
    text_of(client, "#broker.up").await;
    let fleet = |body: &str| -> serde_json::Value { serde_json::from_str(body).expect("JSON") };
    let deadline = Instant::now() + PATIENCE;
    loop {
        // Live in a discovery after the restart: answered within the last second.
        let (_, body) = tokio::task::block_in_place(|| get(address, "/api/fleet"));
        let fleet = fleet(&body);
        let answered = fleet["broker"] == true
            && fleet["components"].as_array().is_some_and(|all| {
                all.iter().any(|c| {
                    c["name"] == name.as_str()
                        && c["live"] == true
                        && c["silent_for"].as_f64().is_some_and(|s| s < 1.0)
                })
            });
        if answered {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the component is not found again within {PATIENCE:?}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    text_of(client, &row).await;

    stop.shutdown();
    let _ = tokio::time::timeout(PATIENCE, running).await;
    if let Some(client) = browser.client.clone() {
        let _ = client.close().await;
    }
}

/// What watching costs: a hundred postage GenericApplications (in this process, with a
/// pid each of their own, on one connection serving metrics) and a dashboard polling them every second; prints the dashboard's resident
/// memory and the `describe` and `ping` calls one component handled a second. A
/// measurement run by hand (README, "Looking at a fleet"):
/// `cargo test -p postage-tests --test suite dashboard::what_watching_a_hundred_components_costs -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a measurement, run by hand"]
async fn what_watching_a_hundred_components_costs() {
    const COMPONENTS: usize = 100;
    let vhost = tokio::task::block_in_place(|| Vhost::new("dash100"));
    let mut config = with_metrics(Config::from_env().expect("POSTAGE_* settings"));
    config.vhost.clone_from(&vhost.name);
    let connection = Connection::connect(&config)
        .await
        .expect("the broker answers");
    let metrics = connection.metrics_address().expect("a metrics address");
    let prefix = unique("dash100");
    let mut stops = Vec::new();
    for i in 0..COMPONENTS {
        // Each as if in a process of its own: the page knows a component by `pid@host`.
        let mut fingerprint = Fingerprint::new(format!("{prefix}-{i}"), "application");
        fingerprint.pid = format!("{}{i:03}", std::process::id());
        let app = GenericApplication::builder(&connection, fingerprint)
            .stop_on_signals(false)
            .handlers(Worker)
            .build()
            .await
            .expect("the application starts");
        stops.push(app.handle());
        tokio::spawn(app.run());
    }
    let mut command = postage_program("postage", &vhost);
    command.args(["dashboard", "--listen", "127.0.0.1:0"]);
    let (dashboard, url) = tokio::task::block_in_place(|| dashboard(command));
    let address: std::net::SocketAddr = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .expect("the dashboard's address");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, body) = tokio::task::block_in_place(|| get(address, "/api/fleet"));
        let fleet: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        let live = fleet["components"]
            .as_array()
            .map_or(0, |all| all.iter().filter(|c| c["live"] == true).count());
        if live >= COMPONENTS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{live} of {COMPONENTS} shown live"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The builtins' deliveries over 20 s of watching, per component.
    let builtins = async || {
        let text = tokio::task::spawn_blocking(move || {
            let mut response = std::net::TcpStream::connect(metrics).expect("metrics answer");
            response
                .set_read_timeout(Some(Duration::from_secs(60)))
                .expect("a read timeout");
            write!(response, "GET /metrics HTTP/1.0\r\n\r\n").expect("asked");
            let mut text = String::new();
            response.read_to_string(&mut text).expect("read");
            text
        })
        .await
        .expect("the scrape ends");
        ["describe", "ping"].map(|builtin| {
            text.lines()
                .filter(|l| {
                    l.starts_with("postage_deliveries_total{")
                        && l.contains(&format!("::{builtin}\","))
                })
                .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
                .sum::<f64>()
        })
    };
    let before = builtins().await;
    let seconds = 20.0;
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    let after = builtins().await;
    let status = std::fs::read_to_string(format!("/proc/{}/status", dashboard.id()))
        .expect("the dashboard's /proc status");
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS");
    let per = |i: usize| (after[i] - before[i]) / seconds / COMPONENTS as f64;
    println!(
        "dashboard watching {COMPONENTS} components every 1 s: {rss}; per component: \
         {:.2} describe/s, {:.2} ping/s, 1 /metrics scrape a poll",
        per(0),
        per(1)
    );
    assert!(per(0) > 0.0, "the components answered describe");
    for stop in stops {
        stop.shutdown();
    }
}
