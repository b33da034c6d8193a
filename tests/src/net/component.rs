//! A `fault_component` process (`tests/src/bin/fault_component.rs`), started plain or
//! inside a [`Namespace`](super::Namespace), reaching the broker through relays, and the
//! lines it prints, each with when it came.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

/// A running `fault_component` and what it printed; killed when dropped.
#[derive(Debug)]
pub struct Component {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::UnboundedReceiver<(Instant, String)>,
    /// The lines read by [`until`](Self::until) and [`all_of`](Self::all_of), in order.
    pub seen: Vec<(Instant, String)>,
}

impl Component {
    /// Starts `fault_component ARGS` with `command` (plain, or inside a namespace),
    /// connecting to `hosts` in turn with a heartbeat of `heartbeat` seconds, and waits
    /// until it serves.
    pub async fn start(
        mut command: Command,
        hosts: &[SocketAddr],
        heartbeat: u64,
        args: &[&str],
    ) -> Self {
        let hosts: Vec<String> = hosts.iter().map(SocketAddr::to_string).collect();
        command
            .args(args)
            .env("POSTAGE_HOST", hosts.join(","))
            .env("POSTAGE_HEARTBEAT", heartbeat.to_string())
            .env("POSTAGE_CONNECTION_NAME", crate::unique("faulted"))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = command.spawn().expect("fault_component starts");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("its output");
        let (sender, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        let mut component = Self {
            child,
            stdin,
            lines,
            seen: Vec::new(),
        };
        component
            .until(Duration::from_secs(30), |line| line == "ready")
            .await
            .unwrap_or_else(|| panic!("{args:?} never said ready: {:?}", component.seen));
        component
    }

    /// The process id (of the component itself, inside a namespace too: `ip netns exec`
    /// runs it in its own place).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Closes its standard input: a component started with a count of 0 finishes.
    pub fn finish(&mut self) {
        self.stdin = None;
    }

    /// The lines that came since the last look, without waiting and without keeping them
    /// in [`seen`](Self::seen) (a long run reads hundreds of thousands).
    pub fn fresh(&mut self) -> Vec<(Instant, String)> {
        let mut fresh = Vec::new();
        while let Ok(line) = self.lines.try_recv() {
            fresh.push(line);
        }
        fresh
    }

    /// Reads lines until one satisfies `wanted` (returned with when it came), or `wait`
    /// passes.
    pub async fn until(
        &mut self,
        wait: Duration,
        mut wanted: impl FnMut(&str) -> bool,
    ) -> Option<Instant> {
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(Some((at, line))) = tokio::time::timeout_at(deadline, self.lines.recv()).await
        {
            let found = wanted(&line);
            self.seen.push((at, line));
            if found {
                return Some(at);
            }
        }
        None
    }

    /// Reads lines until those starting with `word` (seen before included) name every
    /// number of `all`, or `wait` passes: the numbers named, and when the last came.
    pub async fn all_of(
        &mut self,
        word: &str,
        all: &BTreeSet<u64>,
        wait: Duration,
    ) -> (BTreeSet<u64>, Option<Instant>) {
        let mut named: BTreeSet<u64> = self.numbers(word).into_iter().collect();
        if named.is_superset(all) {
            return (named, Some(Instant::now()));
        }
        let whole = self
            .until(wait, |line| {
                if let Some(id) = line.strip_prefix(word).and_then(|n| n.parse().ok()) {
                    named.insert(id);
                }
                named.is_superset(all)
            })
            .await;
        (named, whole)
    }

    /// The numbers of the lines seen so far that start with `word`, counted.
    pub fn numbers(&self, word: &str) -> Vec<u64> {
        self.seen
            .iter()
            .filter_map(|(_, line)| {
                line.strip_prefix(word)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .collect()
    }
}

impl Drop for Component {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
