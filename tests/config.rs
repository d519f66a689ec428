//! The config file and live reload, through the real binary: two frontends
//! from one file, --check, reload under continuous traffic with no failed
//! connection, a bad reload that keeps the running config, frontends added
//! and removed, counters and health across reloads, the README's example config,
//! overlapping listen addresses, an unknown protocol, truncated files, and the
//! idle timeout's default.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;

use common::{echo_once, run_to_exit, wait_until, Backend, Ringlb, TempDir};

fn frontend(name: &str, listen: &str, backends: &[&Backend]) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|b| format!("\"{}\"", b.arg()))
        .collect();
    format!(
        "[[frontend]]\nname = \"{name}\"\nlisten = \"{listen}\"\nbackends = [{}]\n[frontend.health]\ninterval = \"100ms\"\n\n",
        list.join(", ")
    )
}

/// ringlb with two workers from `dir`'s ringlb.toml: one frontend `web` over
/// `backend`. Returns the file, ringlb and web's address.
fn web_over(dir: &TempDir, backend: &Backend) -> (PathBuf, Ringlb, SocketAddr) {
    let path = dir.write("ringlb.toml", &frontend("web", "127.0.0.1:0", &[backend]));
    let lb = Ringlb::builder().config(&path).workers(2).start();
    let addr = lb.frontend_addr("web");
    (path, lb, addr)
}

/// One echo exchange through `addr`; Err describes what failed.
fn exchange(addr: SocketAddr, msg: &[u8]) -> Result<(), String> {
    let mut conn = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    conn.set_read_timeout(Some(common::PATIENCE)).unwrap();
    conn.write_all(msg).map_err(|e| format!("write: {e}"))?;
    conn.shutdown(Shutdown::Write)
        .map_err(|e| format!("shutdown: {e}"))?;
    let mut got = Vec::new();
    conn.read_to_end(&mut got)
        .map_err(|e| format!("read: {e}"))?;
    if got == msg {
        Ok(())
    } else {
        Err(format!(
            "got {} bytes back instead of {}",
            got.len(),
            msg.len()
        ))
    }
}

#[test]
fn two_frontends_from_one_file() {
    let (a, b) = (Backend::echo(), Backend::echo());
    let dir = TempDir::new("two");
    let text = frontend("web", "127.0.0.1:0", &[&a]) + &frontend("api", "127.0.0.1:0", &[&b]);
    let path = dir.write("ringlb.toml", &text);
    let lb = Ringlb::builder().config(&path).workers(2).start();
    let (web, api) = (lb.frontend_addr("web"), lb.frontend_addr("api"));
    assert_ne!(web, api);
    exchange(web, b"to web").unwrap();
    exchange(api, b"to api").unwrap();
    assert_eq!((a.served(), b.served()), (1, 1));
}

#[test]
fn check_validates_and_names_the_bad_line() {
    let a = Backend::echo();
    let dir = TempDir::new("check");
    let good = dir.write("good.toml", &frontend("web", "127.0.0.1:0", &[&a]));
    let (status, out) = run_to_exit(&["--check", "--config", good.to_str().unwrap()]);
    assert!(status.success(), "{out}");
    assert!(out.contains("web"), "{out}");

    let bad = dir.write(
        "bad.toml",
        "[[frontend]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\nbackends = [\"127.0.0.1:9\"]\ncolour = \"red\"\n",
    );
    let (status, out) = run_to_exit(&["--check", "--config", bad.to_str().unwrap()]);
    assert_eq!(status.code(), Some(2), "{out}");
    assert_eq!(out.trim().lines().count(), 1, "{out}");
    assert!(
        out.contains("bad.toml:5") && out.contains("colour"),
        "{out}"
    );

    let (status, out) =
        run_to_exit(&["--config", bad.to_str().unwrap(), "--listen", "127.0.0.1:0"]);
    assert_eq!(status.code(), Some(2), "{out}");
}

