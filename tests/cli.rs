//! The command line: bad input fails at start with one line naming the bad
//! value; help, version and the rsp form work; --ready-file lists the bound
//! addresses.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpListener};
use std::path::Path;

use common::{free_port, http_get, read_to_end, run_to_exit, wait_until, Backend, Ringlb, TempDir};

/// Runs ringlb expecting a start-up failure with `code`, one line naming `needle`.
fn rejects(args: &[&str], code: i32, needle: &str) {
    let (status, out) = run_to_exit(args);
    assert_eq!(status.code(), Some(code), "{args:?}: {out}");
    assert_eq!(
        out.trim().lines().count(),
        1,
        "{args:?}: not one line: {out}"
    );
    assert!(
        out.contains(needle),
        "{args:?}: {needle:?} not named in: {out}"
    );
    assert!(!out.contains("panicked"), "{args:?}: {out}");
}

#[test]
fn bad_input_is_one_line_naming_the_value() {
    let b = "127.0.0.1:9";
    // Control characters in a value are escaped: the line stays one
    // printable line, and cannot drive the terminal.
    for (value, named) in [("a\tb:1", "a\\tb:1"), ("x\u{1b}[2J:1", "x\\u{1b}[2J:1")] {
        rejects(&["--listen", "127.0.0.1:0", "--backend", value], 2, named);
        let (_, out) = run_to_exit(&["--listen", "127.0.0.1:0", "--backend", value]);
        assert!(!out.trim().chars().any(char::is_control), "{out:?}");
    }
    rejects(&["--listen", "nonsense", "--backend", b], 2, "nonsense");
    rejects(
        &["--listen", "127.0.0.1:99999", "--backend", b],
        2,
        "127.0.0.1:99999",
    );
    rejects(
        &[
            "--listen",
            "127.0.0.1:0",
            "--backend",
            "no-such-host.invalid:80",
        ],
        2,
        "no-such-host.invalid",
    );
    rejects(
        &["--listen", "127.0.0.1:0", "--backend", "127.0.0.1"],
        2,
        "127.0.0.1",
    );
    rejects(&["--listen", "127.0.0.1:0"], 2, "backend");
    rejects(&["--backend", b], 2, "listen");
    rejects(
        &["--listen", "127.0.0.1:0", "--backend", b, "--workers", "0"],
        2,
        "'0'",
    );
    rejects(
        &[
            "--listen",
            "127.0.0.1:0",
            "--backend",
            b,
            "--workers",
            "many",
        ],
        2,
        "many",
    );
    rejects(
        &[
            "--listen",
            "127.0.0.1:0",
            "--backend",
            b,
            "--buffer-size",
            "3",
        ],
        2,
        "'3'",
    );
    rejects(
        &[
            "--listen",
            "127.0.0.1:0",
            "--backend",
            b,
            "--connect-timeout",
            "soon",
        ],
        2,
        "soon",
    );
    rejects(
        &[
            "--listen",
            "127.0.0.1:0",
            "--backend",
            "127.0.0.1:9,weight=0",
        ],
        2,
        "weight=0",
    );
    rejects(
        &[
            "--listen",
            "127.0.0.1:0",
            "--backend",
            b,
            "--log-level",
            "=+=",
        ],
        2,
        "=+=",
    );
    rejects(
        &[
            "--listen",
            "127.0.0.1:0",
            "--backend",
            b,
            "--balance",
            "fastest",
        ],
        2,
        "fastest",
    );
    rejects(
        &[
            "--listen",
            "127.0.0.1:0",
            "--backend",
            b,
            "--connect-timeout",
            "0s",
        ],
        2,
        "--connect-timeout",
    );
    rejects(
        &["--listen", "127.0.0.1:0", "--backend", b, "--fall", "0"],
        2,
        "--fall",
    );
    rejects(&["--bogus"], 2, "--bogus");
    rejects(&["8080", "127.0.0.1"], 2, "BACKEND_PORT");
}

#[test]
fn listen_address_taken_fails_start() {
    // A plain listener, without SO_REUSEPORT, so ringlb cannot share the port.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    rejects(&["--listen", &addr, "--backend", "127.0.0.1:9"], 1, &addr);
}

