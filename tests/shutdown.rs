//! SIGTERM/SIGINT: stop accepting, let transfers finish, exit 0; cut off
//! what is still open when the drain timeout passes.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};

use common::{pattern, read_to_end, wait_until, Backend, Ringlb};

const MIB: usize = 1024 * 1024;

#[test]
fn sigterm_lets_a_transfer_in_flight_finish() {
    let backend = Backend::spawn(|mut conn| {
        let _ = conn.write_all(&pattern(7, 16 * MIB));
    });
    let mut lb = Ringlb::over(&backend).workers(2).start();
    let mut conn = lb.connect();
    let mut first = vec![0u8; MIB];
    conn.read_exact(&mut first).unwrap();

    lb.signal("TERM");
    // New clients are refused once every worker has closed its listener.
    wait_until("listener closed", || TcpStream::connect(lb.addr).is_err());

    let mut rest = read_to_end(&mut conn);
    first.append(&mut rest);
    assert!(
        first == pattern(7, 16 * MIB),
        "transfer was cut or corrupted"
    );
    // The client direction is still open; closing it ends the connection.
    drop(conn);
    let status = lb.wait();
    assert!(status.success(), "exit status {status}");
}

#[test]
fn drain_timeout_closes_idle_connections_and_exits_zero() {
    let backend = Backend::echo();
    let mut lb = Ringlb::over(&backend)
        .arg("--drain-timeout", "200ms")
        .start();
    let mut conn = lb.connect();
    conn.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    conn.read_exact(&mut buf).unwrap();

    lb.signal("TERM");
    // The idle connection is shut down by the proxy after the drain timeout.
    let mut rest = Vec::new();
    let _ = conn.read_to_end(&mut rest);
    assert!(rest.is_empty());
    let status = lb.wait();
    assert!(status.success(), "exit status {status}");
    let log = lb.log();
    let cut = log
        .lines()
        .find(|l| l.contains("drain timeout"))
        .unwrap_or_else(|| panic!("no drain timeout line:\n{log}"));
    assert!(
        cut.contains("WARN") && cut.contains("cutting 1 open connection"),
        "the cut connections are counted at warn level: {cut}"
    );
}

#[test]
fn second_signal_closes_at_once() {
    let backend = Backend::echo();
    let mut lb = Ringlb::over(&backend).arg("--drain-timeout", "1h").start();
    let mut conn = lb.connect();
    conn.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    conn.read_exact(&mut buf).unwrap();

    lb.signal("INT");
    wait_until("listener closed", || TcpStream::connect(lb.addr).is_err());
    lb.signal("INT");
    let status = lb.wait();
    assert!(status.success(), "exit status {status}");
    let _ = conn.shutdown(Shutdown::Write);
}
