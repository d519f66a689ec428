//! Runtime control of backends through the real binary: drain, maint,
//! weight 0 and weight changes under a client load (no new connection
//! reaches a backend taken out, open ones finish intact, no client fails),
//! slow start after a backend comes back, the admin endpoint's 401, 403,
//! 404 and 400 answers, and runtime state surviving a SIGHUP reload.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{
    http_get, http_request, metric, pattern, read_to_end, run_to_exit, tag_of, visit, wait_until,
    Backend, Ringlb, TempDir,
};

/// A connection through `lb` that reached the backend tagged `tag`.
fn connection_to(lb: &Ringlb, tag: u8) -> TcpStream {
    let mut found = None;
    wait_until(&format!("a connection to backend {tag}"), || {
        let (t, conn) = tag_of(lb.connect());
        if t == tag {
            found = Some(conn);
        }
        found.is_some()
    });
    found.unwrap()
}

/// Client threads looping short connections through ringlb, each a
/// request and its checked echo; records when each began and which
/// backend served it.
struct Load {
    stop: Arc<AtomicBool>,
    failures: Arc<AtomicUsize>,
    served: Arc<Mutex<Vec<(Instant, u8)>>>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Load {
    fn start(addr: SocketAddr, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(AtomicUsize::new(0));
        let served = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..clients)
            .map(|c| {
                let (stop, failures, served) = (stop.clone(), failures.clone(), served.clone());
                thread::spawn(move || {
                    let mut n = 0u64;
                    while !stop.load(Ordering::SeqCst) {
                        n += 1;
                        let began = Instant::now();
                        match Load::once(addr, &pattern(c as u64 * 1_000_000 + n, 64)) {
                            Ok(tag) => served.lock().unwrap().push((began, tag)),
                            Err(err) => {
                                eprintln!("client {c} failed: {err}");
                                failures.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            failures,
            served,
            threads,
        }
    }

    fn once(addr: SocketAddr, msg: &[u8]) -> std::io::Result<u8> {
        let mut conn = TcpStream::connect(addr)?;
        conn.set_read_timeout(Some(common::PATIENCE))?;
        let mut tag = [0u8; 1];
        conn.read_exact(&mut tag)?;
        conn.write_all(msg)?;
        conn.shutdown(Shutdown::Write)?;
        let mut back = Vec::new();
        conn.read_to_end(&mut back)?;
        if back != msg {
            return Err(std::io::Error::other("echo differs"));
        }
        Ok(tag[0])
    }

    /// Which backends served the connections begun after `since`, counted
    /// per tag (`n` backends).
    fn since(&self, since: Instant, n: usize) -> Vec<usize> {
        let mut counts = vec![0; n];
        for &(began, tag) in self.served.lock().unwrap().iter() {
            if began >= since {
                counts[tag as usize] += 1;
            }
        }
        counts
    }

    /// Waits until at least `total` connections begun after `since` were
    /// served; returns their counts per tag.
    fn wait_for(&self, since: Instant, n: usize, total: usize) -> Vec<usize> {
        let mut counts = Vec::new();
        wait_until(&format!("{total} connections served"), || {
            counts = self.since(since, n);
            counts.iter().sum::<usize>() >= total
        });
        counts
    }

    /// Stops the clients; returns how many failed.
    fn stop(self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().unwrap();
        }
        self.failures.load(Ordering::SeqCst)
    }
}

/// `PATCH /frontends/{frontend}/backends/{addr}` with `body` and `headers`.
fn patch(
    admin: SocketAddr,
    frontend: &str,
    addr: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let path = format!("/frontends/{frontend}/backends/{addr}");
    http_request(admin, "PATCH", &path, headers, body)
}

/// Patches and asserts a 200; returns the backend's new JSON.
fn patch_ok(admin: SocketAddr, addr: &str, body: &str) -> serde_json::Value {
    let (status, answer) = patch(admin, "default", addr, &[], body);
    assert_eq!(status, 200, "{answer}");
    serde_json::from_str(&answer).unwrap()
}

/// /backends as JSON.
fn listed(admin: SocketAddr) -> Vec<serde_json::Value> {
    let (status, body) = http_get(admin, "/backends");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str::<serde_json::Value>(&body)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// The /backends entry of the backend at `addr`.
fn entry(admin: SocketAddr, addr: &str) -> serde_json::Value {
    listed(admin)
        .into_iter()
        .find(|b| b["address"] == addr)
        .unwrap_or_else(|| panic!("{addr} not in /backends"))
}

/// ringlb over two tagged backends (0 and 1), with the admin endpoint on
/// loopback and quick health checks.
fn two_backends(extra: &[&str]) -> (Ringlb, [Backend; 2], SocketAddr) {
    two_backends_with("", extra)
}

/// As [`two_backends`], with `options` (e.g. `,slow-start=30s`) after
/// backend 0's address.
fn two_backends_with(options: &str, extra: &[&str]) -> (Ringlb, [Backend; 2], SocketAddr) {
    let backends = [Backend::tagged(0), Backend::tagged(1)];
    let lb = Ringlb::builder()
        .workers(2)
        .backend(format!("{}{options}", backends[0].arg()))
        .backend(&backends[1])
        .admin()
        .health_interval("20ms")
        .arg("--rise", "1")
        .args(extra)
        .start();
    let admin = lb.admin_addr();
    (lb, backends, admin)
}

/// Takes backend 0 out with `out` while clients loop: no connection begun
/// after the PATCH reaches it, its open long connection finishes with its
/// data intact; `back` puts it back and it gets traffic again; no client
/// fails throughout.
fn take_out_and_back(out: &str, back: &str) -> (Ringlb, [Backend; 2], SocketAddr) {
    let (lb, backends, admin) = two_backends(&[]);
    let a = backends[0].arg();
    let mut long = connection_to(&lb, 0);
    let load = Load::start(lb.addr, 4);
    let counts = load.wait_for(Instant::now(), 2, 100);
    assert!(counts[0] > 0 && counts[1] > 0, "{counts:?}");

    patch_ok(admin, &a, out);
    let out_since = Instant::now();
    let counts = load.wait_for(out_since, 2, 400);
    assert_eq!(
        counts[0], 0,
        "{out}: backend 0 got new connections: {counts:?}"
    );

    // The connection opened before goes on, byte for byte.
    let data = pattern(7, 1 << 20);
    let writer = {
        let mut conn = long.try_clone().unwrap();
        let data = data.clone();
        thread::spawn(move || {
            conn.write_all(&data).unwrap();
            conn.shutdown(Shutdown::Write).unwrap();
        })
    };
    assert_eq!(
        read_to_end(&mut long),
        data,
        "{out}: the open connection's data"
    );
    writer.join().unwrap();

    patch_ok(admin, &a, back);
    let back_since = Instant::now();
    wait_until("backend 0 gets traffic again", || {
        load.since(back_since, 2)[0] > 0
    });
    assert_eq!(load.stop(), 0, "{out}: clients failed");
    (lb, backends, admin)
}

#[test]
fn a_drained_backend_gets_no_new_connections_and_finishes_its_open_ones() {
    let (_lb, backends, admin) = take_out_and_back(r#"{"state":"drain"}"#, r#"{"state":"ready"}"#);
    let a = entry(admin, &backends[0].arg());
    assert_eq!(a["state"], "ready", "{a}");
    assert_eq!(a["health"], "up", "{a}");
}

#[test]
fn a_backend_in_maint_gets_neither_connections_nor_health_checks() {
    let (lb, backends, admin) = two_backends(&[]);
    let a = backends[0].arg();
    let answer = patch_ok(admin, &a, r#"{"state":"maint"}"#);
    assert_eq!(answer["state"], "maint", "{answer}");
    assert_eq!(answer["address"], a.as_str(), "{answer}");
    let metrics = http_get(admin, "/metrics").1;
    let series =
        |name: &str, addr: &str| format!("{name}{{frontend=\"default\",backend=\"{addr}\"}}");
    assert_eq!(metric(&metrics, &series("ringlb_backend_ready", &a)), 0);
    assert_eq!(
        metric(
            &metrics,
            &series("ringlb_backend_ready", &backends[1].arg())
        ),
        1
    );
    assert_eq!(metric(&metrics, &series("ringlb_backend_weight", &a)), 1);
    // A check may have been under way when the PATCH landed.
    let settled = Instant::now();
    let accepted = backends[0].accepted();
    let checks = backends[1].accepted();
    wait_until("20 health checks of the other backend", || {
        backends[1].accepted() >= checks + 20
    });
    assert!(settled.elapsed() >= Duration::from_millis(300));
    assert!(
        backends[0].accepted() <= accepted + 1,
        "checked in maint: {} connections after {accepted}",
        backends[0].accepted()
    );
    assert!((0..20).all(|_| visit(&lb) == 1));
    drop(lb);
    take_out_and_back(r#"{"state":"maint"}"#, r#"{"state":"ready"}"#);
}

#[test]
fn weight_zero_takes_a_backend_out_and_weights_split_the_load() {
    let (lb, backends, admin) = take_out_and_back(r#"{"weight":0}"#, r#"{"weight":1}"#);
    let (a, b) = (backends[0].arg(), backends[1].arg());
    patch_ok(admin, &a, r#"{"weight":1}"#);
    let answer = patch_ok(admin, &b, r#"{"weight":3}"#);
    assert_eq!(answer["weight"], 3, "{answer}");
    assert_eq!(answer["configured_weight"], 1, "{answer}");
    let load = Load::start(lb.addr, 4);
    let counts = load.wait_for(Instant::now(), 2, 800);
    assert_eq!(load.stop(), 0);
    let share = counts[0] as f64 / counts.iter().sum::<usize>() as f64;
    eprintln!("weights 1 and 3: {counts:?}, share {share:.3}");
    assert!(
        (0.15..=0.35).contains(&share),
        "weights 1 and 3: backend 0 took {share:.2} of {counts:?}"
    );
}

#[test]
fn a_backend_back_from_drain_ramps_up_under_slow_start() {
    let (lb, backends, admin) = two_backends_with(",slow-start=60s", &[]);
    let a = backends[0].arg();
    // It ramps from the start; drain it and bring it back.
    patch_ok(admin, &a, r#"{"state":"drain"}"#);
    assert!((0..10).all(|_| visit(&lb) == 1));
    let answer = patch_ok(admin, &a, r#"{"state":"ready"}"#);
    let effective = answer["effective_weight"].as_f64().unwrap();
    assert!(effective < 0.2, "{answer}");
    let mut counts = [0usize; 2];
    for _ in 0..200 {
        counts[visit(&lb) as usize] += 1;
    }
    let entry = entry(admin, &a);
    eprintln!("slow start: the first 200 connections after ready went {counts:?}");
    assert!(
        counts[0] < 40,
        "a backend ramping up over 60s took {counts:?} (now at weight {})",
        entry["effective_weight"]
    );
    assert_eq!(entry["slow_start_ms"], 60_000, "{entry}");
}

#[test]
fn a_backend_whose_health_recovers_ramps_up_again() {
    let (lb, backends, admin) = two_backends_with(",slow-start=2s", &["--fall", "1"]);
    let a = backends[0].arg();
    let effective = |admin| entry(admin, &a)["effective_weight"].as_f64().unwrap();
    wait_until("the ramp from start done", || effective(admin) == 1.0);
    let addr = backends[0].addr;
    backends[0].stop();
    wait_until("backend 0 down", || entry(admin, &a)["health"] == "down");
    let _back = Backend::echo_at(addr, Some(0));
    wait_until("backend 0 up again", || entry(admin, &a)["health"] == "up");
    let now = effective(admin);
    assert!(now < 1.0, "back up, it ramps again: effective weight {now}");
    wait_until("and it ends at its weight", || effective(admin) == 1.0);
    drop(lb);
}

#[test]
fn backups_take_over_while_every_primary_is_drained() {
    let (primary, backup) = (Backend::tagged(0), Backend::tagged(1));
    let lb = Ringlb::over(&primary)
        .backend_with(&backup, "backup")
        .admin()
        .start();
    let admin = lb.admin_addr();
    assert!((0..10).all(|_| visit(&lb) == 0));
    patch_ok(admin, &primary.arg(), r#"{"state":"drain"}"#);
    assert!((0..10).all(|_| visit(&lb) == 1), "the backup takes over");
    patch_ok(admin, &primary.arg(), r#"{"state":"ready"}"#);
    assert!((0..10).all(|_| visit(&lb) == 0), "and hands back");
}

#[test]
fn the_admin_endpoint_answers_401_404_and_400() {
    let dir = TempDir::new("admin-token");
    let token_file = dir.write("token", "  s3cret \n");
    let backend = Backend::tagged(0);
    let lb = Ringlb::over(&backend)
        .admin()
        .arg("--admin-token-file", token_file.to_str().unwrap())
        .start();
    let admin = lb.admin_addr();
    let auth = [("Authorization", "Bearer s3cret")];
    let addr = backend.arg();

    for path in ["/metrics", "/healthz"] {
        assert_eq!(http_get(admin, path).0, 200, "{path} stays open");
    }
    for path in ["/backends", "/", "/stats.json"] {
        assert_eq!(http_get(admin, path).0, 401, "{path}");
        assert_eq!(http_request(admin, "GET", path, &auth, "").0, 200, "{path}");
    }
    for bad in ["Bearer s3cre", "Bearer s3cret2", "Basic s3cret", "s3cret"] {
        let (status, _) = http_request(admin, "GET", "/backends", &[("Authorization", bad)], "");
        assert_eq!(status, 401, "{bad}");
    }
    let drain = r#"{"state":"drain"}"#;
    assert_eq!(patch(admin, "default", &addr, &[], drain).0, 401);

    assert_eq!(patch(admin, "nope", &addr, &auth, drain).0, 404);
    assert_eq!(patch(admin, "default", "127.0.0.1:1", &auth, drain).0, 404);
    for (body, says) in [
        ("{", "bad body"),
        (r#"{"state":"sleeping"}"#, "unknown variant"),
        (r#"{"weight":1001}"#, "between 0 and 1000"),
        (r#"{"weight":-1}"#, "bad body"),
        (r#"{"colour":"red"}"#, "unknown field"),
        ("{}", "nothing to change"),
    ] {
        let (status, answer) = patch(admin, "default", &addr, &auth, body);
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(answer.contains(says), "{body}: {answer}");
        assert_eq!(answer.trim_end().lines().count(), 1, "{body}: {answer}");
    }
    assert_eq!(entry_with(admin, &auth, &addr)["state"], "ready");

    let (status, answer) = patch(admin, "default", &addr, &auth, drain);
    assert_eq!(status, 200, "{answer}");
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["state"], "drain", "{answer}");
    assert_eq!(entry_with(admin, &auth, &addr)["state"], "drain");
    // An address may be written escaped, as a browser would.
    let escaped = addr.replace(':', "%3A");
    let (status, _) = patch(admin, "default", &escaped, &auth, r#"{"state":"ready"}"#);
    assert_eq!(status, 200);
    assert_eq!(entry_with(admin, &auth, &addr)["state"], "ready");
}

/// /backends read with `headers`, the entry at `addr`.
fn entry_with(admin: SocketAddr, headers: &[(&str, &str)], addr: &str) -> serde_json::Value {
    let (status, body) = http_request(admin, "GET", "/backends", headers, "");
    assert_eq!(status, 200, "{body}");
    let all: serde_json::Value = serde_json::from_str(&body).unwrap();
    all.as_array()
        .unwrap()
        .iter()
        .find(|b| b["address"] == addr)
        .cloned()
        .unwrap_or_else(|| panic!("{addr} not in {body}"))
}

#[test]
fn changes_need_a_token_off_loopback_and_an_empty_token_file_is_an_error() {
    let backend = Backend::tagged(0);
    let addr = backend.arg();
    // Listening on every address: not loopback, though the test connects
    // through 127.0.0.1.
    let lb = Ringlb::over(&addr).arg("--admin", "0.0.0.0:0").start();
    let admin = lb.admin_addr();
    let (status, answer) = patch(admin, "default", &addr, &[], r#"{"state":"drain"}"#);
    assert_eq!(status, 403, "{answer}");
    assert!(answer.contains("admin-token-file"), "{answer}");
    assert_eq!(http_get(admin, "/backends").0, 200, "reading stays open");
    drop(lb);

    let dir = TempDir::new("admin-token-empty");
    let empty = dir.write("token", " \n");
    let (status, out) = run_to_exit(&[
        "--listen",
        "127.0.0.1:0",
        "--backend",
        &addr,
        "--admin",
        "127.0.0.1:0",
        "--admin-token-file",
        empty.to_str().unwrap(),
    ]);
    assert!(!status.success(), "{out}");
    assert!(out.contains(empty.to_str().unwrap()), "{out}");
    assert!(out.contains("empty"), "{out}");
}

#[test]
fn runtime_state_survives_a_reload_for_the_backends_kept() {
    let backends = [Backend::tagged(0), Backend::tagged(1), Backend::tagged(2)];
    let [a, b, c] = [0, 1, 2].map(|i: usize| backends[i].arg());
    let dir = TempDir::new("runtime-reload");
    let config = |addrs: &[&str]| {
        let list: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
        format!(
            "admin = \"127.0.0.1:0\"\nworkers = 2\n\n[[frontend]]\nname = \"default\"\nlisten = \"127.0.0.1:0\"\nbackends = [{}]\n",
            list.join(", ")
        )
    };
    let path = dir.write("ringlb.toml", &config(&[&a, &b]));
    let lb = Ringlb::builder().config(&path).start();
    let admin = lb.admin_addr();
    patch_ok(admin, &a, r#"{"state":"drain"}"#);
    patch_ok(admin, &b, r#"{"weight":5}"#);

    // A changed pool: c added.
    dir.write("ringlb.toml", &config(&[&a, &b, &c]));
    lb.signal("HUP");
    wait_until("the reload lists c", || {
        listed(admin).iter().any(|e| e["address"] == c.as_str())
    });
    let (ea, eb, ec) = (entry(admin, &a), entry(admin, &b), entry(admin, &c));
    assert_eq!(ea["state"], "drain", "{ea}");
    assert_eq!(
        (&eb["state"], &eb["weight"]),
        (&"ready".into(), &5.into()),
        "{eb}"
    );
    assert_eq!(
        (&ec["state"], &ec["weight"]),
        (&"ready".into(), &1.into()),
        "{ec}"
    );
    let served: Vec<u8> = (0..30).map(|_| visit(&lb)).collect();
    assert!(
        !served.contains(&0),
        "a drained backend served after the reload: {served:?}"
    );
    assert!(served.contains(&2), "{served:?}");
}