#[test]
fn unknown_protocol_is_one_located_line() {
    let dir = TempDir::new("protocol");
    let bad = dir.write(
        "sctp.toml",
        "[[frontend]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"sctp\"\nbackends = [\"127.0.0.1:9\"]\n",
    );
    let (status, out) = run_to_exit(&["--config", bad.to_str().unwrap()]);
    assert_eq!(status.code(), Some(2), "{out}");
    assert_eq!(out.trim().lines().count(), 1, "{out}");
    assert!(
        out.contains("sctp.toml:4")
            && out.contains("frontend[0].protocol")
            && out.contains("'sctp'"),
        "{out}"
    );
}

#[test]
fn reload_under_traffic_fails_no_connection() {
    let (a, b) = (Backend::echo(), Backend::echo());
    let dir = TempDir::new("reload");
    let (path, lb, addr) = web_over(&dir, &a);

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (stop, done) = (stop.clone(), done.clone());
            thread::spawn(move || {
                let mut failures = Vec::new();
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let msg = format!("client {c} request {i}");
                    if let Err(e) = exchange(addr, msg.as_bytes()) {
                        failures.push(e);
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                    i += 1;
                }
                failures
            })
        })
        .collect();

    wait_until("traffic on a", || a.served() > 50);
    std::fs::write(&path, frontend("web", "127.0.0.1:0", &[&b])).unwrap();
    lb.signal("HUP");
    wait_until("traffic moved to b", || b.served() > 50);
    // Reload again, back to a, while the clients keep going.
    std::fs::write(&path, frontend("web", "127.0.0.1:0", &[&a, &b])).unwrap();
    let before = a.served();
    lb.signal("HUP");
    wait_until("traffic on a again", || a.served() > before + 50);
    stop.store(true, Ordering::SeqCst);
    let failures: Vec<String> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} connections failed: {:?}",
        failures.len(),
        done.load(Ordering::SeqCst),
        &failures[..failures.len().min(5)]
    );
    assert_eq!(
        lb.log().matches("config reloaded").count(),
        2,
        "{}",
        lb.log()
    );
}

#[test]
fn bad_reload_keeps_the_running_config() {
    let a = Backend::echo();
    let dir = TempDir::new("badreload");
    let path = dir.write("ringlb.toml", &frontend("web", "127.0.0.1:0", &[&a]));
    let lb = Ringlb::builder().config(&path).start();
    let addr = lb.frontend_addr("web");
    exchange(addr, b"before").unwrap();

    std::fs::write(&path, "[[frontend]]\nname = \"web\"\nlisten = 8080\n").unwrap();
    lb.signal("HUP");
    wait_until("reload rejected", || lb.log().contains("reload rejected"));
    assert!(lb.log().contains("ringlb.toml:3"), "{}", lb.log());
    exchange(addr, b"after").unwrap();
    assert_eq!(a.served(), 2);
}

#[test]
fn reload_adds_and_removes_frontends() {
    let (a, b) = (Backend::echo(), Backend::echo());
    let dir = TempDir::new("addremove");
    let (path, lb, web) = web_over(&dir, &a);

    std::fs::write(&path, frontend("api", "127.0.0.1:0", &[&b])).unwrap();
    lb.signal("HUP");
    let api = lb.frontend_addr("api");
    exchange(api, b"new frontend").unwrap();
    assert_eq!(b.served(), 1);
    // The removed frontend's listener is closed: its clients are refused.
    wait_until("web closed", || TcpStream::connect(web).is_err());
}

#[test]
fn readme_example_config_is_the_shipped_one_and_valid() {
    let readme = include_str!("../docs/configuration.md");
    let example = include_str!("../examples/ringlb.toml");
    let block = readme
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("docs/configuration.md has a ```toml block");
    assert_eq!(
        block, example,
        "docs/configuration.md's example differs from examples/ringlb.toml"
    );
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/ringlb.toml");
    let (status, out) = run_to_exit(&["--check", "--config", path]);
    assert!(status.success(), "{out}");
}

