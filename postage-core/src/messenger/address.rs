//! Addresses in the style of Qpid Proton's Messenger: `amqp[s]://[user[:password]@]host[:port]/name`,
//! and the pattern tables that route and rewrite them.

use std::fmt;

use crate::config::{DEFAULT_PORT, DEFAULT_TLS_PORT};
use crate::error::{Error, Result};

/// Where a message goes: a broker (`host[:port]`, with optional credentials and TLS) and
/// a `name` on it, the queue. The scheme may be left out (`amqp` then).
///
/// `Display` masks the password; [`Address::without_credentials`] leaves user and
/// password out altogether.
///
/// ```
/// use postage_core::messenger::Address;
///
/// let address = Address::parse("amqps://app:s3cret@rabbit:5671/orders")?;
/// assert!(address.is_tls());
/// assert_eq!((address.host(), address.port(), address.name()), ("rabbit", 5671, "orders"));
/// assert_eq!(address.to_string(), "amqps://app:***@rabbit:5671/orders");
/// assert_eq!(address.without_credentials(), "amqps://rabbit:5671/orders");
/// # Ok::<(), postage_core::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Address {
    scheme: Option<String>,
    user: Option<String>,
    password: Option<String>,
    host: String,
    port: Option<u16>,
    name: String,
}

impl Address {
    /// Reads `[amqp[s]://][user[:password]@]host[:port][/name]`.
    pub fn parse(text: &str) -> Result<Self> {
        let invalid = |reason: &str| Error::InvalidAddress {
            address: mask_credentials(text),
            reason: reason.to_owned(),
        };
        let (scheme, rest) = match text.split_once("://") {
            Some((scheme, rest)) => match scheme {
                "amqp" | "amqps" => (Some(scheme.to_owned()), rest),
                _ => return Err(invalid("the scheme must be amqp or amqps")),
            },
            None => (None, text),
        };
        let (domain, name) = match rest.split_once('/') {
            Some((domain, name)) => (domain, name),
            None => (rest, ""),
        };
        let (user, password, host_port) = match domain.rsplit_once('@') {
            Some((userinfo, host_port)) => match userinfo.split_once(':') {
                Some((user, password)) => {
                    (Some(user.to_owned()), Some(password.to_owned()), host_port)
                }
                None => (Some(userinfo.to_owned()), None, host_port),
            },
            None => (None, None, domain),
        };
        let (host, port) = split_port(host_port).ok_or_else(|| invalid("bad port"))?;
        if host.is_empty() {
            return Err(invalid("no host"));
        }
        Ok(Self {
            scheme,
            user,
            password,
            host: host.to_owned(),
            port,
            name: name.to_owned(),
        })
    }

    /// True for `amqps`.
    pub fn is_tls(&self) -> bool {
        self.scheme.as_deref() == Some("amqps")
    }

    /// The broker's host name or IP.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The broker's port: the one given, else 5672 (5671 for `amqps`).
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(if self.is_tls() {
            DEFAULT_TLS_PORT
        } else {
            DEFAULT_PORT
        })
    }

    /// The name on the broker (a queue); empty when the address has none.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The user name, when the address carries one.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// The password, when the address carries one: for the login only.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// The address with user and password left out: what Messenger's default rewrite
    /// rule lets a receiver see.
    pub fn without_credentials(&self) -> String {
        self.format(None)
    }

    fn format(&self, credentials: Option<(&str, Option<&str>)>) -> String {
        let mut text = String::new();
        if let Some(scheme) = &self.scheme {
            text.push_str(scheme);
            text.push_str("://");
        }
        if let Some((user, password)) = credentials {
            text.push_str(user);
            if let Some(password) = password {
                text.push(':');
                text.push_str(password);
            }
            text.push('@');
        }
        text.push_str(&self.host);
        if let Some(port) = self.port {
            text.push_str(&format!(":{port}"));
        }
        if !self.name.is_empty() {
            text.push('/');
            text.push_str(&self.name);
        }
        text
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let credentials = self
            .user
            .as_deref()
            .map(|user| (user, self.password.as_ref().map(|_| "***")));
        f.write_str(&self.format(credentials))
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Address({self})")
    }
}

/// `host`, `host:port` or `[v6]:port` into its parts; `None` for a bad port.
fn split_port(host_port: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if let Some(rest) = host_port.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        (host, after.strip_prefix(':'))
    } else {
        match host_port.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        }
    };
    match port {
        None => Some((host, None)),
        Some(port) => port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .map(|p| (host, Some(p))),
    }
}

/// Masks the password of every `scheme://user:password@` in `text`, for logs and errors.
pub(crate) fn mask_credentials(text: &str) -> String {
    let mut masked = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("://") {
        let (head, tail) = rest.split_at(start + 3);
        masked.push_str(head);
        let domain_end = tail.find('/').unwrap_or(tail.len());
        match tail[..domain_end].rfind('@') {
            Some(at) => {
                let userinfo = &tail[..at];
                match userinfo.split_once(':') {
                    Some((user, _)) => {
                        masked.push_str(user);
                        masked.push_str(":***");
                    }
                    None => masked.push_str(userinfo),
                }
                rest = &tail[at..];
            }
            None => rest = tail,
        }
    }
    masked.push_str(rest);
    masked
}

