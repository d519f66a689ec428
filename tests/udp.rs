//! UDP load balancing: real UDP sockets on loopback through the real binary.
//! Datagrams pass whole and byte-exact both ways, a cut one is dropped and
//! counted, sessions end at their timeout or their replies, max-sessions
//! drops and counts, balancing spreads and `hash` sticks, an unreachable
//! backend is marked down, and a TCP and a UDP frontend share a port.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::*;

/// The largest UDP payload over IPv4.
const MAX_DATAGRAM: usize = 65_507;

/// A UDP backend on loopback: echoes every datagram, after a tag byte when
/// it has one; counts what it received.
struct UdpBackend {
    addr: SocketAddr,
    received: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl UdpBackend {
    fn echo() -> UdpBackend {
        UdpBackend::spawn("127.0.0.1:0", None)
    }

    fn tagged(tag: u8) -> UdpBackend {
        UdpBackend::spawn("127.0.0.1:0", Some(tag))
    }

    fn spawn(at: &str, tag: Option<u8>) -> UdpBackend {
        UdpBackend::slow(at, tag, Duration::ZERO)
    }

    /// One that waits `delay` before each reply.
    fn slow(at: &str, tag: Option<u8>, delay: Duration) -> UdpBackend {
        let socket = UdpSocket::bind(at).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let received = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, stopped) = (received.clone(), stop.clone());
        thread::spawn(move || {
            let mut buf = vec![0u8; 70_000];
            while !stopped.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                count.fetch_add(1, Ordering::Relaxed);
                thread::sleep(delay);
                let reply = match tag {
                    Some(t) => [&[t][..], &buf[..n.min(MAX_DATAGRAM - 1)]].concat(),
                    None => buf[..n].to_vec(),
                };
                let _ = socket.send_to(&reply, from);
            }
        });
        UdpBackend {
            addr,
            received,
            stop,
        }
    }

    fn received(&self) -> usize {
        self.received.load(Ordering::Relaxed)
    }
}

impl Drop for UdpBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl std::fmt::Display for UdpBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.addr.fmt(f)
    }
}

/// A client socket on loopback (of `to`'s family) that waits at most
/// PATIENCE for a reply.
fn client_for(to: SocketAddr) -> UdpSocket {
    let socket = UdpSocket::bind(if to.is_ipv4() {
        "127.0.0.1:0"
    } else {
        "[::1]:0"
    })
    .unwrap();
    socket.set_read_timeout(Some(PATIENCE)).unwrap();
    socket
}

/// Sends `msg` to `to` from `client` and returns the reply and its source.
fn exchange(client: &UdpSocket, to: SocketAddr, msg: &[u8]) -> (Vec<u8>, SocketAddr) {
    client.send_to(msg, to).unwrap();
    let mut buf = vec![0u8; 70_000];
    let (n, from) = client.recv_from(&mut buf).expect("a reply");
    buf.truncate(n);
    (buf, from)
}

/// ringlb with a UDP frontend (and `--admin`) over `backends`, plus `args`.
fn udp_lb<T: std::fmt::Display>(backends: &[T], args: &[&str]) -> Ringlb {
    Ringlb::builder()
        .arg("--protocol", "udp")
        .backends(backends)
        .admin()
        .args(args)
        .start()
}

fn metrics(lb: &Ringlb) -> String {
    http_get(lb.admin_addr(), "/metrics").1
}

fn drops(lb: &Ringlb, reason: &str) -> u64 {
    metric(
        &metrics(lb),
        &format!("ringlb_udp_drops_total{{frontend=\"default\",reason=\"{reason}\"}}"),
    )
}

fn sessions_active(lb: &Ringlb) -> u64 {
    metric(
        &metrics(lb),
        "ringlb_udp_sessions_active{frontend=\"default\"}",
    )
}

