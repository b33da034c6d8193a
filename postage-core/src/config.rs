//! Where and how to reach RabbitMQ: a typed configuration from the environment, a URL, or
//! code.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::topology::QueueShape;

/// The broker's default AMQP port.
pub const DEFAULT_PORT: u16 = 5672;
/// The broker's default AMQPS (TLS) port.
pub const DEFAULT_TLS_PORT: u16 = 5671;

/// A password that never shows itself in `Debug`, `Display`, logs or errors.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// Wraps a password.
    pub fn new(password: impl Into<String>) -> Self {
        Self(password.into())
    }

    /// The password itself, for the login only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

impl From<&str> for Password {
    fn from(password: &str) -> Self {
        Self::new(password)
    }
}

/// One broker address of [`Config::hosts`]: a host name or IP and a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Host name or IP address.
    pub name: String,
    /// TCP port.
    pub port: u16,
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.name.contains(':') {
            write!(f, "[{}]:{}", self.name, self.port)
        } else {
            write!(f, "{}:{}", self.name, self.port)
        }
    }
}

/// How to reach RabbitMQ. Build it with [`Config::from_env`], [`Config::from_url`] or in
/// code from [`Config::default`] (`localhost:5672`, `guest`/`guest`, virtual host `/`).
///
/// ```
/// use std::time::Duration;
/// use postage_core::Config;
///
/// let config = Config::from_url("amqp://app:s3cret@rabbit-1:5672/prod?heartbeat=5")?
///     .with_fallback_host("rabbit-2", 5672);
/// assert_eq!(config.vhost, "prod");
/// assert_eq!(config.heartbeat, Duration::from_secs(5));
/// assert!(!format!("{config:?}").contains("s3cret"));
/// # Ok::<(), postage_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Brokers to try in turn; the first that accepts the login is used.
    pub hosts: Vec<Host>,
    /// User name.
    pub user: String,
    /// Password.
    pub password: Password,
    /// Virtual host.
    pub vhost: String,
    /// Connect with TLS (`amqps`).
    pub tls: bool,
    /// Heartbeat interval asked of the broker; a silent peer is declared dead after about
    /// twice this. Zero turns heartbeats off.
    pub heartbeat: Duration,
    /// How long one connection attempt to one host may take.
    pub connection_timeout: Duration,
    /// How long one exchange with the broker may take once connected: opening a channel,
    /// a declaration, a binding, starting or cancelling a consumer
    /// (`POSTAGE_OPERATION_TIMEOUT`, seconds; default 30). Past it the operation fails
    /// with [`Error::Timeout`](crate::Error::Timeout) naming it, instead of waiting for a
    /// broker that does not answer.
    pub operation_timeout: Duration,
    /// How long the broker lets a delivery stay unacknowledged: its `consumer_timeout`
    /// (`POSTAGE_CONSUMER_TIMEOUT`, seconds; default RabbitMQ's, 30 minutes). A processor
    /// whose handlers can hold a delivery longer is warned about at start, naming both.
    pub consumer_timeout: Duration,
    /// Verbose message tracing (`POSTAGE_DEBUG_MODE=true`).
    pub debug: bool,
    /// PEM files for TLS: the CA that signs the broker's certificate (default: the
    /// system's roots) and a client certificate and key, for brokers that ask for one.
    pub tls_files: TlsFiles,
    /// How queues are declared that Postage's wire contract makes transient and shared
    /// (`POSTAGE_QUEUE_SHAPE`): `None` (the default, `auto`) asks each broker when
    /// connecting, on a connection of its own, whether it accepts them.
    pub queue_shape: Option<QueueShape>,
    /// Whether producers publish on a connection of their own, opened beside this one
    /// with the first of them (`POSTAGE_PUBLISHING_CONNECTION`, default `true`). A
    /// broker's resource alarm blocks a connection that publishes, every frame of it
    /// acknowledgements included; with a connection of their own, consumers keep
    /// acknowledging through an alarm, as Spring AMQP's publisher connection does. A
    /// processor's RPC answers are the exception: they go back on the channel their
    /// request came on (one connection fewer on every call's way), so an answer held
    /// back by an alarm holds that connection's acknowledgements until it clears.
    pub publishing_connection: bool,
    /// The name the broker shows for this component's connections
    /// (`POSTAGE_CONNECTION_NAME`; default `program (pid N)`); the publishing one adds
    /// ` publishing`.
    pub connection_name: Option<String>,
    /// Where to serve metrics (Prometheus' text format, at `/metrics`) and health probes
    /// (`/health/live`, `/health/ready`) over HTTP (`POSTAGE_METRICS=host:port`); `None`
    /// (the default) serves nothing and keeps no metrics. Every connection of a process
    /// with one address reports to one endpoint; port 0 picks a free port, which
    /// [`Connection::metrics_address`](crate::Connection::metrics_address) tells. See
    /// [`telemetry`](crate::telemetry).
    pub metrics: Option<SocketAddr>,
}

