//! The stats page at `GET /` and its snapshot `GET /stats.json`: the
//! snapshot carries what the page shows, and the page, rendered by a real
//! headless Chromium against a running ringlb (two frontends, one backend
//! down, some traffic), shows every backend, its health and non-zero
//! counters after its own refresh.
//!
//! Set `RINGLB_STATS_SCREENSHOT=PATH` to also save a PNG of the page there
//! (that is how docs/stats.png is made).

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::{http_get, read_to_end, wait_until, Backend, Refused, Ringlb, TempDir, PATIENCE};

/// ringlb with two frontends: `web` over an echo backend and a refused one
/// (taken down by its health checks; [`setup`] returns once it is down),
/// `db` over another echo backend.
struct Setup {
    lb: Ringlb,
    web: [String; 2],
    db: String,
    _backends: (Backend, Backend, Refused),
    _dir: TempDir,
}

fn setup() -> Setup {
    let (echo, down, other) = (Backend::echo(), Refused::new(), Backend::echo());
    let dir = TempDir::new("stats");
    let config = format!(
        r#"admin = "127.0.0.1:0"
workers = 2

[[frontend]]
name = "web"
listen = "127.0.0.1:0"
balance = "least-conn"
backends = [{{ addr = "{}", weight = 3, max-conns = 50 }}, "{}"]
[frontend.health]
interval = "100ms"
fall = 1

[[frontend]]
name = "db"
listen = "127.0.0.1:0"
backends = ["{}"]
"#,
        echo.arg(),
        down.arg(),
        other.arg()
    );
    let lb = Ringlb::builder()
        .config(&dir.write("ringlb.toml", &config))
        .start();
    let admin = lb.admin_addr();
    wait_until("the refused backend down", || {
        backend_down(admin, &down.arg())
    });
    Setup {
        web: [echo.arg(), down.arg()],
        db: other.arg(),
        lb,
        _backends: (echo, other, down),
        _dir: dir,
    }
}

/// Sends `n` messages of `len` bytes through `frontend`, each on its own connection.
fn traffic(frontend: SocketAddr, n: usize, len: usize) {
    for _ in 0..n {
        let msg = vec![b'x'; len];
        let mut conn = common::client(frontend);
        conn.write_all(&msg).unwrap();
        conn.shutdown(Shutdown::Write).unwrap();
        assert_eq!(read_to_end(&mut conn), msg);
    }
}