#[test]
fn datagrams_pass_whole_both_ways_and_replies_come_from_the_frontend() {
    let backend = UdpBackend::echo();
    let lb = udp_lb(&[&backend], &[]);
    let client = client_for(lb.addr);
    for len in [1, 1472, MAX_DATAGRAM] {
        let msg = pattern(len as u64, len);
        let (reply, from) = exchange(&client, lb.addr, &msg);
        assert_eq!(reply.len(), len);
        assert!(reply == msg, "{len} bytes came back changed");
        assert_eq!(from, lb.addr, "the reply comes from the frontend's address");
    }
    // 200 clients at once: each its own session, each only its own replies.
    let clients: Vec<UdpSocket> = (0..200).map(|_| client_for(lb.addr)).collect();
    for (i, c) in clients.iter().enumerate() {
        c.send_to(format!("client {i}").as_bytes(), lb.addr)
            .unwrap();
    }
    for (i, c) in clients.iter().enumerate() {
        let mut buf = [0u8; 64];
        let (n, _) = c.recv_from(&mut buf).expect("a reply");
        assert_eq!(&buf[..n], format!("client {i}").as_bytes());
    }
    // A reply is counted once its send completed, which may be just after
    // the client read it.
    wait_until("every reply counted", || {
        let text = metrics(&lb);
        metric(&text, "ringlb_udp_sessions_total{frontend=\"default\"}") == 201
            && metric(
                &text,
                "ringlb_udp_datagrams_total{frontend=\"default\",direction=\"out\"}",
            ) == 203
    });
}

#[test]
fn a_wildcard_listen_replies_from_the_address_the_client_sent_to() {
    let backend = UdpBackend::echo();
    let lb = Ringlb::builder()
        .arg("--protocol", "udp")
        .arg("--listen", "0.0.0.0:0")
        .backend(&backend)
        .start();
    let port = lb.addr.port();
    // 127.0.0.2 is loopback too: the reply must come from it, not from 127.0.0.1.
    for ip in ["127.0.0.1", "127.0.0.2"] {
        let to: SocketAddr = format!("{ip}:{port}").parse().unwrap();
        let client = client_for(to);
        let (reply, from) = exchange(&client, to, b"where from");
        assert_eq!((&reply[..], from), (&b"where from"[..], to));
    }
}

#[test]
fn a_cut_datagram_is_dropped_and_counted_not_forwarded() {
    // Over IPv6 a UDP payload can be 65,527 bytes: more than the largest
    // IPv4 one, and more than a datagram buffer holds.
    let Ok(probe) = UdpSocket::bind("[::1]:0") else {
        eprintln!("no IPv6 loopback: skipped");
        return;
    };
    drop(probe);
    let backend = UdpBackend::echo();
    let lb = Ringlb::builder()
        .arg("--protocol", "udp")
        .arg("--listen", "[::1]:0")
        .backend(&backend)
        .admin()
        .start();
    let client = client_for(lb.addr);
    client.send_to(&vec![1u8; 65_527], lb.addr).unwrap();
    wait_until("the cut datagram counted", || drops(&lb, "truncated") == 1);
    // The next, whole one passes; the backend never saw the cut one.
    let (reply, _) = exchange(&client, lb.addr, b"whole");
    assert_eq!(reply, b"whole");
    assert_eq!(backend.received(), 1);
}

#[test]
fn a_session_ends_at_its_timeout_or_at_its_replies() {
    let backend = UdpBackend::echo();
    let lb = udp_lb(&[&backend], &["--session-timeout", "500ms", "--access-log"]);
    let client = client_for(lb.addr);
    assert_eq!(exchange(&client, lb.addr, b"a").0, b"a");
    wait_until("the idle session ended", || sessions_active(&lb) == 0);
    assert!(lb.log().contains("reason=session timeout"), "{}", lb.log());
    assert!(
        lb.log().contains("datagrams_in=1 datagrams_out=1"),
        "{}",
        lb.log()
    );

    let lb = udp_lb(&[&backend], &["--responses", "1", "--access-log"]);
    for _ in 0..3 {
        assert_eq!(exchange(&client, lb.addr, b"q").0, b"q");
    }
    wait_until("every session ended at its reply", || {
        sessions_active(&lb) == 0
            && metric(
                &metrics(&lb),
                "ringlb_udp_sessions_total{frontend=\"default\"}",
            ) == 3
    });
    assert!(lb.log().contains("reason=responses"), "{}", lb.log());
}

