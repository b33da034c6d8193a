//! The API as a document: the AsyncAPI documents of the demos and of a running
//! application (`postage asyncapi KEY`, over `describe`) parse with the AsyncAPI
//! project's own parser (`@asyncapi/parser`, installed by `scripts/test.sh`), and
//! `postage asyncapi --check` catches each breaking change and passes an additive one.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use postage_app::GenericApplication;
use postage_core::asyncapi::{Component, Document};
use postage_core::schemars::JsonSchema;
use postage_core::{Exchange, Fingerprint, processor};
use postage_tests::{binary, connect, unique};
use serde::Deserialize;

/// Runs `@asyncapi/parser` on `files`: its report, and whether all are valid.
fn parse(files: &[PathBuf]) -> (bool, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("asyncapi/validate.mjs");
    let output = Command::new("node")
        .arg(script)
        .args(files)
        .output()
        .expect("node runs (scripts/test.sh installs @asyncapi/parser)");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), report)
}

fn write(dir: &Path, name: &str, document: &serde_json::Value) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_string_pretty(document).unwrap()).unwrap();
    path
}

fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(unique("asyncapi"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_demos_documents_parse() {
    let dir = scratch();
    let mut files = Vec::new();
    for demo in [
        "basic_echo_receive",
        "advanced_echo_receive",
        "rpc_echo_receive",
        "flaky_worker",
        "ordered_worker",
    ] {
        let output = Command::new(binary(demo))
            .arg("--asyncapi")
            .output()
            .unwrap();
        assert!(output.status.success(), "{demo} --asyncapi: {output:?}");
        let path = dir.join(format!("{demo}.json"));
        std::fs::write(&path, &output.stdout).unwrap();
        files.push(path);
    }
    let (valid, report) = parse(&files);
    assert!(valid, "{report}");
    assert_eq!(
        report.matches("valid AsyncAPI 3.0.0").count(),
        5,
        "{report}"
    );
}

#[derive(Deserialize, JsonSchema)]
#[schemars(crate = "postage_core::schemars")]
#[allow(dead_code)]
struct Order {
    sku: String,
    quantity: u32,
}

/// The shop as it was when its document was saved.
struct Shop;

#[processor]
impl Shop {
    #[rpc_handler("command", "reserve")]
    fn reserve(&self, order: Order) -> bool {
        order.quantity > 0
    }

    #[message_handler("command", "restock")]
    fn restock(&self, sku: &str) {
        let _ = sku;
    }
}

#[derive(Deserialize, JsonSchema)]
#[schemars(crate = "postage_core::schemars")]
#[allow(dead_code)]
struct OrderWithNote {
    sku: String,
    quantity: u32,
    note: Option<String>,
}

/// Additive: an optional field, a new command.
struct Grown;

#[processor]
impl Grown {
    #[rpc_handler("command", "reserve")]
    fn reserve(&self, order: OrderWithNote) -> bool {
        order.quantity > 0
    }

    #[message_handler("command", "restock")]
    fn restock(&self, sku: &str) {
        let _ = sku;
    }

    #[rpc_handler("command", "price")]
    fn price(&self, sku: String) -> u32 {
        sku.len() as u32
    }
}

/// Breaking: `restock` is gone.
struct Shrunk;

#[processor]
impl Shrunk {
    #[rpc_handler("command", "reserve")]
    fn reserve(&self, order: Order) -> bool {
        order.quantity > 0
    }
}

#[derive(Deserialize, JsonSchema)]
#[schemars(crate = "postage_core::schemars")]
#[allow(dead_code)]
struct OrderNoteRequired {
    sku: String,
    quantity: u32,
    note: String,
}

/// Breaking: a field made required.
struct Stricter;

#[processor]
impl Stricter {
    #[rpc_handler("command", "reserve")]
    fn reserve(&self, order: OrderNoteRequired) -> bool {
        order.quantity > 0
    }

    #[message_handler("command", "restock")]
    fn restock(&self, sku: &str) {
        let _ = sku;
    }
}

#[derive(Deserialize, JsonSchema)]
#[schemars(crate = "postage_core::schemars")]
#[allow(dead_code)]
struct OrderByText {
    sku: String,
    quantity: String,
}

/// Breaking: a type changed, in the request and in the answer.
struct Retyped;

#[processor]
impl Retyped {
    #[rpc_handler("command", "reserve")]
    fn reserve(&self, order: OrderByText) -> String {
        order.quantity
    }

    #[message_handler("command", "restock")]
    fn restock(&self, sku: &str) {
        let _ = sku;
    }
}

fn document_of(component: Component) -> serde_json::Value {
    let component = component.bind(Exchange::new("shop-exchange"), "shop-queue", "shop");
    Document::new("Shop", "1.0.0")
        .component(component)
        .to_json()
}

/// `postage asyncapi --from new --check saved`: its exit code and what it printed.
fn check(new: &Path, saved: &Path) -> (i32, String) {
    let Output { status, stdout, .. } = Command::new(binary("postage"))
        .args(["asyncapi", "--from"])
        .arg(new)
        .arg("--check")
        .arg(saved)
        .output()
        .unwrap();
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
    )
}

#[test]
fn check_catches_each_breaking_change_and_passes_an_additive_one() {
    let dir = scratch();
    let saved = write(
        &dir,
        "saved.json",
        &document_of(Component::of::<Shop>("shop")),
    );
    let cases = [
        ("grown", Component::of::<Grown>("shop"), 0, ""),
        ("shrunk", Component::of::<Shrunk>("shop"), 6, "restock"),
        (
            "stricter",
            Component::of::<Stricter>("shop"),
            6,
            "\"note\" is now required",
        ),
        (
            "retyped",
            Component::of::<Retyped>("shop"),
            6,
            "type changed from integer to string",
        ),
    ];
    let mut files = vec![saved.clone()];
    for (name, component, code, says) in cases {
        let new = write(&dir, &format!("{name}.json"), &document_of(component));
        let (exit, printed) = check(&new, &saved);
        assert_eq!(exit, code, "{name}: {printed}");
        assert!(printed.contains(says), "{name}: {printed}");
        files.push(new);
    }
    let (_, retyped) = check(&dir.join("retyped.json"), &saved);
    assert!(
        retyped.contains("the answer"),
        "the answer's type too: {retyped}"
    );
    let (valid, report) = parse(&files);
    assert!(valid, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_application_is_described_and_its_document_parses() {
    let connection = connect().await;
    let name = unique("shop");
    let app = GenericApplication::builder(&connection, Fingerprint::new(&name, "application"))
        .handlers(Shop)
        .build()
        .await
        .unwrap();
    let stop = app.handle();
    let running = tokio::spawn(app.run());
    tokio::time::sleep(Duration::from_millis(300)).await;

    let asked = tokio::task::spawn_blocking(move || {
        Command::new(binary("postage"))
            .args(["asyncapi", &name, "--title", "Shop", "--wait", "2"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(asked.status.success(), "{asked:?}");
    let document: serde_json::Value = serde_json::from_slice(&asked.stdout).unwrap();
    let operations = document["operations"].as_object().unwrap();
    for method in ["reserve", "restock", "ping", "describe", "join_group"] {
        assert!(
            operations
                .keys()
                .any(|id| id.contains(&format!(".{method}."))),
            "{method} in {:?}",
            operations.keys()
        );
    }
    assert!(document["components"]["schemas"]["Order"].is_object());
    let dir = scratch();
    let file = write(&dir, "running.json", &document);
    let (valid, report) = parse(std::slice::from_ref(&file));
    assert!(valid, "{report}");
    // Against itself: nothing breaks.
    assert_eq!(check(&file, &file).0, 0);

    stop.shutdown();
    running.await.unwrap().unwrap();
    connection.close().await.unwrap();
}
