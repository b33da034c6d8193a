//! Connection settings: from the environment, a URL or code; wrong ones fail at start
//! naming the setting; the password never shows.

use std::collections::HashMap;
use std::time::Duration;

use postage_core::{Config, Connection, Error, Host, Password};

const SECRET: &str = "pa55-w0rd-zz";

fn from(vars: &[(&str, &str)]) -> postage_core::Result<Config> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::from_lookup(|key| map.get(key).cloned())
}

fn host(name: &str, port: u16) -> Host {
    Host {
        name: name.into(),
        port,
    }
}

#[test]
fn defaults_are_postages() {
    let config = from(&[]).unwrap();
    assert_eq!(config.hosts, vec![host("localhost", 5672)]);
    assert_eq!(
        (
            config.user.as_str(),
            config.password.expose(),
            config.vhost.as_str()
        ),
        ("guest", "guest", "/")
    );
    assert!(
        config.publishing_connection,
        "publishing on a connection of its own"
    );
    assert_eq!(config.connection_name, None);
}

#[test]
fn reads_every_variable() {
    let config = from(&[
        ("POSTAGE_HOST", "rabbit-1, rabbit-2:5673,[::1]:5674"),
        ("POSTAGE_PORT", "5999"),
        ("POSTAGE_VHOST", "development"),
        ("POSTAGE_USER", "app"),
        ("POSTAGE_PASSWORD", SECRET),
        ("POSTAGE_HEARTBEAT", "7"),
        ("POSTAGE_DEBUG_MODE", "true"),
        ("POSTAGE_CONNECTION_NAME", "inventory"),
        ("POSTAGE_PUBLISHING_CONNECTION", "false"),
        ("POSTAGE_OPERATION_TIMEOUT", "12"),
    ])
    .unwrap();
    assert_eq!(
        config.hosts,
        vec![
            host("rabbit-1", 5999),
            host("rabbit-2", 5673),
            host("::1", 5674)
        ]
    );
    assert_eq!(config.vhost, "development");
    assert_eq!(config.user, "app");
    assert_eq!(config.password.expose(), SECRET);
    assert_eq!(config.heartbeat, Duration::from_secs(7));
    assert!(config.debug);
    assert_eq!(config.connection_name.as_deref(), Some("inventory"));
    assert!(!config.publishing_connection);
    assert_eq!(config.operation_timeout, Duration::from_secs(12));
    assert_eq!(Config::default().operation_timeout, Duration::from_secs(30));
}

#[test]
fn deprecated_variables_are_still_read() {
    let config = from(&[
        ("POSTAGE_RMQ_USER", "old"),
        ("POSTAGE_RMQ_PASSWORD", "oldpw"),
    ])
    .unwrap();
    assert_eq!(
        (config.user.as_str(), config.password.expose()),
        ("old", "oldpw")
    );
    let newer = from(&[("POSTAGE_RMQ_USER", "old"), ("POSTAGE_USER", "new")]).unwrap();
    assert_eq!(newer.user, "new");
}

#[test]
fn url_gives_everything_and_variables_override_it() {
    let config = from(&[(
        "POSTAGE_URL",
        &format!("amqps://app:{SECRET}@broker.example:5999/prod%2Fa?heartbeat=3"),
    )])
    .unwrap();
    assert!(config.tls);
    assert_eq!(config.hosts, vec![host("broker.example", 5999)]);
    assert_eq!(
        (
            config.user.as_str(),
            config.password.expose(),
            config.vhost.as_str()
        ),
        ("app", SECRET, "prod/a")
    );
    assert_eq!(config.heartbeat, Duration::from_secs(3));
    let tls_default = Config::from_url("amqps://broker").unwrap();
    assert_eq!(tls_default.hosts, vec![host("broker", 5671)]);
    let overridden = from(&[
        ("POSTAGE_URL", "amqp://a:b@h1/v"),
        ("POSTAGE_VHOST", "other"),
    ])
    .unwrap();
    assert_eq!(overridden.vhost, "other");
    let ip = Config::from_url("amqp://127.0.0.1:5673").unwrap();
    assert_eq!(ip.hosts, vec![host("127.0.0.1", 5673)]);
    assert_eq!(ip.vhost, "/");
}