#[test]
fn max_sessions_drops_new_clients_and_counts_them() {
    let backend = UdpBackend::echo();
    let lb = udp_lb(&[&backend], &["--max-sessions", "2"]);
    let (a, b, c) = (
        client_for(lb.addr),
        client_for(lb.addr),
        client_for(lb.addr),
    );
    assert_eq!(exchange(&a, lb.addr, b"a").0, b"a");
    assert_eq!(exchange(&b, lb.addr, b"b").0, b"b");
    c.send_to(b"c", lb.addr).unwrap();
    wait_until("the third client dropped", || {
        drops(&lb, "session-limit") == 1
    });
    assert_eq!(backend.received(), 2);
    // The open sessions go on.
    assert_eq!(exchange(&a, lb.addr, b"again").0, b"again");
}

#[test]
fn round_robin_spreads_sessions_and_hash_keeps_a_client_on_one_backend() {
    let (one, two) = (UdpBackend::tagged(1), UdpBackend::tagged(2));
    let tags = |lb: &Ringlb, clients: usize| -> Vec<u8> {
        (0..clients)
            .map(|_| {
                let client = client_for(lb.addr);
                exchange(&client, lb.addr, b"x").0[0]
            })
            .collect()
    };
    let lb = udp_lb(&[&one, &two], &["--workers", "1"]);
    let seen = tags(&lb, 6);
    assert!(seen.contains(&1) && seen.contains(&2), "{seen:?}");

    // Every session a new client port, and sessions that end at their
    // reply: hash on the client's IP still picks one backend.
    let lb = udp_lb(&[&one, &two], &["--balance", "hash", "--responses", "1"]);
    let seen = tags(&lb, 8);
    assert!(seen.iter().all(|t| *t == seen[0]), "{seen:?}");
}

#[test]
fn an_unreachable_backend_is_marked_down_and_new_sessions_avoid_it() {
    let live = UdpBackend::tagged(1);
    // A UDP port nothing listens on: the kernel answers ICMP port unreachable.
    let dead = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let lb = udp_lb(
        &[dead.to_string(), live.addr.to_string()],
        &["--workers", "1", "--fall", "1", "--responses", "1"],
    );
    let series = format!("ringlb_backend_up{{frontend=\"default\",backend=\"{dead}\"}}");
    // Round-robin sends some first datagrams to the dead backend, until
    // its refusal takes it down.
    wait_until("the dead backend marked down", || {
        let client = client_for(lb.addr);
        client
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let _ = client.send_to(b"x", lb.addr);
        let mut buf = [0u8; 8];
        let _ = client.recv_from(&mut buf);
        metric(&metrics(&lb), &series) == 0
    });
    assert!(drops(&lb, "backend-unreachable") >= 1);
    for _ in 0..4 {
        let client = client_for(lb.addr);
        assert_eq!(exchange(&client, lb.addr, b"x").0, [1, b'x']);
    }
}

#[test]
fn a_tcp_and_a_udp_frontend_share_one_port() {
    let udp_backend = UdpBackend::echo();
    let tcp_backend = Backend::echo();
    // A port free for both: bound for UDP here, then released.
    let port = loop {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if try_listen(format!("127.0.0.1:{port}").parse().unwrap()).is_ok() {
            break port;
        }
    };
    let dir = TempDir::new("udp-shared-port");
    let config = dir.write(
        "ringlb.toml",
        &format!(
            "[[frontend]]\nname = \"dns-tcp\"\nlisten = \"127.0.0.1:{port}\"\nbackends = [\"{tcp_backend}\"]\n\n\
             [[frontend]]\nname = \"dns-udp\"\nprotocol = \"udp\"\nlisten = \"127.0.0.1:{port}\"\nbackends = [\"{udp_backend}\"]\n"
        ),
    );
    let lb = Ringlb::builder().config(&config).start();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(lb.frontend_addr("dns-udp"), addr);
    assert_eq!(echo_once(&lb, b"over tcp").unwrap(), b"over tcp");
    let client = client_for(addr);
    assert_eq!(exchange(&client, addr, b"over udp").0, b"over udp");
}

