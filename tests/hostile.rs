//! Hostile and exhausted conditions: too few descriptors, backends that
//! black-hole or reset, stalled half-closed uploads, sources that must be
//! refused, and configs that would silently share a port.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::{black_hole, echo_once, fd_count, http_get, wait_until, Backend, Ringlb};

/// A backend that accepts and resets every connection at once.
fn resetting_backend() -> Backend {
    resetting_backend_after(Duration::ZERO)
}

/// A backend that accepts, waits `delay` (long enough for ringlb's connect to
/// have completed, if not zero), then resets without sending a byte.
fn resetting_backend_after(delay: Duration) -> Backend {
    Backend::spawn(move |conn| {
        thread::sleep(delay);
        socket2::SockRef::from(&conn)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(conn);
    })
}

fn backend_metric(text: &str, name: &str, backend: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(&format!("backend=\"{backend}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

#[test]
fn black_holed_backend_is_passively_marked_down_without_active_checks() {
    let (_listener, _fillers, hole) = black_hole();
    let good = Backend::echo();
    let lb = Ringlb::over(hole)
        .backend(&good)
        .workers(1)
        .no_health_checks()
        .connect_timeout("200ms")
        .arg("--fall", "2")
        .admin()
        .start();
    let admin: SocketAddr = lb.admin_addr();
    for i in 0..20 {
        let msg = format!("m{i}");
        assert_eq!(echo_once(&lb, msg.as_bytes()).unwrap(), msg.as_bytes());
    }
    let (_, text) = http_get(admin, "/metrics");
    let paid = backend_metric(
        &text,
        "ringlb_backend_connect_failures_total",
        &hole.to_string(),
    );
    assert!(
        (1..=3).contains(&paid),
        "{paid} of 20 clients paid the connect timeout (fall 2 allows 3)\n{text}"
    );
    let (_, backends) = http_get(admin, "/backends");
    let json: serde_json::Value = serde_json::from_str(&backends).unwrap();
    let entry = json.to_string();
    assert!(
        entry.contains("\"up\":false"),
        "black hole not down: {entry}"
    );
}

#[test]
fn accept_then_reset_backend_is_marked_down_by_layer4_observation() {
    let bad = resetting_backend();
    let good = Backend::echo();
    let lb = Ringlb::over(&bad)
        .backend(&good)
        .workers(1)
        .health_interval("1m")
        .admin()
        .start();
    let admin: SocketAddr = lb.admin_addr();
    let mut failed = 0;
    for i in 0..200 {
        let msg = format!("m{i}");
        match echo_once(&lb, msg.as_bytes()) {
            Ok(out) if out == msg.as_bytes() => {}
            _ => failed += 1,
        }
    }
    assert!(
        failed <= 3 + 2,
        "{failed} of 200 clients failed (fall 3 allows 5)"
    );
    let (_, backends) = http_get(admin, "/backends");
    let json: serde_json::Value = serde_json::from_str(&backends).unwrap();
    let pool = json.to_string();
    let bad_entry = pool
        .split('{')
        .find(|s| s.contains(&bad.arg()))
        .unwrap_or_else(|| panic!("{} not in {pool}", bad.arg()));
    assert!(
        bad_entry.contains("\"up\":false"),
        "bad backend not down: {pool}"
    );
    assert!(lb.log().contains(&bad.arg()), "log:\n{}", lb.log());
}

#[test]
fn layer4_observation_can_be_turned_off() {
    // Resetting only after the connect has surely completed, so every
    // failure is one that only layer-4 observation can see.
    let bad = resetting_backend_after(Duration::from_millis(50));
    let good = Backend::echo();
    let lb = Ringlb::over(&bad)
        .backend(&good)
        .workers(1)
        .health_interval("1m")
        .flag("--no-observe-l4")
        .start();
    let failed = (0..40)
        .filter(|i| {
            let msg = format!("m{i}");
            echo_once(&lb, msg.as_bytes()).map_or(true, |out| out != msg.as_bytes())
        })
        .count();
    assert!(
        failed >= 15,
        "with observation off the resetting backend keeps its share, yet only {failed} of 40 failed"
    );
}

#[test]
fn out_of_descriptors_queues_clients_and_never_blames_the_backend() {
    let backend = Backend::echo();
    let lb = Ringlb::builder()
        .wrapped(&["prlimit", "--nofile=256:256", "--"])
        .backend(&backend)
        .workers(2)
        .start();
    // Logged before the ready file is written; the reader of its stderr
    // may not have caught up yet.
    wait_until("the ceiling is logged at start", || {
        lb.log().contains("connection ceiling")
    });
    const CLIENTS: usize = 1000;
    let served = Arc::new(AtomicUsize::new(0));
    let empty = Arc::new(AtomicUsize::new(0));
    let addr = lb.addr;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (served, empty) = (served.clone(), empty.clone());
            thread::spawn(move || {
                let Ok(mut conn) = TcpStream::connect(addr) else {
                    return;
                };
                conn.set_read_timeout(Some(Duration::from_secs(60)))
                    .unwrap();
                if conn.write_all(b"x").is_err() {
                    return;
                }
                let mut buf = [0u8; 1];
                match conn.read(&mut buf) {
                    Ok(1) => {
                        thread::sleep(Duration::from_secs(1));
                        served.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(_) => {
                        empty.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(_) => {}
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let served = served.load(Ordering::SeqCst);
    let log = lb.log();
    assert!(
        served * 100 >= CLIENTS * 99,
        "{served} of {CLIENTS} served; log:\n{log}"
    );
    assert_eq!(
        empty.load(Ordering::SeqCst),
        0,
        "clients accepted, then closed without a byte"
    );
    assert!(
        !log.contains("down after") && !log.contains("every backend is down"),
        "the backend was blamed for ringlb's own fd shortage:\n{log}"
    );
}

#[test]
fn max_conns_above_the_fd_ceiling_is_refused_at_start() {
    let backend = Backend::echo();
    let mut child = std::process::Command::new("prlimit")
        .args(["--nofile=256:256", "--", common::binary()])
        .args(["--listen", "127.0.0.1:0", "--backend", &backend.arg()])
        .args(["--max-conns", "5000"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut status = None;
    wait_until("ringlb to refuse to start", || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.unwrap().code(), Some(2), "stderr: {err}");
    assert!(
        err.contains("5000") && err.contains("ceiling"),
        "the error names both numbers: {err}"
    );
}

#[test]
fn stalled_half_closed_upload_is_released_at_idle_timeout() {
    // A backend that accepts and never reads.
    let stalled = Backend::spawn(|conn| {
        thread::sleep(Duration::from_secs(30));
        drop(conn);
    });
    let lb = Ringlb::over(&stalled)
        .workers(1)
        // Long enough that the client, filling buffers until 20 writes in a
        // row would block, is done before the stall times out even on a
        // loaded machine (at 500ms the timeout once came first: EPIPE).
        .arg("--idle-timeout", "2s")
        .start();
    let baseline = fd_count(lb.pid());
    {
        let mut conn = lb.connect();
        conn.set_nonblocking(true).unwrap();
        let block = vec![7u8; 64 * 1024];
        // Fill every buffer on the way until the client can write no more.
        let mut stuck = 0;
        while stuck < 20 {
            match conn.write(&block) {
                Ok(_) => stuck = 0,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    stuck += 1;
                    thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("write: {e}"),
            }
        }
        conn.shutdown(Shutdown::Write).unwrap();
    }
    wait_until("the stalled connection's descriptors released", || {
        fd_count(lb.pid()) <= baseline
    });
}

#[test]
fn a_tiny_connection_ceiling_still_serves_every_worker_s_socket() {
    // 84 descriptors leave a ceiling of a few connections, and each of the
    // 2 workers keeps accepts pending on its own socket, each holding a slot:
    // they once took every slot, and clients whose connections the kernel
    // put on the other worker's socket were never accepted.
    let backend = Backend::echo();
    let lb = Ringlb::over(&backend)
        .workers(2)
        .no_health_checks()
        .wrapped(&["prlimit", "--nofile=84:84", "--"])
        .start();
    let ceiling: usize = lb.log_value("ceiling").parse().unwrap();
    assert!(
        (2..=8).contains(&ceiling),
        "a ceiling of {ceiling} is not within one worker's 8 accepts"
    );
    // Sequential clients from fresh ports land on either socket.
    for i in 0..16 {
        let mut conn = lb.connect();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let msg = format!("client {i}");
        conn.write_all(msg.as_bytes()).unwrap();
        conn.shutdown(Shutdown::Write).unwrap();
        let mut out = Vec::new();
        if let Err(err) = conn.read_to_end(&mut out) {
            panic!("{msg} not served: {err}; log:\n{}", lb.log());
        }
        assert_eq!(out, msg.as_bytes());
    }
}
