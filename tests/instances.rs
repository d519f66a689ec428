//! Running many instances: two ringlb processes with the same backend list
//! and `hash` balancing send a client to the same backend, so an ECMP or
//! anycast fabric in front may spread a client's connections over instances.

mod common;

use std::collections::HashMap;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use common::{Backend, Ringlb, PATIENCE};
use socket2::{Domain, Socket, Type};

/// The tag of the backend `lb` sends a client from `source` to.
fn tag_from(source: Ipv4Addr, lb: SocketAddr) -> u8 {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::from((source, 0)).into()).unwrap();
    socket
        .connect_timeout(&lb.into(), Duration::from_secs(5))
        .unwrap();
    let mut conn: TcpStream = socket.into();
    conn.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut tag = [0u8; 1];
    conn.read_exact(&mut tag).unwrap();
    tag[0]
}

#[test]
fn two_instances_with_the_same_backends_agree_on_hashed_clients() {
    let backends: Vec<Backend> = (1..=4).map(Backend::tagged).collect();
    let both = Ringlb::builder()
        .arg("--balance", "hash")
        .workers(2)
        .backends(&backends);
    let one = both.start();
    let two = both.start();
    let mut per_backend: HashMap<u8, usize> = HashMap::new();
    for i in 0..1000u32 {
        // Varied client addresses, all on loopback (127.0.0.0/8).
        let source = Ipv4Addr::new(
            127,
            10 + (i / 250) as u8,
            (i % 250) as u8,
            1 + (i % 7) as u8,
        );
        let (a, b) = (tag_from(source, one.addr), tag_from(source, two.addr));
        assert_eq!(
            a, b,
            "client {source}: instance one chose {a}, instance two {b}"
        );
        *per_backend.entry(a).or_default() += 1;
    }
    assert_eq!(
        per_backend.len(),
        4,
        "every backend takes a share: {per_backend:?}"
    );
    assert!(
        per_backend.values().all(|&n| n > 100),
        "a share far from even: {per_backend:?}"
    );
}

/// The ringlb.toml the Kubernetes ConfigMap carries is a valid config.
#[test]
fn the_kubernetes_configmap_holds_a_valid_config() {
    let yaml = include_str!("../deploy/kubernetes/configmap.yaml");
    let (_, block) = yaml
        .split_once("ringlb.toml: |\n")
        .expect("a ringlb.toml block");
    let toml: String = block
        .lines()
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    assert!(toml.contains("srv:_http._tcp.web.default.svc.cluster.local"));
    let dir = common::TempDir::new("k8s");
    let path = dir.write("ringlb.toml", &toml);
    let (status, out) = common::run_to_exit(&["--check", "--config", path.to_str().unwrap()]);
    assert!(status.success(), "{out}\n{toml}");
}
