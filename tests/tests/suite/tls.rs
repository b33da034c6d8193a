//! TLS against a RabbitMQ node of the test's own (own name and ports), configured for TLS
//! with certificates the test makes with openssl: the broker is verified, and asks for a
//! client certificate.

use std::path::Path;
use std::process::Command;

use postage_core::{Config, Connection, Consumer, Error, Exchange, Producer, Queue, TlsFiles};
use postage_tests::{next_within, node_script, unique};

const NODE: &str = "postage-tls";
const TLS_PORT: u16 = 5691;

fn openssl(dir: &Path, args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl runs");
    assert!(status.success(), "openssl {args:?}");
}

/// A CA (`name.pem`, `name.key`).
fn make_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
        ],
    );
}

/// A certificate `name.pem` / `name.key` for `cn`, signed by `ca`.
fn make_cert(dir: &Path, ca: &str, name: &str, cn: &str) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={cn}"),
        ],
    );
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ],
    );
}

/// Stops the node when the test ends, however it ends.
struct Node;

impl Drop for Node {
    fn drop(&mut self) {
        let _ = Command::new(node_script()).args(["stop", NODE]).status();
    }
}

fn config(dir: &Path, ca: &str, client: Option<&str>) -> Config {
    let mut config =
        Config::from_url(&format!("amqps://guest:guest@localhost:{TLS_PORT}/")).unwrap();
    config.tls_files = TlsFiles {
        ca: Some(dir.join(format!("{ca}.pem"))),
        cert: client.map(|c| dir.join(format!("{c}.pem"))),
        key: client.map(|c| dir.join(format!("{c}.key"))),
    };
    config
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_verifies_the_broker_and_presents_a_client_certificate() {
    postage_tests::init_tracing();
    let dir = std::env::temp_dir().join(unique("tls"));
    std::fs::create_dir_all(&dir).unwrap();
    make_ca(&dir, "ca");
    make_ca(&dir, "rogue");
    make_cert(&dir, "ca", "server", "localhost");
    make_cert(&dir, "ca", "client", "postage-client");
    // The broker runs as the rabbitmq user: let it read the files.
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let _ = Command::new("chmod")
            .args(["a+r", path.to_str().unwrap()])
            .status();
    }
    let _ = Command::new("chmod")
        .args(["a+rx", dir.to_str().unwrap()])
        .status();
    let conf = dir.join("tls.conf");
    std::fs::write(
        &conf,
        format!(
            "listeners.tcp.default = 5692\nlisteners.ssl.default = {TLS_PORT}\n\
             ssl_options.cacertfile = {d}/ca.pem\nssl_options.certfile = {d}/server.pem\n\
             ssl_options.keyfile = {d}/server.key\nssl_options.verify = verify_peer\n\
             ssl_options.fail_if_no_peer_cert = true\n",
            d = dir.display()
        ),
    )
    .unwrap();
    let started = Command::new(node_script())
        .args(["start", NODE, "5692", "25692", conf.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(started.success(), "the TLS node starts");
    let _node = Node;

    // With the right CA and a client certificate: connected, and messages flow.
    let connection = Connection::connect(&config(&dir, "ca", Some("client")))
        .await
        .expect("TLS with a client certificate");
    let exchange = Exchange::named(unique("tls")).auto_delete(true);
    let mut consumer = Consumer::builder(&connection)
        .bind(
            exchange.clone(),
            Queue::new(unique("tls-q")).auto_delete(true),
            "k",
        )
        .build()
        .await
        .unwrap();
    consumer.start().await.unwrap();
    let producer = Producer::builder(&connection)
        .destination(exchange, "k")
        .build()
        .await
        .unwrap();
    producer.command("echo", "over TLS").await.unwrap();
    let delivery = next_within(&mut consumer, std::time::Duration::from_secs(5))
        .await
        .expect("delivered over TLS");
    assert_eq!(
        delivery.message().unwrap().parameters::<String>().unwrap(),
        "over TLS"
    );
    delivery.ack().await.unwrap();
    connection.close().await.unwrap();

    // Without a client certificate the broker refuses the connection.
    let refused = Connection::connect(&config(&dir, "ca", None))
        .await
        .expect_err("a client certificate is required");
    assert!(
        matches!(refused, Error::ConnectionFailed { .. }),
        "{refused}"
    );
    // A broker whose certificate another CA signed is not trusted.
    let untrusted = Connection::connect(&config(&dir, "rogue", Some("client")))
        .await
        .expect_err("the broker is verified");
    assert!(
        matches!(untrusted, Error::ConnectionFailed { .. }),
        "{untrusted}"
    );
    eprintln!(
        "refused without a client certificate: {refused}\nrefused with a wrong CA: {untrusted}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
