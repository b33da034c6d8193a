//! `postage dashboard` in a real browser: headless Chromium (Debian's `chromium` and
//! `chromium-driver`, installed by `scripts/chromium.sh`) driven through WebDriver against
//! a fleet the test starts in a virtual host of its own: a postage GenericApplication
//! serving metrics and a Python Postage GenericApplication.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use postage_app::GenericApplication;
use postage_core::{Config, Connection, Exit, Fingerprint, Producer, processor};
use postage_tests::{unique, with_metrics};

use crate::python_postage::{
    Running, Vhost, in_ci, peer, postage_program, refusal, skip_for_refusal,
};

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
        let driver = Command::new(driver)
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
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// The dashboard's address, as it prints it first.
fn dashboard(vhost: &Vhost) -> (Running, String) {
    let mut command = postage_program("postage", vhost);
    command.args([
        "dashboard",
        "--listen",
        "127.0.0.1:0",
        "--allow-control",
        "--period",
        "0.5",
    ]);
    let mut running = Running::start("postage dashboard", command);
    let line = running.next_line();
    let url = line
        .strip_prefix("postage dashboard on ")
        .unwrap_or_else(|| panic!("the dashboard names its address first: {line:?}"))
        .to_owned();
    (running, url)
}

/// The text of the first element `css` finds, once one is there within [`PATIENCE`].
async fn text_of(client: &Client, css: &str) -> String {
    client
        .wait()
        .at_most(PATIENCE)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("the page shows {css} within {PATIENCE:?}: {e}"))
        .text()
        .await
        .expect("its text")
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
    let (_dashboard, url) = tokio::task::block_in_place(|| dashboard(&vhost));

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

    // The quit button, confirmed, stops the component it names.
    client
        .find(Locator::Css(&format!("{} button.quit", row(&rust))))
        .await
        .expect("a quit button")
        .click()
        .await
        .expect("clicked");
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