#[test]
fn reload_keeps_counters_while_the_pool_is_unchanged() {
    let (a, b) = (Backend::echo(), Backend::echo());
    let dir = TempDir::new("counters");
    let admin_line = "admin = \"127.0.0.1:0\"\n";
    let path = dir.write(
        "ringlb.toml",
        &(admin_line.to_string() + &frontend("web", "127.0.0.1:0", &[&a])),
    );
    let lb = Ringlb::builder().config(&path).start();
    let admin: SocketAddr = lb.admin_addr();
    let web = lb.frontend_addr("web");
    let total = || {
        common::metric(
            &common::http_get(admin, "/metrics").1,
            "ringlb_connections_total{frontend=\"web\"}",
        )
    };
    for _ in 0..3 {
        exchange(web, b"x").unwrap();
    }
    wait_until("3 counted", || total() == 3);

    // Same pool, another setting: the counters go on.
    let changed = frontend("web", "127.0.0.1:0", &[&a]).replacen(
        "[frontend.health]",
        "idle-timeout = \"1h\"\n[frontend.health]",
        1,
    );
    std::fs::write(&path, admin_line.to_string() + &changed).unwrap();
    lb.signal("HUP");
    wait_until("reloaded", || {
        lb.log().matches("config reloaded").count() == 1
    });
    exchange(web, b"y").unwrap();
    wait_until("4 counted", || total() == 4);

    // Another pool: a new generation of counters.
    std::fs::write(
        &path,
        admin_line.to_string() + &frontend("web", "127.0.0.1:0", &[&b]),
    )
    .unwrap();
    lb.signal("HUP");
    wait_until("reloaded again", || {
        lb.log().matches("config reloaded").count() == 2
    });
    exchange(web, b"z").unwrap();
    wait_until("1 counted afresh", || total() == 1);
    assert_eq!(b.served(), 1);
}

#[test]
fn reload_that_changes_the_pool_keeps_known_health() {
    let (a, b, x) = (Backend::echo(), Backend::echo(), Backend::echo());
    let x_addr = x.addr;
    let dir = TempDir::new("health-carry");
    let admin_line = "admin = \"127.0.0.1:0\"\n";
    let config = |backends: &[&Backend], interval: &str, fall: u32| {
        admin_line.to_string()
            + &frontend("web", "127.0.0.1:0", backends).replace(
                "interval = \"100ms\"",
                &format!("interval = \"{interval}\"\nfall = {fall}\nrise = 1"),
            )
    };
    let path = dir.write("ringlb.toml", &config(&[&x, &a], "50ms", 1));
    let lb = Ringlb::builder().config(&path).start();
    let admin: SocketAddr = lb.admin_addr();
    let up = |addr: &str| -> Option<bool> {
        let list: serde_json::Value =
            serde_json::from_str(&common::http_get(admin, "/backends").1).unwrap();
        list.as_array()?
            .iter()
            .find(|b| b["address"] == addr)
            .and_then(|b| b["up"].as_bool())
    };
    x.stop();
    wait_until("x marked down", || up(&x.arg()) == Some(false));

    // Another pool (b added), checks an hour apart and 3 failures to fall:
    // only the first check runs, and it cannot take x down by itself, so
    // whatever x shows comes from the carried-over state.
    std::fs::write(&path, config(&[&x, &a, &b], "1h", 3)).unwrap();
    lb.signal("HUP");
    wait_until("reloaded", || {
        lb.log().matches("config reloaded").count() == 1
    });
    assert_eq!(up(&b.arg()), Some(true), "a new backend starts up");
    assert_eq!(up(&a.arg()), Some(true), "a kept backend stays up");
    assert_eq!(up(&x.arg()), Some(false), "a kept backend stays down");
    for _ in 0..4 {
        exchange(lb.frontend_addr("web"), b"x").unwrap();
    }

    // The new prober knows x is down: with checks 50 ms apart again, x comes
    // back once it answers (a prober that believed it up would never flip it).
    std::fs::write(&path, config(&[&x, &a], "50ms", 3)).unwrap();
    lb.signal("HUP");
    wait_until("reloaded again", || {
        lb.log().matches("config reloaded").count() == 2
    });
    assert_eq!(
        up(&x.arg()),
        Some(false),
        "still down across the second reload"
    );
    let _x = Backend::echo_at(x_addr, None);
    wait_until("x back up", || up(&x.arg()) == Some(true));
}

