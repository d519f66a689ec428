//! Bytes through the real binary: exact content both ways, half-close,
//! server-speaks-first, close right after a burst, many connections at once.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::thread;

use common::{pattern, read_to_end, rss_kib, sockets_on, wait_until, Backend, Ringlb, PATIENCE};
use sha2::{Digest, Sha256};

const MIB: usize = 1024 * 1024;

#[test]
fn thirty_two_mib_each_way_then_half_close() {
    // The backend streams its own 32 MiB while it reads; after the client's
    // EOF reaches it, it answers with the digest of what it received.
    let backend = Backend::spawn(|mut conn| {
        let mut writer = conn.try_clone().unwrap();
        let send = thread::spawn(move || writer.write_all(&pattern(2, 32 * MIB)).unwrap());
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = conn.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        send.join().unwrap();
        conn.write_all(&hasher.finalize()).unwrap();
    });
    let lb = Ringlb::over(&backend).start();
    let mut conn = lb.connect();
    let mut writer = conn.try_clone().unwrap();
    let send = thread::spawn(move || {
        writer.write_all(&pattern(1, 32 * MIB)).unwrap();
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let mut got = Vec::new();
    if let Err(err) = conn.read_to_end(&mut got) {
        panic!(
            "read after {} bytes: {err}\n{}\n{}",
            got.len(),
            sockets_on(lb.addr.port()),
            lb.log()
        );
    }
    send.join().unwrap();

    assert_eq!(got.len(), 32 * MIB + 32, "byte count from the backend");
    let (body, digest) = got.split_at(32 * MIB);
    assert!(
        body == pattern(2, 32 * MIB).as_slice(),
        "backend -> client bytes differ"
    );
    assert_eq!(
        digest,
        Sha256::digest(pattern(1, 32 * MIB)).as_slice(),
        "client -> backend bytes differ"
    );
}

#[test]
fn backend_speaks_first() {
    let backend = Backend::spawn(|mut conn| {
        conn.write_all(b"220 ready\r\n").unwrap();
        let mut line = Vec::new();
        conn.read_to_end(&mut line).unwrap();
        conn.write_all(&line).unwrap();
    });
    let lb = Ringlb::over(&backend).start();
    let mut conn = lb.connect();
    let mut banner = [0u8; 11];
    conn.read_exact(&mut banner).unwrap();
    assert_eq!(&banner, b"220 ready\r\n");
    conn.write_all(b"QUIT\r\n").unwrap();
    conn.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_end(&mut conn), b"QUIT\r\n");
}

#[test]
fn backend_writes_eight_mib_and_closes_at_once() {
    let backend = Backend::spawn(|mut conn| {
        conn.write_all(&pattern(3, 8 * MIB)).unwrap();
        // Dropped here: the FIN follows the last byte immediately.
    });
    let lb = Ringlb::over(&backend).start();
    let mut conn = lb.connect();
    let got = read_to_end(&mut conn);
    assert_eq!(got.len(), 8 * MIB);
    assert!(got == pattern(3, 8 * MIB), "bytes differ");
}

#[test]
fn four_hundred_concurrent_connections() {
    let backend = Backend::echo();
    let lb = Ringlb::over(&backend).workers(2).start();
    let mut conns: Vec<_> = (0..400).map(|_| lb.connect()).collect();
    for (i, conn) in conns.iter_mut().enumerate() {
        conn.write_all(&pattern(i as u64, 1000)).unwrap();
    }
    for (i, conn) in conns.iter_mut().enumerate() {
        let mut got = vec![0u8; 1000];
        conn.read_exact(&mut got).unwrap();
        assert!(
            got == pattern(i as u64, 1000),
            "connection {i} got another's bytes"
        );
    }
    for conn in &conns {
        conn.shutdown(Shutdown::Write).unwrap();
    }
    for conn in conns.iter_mut() {
        assert!(read_to_end(conn).is_empty());
    }
    assert_eq!(backend.served(), 400);
}

#[test]
fn client_reset_closes_the_backend_side() {
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let backend = Backend::spawn(move |mut conn| {
        let mut buf = [0u8; 1024];
        // Read until the proxy closes its side: EOF or reset, either is fine.
        while let Ok(n) = conn.read(&mut buf) {
            if n == 0 {
                break;
            }
        }
        tx.lock().unwrap().send(()).unwrap();
    });
    // No health checks, so the backend's only connection is the client's.
    let lb = Ringlb::over(&backend).no_health_checks().start();
    let conn = lb.connect();
    (&conn).write_all(b"hello").unwrap();
    common::wait_until("backend accepted", || backend.accepted() == 1);
    // SO_LINGER 0 makes close() send a reset.
    socket2::SockRef::from(&conn)
        .set_linger(Some(std::time::Duration::ZERO))
        .unwrap();
    drop(conn);
    rx.recv_timeout(PATIENCE)
        .expect("backend connection was not closed after the client reset");
}

/// One exchange of round `round` on connection `i`: a message under a
/// provided buffer's 2 KiB, so it stays on the ring's path, and its echo.
fn exchange_sent(conn: &mut TcpStream, i: usize, round: u64) -> Vec<u8> {
    let msg = pattern(round << 32 | i as u64, 1000 + i % 500);
    conn.write_all(&msg).unwrap();
    msg
}

fn echo_back(conn: &mut TcpStream, msg: &[u8], what: &str) {
    let mut back = vec![0u8; msg.len()];
    conn.read_exact(&mut back)
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(back == msg, "{what}: the echo differs");
}

#[test]
fn the_memory_a_burst_took_goes_back_and_every_connection_still_relays() {
    const CONNS: usize = 1200;
    let backend = Backend::echo();
    let lb = Ringlb::over(&backend).arg("--workers", "1").start();
    let pid = lb.pid();
    // Opened one at a time, with one exchange each: no burst yet.
    let mut conns: Vec<TcpStream> = (0..CONNS)
        .map(|i| {
            let mut conn = lb.connect();
            conn.set_read_timeout(Some(PATIENCE)).unwrap();
            let msg = exchange_sent(&mut conn, i, 0);
            echo_back(&mut conn, &msg, "opening");
            conn
        })
        .collect();
    let base = rss_kib(pid);
    // A burst: ringlb, stopped while every client sends, finds every
    // message waiting at once when it goes on, as after a fleet restart.
    let mut peak = base;
    for round in 1..=3 {
        lb.signal("STOP");
        let sent: Vec<_> = conns
            .iter_mut()
            .enumerate()
            .map(|(i, conn)| exchange_sent(conn, i, round))
            .collect();
        lb.signal("CONT");
        for (i, (conn, msg)) in conns.iter_mut().zip(&sent).enumerate() {
            echo_back(conn, msg, &format!("burst {round}, connection {i}"));
        }
        peak = peak.max(rss_kib(pid));
    }
    assert!(
        peak >= base + 2048,
        "the bursts did not take memory: {base} -> {peak} KiB"
    );
    // Idle for an interval or two, ringlb gives most of it back...
    wait_until("the burst's memory given back", || {
        rss_kib(pid) + (peak - base) / 2 <= peak
    });
    // ...and every connection still relays.
    for (i, conn) in conns.iter_mut().enumerate() {
        let msg = exchange_sent(conn, i, 9);
        echo_back(conn, &msg, &format!("after, connection {i}"));
    }
}

/// The answer to request `seed` of `len` bytes: a head of 200 bytes, then
/// the rest, in two writes (as an HTTP server's header and body).
fn answer(mut conn: TcpStream) {
    let mut req = [0u8; 16];
    while conn.read_exact(&mut req).is_ok() {
        let seed = u64::from_le_bytes(req[..8].try_into().unwrap());
        let len = u64::from_le_bytes(req[8..].try_into().unwrap()) as usize;
        let body = pattern(seed, len);
        if conn.write_all(&body[..200]).is_err() || conn.write_all(&body[200..]).is_err() {
            return;
        }
    }
}

#[test]
fn answers_of_four_to_twenty_kib_arrive_whole_on_many_keep_alive_connections() {
    // One worker, so every connection's answers come in receive bundles
    // (several buffers of the worker's one provided ring per completion);
    // every fourth client reads each answer late, so its bundles wait
    // while the others' cycle the ring.
    const CONNS: usize = 32;
    const ROUNDS: u64 = 40;
    let backend = Backend::spawn(answer);
    let lb = Ringlb::over(&backend).workers(1).start();
    let clients: Vec<_> = (0..CONNS)
        .map(|i| {
            let mut conn = lb.connect();
            thread::spawn(move || {
                for round in 0..ROUNDS {
                    let seed = round << 32 | i as u64;
                    let len = 4096 + (i * 997 + round as usize * 1231) % (16 * 1024);
                    let mut req = seed.to_le_bytes().to_vec();
                    req.extend_from_slice(&(len as u64).to_le_bytes());
                    conn.write_all(&req).unwrap();
                    if i % 4 == 0 {
                        thread::sleep(std::time::Duration::from_millis(3));
                    }
                    let mut got = vec![0u8; len];
                    conn.read_exact(&mut got)
                        .unwrap_or_else(|e| panic!("connection {i}, round {round}: {e}"));
                    assert!(
                        got == pattern(seed, len),
                        "connection {i}, round {round}: the answer differs"
                    );
                }
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
}