fn stats(admin: SocketAddr) -> serde_json::Value {
    let (status, body) = http_get(admin, "/stats.json");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

fn backend_down(admin: SocketAddr, addr: &str) -> bool {
    stats(admin)["frontends"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .any(|b| b["address"] == addr && b["up"] == false)
}

#[test]
fn the_snapshot_has_what_the_page_shows() {
    let s = setup();
    let admin = s.lb.admin_addr();
    traffic(s.lb.frontend_addr("web"), 4, 1000);
    traffic(s.lb.frontend_addr("db"), 2, 10);

    let first = stats(admin);
    let web = &first["frontends"][0];
    assert_eq!(web["name"], "web", "{first}");
    assert_eq!(
        web["listen"],
        s.lb.frontend_addr("web").to_string(),
        "{first}"
    );
    assert_eq!(web["algorithm"], "least-conn", "{first}");
    assert_eq!(web["connections_total"], 4, "{first}");
    assert_eq!(web["bytes_in"], 4000, "{first}");
    assert_eq!(web["bytes_out"], 4000, "{first}");
    assert_eq!(web["queued"], 0, "{first}");
    assert_eq!(web["max_queue"], 4096, "{first}");
    assert_eq!(web["queue_timeouts"], 0, "{first}");
    let up = &web["backends"][0];
    assert_eq!(up["address"], s.web[0].as_str(), "{first}");
    assert_eq!(up["up"], true, "{first}");
    assert_eq!(up["weight"], 3, "{first}");
    assert_eq!(up["max_conns"], 50, "{first}");
    assert_eq!(up["connections_total"], 4, "{first}");
    assert_eq!(up["bytes_out"], 4000, "{first}");
    let down = &web["backends"][1];
    assert_eq!(down["up"], false, "{first}");
    assert_eq!(down["connections_total"], 0, "{first}");
    assert!(
        down["since_change_s"].is_u64(),
        "went down, so it changed: {first}"
    );
    let error = down["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("refused"), "the last check's error: {first}");
    assert!(up["since_change_s"].is_null(), "never changed: {first}");
    assert!(up["last_error"].is_null(), "{first}");
    let db = &first["frontends"][1];
    assert_eq!(db["name"], "db", "{first}");
    assert_eq!(db["algorithm"], "round-robin", "{first}");
    assert_eq!(db["backends"][0]["address"], s.db.as_str(), "{first}");
    assert_eq!(db["connections_total"], 2, "{first}");

    // Sample times come from the server's monotonic clock, for the rates.
    let started = Instant::now();
    let mut second = stats(admin);
    while second["sampled_ms"] == first["sampled_ms"] {
        assert!(started.elapsed() < PATIENCE);
        thread::sleep(Duration::from_millis(5));
        second = stats(admin);
    }
    assert!(
        second["sampled_ms"].as_u64() > first["sampled_ms"].as_u64(),
        "{first} {second}"
    );

    let (status, page) = http_get(admin, "/");
    assert_eq!(status, 200);
    assert!(page.starts_with("<!DOCTYPE html>"), "{page}");
    // /backends keeps its fields for the tools that read it.
    let (_, backends) = http_get(admin, "/backends");
    let backends: serde_json::Value = serde_json::from_str(&backends).unwrap();
    assert_eq!(backends[0]["address"], s.web[0].as_str(), "{backends}");
    assert_eq!(backends[0]["connections_total"], 4, "{backends}");
}

/// Runs headless Chromium with `args` and `url` last; returns its stdout.
fn chromium(args: &[&str], url: &str) -> String {
    let profile = TempDir::new("chromium");
    let profile_arg = format!("--user-data-dir={}", profile.0.display());
    let mut child = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            &profile_arg,
        ])
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chromium (Debian package chromium; .ci/run installs it)");
    let mut stdout = child.stdout.take().unwrap();
    let reader = thread::spawn(move || {
        let mut out = String::new();
        stdout.read_to_string(&mut out).unwrap();
        out
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium {args:?} did not finish");
        }
        thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "chromium {args:?}: {status}: {stderr}");
    reader.join().unwrap()
}

/// The `<tr>` of backend `addr` in the dumped DOM.
fn backend_row<'a>(dom: &'a str, addr: &str) -> &'a str {
    let start = dom
        .find(&format!("data-address=\"{addr}\""))
        .unwrap_or_else(|| panic!("no row for {addr} in:\n{dom}"));
    let row_start = dom[..start].rfind("<tr").unwrap();
    let row_end = start + dom[start..].find("</tr>").unwrap();
    &dom[row_start..row_end]
}

/// The text of the cell with `data-key="key"` in `html`.
fn cell<'a>(html: &'a str, key: &str) -> &'a str {
    let at = html
        .find(&format!("data-key=\"{key}\""))
        .unwrap_or_else(|| panic!("no {key} cell in:\n{html}"));
    let text = &html[at + html[at..].find('>').unwrap() + 1..];
    &text[..text.find("</td>").unwrap()]
}