#[test]
fn help_documents_every_flag() {
    let (status, out) = run_to_exit(&["--help"]);
    assert!(status.success());
    for flag in [
        "--listen",
        "--backend",
        "--workers",
        "--buffer-size",
        "--connect-timeout",
        "--drain-timeout",
        "--log-format",
        "--log-level",
        "--help",
        "--version",
        "-l",
        "-b",
        "-w",
        "--balance",
        "--health-interval",
        "--health-timeout",
        "--rise",
        "--fall",
        "--no-health-checks",
        "--pin",
        "--sqpoll",
        "--ready-file",
        "--allow",
        "--deny",
        "--accept-proxy-from",
        "--fail-timeout",
        "--no-observe-l4",
        "--slow-start",
        "--admin-token-file",
        "--resolve-interval",
        "--resolve-hold",
        "--resolve-at-start",
        "--resolver",
        "--protocol",
        "--max-addresses",
        "--proxy-tlvs",
        "--queue-timeout",
        "--max-queue",
        "--max-conns-per-source",
        "--rate-per-source",
        "--rate-burst",
        "--source-prefix",
        "--source-prefix-v6",
        "--source-table-size",
        "--session-timeout",
        "--responses",
        "--max-sessions",
        "--health-send",
        "--health-expect",
        "--splice",
        "--max-pipes",
        "--send-zc",
    ] {
        assert!(out.contains(flag), "--help lacks {flag}:\n{out}");
        let readme = include_str!("../docs/configuration.md");
        assert!(
            flag.len() < 3
                || readme.contains(&format!("{flag} "))
                || readme.contains(&format!("{flag}`")),
            "docs/configuration.md's flag table lacks {flag}"
        );
    }
    let (status, out) = run_to_exit(&["--version"]);
    assert!(status.success());
    assert!(out.contains(env!("CARGO_PKG_VERSION")), "{out}");
}

/// ringlb in the `PORT HOST BACKEND-PORT` form, to `backend` on 127.0.0.1,
/// with `extra` after; returns it and its port. A port from free_port() can
/// be taken again before ringlb binds it: it tries five.
fn rsp_form(backend: &Backend, extra: &[&str]) -> (Ringlb, u16) {
    let bport = backend.addr.port().to_string();
    (0..5)
        .find_map(|_| {
            let port = free_port();
            let rsp = [port.to_string(), "127.0.0.1".into(), bport.clone()];
            Ringlb::builder()
                .args(&rsp)
                .args(extra)
                .try_start()
                .ok()
                .map(|lb| (lb, port))
        })
        .expect("no free port in 5 tries")
}

#[test]
fn rsp_form_listens_on_all_interfaces() {
    let backend = Backend::echo();
    let (lb, port) = rsp_form(&backend, &["--workers", "1"]);
    let listen = lb.ready_addrs()[0].1;
    assert!(listen.ip().is_unspecified(), "{listen}");
    let mut clients = vec![format!("127.0.0.1:{port}")];
    // Dual-stack: IPv6 clients too, where the machine has an IPv6 loopback.
    if TcpListener::bind("[::1]:0").is_ok() {
        clients.push(format!("[::1]:{port}"));
    } else {
        eprintln!("no IPv6 loopback: only the IPv4 half is tested");
    }
    for client in clients {
        let mut conn = common::client(client.parse().unwrap());
        conn.write_all(client.as_bytes()).unwrap();
        conn.shutdown(Shutdown::Write).unwrap();
        assert_eq!(read_to_end(&mut conn), client.as_bytes(), "via {client}");
    }
}

#[test]
fn one_listening_socket_per_worker() {
    let backend = Backend::echo();
    let lb = Ringlb::over(&backend).workers(3).start();
    // The kernel's table of listening sockets, as `ss -ltn` reads it.
    let port = format!(":{:04X} ", lb.addr.port());
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let listening = table
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|a| a.ends_with(port.trim()))
        })
        .filter(|l| l.split_whitespace().nth(3) == Some("0A"))
        .count();
    assert_eq!(listening, 3);
}

#[test]
fn pin_gives_each_worker_one_cpu() {
    let backend = Backend::echo();
    let lb = Ringlb::over(&backend).workers(2).flag("--pin").start();
    let mut workers = 0;
    for task in std::fs::read_dir(format!("/proc/{}/task", lb.pid())).unwrap() {
        let dir = task.unwrap().path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap();
        if !name.starts_with("ringlb-w") {
            continue;
        }
        workers += 1;
        let status = std::fs::read_to_string(dir.join("status")).unwrap();
        let allowed = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap()
            .trim()
            .to_string();
        assert!(
            !allowed.contains(',') && !allowed.contains('-'),
            "{name} may run on {allowed}"
        );
    }
    assert_eq!(workers, 2);
}

