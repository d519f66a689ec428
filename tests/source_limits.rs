//! Per-source limits through the real binary, with clients bound to many
//! 127.x.y.z source addresses: max-conns-per-source holds exactly across two
//! workers, rate-per-source holds over 10 s within its token bucket's bound,
//! a flood of distinct sources keeps the source table within its bound while
//! a well-behaved client is served throughout, behind accept-proxy the
//! PROXY header's source is the key, and `GET /sources` lists the busiest.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{http_get, metric, wait_until, Backend, Ringlb, PATIENCE};
use socket2::{Domain, Socket, Type};

/// A TCP connection to `to` from the address `from` (any port).
fn connect_from(from: Ipv4Addr, to: SocketAddr) -> TcpStream {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::new(IpAddr::V4(from), 0).into())
        .unwrap_or_else(|e| panic!("bind {from}: {e}"));
    socket
        .connect(&to.into())
        .unwrap_or_else(|e| panic!("connect from {from}: {e}"));
    let conn: TcpStream = socket.into();
    conn.set_read_timeout(Some(PATIENCE)).unwrap();
    conn.set_write_timeout(Some(PATIENCE)).unwrap();
    conn
}

/// The backend: echoes a client's first byte, then holds the connection
/// until the client closes if that byte was `h`, else closes it at once.
/// Closing first, it keeps the TIME_WAIT of thousands of short connections
/// on its own port (and ringlb's listening port) instead of on ephemeral
/// ports of 127.0.0.1, where they would make other tests' binds fail.
fn backend() -> Backend {
    Backend::spawn(|mut conn| {
        let mut first = [0u8; 1];
        if conn.read_exact(&mut first).is_err() || conn.write_all(&first).is_err() {
            return;
        }
        if first == *b"h" {
            let _ = conn.read_to_end(&mut Vec::new());
        }
    })
}

/// Sends `b"h"` and waits for its echo: `Some(conn)`, held open by the
/// backend, when the connection was served; `None` when ringlb closed it
/// without a byte.
fn held(mut conn: TcpStream) -> Option<TcpStream> {
    // A refused connection may be gone before the write: a refusal too.
    if conn.write_all(b"h").is_err() {
        return None;
    }
    let mut echo = [0u8; 1];
    match conn.read(&mut echo) {
        Ok(1) => Some(conn),
        Ok(_) | Err(_) => None,
    }
}

/// One short visit: a byte there and back, then the backend's close, which
/// the client waits for (so the connection is over at both ends when this
/// returns). Whether it was served.
fn visit(mut conn: TcpStream) -> bool {
    if conn.write_all(b"x").is_err() {
        return false;
    }
    let mut got = Vec::new();
    let _ = conn.read_to_end(&mut got);
    got == b"x"
}

fn v4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn scrape(lb: &Ringlb) -> String {
    http_get(lb.admin_addr(), "/metrics").1
}

fn refused(lb: &Ringlb, reason: &str) -> u64 {
    metric(
        &scrape(lb),
        &format!("ringlb_refused_total{{frontend=\"default\",reason=\"{reason}\"}}"),
    )
}

/// `GET /sources?QUERY`, the frontend's entry.
fn sources(lb: &Ringlb, query: &str) -> serde_json::Value {
    let (status, body) = http_get(lb.admin_addr(), &format!("/sources?{query}"));
    assert_eq!(status, 200, "{body}");
    let all: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(all[0]["frontend"], "default", "{all}");
    all[0].clone()
}

/// `(source, connections)` of each listed source, in order.
fn listed(entry: &serde_json::Value) -> Vec<(String, u64)> {
    entry["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let source = s["source"].as_str().unwrap().to_string();
            (source, s["connections"].as_u64().unwrap())
        })
        .collect()
}

#[test]
fn max_conns_per_source_is_exact_across_two_workers_and_sources_lists_the_busiest() {
    let backend = backend();
    let lb = Ringlb::over(&backend)
        .workers(2)
        .admin()
        .arg("--max-conns-per-source", "3")
        .start();
    // One at a time, so which are served is not a race: the kernel spreads
    // them over both workers by their ports; a per-worker count would let
    // up to six through.
    let (a, b) = (v4("127.0.0.2"), v4("127.0.0.3"));
    let mut open = Vec::new();
    let mut turned_away = 0;
    for _ in 0..10 {
        match held(connect_from(a, lb.addr)) {
            Some(conn) => open.push(conn),
            None => turned_away += 1,
        }
    }
    assert_eq!((open.len(), turned_away), (3, 7));
    assert_eq!(refused(&lb, "source-conns"), 7);
    assert_eq!(refused(&lb, "source-rate"), 0);
    // Another source has its own three.
    let other = held(connect_from(b, lb.addr)).expect("another source is served");

    let top = sources(&lb, "top=1");
    assert_eq!(listed(&top), [("127.0.0.2/32".to_string(), 3)], "{top}");
    assert_eq!(top["max_conns_per_source"], 3, "{top}");
    assert_eq!(top["tracked"], 2, "{top}");
    assert!(top["sources"][0]["rate"].as_f64().unwrap() > 0.0, "{top}");
    let both = sources(&lb, "top=5");
    assert_eq!(
        listed(&both),
        [
            ("127.0.0.2/32".to_string(), 3),
            ("127.0.0.3/32".to_string(), 1)
        ],
        "{both}"
    );
    let (status, body) = http_get(lb.admin_addr(), "/sources?top=0");
    assert_eq!(status, 400, "{body}");

    // A connection closed gives its source a place back.
    drop(open.pop());
    let mut again = None;
    wait_until("a place back for 127.0.0.2", || {
        again = held(connect_from(a, lb.addr));
        again.is_some()
    });
    drop((other, again));
    assert!(lb.log().contains("client refused by a per-source limit"));
}