#[test]
fn settings_of_the_other_protocol_are_refused() {
    refused(
        &["--protocol", "udp", "--idle-timeout", "1m"],
        "--idle-timeout does not apply to a udp frontend",
    );
    refused(
        &["--max-sessions", "5"],
        "--max-sessions does not apply to a tcp frontend",
    );
}

/// ringlb with a frontend on a free port, a backend and `flags` refuses to
/// start, saying `says`.
fn refused(flags: &[&str], says: &str) {
    let mut args = vec!["--listen", "127.0.0.1:0", "--backend", "127.0.0.1:53"];
    args.extend_from_slice(flags);
    let (status, log) = run_to_exit(&args);
    assert!(!status.success(), "{flags:?}");
    assert!(log.contains(says), "{flags:?}: {log}");
}

#[test]
fn a_payload_check_takes_a_silent_backend_down_and_brings_it_back() {
    let live = UdpBackend::echo();
    // A UDP port nothing listens on, for now.
    let dead = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let lb = udp_lb(
        &[dead.to_string(), live.addr.to_string()],
        &[
            "--health-send",
            "hex:70 69 6e 67",
            "--health-expect",
            "ping",
            "--health-interval",
            "50ms",
            "--rise",
            "1",
            "--fall",
            "1",
        ],
    );
    let up = |addr: SocketAddr| {
        metric(
            &metrics(&lb),
            &format!("ringlb_backend_up{{frontend=\"default\",backend=\"{addr}\"}}"),
        )
    };
    wait_until("the silent backend down", || up(dead) == 0);
    assert_eq!(up(live.addr), 1);
    assert!(live.received() > 0, "the live backend was checked");
    // Every new session goes to the live backend meanwhile.
    for _ in 0..4 {
        let client = client_for(lb.addr);
        assert_eq!(exchange(&client, lb.addr, b"q").0, b"q");
    }
    let revived = UdpBackend::spawn(&dead.to_string(), None);
    wait_until("the revived backend up", || up(dead) == 1);
    assert!(revived.received() > 0);

    // A reply that does not start with health-expect fails the check.
    let lb = udp_lb(
        &[&live],
        &[
            "--health-send",
            "ping",
            "--health-expect",
            "pong",
            "--health-interval",
            "50ms",
            "--fall",
            "1",
        ],
    );
    let series = format!(
        "ringlb_backend_up{{frontend=\"default\",backend=\"{}\"}}",
        live.addr
    );
    wait_until("the wrong answer takes it down", || {
        metric(&metrics(&lb), &series) == 0
    });
}

