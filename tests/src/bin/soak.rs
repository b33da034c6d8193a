//! The chaos soak (`postage_tests::soak`): a fleet under steady traffic on RabbitMQ nodes
//! of its own while faults come and go; exits non-zero when a confirmed message was lost,
//! a call went past its bound, a component got stuck or leaked.
//!
//! Run with: `scripts/soak.sh --minutes 30` (or `--seconds 90`, `--seed N`), as root.

use std::time::Duration;

use postage_tests::soak::{Settings, run};

fn usage() -> ! {
    eprintln!("usage: soak [--minutes N | --seconds N] [--seed N]");
    std::process::exit(2)
}

#[tokio::main]
async fn main() {
    let mut settings = Settings {
        duration: Duration::from_secs(120),
        seed: fastrand::u64(..),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let Some(value) = args.next().and_then(|n| n.parse::<u64>().ok()) else {
            usage()
        };
        match flag.as_str() {
            "--minutes" => settings.duration = Duration::from_secs(value * 60),
            "--seconds" => settings.duration = Duration::from_secs(value),
            "--seed" => settings.seed = value,
            _ => usage(),
        }
    }
    // The soak's own connection logs only when asked (RUST_LOG), on standard error; the
    // report is standard output.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let terminated = async {
        match terminate.as_mut() {
            Some(signal) => {
                signal.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    // On a signal the soak's future is dropped: its fleet, namespace and nodes with it.
    let report = tokio::select! {
        report = run(settings) => report,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("soak: interrupted, everything removed");
            std::process::exit(130)
        }
        () = terminated => {
            eprintln!("soak: terminated, everything removed");
            std::process::exit(143)
        }
    };
    if !report.passed() {
        eprintln!("soak failed:");
        for failure in report.failures() {
            eprintln!("  {failure}");
        }
        std::process::exit(1);
    }
}
