//! Backend failures: a refused or silent backend is skipped, and a client
//! with no backend to go to is closed promptly, never left hanging.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::Duration;

use common::{free_port, read_to_end, wait_until, Backend, Ringlb};

fn echo_once(lb: &Ringlb, msg: &[u8]) -> Vec<u8> {
    let mut conn = lb.connect();
    conn.write_all(msg).unwrap();
    conn.shutdown(Shutdown::Write).unwrap();
    read_to_end(&mut conn)
}

#[test]
fn refused_backend_is_skipped() {
    let refused = format!("127.0.0.1:{}", free_port());
    let good = Backend::echo();
    let lb = Ringlb::start(&[
        "--backend",
        &refused,
        "--backend",
        &good.arg(),
        "--workers",
        "2",
    ]);
    for i in 0..20 {
        let msg = format!("hello {i}");
        assert_eq!(echo_once(&lb, msg.as_bytes()), msg.as_bytes());
    }
    assert_eq!(good.served(), 20);
    assert!(
        lb.log().contains("backend connect failed"),
        "log:\n{}",
        lb.log()
    );
}

#[test]
fn round_robin_alternates() {
    let (a, b) = (Backend::echo(), Backend::echo());
    let lb = Ringlb::start(&[
        "--backend",
        &a.arg(),
        "--backend",
        &b.arg(),
        "--workers",
        "1",
    ]);
    for _ in 0..10 {
        assert_eq!(echo_once(&lb, b"x"), b"x");
    }
    assert_eq!((a.served(), b.served()), (5, 5));
}

#[test]
fn all_backends_down_closes_the_client() {
    let (p1, p2) = (free_port(), free_port());
    let lb = Ringlb::start(&[
        "--backend",
        &format!("127.0.0.1:{p1}"),
        "--backend",
        &format!("127.0.0.1:{p2}"),
    ]);
    for _ in 0..3 {
        let mut conn = lb.connect();
        let mut buf = [0u8; 16];
        // EOF or reset, but promptly (the read timeout turns a hang into a failure).
        match conn.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => panic!("read {n} bytes from nowhere"),
            Err(e) => assert!(
                matches!(e.kind(), std::io::ErrorKind::ConnectionReset),
                "unexpected error: {e}"
            ),
        }
    }
}

/// Open descriptors of a process.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[test]
fn silent_backend_times_out_and_its_socket_is_released() {
    // A listener whose one-slot accept queue is full drops further SYNs, so a
    // connect to it neither succeeds nor fails until the timeout.
    let silent = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    silent
        .bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    silent.listen(0).unwrap();
    let silent: TcpListener = silent.into();
    let silent_addr = silent.local_addr().unwrap();
    let _fillers: Vec<_> = (0..2)
        .filter_map(|_| TcpStream::connect_timeout(&silent_addr, Duration::from_millis(200)).ok())
        .collect();

    let good = Backend::echo();
    let lb = Ringlb::start(&[
        "--backend",
        &silent_addr.to_string(),
        "--backend",
        &good.arg(),
        "--workers",
        "1",
        "--connect-timeout",
        "100ms",
    ]);
    let baseline = fd_count(lb.pid());
    for i in 0..6 {
        let msg = format!("m{i}");
        assert_eq!(echo_once(&lb, msg.as_bytes()), msg.as_bytes());
    }
    assert!(lb.log().contains("timed out"), "log:\n{}", lb.log());
    // Every timed-out connect's socket is closed, not left to the kernel's SYN retries.
    wait_until("descriptors back to baseline", || {
        fd_count(lb.pid()) <= baseline
    });
}