#[test]
fn sqpoll_ring_relays() {
    let backend = Backend::echo();
    let lb = Ringlb::over(&backend).workers(1).flag("--sqpoll").start();
    let mut conn = lb.connect();
    conn.write_all(b"polled").unwrap();
    conn.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_end(&mut conn), b"polled");
}

/// The ready file's `NAME ADDR` lines, by name; `None` before it exists.
fn ready_lines(path: &Path) -> Option<BTreeMap<String, SocketAddr>> {
    let text = std::fs::read_to_string(path).ok()?;
    let lines = text.lines().map(|line| {
        let (name, addr) = line.split_once(' ').expect("NAME ADDR");
        (name.to_string(), addr.parse().expect("an address"))
    });
    Some(lines.collect())
}

fn echoes(addr: SocketAddr, msg: &[u8]) {
    let mut conn = common::client(addr);
    conn.write_all(msg).unwrap();
    conn.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_end(&mut conn), msg, "via {addr}");
}

#[test]
fn ready_file_lists_bound_addresses_and_follows_reloads() {
    let (a, b) = (Backend::echo(), Backend::echo());
    let dir = TempDir::new("ready");
    let ready = dir.0.join("ready");
    let fe = |name: &str, backend: &Backend| {
        format!(
            "[[frontend]]\nname = \"{name}\"\nlisten = \"127.0.0.1:0\"\nbackends = [\"{}\"]\n",
            backend.arg()
        )
    };
    let config = dir.write("ringlb.toml", &fe("web", &a));
    let lb = Ringlb::builder()
        .config(&config)
        .arg("--ready-file", ready.to_str().unwrap())
        .admin()
        .start();

    // Written before the start-up line, so it is there once ringlb has started.
    let lines = ready_lines(&ready).expect("ready file written at start");
    assert_eq!(
        lines.keys().collect::<Vec<_>>(),
        ["admin", "web"],
        "{lines:?}"
    );
    assert_eq!(lines["web"], lb.frontend_addr("web"));
    assert_ne!(lines["web"].port(), 0);
    echoes(lines["web"], b"web");
    assert_eq!(http_get(lines["admin"], "/healthz").0, 200);

    // A reload that adds a frontend rewrites the file.
    std::fs::write(&config, fe("web", &a) + &fe("api", &b)).unwrap();
    lb.signal("HUP");
    wait_until("api in the ready file", || {
        ready_lines(&ready).is_some_and(|l| l.contains_key("api"))
    });
    let lines = ready_lines(&ready).unwrap();
    assert_eq!(lines.len(), 3, "{lines:?}");
    echoes(lines["api"], b"api");
    assert_eq!(b.served(), 1);

    // And one that removes a frontend.
    std::fs::write(&config, fe("api", &b)).unwrap();
    lb.signal("HUP");
    wait_until("web gone from the ready file", || {
        ready_lines(&ready).is_some_and(|l| !l.contains_key("web"))
    });
    let after = ready_lines(&ready).unwrap();
    assert_eq!(
        after["api"], lines["api"],
        "a kept frontend keeps its address"
    );
    assert!(!dir.0.join("ready.tmp").exists());
}

#[test]
fn ipv4_clients_of_a_dual_stack_listener_are_ipv4_in_proxy_headers() {
    use std::io::{BufRead, BufReader};
    // The backend sends back the PROXY header line it got.
    let backend = Backend::spawn(|conn| {
        let mut line = String::new();
        let mut reader = BufReader::new(&conn);
        if reader.read_line(&mut line).is_ok() {
            let _ = (&conn).write_all(line.as_bytes());
        }
    });
    let (lb, port) = rsp_form(&backend, &["--send-proxy", "v1"]);
    assert!(lb.ready_addrs()[0].1.ip().is_unspecified());
    let mut conn = common::client(format!("127.0.0.1:{port}").parse().unwrap());
    let mut line = String::new();
    BufReader::new(&mut conn).read_line(&mut line).unwrap();
    assert!(
        line.starts_with("PROXY TCP4 127.0.0.1 127.0.0.1 "),
        "an IPv4 client through [::] is announced as IPv4: {line:?}"
    );
}
