//! The network fault kit itself (`postage_tests::net`), against the real broker: a
//! component in a namespace of the test's own reaches the broker through a relay on its
//! link's host end, a black hole on that link stops every packet without a word, and the
//! link heals.

use std::process::Stdio;
use std::time::Duration;

use postage_tests::broker_address;
use postage_tests::net::{Namespace, Relay};

/// Whether a TCP connection from inside `namespace` to `address` opens within a second,
/// and the broker answers the AMQP protocol header through it.
fn reaches(namespace: &Namespace, address: std::net::SocketAddr) -> bool {
    let probe = format!(
        "import socket,sys\n\
         s=socket.create_connection(('{}',{}),timeout=1)\n\
         s.sendall(b'AMQP\\x00\\x00\\x09\\x01')\n\
         sys.exit(0 if s.recv(1)==b'\\x01' else 1)",
        address.ip(),
        address.port()
    );
    namespace
        .command("python3")
        .args(["-c", &probe])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_namespace_reaches_the_broker_through_its_relay_until_its_link_is_a_black_hole() {
    let namespace = Namespace::create();
    let listen = std::net::SocketAddr::new(namespace.host_address(), 0);
    let relay = Relay::start_on(listen, broker_address()).await;
    let address = relay.address();
    let probe = |namespace| {
        let namespace: &Namespace = namespace;
        tokio::task::block_in_place(|| reaches(namespace, address))
    };
    assert!(probe(&namespace), "the broker answers through the relay");
    namespace.black_hole();
    assert!(!probe(&namespace), "nothing passes a black hole");
    namespace.heal();
    assert!(probe(&namespace), "the healed link carries traffic again");
    assert_eq!(
        relay.connections(),
        2,
        "the black-holed attempt never reached the relay"
    );
}
