//! `postage dashboard`: a live web page of the fleet, served by the tool itself.
//!
//! One task polls the fleet every period (discovery's `describe`, then each component's
//! `/metrics` when it serves them) and publishes what it found; the page's files are
//! embedded in the binary and follow it through server-sent events. Controls (quit,
//! restart, join and leave group) are refused unless [`Options::allow_control`] is set;
//! they are sent as the dashboard's login, as the `user_id` a receiver's
//! [`ControlPolicy`](postage_core::ControlPolicy) checks. The page never sees the broker's
//! URL, password or any error text that could hold them.

mod fleet;
mod scrape;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::Stream;
use postage_core::asyncapi::Document;
use postage_core::{Connection, Fingerprint, Producer};
use serde::Deserialize;
use tokio::sync::{Mutex, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::WatchStream;

use crate::addresses::GENERIC_APPLICATION_EXCHANGE;
use fleet::Fleet;

/// The page, embedded in the binary.
const PAGE: &str = include_str!("page.html");
/// The page of one component's API.
const API_PAGE: &str = include_str!("api.html");

/// How the dashboard runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Whether the page may quit, restart and regroup components.
    pub allow_control: bool,
    /// How often the fleet is polled (at least 200 ms).
    pub period: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            allow_control: false,
            period: Duration::from_secs(1),
        }
    }
}

/// What the routes share.
#[derive(Debug)]
struct Shared {
    connection: Connection,
    options: Options,
    user: String,
    fleet: Mutex<Fleet>,
    /// The snapshot the page shows, as JSON.
    snapshot: watch::Receiver<Arc<str>>,
}

/// Serves the dashboard on `listener` until the task is dropped, polling the fleet of
/// `connection`'s virtual host. `user` is the login controls are sent as.
pub async fn serve(
    connection: Connection,
    user: String,
    listener: tokio::net::TcpListener,
    options: Options,
) -> std::io::Result<()> {
    let period = options.period.max(Duration::from_millis(200));
    let (publish, snapshot) = watch::channel(Arc::<str>::from("{}"));
    let shared = Arc::new(Shared {
        connection,
        options,
        user,
        fleet: Mutex::new(Fleet::new(period)),
        snapshot,
    });
    let poller = tokio::spawn(poll(shared.clone(), publish, period));
    let app = Router::new()
        .route("/", get(page))
        .route("/component/{id}", get(|| async { Html(API_PAGE) }))
        .route("/events", get(events))
        .route("/api/fleet", get(fleet_json))
        .route("/api/asyncapi/{id}", get(asyncapi))
        .route("/api/control", post(control))
        .with_state(shared);
    let served = axum::serve(listener, app).await;
    poller.abort();
    served
}

/// Polls the fleet every `period` and publishes each snapshot.
async fn poll(shared: Arc<Shared>, publish: watch::Sender<Arc<str>>, period: Duration) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut fleet = shared.fleet.lock().await;
        // Answers are collected for most of the period, so a poll ends before the next.
        fleet.poll(&shared.connection, period.mul_f64(0.7)).await;
        let snapshot = fleet.snapshot(shared.options.allow_control, &shared.user);
        drop(fleet);
        if let Ok(json) = serde_json::to_string(&snapshot) {
            publish.send_replace(json.into());
        }
    }
}

/// The page, with the current snapshot in it (shown before the first event comes).
async fn page(State(shared): State<Arc<Shared>>) -> Html<String> {
    // In a script element: no `<` may close it, so every one is escaped (JSON has `<`
    // only in strings, where `\u003c` reads the same).
    let json = shared.snapshot.borrow().replace('<', "\\u003c");
    Html(PAGE.replacen("/*FLEET*/null", &json, 1))
}

/// The snapshots as server-sent events, the current one first.
async fn events(
    State(shared): State<Arc<Shared>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let stream = WatchStream::new(shared.snapshot.clone())
        .map(|json| Ok(Event::default().event("fleet").data(&*json)));
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// The current snapshot.
async fn fleet_json(State(shared): State<Arc<Shared>>) -> Response {
    let json = shared.snapshot.borrow().clone();
    (
        [(header::CONTENT_TYPE, "application/json")],
        json.to_string(),
    )
        .into_response()
}

/// The AsyncAPI document of the component `id` (`pid@host`), from its last `describe`.
async fn asyncapi(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let fleet = shared.fleet.lock().await;
    let Some(description) = fleet.description(&id) else {
        return (StatusCode::NOT_FOUND, "no such component").into_response();
    };
    let Some(api) = description.api.clone() else {
        return (
            StatusCode::NOT_FOUND,
            "this component does not describe its API",
        )
            .into_response();
    };
    let title = format!("{} ({id})", description.fingerprint.name);
    drop(fleet);
    let document = Document::new(title, "0.1.0").component(api);
    axum::Json(document.to_json()).into_response()
}

/// A control the page asks for.
#[derive(Debug, Deserialize)]
struct Control {
    /// The component's `pid@host`.
    id: String,
    /// `quit`, `restart`, `join_group` or `leave_group`.
    command: String,
    /// The group, for `join_group` and `leave_group`.
    #[serde(default)]
    group: Option<String>,
}

/// Sends a control to one component, as the dashboard's login.
async fn control(
    State(shared): State<Arc<Shared>>,
    axum::Json(control): axum::Json<Control>,
) -> Response {
    if !shared.options.allow_control {
        return (
            StatusCode::FORBIDDEN,
            "controls are off: start the dashboard with --allow-control",
        )
            .into_response();
    }
    let params = match (control.command.as_str(), control.group) {
        ("quit" | "restart", _) => serde_json::json!({}),
        ("join_group" | "leave_group", Some(group)) if !group.trim().is_empty() => {
            serde_json::json!({ "group_name": group.trim() })
        }
        ("join_group" | "leave_group", _) => {
            return (StatusCode::BAD_REQUEST, "a group name is needed").into_response();
        }
        _ => return (StatusCode::BAD_REQUEST, "unknown command").into_response(),
    };
    if shared.fleet.lock().await.description(&control.id).is_none() {
        return (StatusCode::NOT_FOUND, "no such component").into_response();
    }
    let sent = async {
        Producer::builder(&shared.connection)
            .destination(GENERIC_APPLICATION_EXCHANGE, &control.id)
            .fingerprint(Fingerprint::new("postage-dashboard", "tool"))
            .reliable(true)
            .publish_timeout(Duration::from_secs(5))
            .build()
            .await?
            .command(&control.command, params)
            .await
    };
    match sent.await {
        Ok(()) => (
            StatusCode::OK,
            format!("sent {} to {}", control.command, control.id),
        )
            .into_response(),
        Err(error) => {
            tracing::warn!(%error, "a control could not be sent");
            (StatusCode::BAD_GATEWAY, "the control could not be sent").into_response()
        }
    }
}