#[test]
fn the_page_shows_backends_health_and_counters_in_a_real_browser() {
    let s = setup();
    let admin = s.lb.admin_addr();
    let (web, db) = (s.lb.frontend_addr("web"), s.lb.frontend_addr("db"));
    traffic(web, 6, 5000);
    traffic(db, 3, 100);
    // Traffic while the page samples, so its rates have something to show.
    let busy = thread::spawn(move || {
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until {
            traffic(web, 1, 20_000);
            thread::sleep(Duration::from_millis(20));
        }
    });
    let url = format!("http://{admin}/");
    // Virtual time runs the page's 2 s timer without waiting for it.
    let dom = chromium(&["--virtual-time-budget=5000", "--dump-dom"], &url);
    busy.join().unwrap();

    // Refreshed at least once: the first sample draws the tables.
    let samples: u32 = dom
        .split("data-samples=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no sample drawn:\n{dom}"));
    assert!(samples >= 2, "{samples} samples:\n{dom}");

    for name in ["web", "db"] {
        assert!(
            dom.contains(&format!("data-frontend=\"{name}\"")),
            "{name}:\n{dom}"
        );
    }
    assert!(dom.contains(&web.to_string()), "{dom}");
    assert!(dom.contains("least-conn"), "{dom}");

    let up = backend_row(&dom, &s.web[0]);
    assert!(up.contains("class=\"backend up\""), "{up}");
    assert_eq!(cell(up, "health"), "UP", "{up}");
    assert_eq!(cell(up, "weight"), "3", "{up}");
    // The admin endpoint is on loopback: the page offers to drain it.
    let state = cell(up, "state");
    assert!(
        state.starts_with("ready ") && state.contains("data-to=\"drain\""),
        "{up}"
    );
    assert!(cell(up, "active").ends_with("/ 50"), "{up}");
    let total: u64 = cell(up, "connections_total").parse().unwrap();
    assert!(total >= 6, "{up}");
    assert_ne!(cell(up, "bytes_in"), "0 B", "{up}");

    let down = backend_row(&dom, &s.web[1]);
    assert!(down.contains("class=\"backend down\""), "{down}");
    assert_eq!(cell(down, "health"), "DOWN", "{down}");
    assert!(cell(down, "since").ends_with(" s"), "{down}");
    assert!(cell(down, "last_error").contains("refused"), "{down}");

    let db_row = backend_row(&dom, &s.db);
    assert_eq!(cell(db_row, "connections_total"), "3", "{db_row}");

    // Frontend rates come from two samples: a number, never a dash, by now.
    let web_table = &dom[dom.find("data-frontend=\"web\"").unwrap()..];
    let rate = cell(web_table, "conn_rate");
    assert!(rate.parse::<f64>().is_ok(), "conn/s {rate:?}:\n{web_table}");
    assert!(
        cell(web_table, "bytes_in_rate").ends_with("/s"),
        "{web_table}"
    );
    // The queue at max-conns: none waits, none ever did (tests/queue.rs
    // fills it).
    assert_eq!(cell(web_table, "queued"), "0 / 4096", "{web_table}");
    assert_eq!(cell(web_table, "queue_timeouts"), "0", "{web_table}");
    assert!(
        cell(web_table, "queue_wait").contains('\u{2013}'),
        "no wait yet: a dash, {web_table}"
    );

    if let Ok(path) = std::env::var("RINGLB_STATS_SCREENSHOT") {
        // Real time here (not virtual), with traffic flowing, so the rates
        // in the picture are over a real 2 s interval: see scripts/screenshot.py.
        let busy = thread::spawn(move || {
            let until = Instant::now() + Duration::from_secs(8);
            while Instant::now() < until {
                traffic(web, 1, 200_000);
                traffic(db, 1, 3_000);
                thread::sleep(Duration::from_millis(10));
            }
        });
        let path = Path::new(&path)
            .canonicalize()
            .unwrap_or_else(|_| path.into());
        let status = Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/scripts/screenshot.py"
            ))
            .args([url.as_str(), path.to_str().unwrap(), "5"])
            .status()
            .unwrap();
        assert!(status.success(), "screenshot.py: {status}");
        busy.join().unwrap();
        assert!(path.exists(), "{}", path.display());
    }
}