#[test]
fn overlapping_listen_addresses_are_rejected() {
    let dir = TempDir::new("overlap");
    let port = common::free_port();
    let config = dir.write(
        "overlap.toml",
        &format!(
            "[[frontend]]\nname = \"a\"\nlisten = \"0.0.0.0:{port}\"\nbackends = [\"127.0.0.1:9\"]\n\n\
             [[frontend]]\nname = \"b\"\nlisten = \"127.0.0.1:{port}\"\nbackends = [\"127.0.0.1:9\"]\n"
        ),
    );
    let (status, err) = run_to_exit(&["--check", "--config", config.to_str().unwrap()]);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("0.0.0.0:{port}")) && err.contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
}

#[test]
fn every_truncation_of_a_config_has_a_reason() {
    let dir = TempDir::new("truncated");
    let full = "workers = 1\n[[frontend]]\nname = \"a\"\nlisten = \"127.0.0.1:0\"\nbackends = [\"127.0.0.1:9\"]\n";
    for end in 1..full.len() {
        let config = dir.write("live.toml", &full[..end]);
        let (status, err) = run_to_exit(&["--check", "--config", config.to_str().unwrap()]);
        if status.success() {
            continue;
        }
        // "ringlb: FILE:LINE: REASON"
        let rest = err.trim().strip_prefix("ringlb: ").unwrap_or(err.trim());
        let reason = rest.splitn(3, ':').nth(2).unwrap_or("");
        assert!(
            !reason.trim().is_empty(),
            "empty reason for {:?}: {err}",
            &full[..end]
        );
    }
}

#[test]
fn idle_timeout_has_a_default_and_accepts_never() {
    let (status, help) = run_to_exit(&["--help"]);
    assert!(status.success());
    let line = help
        .lines()
        .skip_while(|l| !l.contains("--idle-timeout"))
        .take(6)
        .collect::<Vec<_>>()
        .join(" ");
    assert!(line.contains("default: 10m"), "{line}");
    let backend = Backend::echo();
    let lb = Ringlb::over(&backend)
        .arg("--idle-timeout", "never")
        .start();
    assert_eq!(echo_once(&lb, b"hi").unwrap(), b"hi");
}

#[test]
fn reload_to_overlapping_listens_is_rejected() {
    let a = Backend::echo();
    let port = common::free_port();
    let dir = TempDir::new("overlap-reload");
    let web = frontend("web", &format!("127.0.0.1:{port}"), &[&a]);
    let path = dir.write("ringlb.toml", &web);
    let Ok(lb) = Ringlb::builder().config(&path).try_start() else {
        return; // The free port was taken meanwhile: nothing to test here.
    };
    let addr = lb.frontend_addr("web");
    let any = frontend("any", &format!("[::]:{port}"), &[&a]);
    std::fs::write(&path, format!("{web}\n{any}")).unwrap();
    lb.signal("HUP");
    wait_until("reload rejected", || lb.log().contains("reload rejected"));
    let log = lb.log();
    assert!(
        log.contains(&format!("127.0.0.1:{port}")) && log.contains(&format!("[::]:{port}")),
        "{log}"
    );
    exchange(addr, b"still served").unwrap();
}