#[test]
fn the_rate_limit_holds_over_ten_seconds() {
    let backend = backend();
    let lb = Ringlb::over(&backend)
        .workers(2)
        .admin()
        .arg("--rate-per-source", "20/s")
        .arg("--rate-burst", "10")
        .start();
    let from = v4("127.0.0.4");
    let (mut ok, mut attempts) = (0u64, 0u64);
    // Bracketing every connect: ringlb saw them all within this span.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        attempts += 1;
        if visit(connect_from(from, lb.addr)) {
            ok += 1;
        }
    }
    let span = start.elapsed().as_secs_f64();
    // The bucket: at most its 10 at once plus 20 a second over the span.
    let bound = 10.0 + 20.0 * span;
    assert!(
        ok as f64 <= bound + 1.0,
        "{ok} served in {span:.2} s, bound {bound:.1}"
    );
    // And it refills, well past the burst. (A client that tries without
    // pause gets close to the bound; how close depends on how often this
    // one managed to try, which is the machine's speed, so only half.)
    let at_least = if attempts as f64 >= 2.0 * bound {
        bound / 2.0
    } else {
        11.0
    };
    assert!(
        ok as f64 >= at_least,
        "{ok} served of {attempts} in {span:.2} s, bound {bound:.1}"
    );
    assert_eq!(refused(&lb, "source-rate"), attempts - ok);
    assert_eq!(refused(&lb, "source-conns"), 0);
}

/// How many distinct sources the flood test uses: 20,000 by default (20
/// times its table of 1,000), `RINGLB_SOURCE_FLOOD=200000` for the issue's
/// full count (docs/performance.md has that run).
fn flood_size() -> u32 {
    std::env::var("RINGLB_SOURCE_FLOOD")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000)
}

#[test]
fn a_flood_of_sources_keeps_the_table_within_its_bound_while_a_client_is_served() {
    let backend = backend();
    // A rate limit keeps each source's entry after its connection closes,
    // so the flood fills the table and new sources must take old places.
    let lb = Ringlb::over(&backend)
        .workers(2)
        .admin()
        .arg("--max-conns-per-source", "4")
        .arg("--rate-per-source", "100000/s")
        .arg("--source-table-size", "1000")
        .start();
    let table_size = sources(&lb, "top=1")["table_size"].as_u64().unwrap();
    assert!(table_size <= 1000, "{table_size}");

    // The well-behaved client: one connection held throughout, and one at
    // a time more, each served and closed by both ends before the next,
    // until the flood is over: never more than its limit of four.
    let client = v4("127.0.0.2");
    let kept = held(connect_from(client, lb.addr)).expect("the client's first connection");
    let flooding = Arc::new(AtomicBool::new(true));
    let visits = {
        let (flooding, addr) = (flooding.clone(), lb.addr);
        thread::spawn(move || {
            let mut visits = 0u64;
            while flooding.load(Ordering::SeqCst) {
                let served = visit(connect_from(client, addr));
                assert!(served, "the client was refused during the flood");
                visits += 1;
            }
            visits
        })
    };

    // Sources 127.1.0.0 and up, each one connection, from four threads.
    let total = flood_size();
    let next = Arc::new(AtomicUsize::new(0));
    let max_tracked = Arc::new(AtomicUsize::new(0));
    let flooders: Vec<_> = (0..4)
        .map(|_| {
            let (next, addr) = (next.clone(), lb.addr);
            thread::spawn(move || loop {
                let i = next.fetch_add(1, Ordering::SeqCst) as u32;
                if i >= total {
                    break;
                }
                let from = Ipv4Addr::from(u32::from(v4("127.1.0.0")) + i);
                assert!(visit(connect_from(from, addr)), "{from} refused");
            })
        })
        .collect();
    // The table's size, read while the flood runs.
    while next.load(Ordering::SeqCst) < total as usize {
        let tracked = sources(&lb, "top=1")["tracked"].as_u64().unwrap() as usize;
        max_tracked.fetch_max(tracked, Ordering::SeqCst);
        thread::sleep(Duration::from_millis(20));
    }
    for f in flooders {
        f.join().unwrap();
    }
    flooding.store(false, Ordering::SeqCst);
    let visits = visits.join().unwrap();
    assert!(visits > 0);

    let after = sources(&lb, "top=1");
    let tracked = after["tracked"].as_u64().unwrap();
    assert!(tracked <= table_size, "{after}");
    assert!(
        max_tracked.load(Ordering::SeqCst) as u64 <= table_size,
        "{} tracked at most",
        max_tracked.load(Ordering::SeqCst)
    );
    // The flood filled it: places were taken over, not refused.
    assert!(tracked > table_size / 2, "{after}");
    // The client's open connection was never dropped from its count: once
    // ringlb has seen the last visit's close, the held one still counts
    // (an entry dropped and made again by a visit would count 0).
    wait_until("the client's count back to its held connection", || {
        let all = sources(&lb, "top=10000");
        listed(&all).contains(&("127.0.0.2/32".to_string(), 1))
    });
    assert_eq!(refused(&lb, "source-conns"), 0);
    assert_eq!(refused(&lb, "source-rate"), 0);
    let connections = metric(
        &scrape(&lb),
        "ringlb_connections_total{frontend=\"default\"}",
    );
    assert_eq!(connections, 1 + visits + u64::from(total));
    drop(kept);
}

