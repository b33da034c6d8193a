//! Who sent a message: the identity every Postage message carries.

use serde::{Deserialize, Deserializer, Serialize};

/// The identity of a component, sent in every message as the `fingerprint` object.
///
/// [`Fingerprint::new`] collects pid, host, user and virtual host from the OS and the
/// environment; every field is public and can be overridden, and the `with_*` methods do
/// so in a chain. On the wire every field is a string, as Python Postage writes it; a
/// Python sender given no name or type writes `"None"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default = "Fingerprint::blank")]
pub struct Fingerprint {
    /// The component's name, the first part of its GenericApplication addresses.
    #[serde(deserialize_with = "any_scalar")]
    pub name: String,
    /// A rough classification of the component (`"application"`, `"controller"`...).
    #[serde(rename = "type", deserialize_with = "any_scalar")]
    pub kind: String,
    /// The OS process id.
    #[serde(deserialize_with = "any_scalar")]
    pub pid: String,
    /// The host name the component runs on.
    #[serde(deserialize_with = "any_scalar")]
    pub host: String,
    /// The OS user running the component.
    #[serde(deserialize_with = "any_scalar")]
    pub user: String,
    /// The RabbitMQ virtual host the component works in.
    #[serde(deserialize_with = "any_scalar")]
    pub vhost: String,
}

impl Fingerprint {
    /// A fingerprint for a component called `name` of kind `kind`, with pid, host, user
    /// and virtual host (`POSTAGE_VHOST`, else `/`) read from the running process.
    pub fn new(name: impl Into<String>, kind: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            kind: kind.into(),
            ..Self::default()
        }
    }

    /// Replaces the name.
    #[must_use]
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Replaces the kind (the `type` field on the wire).
    #[must_use]
    pub fn with_kind(mut self, kind: impl Into<String>) -> Self {
        self.kind = kind.into();
        self
    }

    /// Replaces the pid.
    #[must_use]
    pub fn with_pid(mut self, pid: impl Into<String>) -> Self {
        self.pid = pid.into();
        self
    }

    /// Replaces the host.
    #[must_use]
    pub fn with_host(mut self, host: impl Into<String>) -> Self {
        self.host = host.into();
        self
    }

    /// Replaces the user.
    #[must_use]
    pub fn with_user(mut self, user: impl Into<String>) -> Self {
        self.user = user.into();
        self
    }

    /// Replaces the virtual host.
    #[must_use]
    pub fn with_vhost(mut self, vhost: impl Into<String>) -> Self {
        self.vhost = vhost.into();
        self
    }
}

/// What Python Postage writes for a name or type it was not given.
const PYTHON_NONE: &str = "None";

impl Default for Fingerprint {
    /// The running process's identity, with the name and kind Python Postage writes
    /// when none is given (`"None"`).
    fn default() -> Self {
        Self {
            name: PYTHON_NONE.to_owned(),
            kind: PYTHON_NONE.to_owned(),
            pid: std::process::id().to_string(),
            host: hostname::get()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default(),
            user: current_user(),
            vhost: std::env::var("POSTAGE_VHOST").unwrap_or_else(|_| "/".to_owned()),
        }
    }
}

fn current_user() -> String {
    match nix::unistd::User::from_uid(nix::unistd::getuid()) {
        Ok(Some(user)) => user.name,
        _ => std::env::var("USER").unwrap_or_default(),
    }
}

/// Reads a string, or a number or boolean as its text, so a sender that wrote the pid as
/// a number is still understood.
fn any_scalar<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    use serde_json::Value;
    match Value::deserialize(deserializer)? {
        Value::String(s) => Ok(s),
        Value::Null => Ok(PYTHON_NONE.to_owned()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(if b { "True" } else { "False" }.to_owned()),
        other => Err(serde::de::Error::custom(format!(
            "expected a string, found {other}"
        ))),
    }
}

impl Fingerprint {
    /// A fingerprint with every field empty: what a received message without one reads as.
    pub fn blank() -> Self {
        Self {
            name: String::new(),
            kind: String::new(),
            pid: String::new(),
            host: String::new(),
            user: String::new(),
            vhost: String::new(),
        }
    }
}
