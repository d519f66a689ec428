//! Source access rules through the real binary: --allow and --deny decide
//! who is served, --accept-proxy-from who may send a PROXY header; a refused
//! client is closed without a byte, counted, and never reaches a backend; a
//! bad CIDR is named at start.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use common::{http_get, metric, run_to_exit, wait_until, Backend, Ringlb, TempDir};

/// A client bound to `source` (any 127.0.0.0/8 address works on loopback).
fn client_from(source: &str, to: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&format!("{source}:0").parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.connect(&to.into()).unwrap();
    let conn: TcpStream = socket.into();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn
}

/// Whether a client from `source` gets its bytes echoed (true) or is closed
/// without a byte (false).
fn served_from(source: &str, to: SocketAddr, send: &[u8]) -> bool {
    let mut conn = client_from(source, to);
    let _ = conn.write_all(send);
    let _ = conn.write_all(b"ping");
    let _ = conn.shutdown(Shutdown::Write);
    let mut out = Vec::new();
    match conn.read_to_end(&mut out) {
        Ok(_) if out.is_empty() => false,
        Ok(_) => {
            assert_eq!(out, b"ping");
            true
        }
        Err(e) if e.kind() == ErrorKind::ConnectionReset => false,
        Err(e) => panic!("client from {source}: {e}"),
    }
}

#[test]
fn allow_serves_only_matching_sources_and_deny_wins() {
    let backend = Backend::echo();
    let lb = Ringlb::over(&backend)
        .arg("--allow", "127.0.0.2/32")
        .admin()
        .start();
    assert!(served_from("127.0.0.2", lb.addr, b""));
    assert!(!served_from("127.0.0.3", lb.addr, b""));
    let admin: SocketAddr = lb.admin_addr();
    let (_, text) = http_get(admin, "/metrics");
    assert_eq!(
        metric(
            &text,
            "ringlb_refused_total{frontend=\"default\",reason=\"source\"}"
        ),
        1
    );
    assert_eq!(
        backend.served(),
        1,
        "the refused client never reached a backend"
    );

    let lb = Ringlb::over(&backend)
        .arg("--allow", "127.0.0.0/8")
        .arg("--deny", "127.0.0.2")
        .start();
    assert!(!served_from("127.0.0.2", lb.addr, b""));
    assert!(served_from("127.0.0.3", lb.addr, b""));
}

#[test]
fn proxy_header_is_believed_only_from_listed_sources() {
    let backend = Backend::echo();
    let lb = Ringlb::over(&backend)
        .flag("--accept-proxy")
        .arg("--accept-proxy-from", "127.0.0.2/32")
        .start();
    let header = b"PROXY TCP4 10.1.2.3 10.0.0.1 1111 80\r\n";
    assert!(served_from("127.0.0.2", lb.addr, header));
    assert!(!served_from("127.0.0.3", lb.addr, header));
}

#[test]
fn bad_cidrs_are_named() {
    for (flag, value) in [
        ("--allow", "127.0.0.300/8"),
        ("--deny", "10.0.0.0/33"),
        ("--accept-proxy-from", "::1/129"),
    ] {
        let (status, err) = run_to_exit(&[
            "--listen",
            "127.0.0.1:0",
            "--backend",
            "127.0.0.1:9",
            flag,
            value,
        ]);
        assert_eq!(status.code(), Some(2), "{flag} {value}: {err}");
        assert!(err.contains(value), "{flag} {value}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
}

#[test]
fn reload_changes_the_rules() {
    let backend = Backend::echo();
    let dir = TempDir::new("access-reload");
    let config = |rules: &str| {
        format!(
            "[[frontend]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\nbackends = [\"{}\"]\n{rules}\n",
            backend.arg()
        )
    };
    let path = dir.write("ringlb.toml", &config("allow = [\"127.0.0.2\"]"));
    let lb = Ringlb::builder().config(&path).start();
    let addr = lb.frontend_addr("web");
    assert!(served_from("127.0.0.2", addr, b""));
    assert!(!served_from("127.0.0.3", addr, b""));

    std::fs::write(&path, config("deny = [\"127.0.0.2\"]")).unwrap();
    lb.signal("HUP");
    // Waited for by .3 being served, which the old rules never did: .2
    // going unserved could come early, since a client closed without a
    // byte for any other reason (a backend briefly down) looks the same.
    wait_until("the new rules apply", || {
        served_from("127.0.0.3", addr, b"")
    });
    assert!(!served_from("127.0.0.2", addr, b""));
}

#[test]
fn an_ipv6_rule_that_ipv4_clients_never_match_is_warned_about() {
    let backend = Backend::echo();
    // IPv4 clients of [::] are matched as IPv4: `::/0` never holds them.
    let lb = Ringlb::over(&backend)
        .arg("--listen", "[::]:0")
        .arg("--allow", "::/0")
        .start();
    let log = lb.log();
    assert!(
        log.contains("allow rule ::/0 never matches IPv4 clients of the dual-stack listener"),
        "{log}"
    );
    let v4: SocketAddr = ([127, 0, 0, 1], lb.addr.port()).into();
    assert!(!served_from("127.0.0.1", v4, b"x"));
}