#[test]
fn behind_accept_proxy_the_proxy_source_is_the_key() {
    let backend = backend();
    let lb = Ringlb::over(&backend)
        .admin()
        .access_log()
        .flag("--accept-proxy")
        .arg("--max-conns-per-source", "1")
        .start();
    // Every connection comes from one balancer, 127.0.0.1; the clients it
    // stands for are in the headers.
    let via_proxy = |client: &str| {
        let mut conn = common::client(lb.addr);
        let header = format!("PROXY TCP4 {client} 192.0.2.100 40000 80\r\n");
        conn.write_all(header.as_bytes()).unwrap();
        held(conn)
    };
    let first = via_proxy("198.51.100.1").expect("the first client is served");
    assert!(
        via_proxy("198.51.100.1").is_none(),
        "a second connection of the same client is refused"
    );
    let other = via_proxy("198.51.100.2").expect("another client through the same balancer");
    assert_eq!(refused(&lb, "source-conns"), 1);
    let entry = sources(&lb, "top=10");
    assert_eq!(
        listed(&entry),
        [
            ("198.51.100.1/32".to_string(), 1),
            ("198.51.100.2/32".to_string(), 1)
        ],
        "{entry}"
    );
    wait_until("the refusal in the access log", || {
        lb.log().contains("reason=refused: source-conns")
    });
    let log = lb.log();
    let line = log
        .lines()
        .find(|l| l.contains("reason=refused: source-conns"))
        .unwrap();
    assert!(line.contains("client=198.51.100.1:40000"), "{line}");
    assert!(line.contains("backend=-"), "{line}");
    drop((first, other));
}

#[test]
fn bad_per_source_settings_are_one_line_start_up_errors() {
    let base = ["--listen", "127.0.0.1:0", "--backend", "127.0.0.1:9"];
    for (extra, says) in [
        (
            &["--rate-burst", "5"][..],
            "--rate-burst needs --rate-per-source",
        ),
        (&["--rate-per-source", "5/d"], "invalid rate '5/d'"),
        (&["--rate-per-source", "0/s"], "invalid rate '0/s'"),
        (&["--source-prefix", "33"], "'33' for '--source-prefix"),
        (
            &["--source-prefix-v6", "129"],
            "'129' for '--source-prefix-v6",
        ),
        (
            &["--max-conns-per-source", "0"],
            "'0' for '--max-conns-per-source",
        ),
        (
            &["--source-table-size", "0"],
            "'0' for '--source-table-size",
        ),
    ] {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        let (status, out) = common::run_to_exit(&args);
        assert_eq!(status.code(), Some(2), "{extra:?}: {out}");
        assert!(out.contains(says), "{extra:?}: {out}");
    }
}

#[test]
fn a_reload_keeps_the_counts_and_applies_new_limits() {
    let backend = backend();
    let dir = common::TempDir::new("sources-reload");
    let config = |max: u32| {
        format!(
            "admin = \"127.0.0.1:0\"\nworkers = 2\n\n[[frontend]]\nname = \"default\"\nlisten = \"127.0.0.1:0\"\nbackends = [\"{}\"]\nmax-conns-per-source = {max}\n",
            backend.addr
        )
    };
    let path = dir.write("ringlb.toml", &config(3));
    let lb = Ringlb::builder().config(&path).start();
    let addr = lb.frontend_addr("default");
    let from = v4("127.0.0.5");
    let open: Vec<TcpStream> = (0..2)
        .map(|_| held(connect_from(from, addr)).expect("under the limit"))
        .collect();
    // Down to 2: the two open before the reload still count.
    std::fs::write(&path, config(2)).unwrap();
    lb.signal("HUP");
    wait_until("the reload", || lb.log().contains("config reloaded"));
    assert!(held(connect_from(from, addr)).is_none(), "at the new limit");
    assert_eq!(refused(&lb, "source-conns"), 1);
    assert_eq!(
        listed(&sources(&lb, "top=1")),
        [("127.0.0.5/32".to_string(), 2)]
    );
    drop(open);
}
