//! A network namespace of the test's own, joined to this machine by a veth pair: a
//! component started in it reaches the broker only through the host end's address (a
//! [`Relay`](super::Relay) listening there), and setting the host end down makes its
//! link a black hole: packets vanish, and neither side is told.

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// A namespace with its veth pair and addresses; deleted (with the pair) when dropped.
#[derive(Debug)]
pub struct Namespace {
    name: String,
    host_end: String,
    host: Ipv4Addr,
}

impl Namespace {
    /// Makes a namespace and its link, up, each end with an address of a /30 of its own
    /// (`10.203.N.0/30`: the host end `.1`, the namespace's end `.2`). Needs root, as
    /// everything the suite runs.
    pub fn create() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // Interface names have at most 15 bytes; the pid keeps parallel runs apart.
        let tag = format!("{}{n}", std::process::id() % 100_000);
        let (name, host_end, inner_end) =
            (format!("pt{tag}"), format!("pt{tag}h"), format!("pt{tag}n"));
        let subnet = (std::process::id() % 16) * 16 + n % 16;
        let host = Ipv4Addr::new(10, 203, u8::try_from(subnet % 256).unwrap_or(0), 1);
        let inner = Ipv4Addr::new(10, 203, u8::try_from(subnet % 256).unwrap_or(0), 2);
        // What a killed earlier run left behind goes first.
        let _ = ip(&["netns", "del", &name]);
        let _ = ip(&["link", "del", &host_end]);
        let namespace = Self {
            name,
            host_end,
            host,
        };
        let steps: [&[&str]; 8] = [
            &["netns", "add", &namespace.name],
            &[
                "link",
                "add",
                &namespace.host_end,
                "type",
                "veth",
                "peer",
                "name",
                &inner_end,
            ],
            &["link", "set", &inner_end, "netns", &namespace.name],
            &[
                "addr",
                "add",
                &format!("{host}/30"),
                "dev",
                &namespace.host_end,
            ],
            &["link", "set", &namespace.host_end, "up"],
            &[
                "-n",
                &namespace.name,
                "addr",
                "add",
                &format!("{inner}/30"),
                "dev",
                &inner_end,
            ],
            &["-n", &namespace.name, "link", "set", &inner_end, "up"],
            &["-n", &namespace.name, "link", "set", "lo", "up"],
        ];
        for step in steps {
            if let Err(error) = ip(step) {
                panic!(
                    "making network namespace {}: ip {step:?}: {error}",
                    namespace.name
                );
            }
        }
        namespace
    }

    /// The host end's address: where a relay for the namespace's components listens.
    pub fn host_address(&self) -> IpAddr {
        IpAddr::V4(self.host)
    }

    /// `program` to be started inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }

    /// Makes the link a black hole: the host end goes down, and every packet either way
    /// vanishes without a reset or an error.
    pub fn black_hole(&self) {
        ip(&["link", "set", &self.host_end, "down"]).expect("the host end goes down");
    }

    /// Heals a black hole.
    pub fn heal(&self) {
        ip(&["link", "set", &self.host_end, "up"]).expect("the host end comes up");
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of the pair, and so the pair.
        let _ = ip(&["netns", "del", &self.name]);
        let _ = ip(&["link", "del", &self.host_end]);
    }
}

/// Runs `ip` with `args`; what it said on failure.
fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|error| format!("ip does not run: {error}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_owned())
    }
}