/// PEM files for TLS connections (`amqps`). The broker's certificate is always verified.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificates that sign the broker's certificate (`POSTAGE_TLS_CA`).
    pub ca: Option<PathBuf>,
    /// The client certificate (`POSTAGE_TLS_CERT`).
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (`POSTAGE_TLS_KEY`).
    pub key: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            hosts: vec![Host {
                name: "localhost".to_owned(),
                port: DEFAULT_PORT,
            }],
            user: "guest".to_owned(),
            password: Password::new("guest"),
            vhost: "/".to_owned(),
            tls: false,
            heartbeat: Duration::from_secs(10),
            connection_timeout: Duration::from_secs(5),
            operation_timeout: Duration::from_secs(30),
            consumer_timeout: Duration::from_secs(30 * 60),
            debug: false,
            tls_files: TlsFiles::default(),
            queue_shape: None,
            publishing_connection: true,
            connection_name: None,
            metrics: None,
        }
    }
}

impl Config {
    /// Reads the `POSTAGE_*` variables: `POSTAGE_URL` (a full
    /// `amqp[s]://user:pass@host:port/vhost` URL) first, then each of `POSTAGE_HOST`
    /// (comma-separated `host[:port]` list), `POSTAGE_PORT`, `POSTAGE_VHOST`,
    /// `POSTAGE_USER` (or the deprecated `POSTAGE_RMQ_USER`), `POSTAGE_PASSWORD` (or
    /// `POSTAGE_RMQ_PASSWORD`), `POSTAGE_HEARTBEAT` (seconds), `POSTAGE_OPERATION_TIMEOUT`
    /// (seconds) and `POSTAGE_DEBUG_MODE` overrides what the URL said; `POSTAGE_QUEUE_SHAPE` (`auto`, `transient` or
    /// `durable`, see [`QueueShape`]), `POSTAGE_METRICS` (`host:port`) and `POSTAGE_TLS_*`
    /// are read too. A wrong value is an
    /// error naming the variable.
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|key| std::env::var(key).ok())
    }

    /// Like [`Config::from_env`], reading variables through `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let mut config = match lookup("POSTAGE_URL") {
            Some(url) => Self::parse_url(&url, "POSTAGE_URL")?,
            None => Self::default(),
        };
        if let Some(port) = lookup("POSTAGE_PORT") {
            let port = parse_port(&port, "POSTAGE_PORT")?;
            for host in &mut config.hosts {
                host.port = port;
            }
        }
        if let Some(hosts) = lookup("POSTAGE_HOST") {
            let default_port = config.hosts.first().map_or(DEFAULT_PORT, |h| h.port);
            config.hosts = parse_hosts(&hosts, default_port)?;
        }
        if let Some(vhost) = lookup("POSTAGE_VHOST") {
            config.vhost = vhost;
        }
        if let Some(user) = lookup("POSTAGE_USER").or_else(|| lookup("POSTAGE_RMQ_USER")) {
            config.user = user;
        }
        if let Some(password) =
            lookup("POSTAGE_PASSWORD").or_else(|| lookup("POSTAGE_RMQ_PASSWORD"))
        {
            config.password = Password::new(password);
        }
        if let Some(heartbeat) = lookup("POSTAGE_HEARTBEAT") {
            config.heartbeat = parse_seconds(&heartbeat, "POSTAGE_HEARTBEAT")?;
        }
        if let Some(timeout) = lookup("POSTAGE_OPERATION_TIMEOUT") {
            config.operation_timeout = parse_seconds(&timeout, "POSTAGE_OPERATION_TIMEOUT")?;
        }
        if let Some(timeout) = lookup("POSTAGE_CONSUMER_TIMEOUT") {
            config.consumer_timeout = parse_seconds(&timeout, "POSTAGE_CONSUMER_TIMEOUT")?;
        }
        if let Some(debug) = lookup("POSTAGE_DEBUG_MODE") {
            config.debug = parse_flag(&debug, "POSTAGE_DEBUG_MODE")?;
        }
        if let Some(name) = lookup("POSTAGE_CONNECTION_NAME") {
            config.connection_name = Some(name);
        }
        if let Some(separate) = lookup("POSTAGE_PUBLISHING_CONNECTION") {
            config.publishing_connection = parse_flag(&separate, "POSTAGE_PUBLISHING_CONNECTION")?;
        }
        if let Some(address) = lookup("POSTAGE_METRICS") {
            config.metrics = Some(parse_address(&address, "POSTAGE_METRICS")?);
        }
        if let Some(shape) = lookup("POSTAGE_QUEUE_SHAPE") {
            config.queue_shape = QueueShape::parse_setting(&shape, "POSTAGE_QUEUE_SHAPE")?;
        }
        config.tls_files = TlsFiles {
            ca: lookup("POSTAGE_TLS_CA").map(PathBuf::from),
            cert: lookup("POSTAGE_TLS_CERT").map(PathBuf::from),
            key: lookup("POSTAGE_TLS_KEY").map(PathBuf::from),
        };
        config.validate()?;
        Ok(config)
    }

    /// Reads an `amqp[s]://[user[:password]@]host[:port][/vhost][?heartbeat=S&connection_timeout=MS]`
    /// URL. The vhost is percent-decoded (`%2f` is `/`); an absent one is `/`.
    pub fn from_url(url: &str) -> Result<Self> {
        Self::parse_url(url, "url")
    }

    fn parse_url(text: &str, setting: &'static str) -> Result<Self> {
        // url's errors never quote the input, so a password cannot leak through them.
        let url = url::Url::parse(text.trim())
            .map_err(|e| Error::config(setting, format!("not an AMQP URL ({e})")))?;
        let tls = match url.scheme() {
            "amqp" => false,
            "amqps" => true,
            other => {
                return Err(Error::config(
                    setting,
                    format!("scheme must be amqp or amqps, not {other:?}"),
                ));
            }
        };
        let decode = |part: &str, what: &str| {
            percent_encoding_decode(part)
                .ok_or_else(|| Error::config(setting, format!("{what} is not valid UTF-8")))
        };
        let mut config = Self {
            tls,
            ..Self::default()
        };
        let name = match url.host() {
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            Some(host) => host.to_string(),
            None => return Err(Error::config(setting, "the URL names no host")),
        };
        let port = url
            .port()
            .unwrap_or(if tls { DEFAULT_TLS_PORT } else { DEFAULT_PORT });
        config.hosts = vec![Host { name, port }];
        if !url.username().is_empty() {
            config.user = decode(url.username(), "user name")?;
        }
        if let Some(password) = url.password() {
            config.password = Password::new(decode(password, "password")?);
        }
        let path = url.path();
        if path.len() > 1 {
            config.vhost = decode(&path[1..], "virtual host")?;
        }
        for (key, value) in url.query_pairs() {
            match key.as_ref() {
                "heartbeat" => config.heartbeat = parse_seconds(&value, setting)?,
                "connection_timeout" => {
                    let ms: u64 = value.parse().map_err(|_| {
                        Error::config(setting, "connection_timeout must be milliseconds")
                    })?;
                    config.connection_timeout = Duration::from_millis(ms);
                }
                "queue_shape" => config.queue_shape = QueueShape::parse_setting(&value, setting)?,
                other => {
                    return Err(Error::config(
                        setting,
                        format!("unknown URL parameter {other:?}"),
                    ));
                }
            }
        }
        config.validate()?;
        Ok(config)
    }

    /// Adds a broker to try when the ones before it do not answer.
    #[must_use]
    pub fn with_fallback_host(mut self, name: impl Into<String>, port: u16) -> Self {
        self.hosts.push(Host {
            name: name.into(),
            port,
        });
        self
    }

    /// Checks the values a broker cannot be reached without; the error names the field.
    pub fn validate(&self) -> Result<()> {
        if self.hosts.is_empty() {
            return Err(Error::config("hosts", "at least one broker host is needed"));
        }
        if let Some(host) = self.hosts.iter().find(|h| h.name.is_empty() || h.port == 0) {
            return Err(Error::config(
                "hosts",
                format!("{host} is not a usable host and port"),
            ));
        }
        if self.heartbeat.as_secs() > u64::from(u16::MAX) {
            return Err(Error::config("heartbeat", "must be at most 65535 seconds"));
        }
        let files = &self.tls_files;
        if files.cert.is_some() != files.key.is_some() {
            return Err(Error::config(
                "POSTAGE_TLS_CERT/POSTAGE_TLS_KEY",
                "a client certificate needs its key and a key its certificate",
            ));
        }
        if !self.tls && (files.ca.is_some() || files.cert.is_some()) {
            return Err(Error::config(
                "POSTAGE_TLS_CA/POSTAGE_TLS_CERT",
                "TLS files are given but the URL is not amqps://",
            ));
        }
        Ok(())
    }

    /// The hosts as `host:port, host:port` for messages (no credentials).
    pub fn describe_hosts(&self) -> String {
        let hosts: Vec<String> = self.hosts.iter().map(Host::to_string).collect();
        hosts.join(", ")
    }

    /// The TLS material lapin connects with, read from the PEM files.
    pub(crate) fn tls_config(&self) -> Result<lapin::tcp::OwnedTLSConfig> {
        let read = |path: &PathBuf, setting: &'static str| {
            std::fs::read(path)
                .map_err(|e| Error::config(setting, format!("cannot read {}: {e}", path.display())))
        };
        let cert_chain = match &self.tls_files.ca {
            Some(path) => Some(
                String::from_utf8(read(path, "POSTAGE_TLS_CA")?)
                    .map_err(|_| Error::config("POSTAGE_TLS_CA", "not a PEM file"))?,
            ),
            None => None,
        };
        let identity = match (&self.tls_files.cert, &self.tls_files.key) {
            (Some(cert), Some(key)) => Some(lapin::tcp::OwnedIdentity::PKCS8 {
                pem: read(cert, "POSTAGE_TLS_CERT")?,
                key: read(key, "POSTAGE_TLS_KEY")?,
            }),
            _ => None,
        };
        Ok(lapin::tcp::OwnedTLSConfig {
            identity,
            cert_chain,
        })
    }

    /// The URI lapin connects with, for one of the hosts.
    pub(crate) fn amqp_uri(&self, host: &Host) -> lapin::uri::AMQPUri {
        use lapin::uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo};
        AMQPUri {
            scheme: if self.tls {
                AMQPScheme::AMQPS
            } else {
                AMQPScheme::AMQP
            },
            authority: AMQPAuthority {
                userinfo: AMQPUserInfo {
                    username: self.user.clone(),
                    password: self.password.expose().to_owned(),
                },
                host: host.name.clone(),
                port: host.port,
            },
            vhost: self.vhost.clone(),
            query: AMQPQueryString {
                heartbeat: u16::try_from(self.heartbeat.as_secs()).ok(),
                connection_timeout: u64::try_from(self.connection_timeout.as_millis()).ok(),
                // Lapin sizes its socket buffers from the frame size; told it up front it
                // allocates them once and leaves them untouched, instead of growing and
                // zeroing them after the handshake (8 MiB resident for an idle component).
                // The broker lowers it if its own limit is smaller.
                frame_max: Some(FRAME_MAX),
                ..AMQPQueryString::default()
            },
        }
    }
}

