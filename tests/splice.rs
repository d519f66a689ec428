//! Zero-copy forwarding (`splice = "auto" | "always" | "never"`): every
//! byte arrives, in order, whichever path carried it; half-close,
//! backpressure, a dying backend, a drain and a hot upgrade behave as on
//! the copy path; without room for pipes every transfer is still served, by
//! copying; and the byte counters (spliced among them) add up.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const MIB: usize = 1024 * 1024;
const MODES: [&str; 3] = ["auto", "always", "never"];

/// Descriptors of `pid` that are pipes.
fn pipes_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter(|target| target.to_string_lossy().starts_with("pipe:"))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn one_byte_to_sixty_four_mib_both_ways_in_every_mode_and_the_counters_add_up() {
    let backend = Backend::echo();
    for mode in MODES {
        let lb = Ringlb::over(&backend).arg("--splice", mode).admin().start();
        let sent = echo_every_size(&lb, mode);
        let (bytes_in, bytes_out) = (
            counter(&lb, "ringlb_bytes_in_total"),
            counter(&lb, "ringlb_bytes_out_total"),
        );
        let spliced = counter(&lb, "ringlb_spliced_bytes_total");
        assert_eq!((bytes_in, bytes_out), (sent, sent), "{mode}: bytes counted");
        // Spliced plus copied is everything: the spliced part can be no more.
        assert!(spliced <= bytes_in + bytes_out, "{mode}: {spliced} spliced");
        match mode {
            "never" => assert_eq!(spliced, 0, "never splices"),
            // The 64 MiB goes mostly through pipes.
            _ => assert!(spliced > 64 * MIB as u64, "{mode}: only {spliced} spliced"),
        }
    }
}

#[test]
fn half_close_each_way_while_splicing() {
    for mode in ["always", "auto"] {
        half_close_each_way(&["--splice", mode]);
    }
}

#[test]
fn a_reader_that_stops_for_five_seconds_holds_memory_and_pipes_bounded() {
    let backend = Backend::spawn(|mut conn| {
        let _ = conn.write_all(&pattern(9, 64 * MIB));
    });
    let lb = Ringlb::over(&backend)
        .arg("--splice", "auto")
        .admin()
        .start();
    let pid = lb.pid();
    let (rss_before, pipes_before) = (rss_kib(pid), pipes_of(pid));
    let mut conn = lb.connect();
    conn.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut got = vec![0u8; 4 * MIB];
    conn.read_exact(&mut got).unwrap();
    // The backend goes on writing; nobody reads for 5 s.
    let (mut rss_max, mut pipes_max) = (0, 0);
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        rss_max = rss_max.max(rss_kib(pid));
        pipes_max = pipes_max.max(pipes_of(pid));
        thread::sleep(Duration::from_millis(100));
    }
    // One direction splices: one pipe, two descriptors.
    assert!(
        pipes_max <= pipes_before + 2,
        "pipes went from {pipes_before} fds to {pipes_max}"
    );
    assert!(
        rss_max < rss_before + 16 * 1024,
        "RSS went from {rss_before} KiB to {rss_max} KiB while the reader stopped"
    );
    got.extend(read_to_end(&mut conn));
    assert!(
        got == pattern(9, 64 * MIB),
        "the stream differs after the pause"
    );
    drop(conn);
    wait_closed(&lb);
    assert!(
        counter(&lb, "ringlb_spliced_bytes_total") > 32 * MIB as u64,
        "it spliced"
    );
}

#[test]
fn a_backend_that_dies_mid_splice_ends_the_client_never_hangs() {
    a_backend_that_dies_mid_transfer_ends_the_client(&["--splice", "always"]);
}

/// Four paced echo transfers of 16 MiB through `addr`, each checked; returns
/// how many came back other than sent, once they have started.
fn paced_transfers(addr: SocketAddr) -> (thread::JoinHandle<Vec<String>>, mpsc::Receiver<()>) {
    let (started_tx, started) = mpsc::channel();
    let all = thread::spawn(move || {
        let transfers: Vec<_> = (0..4u64)
            .map(|i| {
                let started_tx = started_tx.clone();
                thread::spawn(move || {
                    let data = pattern(20 + i, 16 * MIB);
                    let _ = started_tx.send(());
                    // About 2 s each: 64 chunks of 256 KiB, 30 ms apart.
                    match echo_transfer(addr, &data, Some(Duration::from_millis(30))) {
                        Ok(got) if got == data => None,
                        Ok(got) => {
                            Some(format!("transfer {i}: {} bytes back, differing", got.len()))
                        }
                        Err(e) => Some(format!("transfer {i}: {e}")),
                    }
                })
            })
            .collect();
        transfers
            .into_iter()
            .filter_map(|t| t.join().unwrap())
            .collect()
    });
    (all, started)
}

