//! Child components, one program a side (`bench_postage`, `bench_lapin`,
//! `bench_amqprs`): resident memory idle, with many processors, with calls in flight,
//! and the time from process start to consuming.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use postage_tests::bench::{broker_url, resident_bytes};

use crate::Plan;
use crate::report::{Better, figure};

const PROGRAMS: [(&str, &str); 3] = [
    ("postage", env!("CARGO_BIN_EXE_bench_postage")),
    ("lapin", env!("CARGO_BIN_EXE_bench_lapin")),
    ("amqprs", env!("CARGO_BIN_EXE_bench_amqprs")),
];

/// One run of a child component: how long until it consumed, and its resident memory
/// once idle or once its calls are in flight.
struct ChildRun {
    to_consuming: Duration,
    resident: u64,
}

/// Runs `program` as `program MODE EXCHANGE QUEUE COUNT` (COUNT: processors when idle,
/// calls when in flight), waits for its report lines, lets it settle and reads its
/// resident memory.
fn run_child(program: &str, mode: &str, count: usize, settle: Duration) -> ChildRun {
    let exchange = format!("bench-child-{}-{}", std::process::id(), next_child());
    let queue = format!("{exchange}-q");
    let start = Instant::now();
    let mut child = Command::new(program)
        .args([mode, &exchange, &queue, &count.to_string()])
        .env("POSTAGE_URL", broker_url())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the child component starts");
    let mut lines = BufReader::new(child.stdout.take().expect("its stdout")).lines();
    let mut next_line = |what: &str| -> String {
        lines
            .next()
            .and_then(Result::ok)
            .unwrap_or_else(|| panic!("{program} printed no {what} line"))
    };
    let first = next_line("consuming");
    let to_consuming = start.elapsed();
    assert_eq!(first, "consuming", "{program}: unexpected output");
    if mode == "inflight" {
        let line = next_line("inflight");
        assert!(
            line.starts_with("inflight"),
            "{program}: unexpected output {line:?}"
        );
    }
    std::thread::sleep(settle);
    let resident = resident_bytes(child.id()).expect("the child's VmRSS");
    stop_child(child);
    ChildRun {
        to_consuming,
        resident,
    }
}

/// Numbers the children, for names of their own.
fn next_child() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Closes the child's standard input (it then stops cleanly) and waits for it; kills it
/// after 10 s.
fn stop_child(mut child: Child) {
    drop(child.stdin.take());
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Each program `runs` times in `mode`, the first changing from run to run; each
/// side's runs, in the order of [`PROGRAMS`].
fn each_side(plan: Plan, mode: &str, count: usize, settle: Duration) -> Vec<Vec<ChildRun>> {
    let runs = if plan.quick { 1 } else { plan.runs };
    let mut all: Vec<Vec<ChildRun>> = PROGRAMS.iter().map(|_| Vec::new()).collect();
    for run in 0..runs {
        for turn in 0..PROGRAMS.len() {
            let side = (run + turn) % PROGRAMS.len();
            all[side].push(run_child(PROGRAMS[side].1, mode, count, settle));
        }
    }
    all
}

fn child_figure(name: &str, unit: &str, runs: &[Vec<ChildRun>], value: impl Fn(&ChildRun) -> f64) {
    let values: Vec<Vec<f64>> = runs
        .iter()
        .map(|r| r.iter().map(&value).collect())
        .collect();
    let baselines: Vec<(&str, Vec<f64>)> = PROGRAMS[1..]
        .iter()
        .map(|(side, _)| *side)
        .zip(values[1..].iter().cloned())
        .collect();
    figure(name, unit, Better::Lower, values[0].clone(), &baselines);
}

pub(crate) fn processes(plan: Plan) {
    let settle = if plan.quick {
        Duration::from_millis(100)
    } else {
        Duration::from_millis(500)
    };
    let mib = |run: &ChildRun| run.resident as f64 / (1024.0 * 1024.0);
    if !plan.quick {
        // Warm the page cache and the broker.
        for (_, program) in PROGRAMS {
            run_child(program, "idle", 1, Duration::ZERO);
        }
    }
    let idle = each_side(plan, "idle", 1, settle);
    child_figure(
        "memory of an idle component (child process)",
        "MiB",
        &idle,
        mib,
    );
    let many = *plan.processors.last().expect("some processor counts");
    let crowd = each_side(plan, "idle", many, settle);
    child_figure(
        &format!("memory of {many} idle processors in one process (child process)"),
        "MiB",
        &crowd,
        mib,
    );
    let busy = each_side(plan, "inflight", plan.in_flight, settle);
    child_figure(
        &format!(
            "memory with {} calls in flight (child process)",
            plan.in_flight
        ),
        "MiB",
        &busy,
        mib,
    );
    child_figure("start to consuming (child process)", "ms", &idle, |run| {
        run.to_consuming.as_secs_f64() * 1000.0
    });
}