#[test]
fn wrong_settings_name_the_setting_and_hide_the_password() {
    let cases = [
        (vec![("POSTAGE_PORT", "70000")], "POSTAGE_PORT"),
        (vec![("POSTAGE_PORT", "abc")], "POSTAGE_PORT"),
        (vec![("POSTAGE_HOST", " , ")], "POSTAGE_HOST"),
        (vec![("POSTAGE_HOST", "h:x")], "POSTAGE_HOST"),
        (vec![("POSTAGE_HEARTBEAT", "soon")], "POSTAGE_HEARTBEAT"),
        (vec![("POSTAGE_DEBUG_MODE", "maybe")], "POSTAGE_DEBUG_MODE"),
        (
            vec![("POSTAGE_URL", "http://u:pa55-w0rd-zz@h/")],
            "POSTAGE_URL",
        ),
        (
            vec![("POSTAGE_URL", "amqp://u:pa55-w0rd-zz@[bad/")],
            "POSTAGE_URL",
        ),
        (
            vec![("POSTAGE_URL", "amqp://u:pa55-w0rd-zz@h/v?colour=red")],
            "POSTAGE_URL",
        ),
        (vec![("POSTAGE_URL", "pa55-w0rd-zz")], "POSTAGE_URL"),
        (vec![("POSTAGE_METRICS", "9100")], "POSTAGE_METRICS"),
        (
            vec![("POSTAGE_METRICS", "no-such-host.invalid:9100")],
            "POSTAGE_METRICS",
        ),
    ];
    for (vars, setting) in cases {
        let error = from(&vars).expect_err(&format!("{vars:?} must fail"));
        let text = error.to_string();
        assert!(
            matches!(error, Error::InvalidConfig { setting: s, .. } if s == setting),
            "{text}"
        );
        assert!(text.contains(setting), "{text} should name {setting}");
        assert!(
            !text.contains(SECRET) && !format!("{error:?}").contains(SECRET),
            "{text} leaks the password"
        );
    }
}

#[tokio::test]
async fn a_metrics_address_in_use_fails_at_start_naming_the_setting() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let vars = [
        ("POSTAGE_METRICS", taken.local_addr().unwrap().to_string()),
        (
            "POSTAGE_PORT",
            std::env::var("POSTAGE_PORT").unwrap_or("5672".into()),
        ),
    ];
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let config = from(&vars).unwrap();
    let error = Connection::connect(&config)
        .await
        .expect_err("the port is taken");
    assert!(
        matches!(
            error,
            Error::InvalidConfig {
                setting: "POSTAGE_METRICS",
                ..
            }
        ),
        "{error}"
    );
    assert!(
        error.to_string().contains("cannot serve metrics on"),
        "{error}"
    );
}

#[test]
fn debug_output_hides_the_password() {
    let config = Config {
        password: Password::new(SECRET),
        ..Config::default()
    };
    let shown = format!("{config:?} {config:#?}");
    assert!(!shown.contains(SECRET), "{shown}");
    assert!(shown.contains("***"));
}

#[tokio::test]
async fn wrong_password_is_refused_clearly() {
    let config = Config {
        password: Password::new(SECRET),
        ..Config::from_env().unwrap()
    };
    let error = Connection::connect(&config)
        .await
        .expect_err("guest with a wrong password");
    let text = error.to_string();
    assert!(matches!(error, Error::AccessRefused { .. }), "{text}");
    assert!(
        text.contains("guest") && !text.contains(SECRET) && !format!("{error:?}").contains(SECRET),
        "{text}"
    );
}

#[tokio::test]
async fn unreachable_host_fails_clearly() {
    let config = Config {
        hosts: vec![host("127.0.0.1", 1)],
        password: Password::new(SECRET),
        connection_timeout: Duration::from_secs(2),
        ..Config::default()
    };
    let error = Connection::connect(&config)
        .await
        .expect_err("nothing listens on port 1");
    let text = error.to_string();
    assert!(matches!(error, Error::ConnectionFailed { .. }), "{text}");
    assert!(
        text.contains("127.0.0.1:1") && !text.contains(SECRET),
        "{text}"
    );
}

#[tokio::test]
async fn later_hosts_are_tried_in_turn() {
    let working = Config::from_env().unwrap();
    let mut hosts = vec![host("127.0.0.1", 1)];
    hosts.extend(working.hosts.clone());
    let config = Config { hosts, ..working };
    let connection = Connection::connect(&config)
        .await
        .expect("the second host answers");
    assert_eq!(connection.host(), config.hosts[1]);
}
