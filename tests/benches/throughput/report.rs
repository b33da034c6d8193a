//! Measuring runs and printing figures: the median of each side's runs, side by side.

use std::time::{Duration, Instant};

use crate::Plan;

/// One measured run: its rate, and the CPU time the bench process (client and server
/// alike, every thread) spent per operation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    pub(crate) rate: f64,
    pub(crate) cpu_us: f64,
}

/// Measures one run: wall time and the process's CPU time.
pub(crate) struct Meter {
    wall: Instant,
    cpu: Duration,
}

impl Meter {
    pub(crate) fn start() -> Self {
        Self {
            wall: Instant::now(),
            cpu: process_cpu(),
        }
    }

    pub(crate) fn stop(self, count: usize) -> Sample {
        let wall = self.wall.elapsed();
        let cpu = process_cpu().saturating_sub(self.cpu);
        Sample {
            rate: count as f64 / wall.as_secs_f64(),
            cpu_us: cpu.as_secs_f64() * 1e6 / count as f64,
        }
    }
}

/// CPU time of every thread of this process so far (`/proc/self/task/*/schedstat`).
fn process_cpu() -> Duration {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Duration::ZERO;
    };
    let nanos: u64 = tasks
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(nanos)
}

pub(crate) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

pub(crate) fn format_value(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

pub(crate) fn rates(samples: &[Sample]) -> Vec<f64> {
    samples.iter().map(|s| s.rate).collect()
}

/// `rate, µs CPU` medians of some samples.
pub(crate) fn summary(samples: &[Sample]) -> String {
    let cpu = median(samples.iter().map(|s| s.cpu_us).collect());
    format!("{}, {cpu:.1}", format_value(median(rates(samples))))
}

/// Which way a figure is better: rates up, memory and time down.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Better {
    Higher,
    Lower,
}

/// Prints one figure: postage's median, then each baseline's, the ratio to the first
/// baseline and, with more than one, `vs-best`, the ratio to the best of them:
/// `<figure>: postage X | lapin Y | amqprs Z | ratio X/Y | vs-best X/max(Y,Z)`.
pub(crate) fn figure(
    name: &str,
    unit: &str,
    better: Better,
    postage: Vec<f64>,
    baselines: &[(&str, Vec<f64>)],
) {
    let postage = median(postage);
    let mut line = format!("{name}: postage {} {unit}", format_value(postage));
    let medians: Vec<f64> = baselines.iter().map(|(_, v)| median(v.clone())).collect();
    for ((side, _), value) in baselines.iter().zip(&medians) {
        line += &format!(" | {side} {} {unit}", format_value(*value));
    }
    if let Some(first) = medians.first() {
        line += &format!(" | ratio {:.2}", postage / first);
    }
    if medians.len() > 1 {
        let measured = medians.iter().copied().filter(|v| v.is_finite());
        let best = match better {
            Better::Higher => measured.fold(f64::NAN, f64::max),
            Better::Lower => measured.fold(f64::NAN, f64::min),
        };
        line += &format!(" | vs-best {:.2}", postage / best);
    }
    println!("{line}");
}

/// A throughput figure from each side's samples, in the order of `sides` (postage
/// first); with `POSTAGE_BENCH_DIAG`, the CPU time per operation behind it first.
pub(crate) fn rate_figure(
    plan: Plan,
    name: &str,
    unit: &str,
    sides: &[&str],
    runs: &[Vec<Sample>],
) {
    if plan.diag {
        let cpu = |s: &[Sample]| median(s.iter().map(|s| s.cpu_us).collect());
        let line: Vec<String> = sides
            .iter()
            .zip(runs)
            .map(|(side, samples)| format!("{side} {:.1} µs/op", cpu(samples)))
            .collect();
        println!(
            "# cpu {name}: {} (bench process, every thread, client and server)",
            line.join(" | ")
        );
    }
    let baselines: Vec<(&str, Vec<f64>)> = sides[1..]
        .iter()
        .zip(&runs[1..])
        .map(|(side, samples)| (*side, rates(samples)))
        .collect();
    figure(name, unit, Better::Higher, rates(&runs[0]), &baselines);
}

/// Runs each of `sides` `plan.runs` times through `run(side, warm_up)`, the first side
/// changing from run to run, after one shorter warm-up of each (unless quick); returns
/// each side's samples, in the order of `sides`. `POSTAGE_BENCH_SIDE=lapin` (say) runs
/// one side only, for a profiler.
pub(crate) async fn rounds<R>(plan: Plan, sides: &[&str], mut run: R) -> Vec<Vec<Sample>>
where
    R: AsyncFnMut(usize, bool) -> Sample,
{
    let only = std::env::var("POSTAGE_BENCH_SIDE").unwrap_or_default();
    let wanted = |side: usize| only.is_empty() || only == sides[side];
    if !plan.quick {
        for side in (0..sides.len()).filter(|&s| wanted(s)) {
            run(side, true).await;
        }
    }
    let mut samples = vec![Vec::new(); sides.len()];
    for round in 0..plan.runs {
        for turn in 0..sides.len() {
            let side = (round + turn) % sides.len();
            if wanted(side) {
                samples[side].push(run(side, false).await);
            }
        }
    }
    samples
}
