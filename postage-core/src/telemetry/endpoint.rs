//! The HTTP endpoint of [`Config::metrics`](crate::Config::metrics): `/metrics` in
//! Prometheus' text format, `/health/live` and `/health/ready` (200 or 503) for container
//! probes. One per address per process: every connection configured with it reports to
//! it, and it closes with the last of them.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Semaphore;

use super::metrics::Metrics;
use crate::connection::LinkState;
use crate::error::{Error, Result};
use crate::sync::Locked;

/// At most this many HTTP connections to the endpoint at once; more wait to be accepted.
const MAX_CLIENTS: usize = 32;

/// Something whose health the endpoint reports: a connection or a consumer.
pub(crate) trait Watched: Send + Sync {
    /// `None` once it no longer counts (closed, or not consuming by choice); else
    /// whether it is ready, or why not.
    fn readiness(&self) -> Option<Result<(), String>>;

    /// A connection's state, for the `postage_connections` gauge.
    fn link_state(&self) -> Option<LinkState> {
        None
    }
}

/// The metrics of one endpoint and what it watches for readiness.
pub(crate) struct Telemetry {
    pub(crate) metrics: Metrics,
    address: SocketAddr,
    watched: Locked<Vec<Weak<dyn Watched>>>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

/// The endpoints this process serves, by the address they listen on.
static ENDPOINTS: Locked<Vec<Weak<Telemetry>>> = Locked::new(Vec::new());

/// Set once the process was told to stop (SIGTERM or SIGINT): from then on every endpoint
/// of the process answers `/health/ready` with 503, whatever still runs in it.
static TERMINATING: AtomicBool = AtomicBool::new(false);

/// Marks the process as stopping: not ready, for good.
pub(crate) fn terminating() {
    TERMINATING.store(true, Ordering::SeqCst);
}

impl Telemetry {
    /// The endpoint at `address`, started if this process has none there yet (port 0:
    /// always a new one, on a port the system picks).
    pub(crate) fn at(address: SocketAddr) -> Result<Arc<Self>> {
        ENDPOINTS.with(|endpoints| Self::found_or_started(endpoints, address))
    }

    /// The endpoint at `address` among `endpoints`, or a new one added to them.
    fn found_or_started(endpoints: &mut Vec<Weak<Self>>, address: SocketAddr) -> Result<Arc<Self>> {
        endpoints.retain(|e| e.strong_count() > 0);
        if address.port() != 0
            && let Some(found) = endpoints
                .iter()
                .filter_map(Weak::upgrade)
                .find(|e| e.address == address)
        {
            return Ok(found);
        }
        let refused = |e: std::io::Error| {
            Error::config(
                "POSTAGE_METRICS",
                format!("cannot serve metrics on {address}: {e}"),
            )
        };
        let listener = std::net::TcpListener::bind(address).map_err(refused)?;
        listener.set_nonblocking(true).map_err(refused)?;
        let listener = tokio::net::TcpListener::from_std(listener).map_err(refused)?;
        let bound = listener.local_addr().map_err(refused)?;
        let telemetry = Arc::new(Self {
            metrics: Metrics::new(),
            address: bound,
            watched: Locked::new(Vec::new()),
        });
        endpoints.push(Arc::downgrade(&telemetry));
        tokio::spawn(serve(listener, Arc::downgrade(&telemetry)));
        tracing::info!(address = %bound, "serving metrics and health over HTTP");
        Ok(telemetry)
    }

    /// The address it listens on.
    pub(crate) fn address(&self) -> SocketAddr {
        self.address
    }

    /// Reports the health of `watched` from now on, while it lives.
    pub(crate) fn watch(&self, watched: Weak<dyn Watched>) {
        self.watched.with(|list| {
            list.retain(|w| w.strong_count() > 0);
            list.push(watched);
        });
    }

    fn live(&self) -> Vec<Arc<dyn Watched>> {
        self.watched
            .with(|list| list.iter().filter_map(Weak::upgrade).collect())
    }

    /// Ready: a connection is there, and everything watched is ready; or why not.
    fn readiness(&self) -> Result<(), String> {
        let live = self.live();
        let mut connections = 0;
        let mut why = Vec::new();
        if TERMINATING.load(Ordering::SeqCst) {
            why.push("draining: the process is stopping".to_owned());
        }
        for watched in &live {
            connections += usize::from(watched.link_state().is_some());
            if let Some(Err(reason)) = watched.readiness() {
                why.push(reason);
            }
        }
        if connections == 0 {
            why.push("no connection to RabbitMQ".to_owned());
        }
        if why.is_empty() {
            Ok(())
        } else {
            Err(why.join("\n"))
        }
    }

    fn respond(&self, path: &str) -> Response<Full<Bytes>> {
        let (status, kind, body) = match path {
            "/metrics" => {
                let states: Vec<LinkState> =
                    self.live().iter().filter_map(|w| w.link_state()).collect();
                (
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    self.metrics.encode(&states),
                )
            }
            "/health/live" => (StatusCode::OK, "text/plain", "live\n".to_owned()),
            "/health/ready" => match self.readiness() {
                Ok(()) => (StatusCode::OK, "text/plain", "ready\n".to_owned()),
                Err(why) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("not ready:\n{why}\n"),
                ),
            },
            _ => (
                StatusCode::NOT_FOUND,
                "text/plain",
                "try /metrics, /health/live or /health/ready\n".to_owned(),
            ),
        };
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        if let Ok(kind) = kind.parse() {
            response
                .headers_mut()
                .insert(hyper::header::CONTENT_TYPE, kind);
        }
        response
    }
}

/// Accepts HTTP connections, a bounded number at a time, until the endpoint is dropped.
async fn serve(listener: tokio::net::TcpListener, telemetry: Weak<Telemetry>) {
    let clients = Arc::new(Semaphore::new(MAX_CLIENTS));
    loop {
        let Ok(permit) = Arc::clone(&clients).acquire_owned().await else {
            return;
        };
        let accepted = tokio::time::timeout(Duration::from_secs(1), listener.accept()).await;
        if telemetry.strong_count() == 0 {
            return;
        }
        let stream = match accepted {
            Ok(Ok((stream, _))) => stream,
            Ok(Err(error)) => {
                tracing::debug!(%error, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(_) => continue,
        };
        let telemetry = telemetry.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<_>| {
                let response = match telemetry.upgrade() {
                    Some(telemetry) => telemetry.respond(request.uri().path()),
                    None => Response::new(Full::new(Bytes::from_static(b"gone\n"))),
                };
                async move { Ok::<_, Infallible>(response) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(error) = served {
                tracing::debug!(%error, "metrics endpoint: connection ended");
            }
            drop(permit);
        });
    }
}
