//! Operations features against the real binary: idle timeout, lifetime,
//! max-conns, the access log, and the admin endpoint's counters.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::Duration;

use common::{echo_once, http_get, metric, read_to_end, wait_until, Backend, Ringlb};

fn echo_round(conn: &mut std::net::TcpStream, msg: &[u8]) {
    conn.write_all(msg).unwrap();
    let mut got = vec![0u8; msg.len()];
    conn.read_exact(&mut got).unwrap();
    assert_eq!(got, msg);
}

#[test]
fn idle_timeout_closes_both_sides() {
    let backend = Backend::echo();
    let lb = Ringlb::over(&backend)
        .arg("--idle-timeout", "300ms")
        .access_log()
        .no_health_checks()
        .start();
    let mut conn = lb.connect();
    echo_round(&mut conn, b"hello");
    // No more bytes: the proxy closes the client after the idle timeout.
    let rest = read_to_end(&mut conn);
    assert!(rest.is_empty());
    wait_until("access line", || lb.log().contains("reason=idle timeout"));
}

#[test]
fn traffic_keeps_a_connection_alive_past_the_idle_timeout() {
    let backend = Backend::echo();
    let lb = Ringlb::over(&backend)
        .arg("--idle-timeout", "800ms")
        .start();
    let mut conn = lb.connect();
    // Fifteen rounds 100 ms apart: 1.5 s in all, never 800 ms quiet (the
    // margin is for a loaded machine's late wake-ups).
    for i in 0..15 {
        echo_round(&mut conn, format!("ping {i}").as_bytes());
        std::thread::sleep(Duration::from_millis(100));
    }
    conn.shutdown(Shutdown::Write).unwrap();
    assert!(read_to_end(&mut conn).is_empty());
}

#[test]
fn max_lifetime_closes_a_busy_connection() {
    let backend = Backend::echo();
    let lb = Ringlb::over(&backend)
        .arg("--max-lifetime", "300ms")
        .access_log()
        .start();
    let mut conn = lb.connect();
    let mut closed = false;
    for _ in 0..200 {
        if conn.write_all(b"x").is_err() {
            closed = true;
            break;
        }
        let mut b = [0u8; 1];
        match conn.read(&mut b) {
            Ok(1) => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                closed = true;
                break;
            }
        }
    }
    assert!(
        closed,
        "a busy connection outlived --max-lifetime 300ms by far"
    );
    wait_until("access line", || lb.log().contains("reason=max lifetime"));
}

#[test]
fn max_conns_holds_new_clients_in_the_backlog() {
    let backend = Backend::echo();
    let lb = Ringlb::over(&backend)
        .workers(1)
        .arg("--max-conns", "1")
        .no_health_checks()
        .start();
    let mut first = lb.connect();
    echo_round(&mut first, b"first");
    // The second client's handshake completes in the kernel, but ringlb does
    // not accept it while the first holds the only slot.
    let mut second = lb.connect();
    second.write_all(b"second").unwrap();
    second
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 6];
    let err = second.read_exact(&mut buf).unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "{err}"
    );
    assert_eq!(backend.served(), 1);

    first.shutdown(Shutdown::Write).unwrap();
    assert!(read_to_end(&mut first).is_empty());
    second.set_read_timeout(Some(common::PATIENCE)).unwrap();
    second.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"second");
}

#[test]
fn access_log_in_json_has_every_field() {
    let backend = Backend::echo();
    let lb = Ringlb::over(&backend)
        .access_log()
        .arg("--log-format", "json")
        // Access lines pass a stricter level; the start-up line is let through for the harness.
        .arg("--log-level", "warn,ringlb::server=info")
        .arg("--name", "web")
        .start();
    let mut conn = lb.connect();
    conn.write_all(b"12345").unwrap();
    conn.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_end(&mut conn), b"12345");
    let client_addr = conn.local_addr().unwrap().to_string();
    let mut line = None;
    wait_until("access line", || {
        line = lb
            .log()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["target"] == "ringlb::access");
        line.is_some()
    });
    let f = &line.unwrap()["fields"];
    assert_eq!(f["client"], client_addr.as_str());
    assert_eq!(f["frontend"], "web");
    assert_eq!(f["backend"], backend.arg().as_str());
    assert_eq!(f["bytes_in"], 5);
    assert_eq!(f["bytes_out"], 5);
    assert_eq!(f["reason"], "client EOF");
    assert_eq!(f["endpoint"], "-", "no PROXY header, no endpoint");
    assert!(f["duration_ms"].as_f64().is_some_and(|d| d >= 0.0));
}

#[test]
fn metrics_count_the_traffic_sent() {
    let (a, b) = (Backend::echo(), Backend::echo());
    let lb = Ringlb::over(&a).backend(&b).workers(2).admin().start();
    let admin: SocketAddr = lb.admin_addr();
    let mut sent = 0u64;
    for i in 0..20u64 {
        let msg = vec![b'm'; 100 + i as usize];
        assert_eq!(echo_once(&lb, &msg).unwrap(), msg);
        sent += msg.len() as u64;
    }
    let fe = "{frontend=\"default\"}";
    let mut text = String::new();
    wait_until("all 20 connections closed and counted", || {
        text = http_get(admin, "/metrics").1;
        metric(&text, &format!("ringlb_connections_active{fe}")) == 0
    });
    assert_eq!(metric(&text, &format!("ringlb_connections_total{fe}")), 20);
    assert_eq!(metric(&text, &format!("ringlb_bytes_in_total{fe}")), sent);
    assert_eq!(metric(&text, &format!("ringlb_bytes_out_total{fe}")), sent);
    let per = |name: &str, backend: &Backend| {
        metric(
            &text,
            &format!(
                "{name}{{frontend=\"default\",backend=\"{}\"}}",
                backend.arg()
            ),
        )
    };
    assert_eq!(
        per("ringlb_backend_connections_total", &a) + per("ringlb_backend_connections_total", &b),
        20
    );
    assert_eq!(
        per("ringlb_backend_bytes_in_total", &a) + per("ringlb_backend_bytes_in_total", &b),
        sent
    );
    assert_eq!(per("ringlb_backend_up", &a), 1);
    assert!(text.contains("# TYPE ringlb_connections_total counter"));

    let (status, body) = http_get(admin, "/healthz");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, body) = http_get(admin, "/backends");
    assert_eq!(status, 200);
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert_eq!(list[0]["address"], a.arg().as_str());
    assert_eq!(list[0]["up"], true);
    assert_eq!(http_get(admin, "/nope").0, 404);
}

#[test]
fn healthz_fails_when_every_backend_is_down() {
    let a = Backend::echo();
    let lb = Ringlb::over(&a)
        .health_interval("50ms")
        .arg("--fall", "1")
        .admin()
        .start();
    let admin: SocketAddr = lb.admin_addr();
    a.stop();
    wait_until("healthz 503", || http_get(admin, "/healthz").0 == 503);
    let text = http_get(admin, "/metrics").1;
    assert_eq!(
        metric(
            &text,
            &format!(
                "ringlb_backend_up{{frontend=\"default\",backend=\"{}\"}}",
                a.arg()
            )
        ),
        0
    );
}