/// An ordered table of (pattern, substitution) rules, as Messenger's `route` and
/// `rewrite` keep: the first rule whose pattern matches an address gives the result.
///
/// In a pattern, `%` matches any run of characters but `/`, `*` any run at all, and
/// every other character itself; matching is greedy. In a substitution, `$1`, `$2`...
/// stand for what the first, second... wildcard matched, `$0` for the whole address and
/// `$$` for a `$`.
///
/// ```
/// use postage_core::messenger::RouteTable;
///
/// let mut routes = RouteTable::new();
/// routes.add("bar/*", "amqp://bar.com/$1");
/// routes.add("amqp://%/*", "amqp://user:password@proxy/$1/$2");
/// assert_eq!(routes.apply("bar/baz").as_deref(), Some("amqp://bar.com/baz"));
/// assert_eq!(
///     routes.apply("amqp://host/queue").as_deref(),
///     Some("amqp://user:password@proxy/host/queue"),
/// );
/// assert_eq!(routes.apply("elsewhere"), None);
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RouteTable {
    rules: Vec<(String, String)>,
}

impl RouteTable {
    /// An empty table: no address matches.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a rule: addresses matching `pattern` become `substitution`.
    pub fn add(&mut self, pattern: impl Into<String>, substitution: impl Into<String>) {
        self.rules.push((pattern.into(), substitution.into()));
    }

    /// The number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// True when the table has no rule.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// What the first matching rule makes of `address`; `None` when no rule matches.
    pub fn apply(&self, address: &str) -> Option<String> {
        let text: Vec<char> = address.chars().collect();
        self.rules.iter().find_map(|(pattern, substitution)| {
            let pattern: Vec<char> = pattern.chars().collect();
            let mut groups = Vec::new();
            matches(&pattern, &text, &mut groups).then(|| {
                groups.reverse();
                substitute(substitution, address, &groups)
            })
        })
    }
}

impl fmt::Debug for RouteTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Substitutions may carry credentials ("amqp://user:password@...").
        f.debug_list()
            .entries(
                self.rules
                    .iter()
                    .map(|(pattern, substitution)| (pattern, mask_credentials(substitution))),
            )
            .finish()
    }
}

/// Matches `pattern` against all of `text`; on success `groups` holds what each wildcard
/// matched, last wildcard first.
fn matches(pattern: &[char], text: &[char], groups: &mut Vec<String>) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((&wildcard, rest)) if wildcard == '%' || wildcard == '*' => {
            // Greedy: try the longest run first, then shorter ones.
            let longest = if wildcard == '%' {
                text.iter().position(|c| *c == '/').unwrap_or(text.len())
            } else {
                text.len()
            };
            (0..=longest).rev().any(|taken| {
                let before = groups.len();
                if matches(rest, &text[taken..], groups) {
                    groups.push(text[..taken].iter().collect());
                    true
                } else {
                    groups.truncate(before);
                    false
                }
            })
        }
        Some((literal, rest)) => text.first() == Some(literal) && matches(rest, &text[1..], groups),
    }
}

/// Fills `$n` in `substitution` from `groups` (`$1` is `groups[0]`), `$0` with `whole`.
fn substitute(substitution: &str, whole: &str, groups: &[String]) -> String {
    let mut out = String::with_capacity(substitution.len());
    let mut chars = substitution.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '$' {
            out.push(c);
            continue;
        }
        if chars.peek() == Some(&'$') {
            chars.next();
            out.push('$');
            continue;
        }
        let mut digits = String::new();
        while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
            digits.push(*d);
            chars.next();
        }
        match digits.parse::<usize>() {
            Ok(0) => out.push_str(whole),
            Ok(n) => out.push_str(groups.get(n - 1).map_or("", String::as_str)),
            Err(_) => out.push('$'),
        }
    }
    out
}

/// Messenger's default rewrite: an address with credentials loses them; anything else
/// (no `@`, or not an address) is left as it is.
pub(crate) fn strip_credentials(address: &str) -> String {
    if !address.contains('@') {
        return address.to_owned();
    }
    match Address::parse(address) {
        Ok(parsed) if parsed.user.is_some() => parsed.without_credentials(),
        _ => address.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_groups_and_substitution() {
        let mut table = RouteTable::new();
        table.add("*/%", "$2|$1|$0|$$|$9");
        assert_eq!(table.apply("a/b/c").as_deref(), Some("c|a/b|a/b/c|$|"));
    }

    #[test]
    fn masking() {
        assert_eq!(
            mask_credentials("x amqp://u:p@h/q and amqps://v@h2"),
            "x amqp://u:***@h/q and amqps://v@h2"
        );
        assert_eq!(strip_credentials("amqp://u:p@h:1/q"), "amqp://h:1/q");
        assert_eq!(strip_credentials("u@h"), "h");
        assert_eq!(strip_credentials("foo"), "foo");
    }
}