#[test]
fn a_reload_adds_and_removes_a_udp_frontend() {
    let tcp_backend = Backend::echo();
    let udp_backend = UdpBackend::echo();
    let dir = TempDir::new("udp-reload");
    let web = format!(
        "[[frontend]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\nbackends = [\"{tcp_backend}\"]\n"
    );
    let dns = format!(
        "\n[[frontend]]\nname = \"dns\"\nprotocol = \"udp\"\nlisten = \"127.0.0.1:0\"\n\
         backends = [\"{udp_backend}\"]\nresponses = 1\n"
    );
    let path = dir.write("ringlb.toml", &web);
    let lb = Ringlb::builder().config(&path).start();
    std::fs::write(&path, format!("{web}{dns}")).unwrap();
    lb.signal("HUP");
    let addr = lb.frontend_addr("dns");
    let client = client_for(addr);
    assert_eq!(exchange(&client, addr, b"added").0, b"added");

    std::fs::write(&path, &web).unwrap();
    lb.signal("HUP");
    wait_until("dns gone from the ready file", || {
        lb.ready_addrs().iter().all(|(name, _)| name != "dns")
    });
    // Its socket is closed: the kernel answers port unreachable.
    let connected = client_for(addr);
    connected.connect(addr).unwrap();
    connected
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    wait_until("the removed frontend's port closed", || {
        let _ = connected.send(b"gone?");
        let mut buf = [0u8; 16];
        matches!(connected.recv(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
    });
    assert_eq!(echo_once(&lb, b"tcp stays").unwrap(), b"tcp stays");
}

#[test]
fn a_drain_answers_the_query_in_flight_and_ends_idle_sessions() {
    let backend = UdpBackend::slow("127.0.0.1:0", None, Duration::from_millis(300));
    // A drain held up by a session would outlast the test's patience.
    let mut lb = Ringlb::builder()
        .arg("--protocol", "udp")
        .arg("--drain-timeout", "120s")
        .backend(&backend)
        .start();
    // An idle session of another client, which must not hold the drain up
    // for its 60 s timeout.
    let idle = client_for(lb.addr);
    assert_eq!(exchange(&idle, lb.addr, b"idle").0, b"idle");
    let client = client_for(lb.addr);
    client.send_to(b"in flight", lb.addr).unwrap();
    wait_until("the query reached the backend", || backend.received() == 2);
    lb.signal("TERM");
    let mut buf = [0u8; 64];
    let (n, _) = client.recv_from(&mut buf).expect("the answer");
    assert_eq!(&buf[..n], b"in flight");
    assert!(lb.wait().success());
    assert!(!lb.log().contains("drain timeout"), "{}", lb.log());
}

#[test]
fn a_hot_upgrade_takes_the_udp_socket_and_loses_no_query() {
    let backend = UdpBackend::slow("127.0.0.1:0", None, Duration::from_millis(20));
    let dir = TempDir::new("udp-upgrade");
    let ctl = dir.0.join("ctl");
    let ctl = ctl.to_str().unwrap().to_string();
    let start = || {
        Ringlb::builder()
            .arg("--protocol", "udp")
            .arg("--responses", "1")
            .arg("--control-socket", &ctl)
            .arg("--takeover", &ctl)
            .backend(&backend)
            .workers(2)
            .start()
    };
    let mut old = start();
    let addr = old.addr;
    // Queries one after another, each from a fresh port as a stub resolver
    // sends them, across the upgrade; every one must be answered.
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let queries = {
        let (stop, answered) = (stop.clone(), answered.clone());
        thread::spawn(move || -> Result<(), String> {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let client = client_for(addr);
                let msg = format!("query {i}");
                client.send_to(msg.as_bytes(), addr).unwrap();
                let mut buf = [0u8; 64];
                match client.recv_from(&mut buf) {
                    Ok((n, _)) if &buf[..n] == msg.as_bytes() => {}
                    other => return Err(format!("{msg}: {other:?}")),
                }
                answered.fetch_add(1, Ordering::SeqCst);
                i += 1;
            }
            Ok(())
        })
    };
    wait_until("queries answered before the upgrade", || {
        answered.load(Ordering::SeqCst) >= 10 || queries.is_finished()
    });
    let new = start();
    assert_eq!(new.addr, addr, "the new process serves the same port");
    assert!(old.wait().success(), "{}", old.log());
    let before = answered.load(Ordering::SeqCst);
    let deadline = std::time::Instant::now() + PATIENCE;
    while answered.load(Ordering::SeqCst) < before + 10 && !queries.is_finished() {
        assert!(
            std::time::Instant::now() < deadline,
            "no answers after the upgrade ({} before)\nold:\n{}\nnew:\n{}",
            before,
            old.log(),
            new.log()
        );
        thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::SeqCst);
    queries.join().unwrap().unwrap_or_else(|err| {
        panic!(
            "a query was lost: {err}\nold:\n{}\nnew:\n{}",
            old.log(),
            new.log()
        )
    });
}

/// A free port on 127.0.0.1 for both UDP and TCP (released, so a server can
/// take it).
fn free_udp_and_tcp_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if try_listen(format!("127.0.0.1:{port}").parse().unwrap()).is_ok() {
            return port;
        }
    }
}

/// A real authoritative DNS server (NSD) on loopback serving `bench.test`,
/// killed on drop.
struct Nsd {
    child: std::process::Child,
    port: u16,
    _dir: TempDir,
}

