//! systemd's notify protocol: READY=1 once listening, RELOADING=1 then
//! READY=1 around a reload, STOPPING=1 on SIGTERM. Its own test binary, since
//! it sets `NOTIFY_SOCKET`, which every ringlb started from this process
//! inherits.

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::{Backend, Ringlb, TempDir};

/// The next notification, as the lines of one datagram; on a timeout, the
/// failure shows ringlb's log.
fn next(socket: &UnixDatagram, lb: &Ringlb) -> Vec<String> {
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).unwrap_or_else(|err| {
        panic!(
            "no notification within the timeout ({err}); ringlb's log:\n{}",
            lb.log()
        )
    });
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn ready_reloading_and_stopping_reach_systemd() {
    let dir = TempDir::new("systemd");
    let path = dir.0.join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // This binary runs this one test, so no other ringlb inherits it.
    std::env::set_var("NOTIFY_SOCKET", &path);

    let backend = Backend::echo();
    let config = dir.write(
        "ringlb.toml",
        &format!(
            "[[frontend]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\nbackends = [\"{}\"]\n",
            backend.arg()
        ),
    );
    let mut lb = Ringlb::builder().config(&config).start();
    assert_eq!(next(&socket, &lb), ["READY=1"]);

    lb.signal("HUP");
    let reloading = next(&socket, &lb);
    assert_eq!(reloading[0], "RELOADING=1", "{reloading:?}");
    assert!(
        reloading.iter().any(|l| l.starts_with("MONOTONIC_USEC=")),
        "{reloading:?}"
    );
    assert_eq!(next(&socket, &lb), ["READY=1"]);

    let start = Instant::now();
    lb.signal("TERM");
    assert_eq!(next(&socket, &lb), ["STOPPING=1"]);
    assert!(lb.wait().success());
    assert!(start.elapsed() < Duration::from_secs(10));
}
