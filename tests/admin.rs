//! The admin endpoint through the real binary: `/metrics` read by the
//! reference parser of the Prometheus text format (Python's
//! `prometheus_client`) with a frontend name that needs escaping, and the
//! endpoint's limits: thousands of idle connections, a 64 MiB header,
//! garbage, large bodies, bodies that never come, idle timeouts, and the
//! `Host` a change must name when no token guards it.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::{
    client, echo_once, http_get, metric, read_to_end, rss_kib, wait_until, Backend, Ringlb, TempDir,
};

/// Interpreters to try for the parser: the one on PATH, then Debian's, which
/// is where `python3-prometheus-client` installs it.
const PYTHONS: &[&str] = &["python3", "/usr/bin/python3"];

/// Prints every sample of the exposition on stdin as JSON:
/// `{"types": {family: type}, "samples": [[name, labels, value]]}`.
const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
types, samples = {}, []
for family in text_string_to_metric_families(sys.stdin.read()):
    types[family.name] = family.type
    samples += [[s.name, s.labels, s.value] for s in family.samples]
print(json.dumps({"types": types, "samples": samples}))
"#;

/// `text` as parsed by `prometheus_client`; panics if no Python has it.
fn parse_exposition(text: &str) -> serde_json::Value {
    let python = PYTHONS
        .iter()
        .find(|p| {
            Command::new(p)
                .args(["-c", "import prometheus_client"])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .expect("no python3 with prometheus_client: apt-get install python3-prometheus-client");
    let mut child = Command::new(python)
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the parser refused /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn metrics_parse_with_the_reference_parser_whatever_the_frontend_name() {
    let name = "a\"b\\c\nd";
    let backend = Backend::echo();
    let dir = TempDir::new("admin-names");
    // A TOML basic string: \" \\ \n are the three characters to escape.
    let config = format!(
        "admin = \"127.0.0.1:0\"\nworkers = 2\n\n[[frontend]]\nname = \"a\\\"b\\\\c\\nd\"\nlisten = \"127.0.0.1:0\"\nbackends = [\"{}\"]\n",
        backend.arg()
    );
    let lb = Ringlb::builder()
        .config(&dir.write("ringlb.toml", &config))
        .start();
    let admin: SocketAddr = lb.admin_addr();

    let mut sent = 0.0;
    for i in 0..5 {
        let msg = vec![b'x'; 10 + i];
        assert_eq!(echo_once(&lb, &msg).unwrap(), msg);
        sent += msg.len() as f64;
    }
    let escaped = "a\\\"b\\\\c\\nd";
    let mut text = String::new();
    wait_until("every connection closed and counted", || {
        text = http_get(admin, "/metrics").1;
        metric(
            &text,
            &format!("ringlb_connections_active{{frontend=\"{escaped}\"}}"),
        ) == 0
    });

    let parsed = parse_exposition(&text);
    assert_eq!(parsed["types"]["ringlb_connections"], "counter", "{parsed}");
    assert_eq!(parsed["types"]["ringlb_backend_up"], "gauge", "{parsed}");
    let samples = parsed["samples"].as_array().unwrap();
    for sample in samples {
        assert_eq!(sample[1]["frontend"], name, "{sample}");
    }
    let value = |series: &str, backend_label: Option<&str>| {
        samples
            .iter()
            .find(|s| s[0] == series && s[1]["backend"].as_str() == backend_label)
            .and_then(|s| s[2].as_f64())
            .unwrap_or_else(|| panic!("no {series} in {parsed}"))
    };
    assert_eq!(value("ringlb_connections_total", None), 5.0);
    assert_eq!(value("ringlb_bytes_in_total", None), sent);
    assert_eq!(value("ringlb_bytes_out_total", None), sent);
    let arg = backend.arg();
    assert_eq!(value("ringlb_backend_connections_total", Some(&arg)), 5.0);
    assert_eq!(value("ringlb_backend_bytes_out_total", Some(&arg)), sent);
    assert_eq!(value("ringlb_backend_up", Some(&arg)), 1.0);
}

/// ringlb with one echo backend and the admin endpoint; returns its address.
fn with_admin() -> (Ringlb, Backend, SocketAddr) {
    let backend = Backend::echo();
    let lb = Ringlb::over(&backend).admin().no_health_checks().start();
    let admin = lb.admin_addr();
    (lb, backend, admin)
}

/// Sends `request` and reads the answer until the server closes.
fn exchange(admin: SocketAddr, request: &[u8]) -> String {
    let mut conn = client(admin);
    conn.write_all(request).unwrap();
    String::from_utf8_lossy(&read_to_end(&mut conn)).into_owned()
}

/// The status code of an HTTP answer.
fn status_of(answer: &str) -> u16 {
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"))
}

/// The admin endpoint's connection cap (`admin::MAX_CONNECTIONS`, private to
/// the crate).
const ADMIN_CONNECTIONS: usize = 64;

/// More connections than the admin endpoint serves at once, each having sent
/// `request` (a head announcing a body that never comes) and gone silent.
fn hold_silent(admin: SocketAddr, request: &str) -> Vec<TcpStream> {
    (0..ADMIN_CONNECTIONS + 16)
        .map(|_| {
            let mut conn = client(admin);
            conn.write_all(request.as_bytes()).unwrap();
            conn
        })
        .collect()
}

/// One round through the proxy.
fn relays(lb: &Ringlb) {
    assert_eq!(echo_once(lb, b"still relaying").unwrap(), b"still relaying");
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[test]
fn garbage_methods_and_large_bodies_get_their_status() {
    let (_lb, backend, admin) = with_admin();
    let status = |request: &[u8]| status_of(&exchange(admin, request));
    assert_eq!(
        status(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n"),
        400
    );
    assert_eq!(
        status(b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n"),
        400
    );
    assert_eq!(
        status(b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"),
        405
    );
    // A GET takes no body: refused from its head, however small the body.
    for length in [5, 10_000_000] {
        let request =
            format!("GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\nhello");
        assert_eq!(status(request.as_bytes()), 400, "Content-Length: {length}");
    }
    assert_eq!(
        status(b"GET /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
        400
    );
    // A PATCH body over the limit: refused from its length when it announces
    // one, counted as it comes when chunked.
    let patch = format!(
        "PATCH /frontends/default/backends/{} HTTP/1.1\r\nHost: 127.0.0.1\r\n",
        backend.arg()
    );
    assert_eq!(
        status(format!("{patch}Content-Length: 10000000\r\n\r\n").as_bytes()),
        413
    );
    let mut chunked = format!("{patch}Transfer-Encoding: chunked\r\n\r\n").into_bytes();
    for _ in 0..80 {
        chunked.extend_from_slice(b"400\r\n");
        chunked.extend_from_slice(&[b'b'; 1024]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    assert_eq!(status(&chunked), 413);
    assert_eq!(http_get(admin, "/healthz"), (200, "ok\n".to_string()));
}

#[test]
fn a_64_mib_header_gets_431_and_costs_no_memory() {
    let (lb, _backend, admin) = with_admin();
    assert_eq!(http_get(admin, "/metrics").0, 200);
    let before = rss_kib(lb.pid());
    // As in the incident: eight clients at once, each streaming 64 MiB of header.
    let clients: Vec<_> = (0..8)
        .map(|_| {
            thread::spawn(move || {
                let mut conn = client(admin);
                let reader = {
                    let mut conn = conn.try_clone().unwrap();
                    thread::spawn(move || {
                        let mut answer = Vec::new();
                        // The server may reset the connection once it stops reading.
                        let _ = conn.read_to_end(&mut answer);
                        String::from_utf8_lossy(&answer).into_owned()
                    })
                };
                let chunk = vec![b'a'; 64 * 1024];
                let _ = conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ");
                for _ in 0..1024 {
                    // A write error means the server closed: it has answered by then.
                    if conn.write_all(&chunk).is_err() {
                        break;
                    }
                }
                let _ = conn.write_all(b"\r\n\r\n");
                reader.join().unwrap()
            })
        })
        .collect();
    for c in clients {
        let answer = c.join().unwrap();
        assert!(answer.starts_with("HTTP/1.1 431"), "answer: {answer:?}");
    }
    let grown = rss_kib(lb.pid()).saturating_sub(before);
    assert!(grown < 20 * 1024, "RSS grew by {grown} KiB");
    assert_eq!(http_get(admin, "/healthz").0, 200);
}

#[test]
fn thousands_of_idle_connections_starve_neither_admin_nor_proxy() {
    use socket2::{Domain, Socket, Type};
    const IDLE: usize = 5000;
    rlimit::increase_nofile_limit(IDLE as u64 + 1000).unwrap();
    let (lb, _backend, admin) = with_admin();
    assert_eq!(http_get(admin, "/healthz").0, 200);
    let fds_before = open_fds(lb.pid());

    let idle: Vec<Socket> = (0..IDLE)
        .map(|_| {
            let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
            socket.set_nonblocking(true).unwrap();
            // In progress is fine: the handshake completes in the kernel.
            let _ = socket.connect(&admin.into());
            socket
        })
        .collect();
    wait_until("every idle connection established", || {
        idle.iter().all(|s| s.peer_addr().is_ok())
    });

    // Starving would be never answering (the idle ones hold every slot);
    // how fast it answers is the machine's business, not this test's.
    assert_eq!(http_get(admin, "/healthz"), (200, "ok\n".to_string()));
    relays(&lb);
    let fds = open_fds(lb.pid());
    assert!(
        fds <= fds_before + 64 + 8,
        "ringlb holds {fds} fds, {fds_before} before the idle connections"
    );

    drop(idle);
    for path in ["/healthz", "/metrics", "/backends"] {
        assert_eq!(http_get(admin, path).0, 200, "{path}");
    }
    relays(&lb);
}

#[test]
fn idle_connections_are_closed_after_the_head_timeout() {
    let (_lb, _backend, admin) = with_admin();
    let closes_within = |mut conn: TcpStream, since: Instant| {
        let mut rest = Vec::new();
        conn.read_to_end(&mut rest).unwrap();
        let idle = since.elapsed();
        assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
        assert!(
            idle > Duration::from_secs(4) && idle < Duration::from_secs(10),
            "closed after {idle:?}"
        );
    };
    // One that never sends a byte...
    let silent = thread::spawn(move || closes_within(client(admin), Instant::now()));
    // ...and one idle between keep-alive requests.
    let mut conn = client(admin);
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.ends_with(b"ok\n") {
        let n = conn.read(&mut buf).unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buf[..n]);
    }
    assert!(answer.starts_with(b"HTTP/1.1 200"));
    closes_within(conn, Instant::now());
    silent.join().unwrap();
}

#[test]
fn the_accept_loop_survives_running_out_of_fds() {
    let backend = Backend::echo();
    let lb = Ringlb::over(&backend)
        .admin()
        .workers(1)
        .no_health_checks()
        .start();
    let admin: SocketAddr = lb.admin_addr();
    assert_eq!(http_get(admin, "/healthz").0, 200);
    // Room for a few more fds only, from now on.
    let pid = lb.pid() as libc::pid_t;
    let (mut soft, mut hard) = (0, 0);
    rlimit::prlimit(
        pid,
        rlimit::Resource::NOFILE,
        None,
        Some((&mut soft, &mut hard)),
    )
    .unwrap();
    let limit = open_fds(lb.pid()) as u64 + 4;
    rlimit::prlimit(pid, rlimit::Resource::NOFILE, Some((limit, hard)), None).unwrap();

    let idle: Vec<TcpStream> = (0..16).map(|_| client(admin)).collect();
    wait_until("an admin accept failing", || {
        lb.log().contains("admin accept failed")
    });
    // Waits in the backlog while accepts fail...
    let healthz = thread::spawn(move || http_get(admin, "/healthz"));
    thread::sleep(Duration::from_millis(200));
    assert!(!healthz.is_finished());
    // ...and is answered once fds are free again.
    drop(idle);
    assert_eq!(healthz.join().unwrap(), (200, "ok\n".to_string()));
    rlimit::prlimit(pid, rlimit::Resource::NOFILE, Some((soft, hard)), None).unwrap();
    assert_eq!(http_get(admin, "/metrics").0, 200);
    let warnings = lb.log().matches("admin accept failed").count();
    assert!(
        warnings <= 3,
        "{warnings} warnings: the throttle allows one a second"
    );
}

#[test]
fn get_bodies_that_never_come_do_not_hold_the_admin_endpoint() {
    let (lb, _backend, admin) = with_admin();
    // As in the incident: more than the cap, each announcing 64 KiB that never come.
    let silent = hold_silent(
        admin,
        "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 65536\r\n\r\n",
    );
    // Held, they would take every slot until their clients leave: /healthz
    // and /metrics would never answer (http_get gives up after PATIENCE).
    assert_eq!(http_get(admin, "/healthz"), (200, "ok\n".to_string()));
    assert_eq!(http_get(admin, "/metrics").0, 200);
    // Each was refused from its head, without waiting for its body, and closed.
    for mut conn in silent {
        let answer = String::from_utf8_lossy(&read_to_end(&mut conn)).into_owned();
        assert_eq!(status_of(&answer), 400, "{answer}");
        assert!(answer.contains("no body"), "{answer}");
    }
    relays(&lb);
}

#[test]
fn patch_bodies_that_never_come_are_cut_off() {
    let (_lb, backend, admin) = with_admin();
    let head = format!(
        "PATCH /frontends/default/backends/{} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{{\"state\":",
        backend.arg()
    );
    let silent = hold_silent(admin, &head);
    // They have a few seconds for their bodies, then make room.
    assert_eq!(http_get(admin, "/healthz"), (200, "ok\n".to_string()));
    for mut conn in silent {
        let answer = String::from_utf8_lossy(&read_to_end(&mut conn)).into_owned();
        assert_eq!(status_of(&answer), 408, "{answer}");
    }
    let (_, backends) = http_get(admin, "/backends");
    let backends: serde_json::Value = serde_json::from_str(&backends).unwrap();
    assert_eq!(backends[0]["state"], "ready", "{backends}");
}

#[test]
fn without_a_token_changes_need_an_ip_or_localhost_as_host() {
    let (_lb, backend, admin) = with_admin();
    let path = format!("/frontends/default/backends/{}", backend.arg());
    // `host` is the whole Host line, or none.
    let patch = |host: &str, state: &str| {
        let body = format!("{{\"state\":\"{state}\"}}");
        let request = format!(
            "PATCH {path} HTTP/1.1\r\n{host}Connection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let answer = exchange(admin, request.as_bytes());
        let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        (status_of(&answer), body.to_string())
    };
    let state = || {
        let (_, backends) = http_get(admin, "/backends");
        let backends: serde_json::Value = serde_json::from_str(&backends).unwrap();
        backends[0]["state"].as_str().unwrap().to_string()
    };

    // What a DNS-rebinding page in a local browser would send.
    for host in [
        "Host: evil.example:1234\r\n",
        "Host: evil.example\r\n",
        "Host: localhost.evil.example\r\n",
        "Host: 127.0.0.1.evil.example\r\n",
        "Host: localhost:x\r\n",
        "",
    ] {
        let (status, reason) = patch(host, "maint");
        assert_eq!(status, 403, "{host:?}: {reason}");
        assert!(reason.contains("Host"), "{host:?}: {reason}");
        assert_eq!(reason.trim_end().lines().count(), 1, "{host:?}: {reason}");
        assert_eq!(state(), "ready", "{host:?} changed the backend");
    }
    // Reading stays open to any Host.
    let answer = exchange(
        admin,
        b"GET /backends HTTP/1.1\r\nHost: evil.example:1234\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&answer), 200, "{answer}");

    let port = admin.port();
    for (host, to) in [
        (format!("Host: 127.0.0.1:{port}\r\n"), "drain"),
        ("Host: localhost\r\n".to_string(), "maint"),
        (format!("Host: LocalHost:{port}\r\n"), "drain"),
        (format!("Host: [::1]:{port}\r\n"), "ready"),
    ] {
        let (status, answer) = patch(&host, to);
        assert_eq!(status, 200, "{host:?}: {answer}");
        assert_eq!(state(), to, "{host:?}");
    }
}