impl Nsd {
    fn start() -> Nsd {
        let dir = TempDir::new("nsd");
        let port = free_udp_and_tcp_port();
        dir.write(
            "bench.test.zone",
            "$ORIGIN bench.test.\n$TTL 300\n@ IN SOA ns1 hostmaster 1 3600 600 86400 300\n\
             @ IN NS ns1\nns1 IN A 127.0.0.1\nwww IN A 192.0.2.1\nwww IN AAAA 2001:db8::1\n\
             txt IN TXT \"ringlb udp\"\n",
        );
        let d = dir.0.display();
        let conf = dir.write(
            "nsd.conf",
            &format!(
                "server:\n  ip-address: 127.0.0.1@{port}\n  server-count: 1\n  zonesdir: \"{d}\"\n\
                 database: \"\"\n  pidfile: \"{d}/nsd.pid\"\n  username: \"\"\n  chroot: \"\"\n\
                 logfile: \"{d}/nsd.log\"\n  xfrdfile: \"{d}/xfrd.state\"\n  xfrdir: \"{d}\"\n\
                 zonelistfile: \"{d}/zone.list\"\n  rrl-ratelimit: 0\n  rrl-whitelist-ratelimit: 0\n\
                 remote-control:\n  control-enable: no\nzone:\n  name: bench.test\n  zonefile: bench.test.zone\n"
            ),
        );
        // Debian puts it in /usr/sbin, which a user's PATH may lack.
        let nsd = ["/usr/sbin/nsd", "/usr/local/sbin/nsd"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or("nsd");
        let child = std::process::Command::new(nsd)
            .args(["-d", "-c", conf.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nsd (Debian package nsd) runs");
        let nsd = Nsd {
            child,
            port,
            _dir: dir,
        };
        wait_until("nsd answers", || {
            !kdig(nsd.port, "www.bench.test", "A").is_empty()
        });
        nsd
    }
}

impl Drop for Nsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// kdig's short answer for `name`/`kind` at 127.0.0.1:`port` over UDP.
fn kdig(port: u16, name: &str, kind: &str) -> String {
    let out = std::process::Command::new("kdig")
        .args([
            "@127.0.0.1",
            "-p",
            &port.to_string(),
            "+notcp",
            "+short",
            "+timeout=1",
            "+retry=0",
            name,
            kind,
        ])
        .output()
        .expect("kdig (Debian package knot-dnsutils) runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn a_real_dns_server_answers_through_ringlb_and_dnsperf_loses_nothing() {
    let nsd = Nsd::start();
    let lb = Ringlb::builder()
        .arg("--protocol", "udp")
        .arg("--responses", "1")
        .backend(format!("127.0.0.1:{}", nsd.port))
        .admin()
        .start();
    let port = lb.addr.port();
    for (name, kind, answer) in [
        ("www.bench.test", "A", "192.0.2.1"),
        ("www.bench.test", "AAAA", "2001:db8::1"),
        ("txt.bench.test", "TXT", "\"ringlb udp\""),
    ] {
        assert_eq!(kdig(nsd.port, name, kind), answer, "direct");
        assert_eq!(kdig(port, name, kind), answer, "through ringlb");
    }
    // dnsperf at a rate the server sustains: every query answered.
    let dir = TempDir::new("dnsperf");
    let queries = dir.write("queries", "www.bench.test A\ntxt.bench.test TXT\n");
    let out = std::process::Command::new("dnsperf")
        .args(["-s", "127.0.0.1", "-p", &port.to_string(), "-d"])
        .arg(&queries)
        .args(["-l", "2", "-Q", "2000", "-c", "4", "-t", "2"])
        .output()
        .expect("dnsperf (Debian package dnsperf) runs");
    let report = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| -> u64 {
        report
            .lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{report}"))
    };
    assert!(field("Queries sent:") > 0, "{report}");
    assert_eq!(field("Queries lost:"), 0, "{report}");
    assert_eq!(
        field("Queries completed:"),
        field("Queries sent:"),
        "{report}"
    );
}

#[test]
fn a_flood_from_many_ports_stays_within_max_sessions_and_open_sessions_go_on() {
    let backend = UdpBackend::echo();
    let lb = udp_lb(&[&backend], &["--max-sessions", "50"]);
    // A real client first, whose session must survive the flood.
    let real = client_for(lb.addr);
    assert_eq!(exchange(&real, lb.addr, b"before").0, b"before");
    // 2,000 datagrams of random-looking bytes, each from a port of its
    // own, in bursts of 50 that the socket's buffer holds whole; each
    // burst is accounted for before the next.
    let series = "ringlb_udp_sessions_total{frontend=\"default\"}";
    let datagrams_in = "ringlb_udp_datagrams_total{frontend=\"default\",direction=\"in\"}";
    let mut sent = 1u64;
    for burst in 0..40u64 {
        let sockets: Vec<UdpSocket> = (0..50).map(|_| client_for(lb.addr)).collect();
        for (i, s) in sockets.iter().enumerate() {
            let junk = pattern(burst * 50 + i as u64, 1 + (i * 37) % 512);
            s.send_to(&junk, lb.addr).unwrap();
            sent += 1;
        }
        wait_until("the burst opened sessions or was dropped", || {
            // (A port the kernel hands out again joins its session.)
            let relayed = metric(&metrics(&lb), datagrams_in);
            relayed + drops(&lb, "session-limit") == sent
        });
    }
    let text = metrics(&lb);
    assert!(metric(&text, series) <= 50, "{text}");
    assert!(sessions_active(&lb) <= 50);
    assert!(drops(&lb, "session-limit") >= sent - 2 * 50);
    assert_eq!(exchange(&real, lb.addr, b"after").0, b"after");
}

#[test]
fn send_proxy_v2_puts_the_datagram_header_in_front_of_each_datagram() {
    // An echo backend sends back what it got: the header and the payload.
    let backend = UdpBackend::echo();
    let lb = udp_lb(&[&backend], &["--send-proxy", "v2"]);
    let client = client_for(lb.addr);
    let me = client.local_addr().unwrap();
    for payload in [&b"first"[..], &b"second"[..]] {
        let (got, _) = exchange(&client, lb.addr, payload);
        let mut want = b"\r\n\r\n\x00\r\nQUIT\n".to_vec();
        // v2 PROXY, UDP over IPv4, 12 bytes of addresses.
        want.extend_from_slice(&[0x21, 0x12, 0, 12]);
        want.extend_from_slice(&[127, 0, 0, 1, 127, 0, 0, 1]);
        want.extend_from_slice(&me.port().to_be_bytes());
        want.extend_from_slice(&lb.addr.port().to_be_bytes());
        want.extend_from_slice(payload);
        assert_eq!(got, want);
    }
    // With the header, the largest datagram no longer fits: dropped, counted.
    client.send_to(&vec![0u8; MAX_DATAGRAM], lb.addr).unwrap();
    wait_until("the datagram too large for its header counted", || {
        drops(&lb, "truncated") == 1
    });
    refused(
        &["--protocol", "udp", "--send-proxy", "v1"],
        "--send-proxy v1 has no datagram form",
    );
}

#[test]
fn a_drained_backend_takes_no_new_session_and_a_backup_waits_for_the_primaries() {
    let (one, two, spare) = (
        UdpBackend::tagged(1),
        UdpBackend::tagged(2),
        UdpBackend::tagged(3),
    );
    let lb = Ringlb::builder()
        .arg("--protocol", "udp")
        .arg("--responses", "1")
        .backend(&one)
        .backend(&two)
        .backend_with(&spare, "backup")
        .admin()
        .start();
    let tag = || exchange(&client_for(lb.addr), lb.addr, b"x").0[0];
    let seen: Vec<u8> = (0..6).map(|_| tag()).collect();
    assert!(
        seen.contains(&1) && seen.contains(&2) && !seen.contains(&3),
        "{seen:?}"
    );
    let drain = |addr: SocketAddr, state: &str| {
        let path = format!("/frontends/default/backends/{addr}");
        let body = format!("{{\"state\":\"{state}\"}}");
        let (status, text) = http_request(lb.admin_addr(), "PATCH", &path, &[], &body);
        assert_eq!(status, 200, "{text}");
    };
    drain(one.addr, "drain");
    assert!(
        (0..6).all(|_| tag() == 2),
        "a drained backend got a session"
    );
    // Both primaries out: the backup serves.
    drain(two.addr, "maint");
    assert!((0..3).all(|_| tag() == 3), "the backup did not take over");
    drain(one.addr, "ready");
    assert!((0..3).all(|_| tag() == 1));
}
