//! Postage beside the raw clients it could be written in, against the local broker:
//! publishing, processor dispatch, RPC round trips, resident memory and start-up, each
//! for postage, for the same program written by hand in raw lapin (what postage is built
//! on) and in raw amqprs (the fastest Rust client we know), and the RPC server against
//! the peer framework kanin.
//!
//! Run with: cargo bench -p postage-tests --bench throughput
//!
//! Each figure is printed as
//! `<figure>: postage X | lapin Y | amqprs Z | ratio X/Y | vs-best X/best(Y,Z)`,
//! each value the median of several runs (the first line says how many), the sides taking
//! turns to go first. Rates are better higher, memory and time lower. Every side runs in
//! this process (components and callers on connections of their own), except memory and
//! start-up, measured on child components (`bench_postage`, `bench_lapin`,
//! `bench_amqprs`). Publishing is timed to a final round trip on the publishing channel,
//! so a client that buffers is not flattered.
//!
//! Effects exactly once (`postage-outbox`): a handler with an inbox and an outbox on
//! SQLite and on PostgreSQL (`scripts/postgres.sh`) against the same handler without
//! them, and the relay's lag at that rate.
//!
//! Order per key: a processor ordered by key (64 keys, concurrency 8) against the same
//! processor unordered.
//!
//! The cost as work grows: payloads of 100 B, 10 KB and 1 MB (publish, dispatch, RPC at
//! 64 in flight); 1, 10 and 100 processors in one process (dispatch, and the memory of
//! 100 idle); 1, 64 and 1000 RPC calls in flight.
//!
//! `POSTAGE_BENCH_QUICK=1` makes a smoke run: a few hundred messages, one run.
//! `POSTAGE_URL` names another broker. While working on a figure:
//! `POSTAGE_BENCH_ONLY=publish,dispatch,ordered,many,rpc,outbox,process` runs some groups only;
//! `POSTAGE_BENCH_SIDE=postage` (or `lapin`, `amqprs`...) one side only, for a profiler;
//! `POSTAGE_BENCH_LAPIN=queued` (or `task`) gives the raw lapin side the patched lapin's
//! opt-ins that postage's connections have (stock lapin's behaviour by default);
//! `POSTAGE_BENCH_DIAG=1` adds `#` lines: CPU time per operation, each RPC client
//! against the other side's server, and a ladder of hand-written consumers from raw lapin
//! to the processor.
//!
//! Spans cost nothing without a subscriber, the default here. With the `otel` feature
//! (on by default in this crate; `--no-default-features` leaves OpenTelemetry out of the
//! build), `POSTAGE_BENCH_TRACE=otel` records every span as an OpenTelemetry span, with
//! trace context in every message, through a provider that exports nowhere: the cost of
//! tracing itself.

mod children;
mod dispatch;
mod kanin_server;
mod outbox;
mod publish;
mod raw_amqprs;
mod raw_lapin;
mod report;
mod rpc;
mod setup;

use postage_tests::bench::broker_url;

use crate::setup::{Bench, PREFETCH};

/// How much work each figure does.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    quick: bool,
    /// `POSTAGE_BENCH_DIAG=1`: the `#` lines.
    diag: bool,
    runs: usize,
    /// Messages or calls of each figure, at the smallest payload.
    publish: usize,
    dispatch: usize,
    rpc_sequential: usize,
    rpc_pipelined: usize,
    /// Calls in flight in the memory figure.
    in_flight: usize,
    /// Payload sizes, in bytes, smallest first.
    sizes: &'static [usize],
    /// RPC calls in flight.
    windows: &'static [usize],
    /// Processors in one process.
    processors: &'static [usize],
}

impl Plan {
    fn from_env() -> Self {
        let set = |name| std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0");
        let (quick, diag) = (set("POSTAGE_BENCH_QUICK"), set("POSTAGE_BENCH_DIAG"));
        let plan = Self {
            quick,
            diag,
            runs: 5,
            publish: 30_000,
            dispatch: 20_000,
            rpc_sequential: 3_000,
            rpc_pipelined: 15_000,
            in_flight: 10_000,
            sizes: &[100, 10_000, 1_000_000],
            windows: &[1, 64, 1000],
            processors: &[1, 10, 100],
        };
        if quick {
            Self {
                runs: 1,
                publish: 300,
                dispatch: 300,
                rpc_sequential: 100,
                rpc_pipelined: 300,
                in_flight: 300,
                ..plan
            }
        } else {
            plan
        }
    }

    /// How many messages a figure of `base` at the smallest payload sends with payloads
    /// of `size`: fewer as they grow, so each figure moves a hundred megabytes or so, not
    /// gigabytes.
    fn count(self, base: usize, size: usize) -> usize {
        let n = match size {
            s if s >= 1_000_000 => base / 100,
            s if s >= 10_000 => base / 3,
            _ => base,
        };
        n.max(4)
    }
}

/// With `POSTAGE_BENCH_TRACE=otel`, records every span as an OpenTelemetry span, and
/// says so in the first line; the provider is kept until the end.
#[cfg(feature = "otel")]
fn tracing_setting() -> (
    &'static str,
    Option<opentelemetry_sdk::trace::SdkTracerProvider>,
) {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::prelude::*;
    if std::env::var("POSTAGE_BENCH_TRACE").as_deref() != Ok("otel") {
        return ("no subscriber", None);
    }
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    tracing_subscriber::registry()
        // As a component would: postage's spans are INFO; lapin's TRACE events (one per
        // frame, hundreds of times slower with big bodies) are not wanted.
        .with(tracing_subscriber::filter::LevelFilter::INFO)
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("bench")))
        .init();
    (
        "OpenTelemetry spans of every operation, INFO and above",
        Some(provider),
    )
}

#[cfg(not(feature = "otel"))]
fn tracing_setting() -> (&'static str, Option<()>) {
    ("no subscriber, no otel feature", None)
}

fn main() {
    let plan = Plan::from_env();
    let (tracing, _provider) = tracing_setting();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    println!(
        "# postage {} vs raw lapin, raw amqprs and kanin, broker {}: medians of {} run(s){}; prefetch {PREFETCH}; tracing: {tracing}",
        env!("CARGO_PKG_VERSION"),
        redacted(&broker_url()),
        plan.runs,
        if plan.quick { " (quick smoke run)" } else { "" },
    );
    let only = std::env::var("POSTAGE_BENCH_ONLY").unwrap_or_default();
    let wanted = |group: &str| only.is_empty() || only.split(',').any(|g| g.trim() == group);
    runtime.block_on(async {
        let bench = Bench::connect().await;
        if wanted("publish") {
            for &size in plan.sizes {
                bench.publish(plan, size).await;
            }
        }
        if wanted("dispatch") {
            for &size in plan.sizes {
                bench.dispatch(plan, size).await;
            }
        }
        if wanted("ordered") {
            bench.dispatch_ordered(plan).await;
        }
        if wanted("many") {
            for &processors in &plan.processors[1..] {
                bench.dispatch_many(plan, processors).await;
            }
        }
        if wanted("rpc") {
            bench.rpc(plan).await;
        }
        if wanted("outbox") {
            bench.outbox(plan).await;
        }
        bench.close().await;
    });
    drop(runtime);
    if wanted("process") {
        children::processes(plan);
    }
}

/// The broker URL without its password.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://…{}", &url[..scheme], &url[at..]),
        _ => url.to_owned(),
    }
}