#[test]
fn a_drain_with_spliced_transfers_running_corrupts_nothing() {
    let backend = Backend::echo();
    let mut lb = Ringlb::over(&backend)
        .arg("--splice", "always")
        .workers(2)
        .start();
    let (transfers, started) = paced_transfers(lb.addr);
    for _ in 0..4 {
        started.recv_timeout(PATIENCE).unwrap();
    }
    thread::sleep(Duration::from_millis(300));
    lb.signal("TERM");
    let failed = transfers.join().unwrap();
    assert!(failed.is_empty(), "{failed:?}\n{}", lb.log());
    assert!(lb.wait().success(), "{}", lb.log());
}

#[test]
fn a_hot_upgrade_with_spliced_transfers_running_corrupts_nothing() {
    let backend = Backend::echo();
    let dir = TempDir::new("splice-upgrade");
    let ctl = dir.0.join("ctl");
    let ctl = ctl.to_str().unwrap();
    let start = || {
        Ringlb::over(&backend)
            .arg("--splice", "auto")
            .args(&["--control-socket", ctl, "--takeover", ctl])
            .start()
    };
    let mut old = start();
    let (transfers, started) = paced_transfers(old.addr);
    for _ in 0..4 {
        started.recv_timeout(PATIENCE).unwrap();
    }
    thread::sleep(Duration::from_millis(300));
    let new = start();
    // New clients reach the new process while the old one finishes its own.
    let data = pattern(30, 8 * MIB);
    assert!(echo_transfer(new.addr, &data, None).unwrap() == data);
    assert!(old.wait().success(), "{}", old.log());
    let failed = transfers.join().unwrap();
    assert!(failed.is_empty(), "{failed:?}\n{}", old.log());
}

#[test]
fn with_no_descriptors_left_for_pipes_every_transfer_is_copied() {
    let backend = Backend::echo();
    // A hard limit too: ringlb raises its soft limit to the hard one. One
    // worker, so the connections below fill the ceiling on one socket.
    let lb = Ringlb::over(&backend)
        .arg("--splice", "auto")
        .workers(1)
        .admin()
        .wrapped(&["prlimit", "--nofile=150:150", "--"])
        .start();
    let ceiling: usize = lb.log_value("ceiling").parse().unwrap();
    assert!((1..=64).contains(&ceiling), "ceiling {ceiling}");
    // Every slot of the ceiling taken by a connection, each proven open by
    // a small echo (copied: small traffic does not splice in auto)...
    let mut conns: Vec<TcpStream> = (0..ceiling)
        .map(|_| {
            let mut c = lb.connect();
            c.set_read_timeout(Some(PATIENCE)).unwrap();
            c.write_all(b"x").unwrap();
            let mut one = [0u8; 1];
            c.read_exact(&mut one).unwrap();
            c
        })
        .collect();
    // ...then each goes bulk, and finds no room for a pipe. None closes
    // before every echo is back: a closed one would free a slot, which a
    // pipe may then take (once the acceptors waiting for slots have theirs).
    let data = pattern(40, 2 * MIB);
    let transfers: Vec<_> = conns
        .drain(..)
        .map(|mut conn| {
            let data = data.clone();
            thread::spawn(move || {
                let mut writer = conn.try_clone().unwrap();
                let sent = data.clone();
                let w = thread::spawn(move || writer.write_all(&sent).unwrap());
                let mut got = vec![0u8; data.len()];
                conn.read_exact(&mut got).unwrap();
                w.join().unwrap();
                (conn, got == data)
            })
        })
        .collect();
    let mut conns = Vec::new();
    for t in transfers {
        let (conn, same) = t.join().unwrap();
        assert!(same, "a transfer differs\n{}", lb.log());
        conns.push(conn);
    }
    for mut conn in conns {
        conn.shutdown(Shutdown::Write).unwrap();
        assert!(read_to_end(&mut conn).is_empty());
    }
    wait_closed(&lb);
    assert_eq!(
        counter(&lb, "ringlb_spliced_bytes_total"),
        0,
        "no pipe could be had"
    );
    let expected = (ceiling * (2 * MIB + 1)) as u64;
    assert_eq!(counter(&lb, "ringlb_bytes_in_total"), expected);
    assert_eq!(counter(&lb, "ringlb_bytes_out_total"), expected);
}

