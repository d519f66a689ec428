//! Backend failures: a refused or silent backend is skipped, and a client
//! with no backend to go to is closed promptly, never left hanging.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use common::{fd_count, wait_until, Backend, Refused, Ringlb};

fn echo_once(lb: &Ringlb, msg: &[u8]) -> Vec<u8> {
    common::echo_once(lb, msg).expect("echo through ringlb")
}

#[test]
fn refused_backend_is_skipped() {
    let refused = Refused::new();
    let good = Backend::echo();
    let lb = Ringlb::over(&refused).backend(&good).workers(2).start();
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
    let lb = Ringlb::over(&a).backend(&b).workers(1).start();
    for _ in 0..10 {
        assert_eq!(echo_once(&lb, b"x"), b"x");
    }
    assert_eq!((a.served(), b.served()), (5, 5));
}

#[test]
fn all_backends_down_closes_the_client() {
    let (r1, r2) = (Refused::new(), Refused::new());
    let lb = Ringlb::over(&r1).backend(&r2).start();
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

#[test]
fn silent_backend_times_out_and_its_socket_is_released() {
    let (_silent, _fillers, silent_addr) = common::black_hole();
    let good = Backend::echo();
    let lb = Ringlb::over(silent_addr)
        .backend(&good)
        .workers(1)
        .connect_timeout("100ms")
        .start();
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

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Sets the soft open-file limit of a running process (the hard one stays).
/// The `n`th lowest descriptor number (from 0) that `pid` has free: a
/// descriptor limit of it leaves `pid` exactly `n` descriptors to open.
fn free_fd(pid: u32, n: usize) -> usize {
    let open: std::collections::BTreeSet<usize> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    (0..).filter(|fd| !open.contains(fd)).nth(n).unwrap()
}

fn set_nofile(pid: u32, limit: usize) {
    let out = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--nofile={limit}:")])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "prlimit failed: {err}");
}

#[test]
fn out_of_descriptors_backs_off_without_spinning_and_recovers() {
    let good = Backend::echo();
    let lb = Ringlb::over(&good).workers(1).no_health_checks().start();
    // Room for one proxied connection (two descriptors), then accept hits EMFILE.
    set_nofile(lb.pid(), free_fd(lb.pid(), 2));
    let mut first = lb.connect();
    first.write_all(b"one").unwrap();
    let mut buf = [0u8; 3];
    first.read_exact(&mut buf).unwrap();
    // No room left at all. The limit is on descriptor numbers, not their
    // count: one spare number (a descriptor closed since, or held only for a
    // moment when the limit was set) lets every waiting client be accepted,
    // and closed for want of a backend socket, without one failed accept.
    set_nofile(lb.pid(), free_fd(lb.pid(), 0));
    let waiting: Vec<TcpStream> = (0..5).map(|_| lb.connect()).collect();
    wait_until("accept failure logged", || {
        lb.log().contains("accept failed")
    });

    // Over a second of EMFILE the worker backs off instead of spinning, and
    // logs at most once a second.
    let (t0, c0) = (std::time::Instant::now(), cpu_ticks(lb.pid()));
    let lines0 = lb.log().matches("accept failed").count();
    std::thread::sleep(Duration::from_millis(1000));
    let ticks = cpu_ticks(lb.pid()) - c0;
    let lines = lb.log().matches("accept failed").count() - lines0;
    assert!(
        ticks < 50,
        "{ticks} CPU ticks in 1 s while out of descriptors"
    );
    assert!(
        lines as u64 <= t0.elapsed().as_secs() + 1,
        "{lines} accept warnings in 1 s"
    );

    // Room again. Each waiting client is served, or closed if its accept got a
    // descriptor but its backend socket did not; none hangs. New clients are served.
    set_nofile(lb.pid(), 4096);
    for mut conn in waiting {
        let _ = conn.write_all(b"two");
        let _ = conn.shutdown(Shutdown::Write);
        let mut got = Vec::new();
        let _ = conn.read_to_end(&mut got); // EOF or reset, never a hang
        assert!(got.is_empty() || got == b"two", "{got:?}");
    }
    assert_eq!(echo_once(&lb, b"three"), b"three");
    drop(first);
}