/// RabbitMQ's default `frame_max`: the largest frame postage proposes.
const FRAME_MAX: u32 = 131_072;

fn percent_encoding_decode(text: &str) -> Option<String> {
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

fn parse_port(text: &str, setting: &'static str) -> Result<u16> {
    match text.trim().parse::<u16>() {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(Error::config(
            setting,
            format!("{text:?} is not a TCP port (1-65535)"),
        )),
    }
}

fn parse_hosts(text: &str, default_port: u16) -> Result<Vec<Host>> {
    let mut hosts = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, port) = match item.strip_prefix('[') {
            Some(rest) => match rest.split_once(']') {
                Some((name, "")) => (name, None),
                Some((name, port)) => (name, port.strip_prefix(':')),
                None => return Err(Error::config("POSTAGE_HOST", format!("{item:?} lacks a ]"))),
            },
            None => match item.split_once(':') {
                Some((name, port)) => (name, Some(port)),
                None => (item, None),
            },
        };
        let port = match port {
            Some(port) => parse_port(port, "POSTAGE_HOST")?,
            None => default_port,
        };
        hosts.push(Host {
            name: name.to_owned(),
            port,
        });
    }
    if hosts.is_empty() {
        return Err(Error::config("POSTAGE_HOST", "names no host"));
    }
    Ok(hosts)
}

fn parse_seconds(text: &str, setting: &'static str) -> Result<Duration> {
    text.trim()
        .parse::<u16>()
        .map(|s| Duration::from_secs(s.into()))
        .map_err(|_| {
            Error::config(
                setting,
                format!("{text:?} is not a number of seconds (0-65535)"),
            )
        })
}

/// A `host:port` to listen on, the host a name or an IP address.
fn parse_address(text: &str, setting: &'static str) -> Result<SocketAddr> {
    let invalid = |why: String| Error::config(setting, format!("{text:?} {why}"));
    text.trim()
        .to_socket_addrs()
        .map_err(|e| invalid(format!("is not a host:port to listen on ({e})")))?
        .next()
        .ok_or_else(|| invalid("names no address".to_owned()))
}

fn parse_flag(text: &str, setting: &'static str) -> Result<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" | "" => Ok(false),
        _ => Err(Error::config(
            setting,
            format!("{text:?} is neither true nor false"),
        )),
    }
}