#[test]
fn max_pipes_bounds_the_pipes_and_the_rest_copy() {
    // The first client's backend reads nothing until released, so that
    // connection's upload jams with bytes in the one pipe, which it holds;
    // every other connection echoes.
    let release = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (drained_tx, drained) = mpsc::channel();
    let backend = {
        let release = release.clone();
        Backend::spawn(move |mut conn| {
            let mut first = [0u8; 1];
            if conn.read_exact(&mut first).is_err() {
                return;
            }
            if first[0] == b'S' {
                while !release.load(std::sync::atomic::Ordering::SeqCst) {
                    thread::sleep(Duration::from_millis(5));
                }
                let mut rest = Vec::new();
                let _ = drained_tx.send(conn.read_to_end(&mut rest).map(|_| 1 + rest.len()));
                return;
            }
            let mut out = conn.try_clone().unwrap();
            if out.write_all(&first).is_ok() {
                let _ = std::io::copy(&mut conn, &mut out);
            }
            let _ = out.shutdown(Shutdown::Write);
        })
    };
    let lb = Ringlb::over(&backend)
        .arg("--splice", "always")
        .arg("--max-pipes", "1")
        .admin()
        .start();
    let pid = lb.pid();
    let before = pipes_of(pid);

    // Upload until the client's writes block: the pipe is full and held.
    let mut stalled = lb.connect();
    stalled.write_all(b"S").unwrap();
    stalled.set_nonblocking(true).unwrap();
    let chunk = vec![7u8; 64 * 1024];
    let (mut sent, mut blocked_since) = (1usize, None::<Instant>);
    while blocked_since.is_none_or(|t| t.elapsed() < Duration::from_millis(300)) {
        match stalled.write(&chunk) {
            Ok(n) => (sent, blocked_since) = (sent + n, None),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                blocked_since.get_or_insert_with(Instant::now);
                thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("stalled upload after {sent} bytes: {e}\n{}", lb.log()),
        }
    }
    assert!(sent > MIB, "only {sent} bytes before the upload jammed");

    // Four paced transfers at once, each direction wanting a pipe.
    let (transfers, started) = paced_transfers(lb.addr);
    for _ in 0..4 {
        started.recv_timeout(PATIENCE).unwrap();
    }
    let mut most = 0;
    while !transfers.is_finished() {
        most = most.max(pipes_of(pid));
        thread::sleep(Duration::from_millis(20));
    }
    let failed = transfers.join().unwrap();
    assert!(failed.is_empty(), "{failed:?}\n{}", lb.log());
    assert!(
        most <= before + 2,
        "pipe fds went from {before} to {most} with max-pipes 1"
    );
    // Counters are added as a connection closes: the four are counted.
    wait_until("the four transfers counted", || {
        counter(&lb, "ringlb_connections_active") == 1
    });
    let echoed = 2 * 4 * 16 * MIB as u64;
    assert_eq!(
        counter(&lb, "ringlb_bytes_in_total") + counter(&lb, "ringlb_bytes_out_total"),
        echoed
    );
    assert_eq!(
        counter(&lb, "ringlb_spliced_bytes_total"),
        0,
        "a transfer spliced while the only pipe was held"
    );

    // Released, the jammed upload arrives whole, spliced.
    release.store(true, std::sync::atomic::Ordering::SeqCst);
    stalled.set_nonblocking(false).unwrap();
    stalled.shutdown(Shutdown::Write).unwrap();
    let got = drained.recv_timeout(PATIENCE).expect("the backend drained");
    assert_eq!(got.unwrap(), sent, "bytes of the jammed upload");
    drop(stalled);
    wait_closed(&lb);
    let spliced = counter(&lb, "ringlb_spliced_bytes_total");
    assert_eq!(
        counter(&lb, "ringlb_bytes_in_total"),
        echoed / 2 + sent as u64
    );
    assert!(
        spliced > 0 && spliced <= sent as u64,
        "{spliced} spliced of the {sent} uploaded with the pipe"
    );
}

#[test]
fn small_request_response_traffic_stays_on_the_copy_path_in_auto() {
    let backend = Backend::echo();
    let lb = Ringlb::over(&backend).admin().start();
    let mut conn = lb.connect();
    conn.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut sent = 0u64;
    for i in 0..500usize {
        let msg = pattern(i as u64 + 1, 1 + i * 37 % 4000);
        conn.write_all(&msg).unwrap();
        let mut back = vec![0u8; msg.len()];
        conn.read_exact(&mut back).unwrap();
        assert!(back == msg, "exchange {i} differs");
        sent += msg.len() as u64;
    }
    drop(conn);
    wait_closed(&lb);
    assert_eq!(counter(&lb, "ringlb_bytes_in_total"), sent);
    assert_eq!(
        counter(&lb, "ringlb_spliced_bytes_total"),
        0,
        "auto spliced small messages"
    );
}
