//! Health checks that speak the backend's protocol and agent checks, through
//! the real binary against real servers from Debian's packages (.ci/run
//! installs them): two redis-server instances in replication, where a
//! `role = "master"` frontend follows the primary through a failover; a
//! MariaDB and a PostgreSQL server, up (healthy), stopped (down), and a
//! service that is not MySQL on the MySQL port (down); and a small agent
//! server that says every word HAProxy's agent check knows, combined with
//! the admin endpoint's state. Every server runs on a free port in a
//! temporary directory and is stopped when its test ends, failed or not.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{
    free_port, http_get, http_request, tag_of, wait_until, Backend, Ringlb, TempDir, PATIENCE,
};

/// A server process of the test's own, stopped (SIGTERM, then SIGKILL)
/// when dropped, so a failing test leaves nothing running.
struct Server {
    what: &'static str,
    child: Option<Child>,
    /// Its output, shown when the test fails.
    log: PathBuf,
}

impl Server {
    /// Starts `cmd` (output to `log`), which must start listening on `port`.
    fn start(what: &'static str, mut cmd: Command, log: &Path, port: u16) -> Server {
        let file = std::fs::File::create(log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what} ({cmd:?}): {e}; .ci/run installs it"));
        let mut server = Server {
            what,
            child: Some(child),
            log: log.to_path_buf(),
        };
        wait_until(&format!("{what} listening on {port}"), || {
            if let Some(status) = server.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("{what} exited at start: {status}");
            }
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        server
    }

    /// Stops it with `signal` and waits for it to exit.
    fn stop_with(&mut self, signal: &str) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status();
        let deadline = Instant::now() + PATIENCE;
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                eprintln!("{} did not stop on SIG{signal}: killing it", self.what);
                let _ = child.kill();
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_with("TERM");
        if thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            eprintln!("{} log, last lines:\n{}", self.what, tail.join("\n"));
        }
    }
}

/// A program of a Debian package: on PATH, or in the package's directory.
fn program(name: &str, dirs: &[&str]) -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(dirs.iter().copied())
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} not found: .ci/run installs it (apt-get install redis-server mariadb-server postgresql)"))
}

/// PostgreSQL's own programs (initdb is not on PATH in Debian).
fn postgres_program(name: &str) -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    versions.sort();
    let dirs: Vec<&str> = versions.iter().rev().filter_map(|p| p.to_str()).collect();
    program(name, &dirs)
}

/// Whether this process runs as root (servers that refuse root then run as nobody).
fn is_root() -> bool {
    std::fs::metadata("/proc/self").unwrap().uid() == 0
}

/// nobody's uid and gid, from /etc/passwd.
fn nobody() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&"nobody")).then(|| (f[2].parse().unwrap(), f[3].parse().unwrap()))
        })
        .expect("a nobody user")
}

/// `cmd` as nobody when this process is root.
fn unprivileged(mut cmd: Command, dir: &Path) -> Command {
    if is_root() {
        let (uid, gid) = nobody();
        std::os::unix::fs::chown(dir, Some(uid), Some(gid)).unwrap();
        cmd.uid(uid).gid(gid);
    }
    cmd
}

/// A ringlb config with the admin endpoint, one worker, and `frontends`.
fn start_lb(dir: &TempDir, frontends: &str) -> Ringlb {
    let text = format!("workers = 1\nadmin = \"127.0.0.1:0\"\n{frontends}");
    let path = dir.write("ringlb.toml", &text);
    Ringlb::builder().config(&path).start()
}

/// The admin endpoint's /backends entry for `addr` (of frontend `frontend`).
fn backend(admin: SocketAddr, frontend: &str, addr: &str) -> serde_json::Value {
    let (status, body) = http_get(admin, "/backends");
    assert_eq!(status, 200, "{body}");
    let all: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    all.into_iter()
        .find(|b| b["frontend"] == frontend && b["address"] == addr)
        .unwrap_or_else(|| panic!("no backend {addr} of {frontend} in {body}"))
}

/// Waits until `addr`'s /backends entry satisfies `cond`; returns it.
fn wait_backend(
    admin: SocketAddr,
    frontend: &str,
    addr: &str,
    what: &str,
    cond: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let last = backend(admin, frontend, addr);
        if cond(&last) {
            return last;
        }
        assert!(Instant::now() < deadline, "{addr} never {what}: {last}");
        thread::sleep(Duration::from_millis(10));
    }
}

fn last_error(b: &serde_json::Value) -> String {
    b["last_error"].as_str().unwrap_or("").to_string()
}

/// Sends RESP `commands` then QUIT to `addr` and reads the answers to the end.
fn redis(addr: SocketAddr, commands: &str) -> std::io::Result<String> {
    let mut conn = TcpStream::connect(addr)?;
    conn.set_read_timeout(Some(PATIENCE))?;
    conn.write_all(format!("{commands}\r\nQUIT\r\n").as_bytes())?;
    let mut out = String::new();
    conn.read_to_string(&mut out)?;
    Ok(out)
}

/// Which redis server a connection through `lb` reached: its port, from
/// `CONFIG GET port`; `None` when the connection was closed unserved.
fn reached(lb: &Ringlb) -> Option<u16> {
    let answer = redis(lb.addr, "CONFIG GET port").ok()?;
    let lines: Vec<&str> = answer.split("\r\n").collect();
    lines.get(4)?.parse().ok()
}

fn redis_server(dir: &Path, port: u16, replica_of: Option<u16>) -> Server {
    std::fs::create_dir_all(dir).unwrap();
    let mut cmd = Command::new(program("redis-server", &["/usr/bin"]));
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .arg("--dir")
        .arg(dir);
    if let Some(primary) = replica_of {
        cmd.args(["--replicaof", "127.0.0.1", &primary.to_string()]);
    }
    Server::start("redis-server", cmd, &dir.join("log"), port)
}

/// Two redis servers, the second a replica of the first: a frontend with
/// `role = "master"` sends every connection to the primary, and after a
/// failover (REPLICAOF NO ONE on the replica, REPLICAOF on the old primary)
/// to the new one, within rise × interval (and one interval for the next
/// check to come, plus slack for a loaded machine).
#[test]
fn redis_role_master_follows_the_primary_through_a_failover() {
    let dir = TempDir::new("health-redis");
    let (p1, p2) = (free_port(), free_port());
    let _r1 = redis_server(&dir.0.join("r1"), p1, None);
    let _r2 = redis_server(&dir.0.join("r2"), p2, Some(p1));
    let (a1, a2) = (format!("127.0.0.1:{p1}"), format!("127.0.0.1:{p2}"));
    let (interval, rise) = (Duration::from_millis(300), 2u32);
    let lb = start_lb(
        &dir,
        &format!(
            r#"
[[frontend]]
name = "writes"
listen = "127.0.0.1:0"
backends = ["{a1}", "{a2}"]
[frontend.health]
interval = "{}ms"
timeout = "1s"
rise = {rise}
fall = 1
preset = "redis"
role = "master"
"#,
            interval.as_millis()
        ),
    );
    let admin = lb.admin_addr();
    let b2 = wait_backend(admin, "writes", &a2, "down as a replica", |b| {
        b["up"] == false
    });
    assert_eq!(last_error(&b2), "check: role is slave, not master");
    assert_eq!(backend(admin, "writes", &a1)["up"], true);
    for _ in 0..20 {
        assert_eq!(reached(&lb), Some(p1), "every connection to the primary");
    }

    let ok = |answer: std::io::Result<String>| assert!(answer.unwrap().starts_with("+OK"));
    ok(redis(a2.parse().unwrap(), "REPLICAOF NO ONE"));
    ok(redis(
        a1.parse().unwrap(),
        &format!("REPLICAOF 127.0.0.1 {p2}"),
    ));
    let failover = Instant::now();
    // Followed: ten connections in a row reach the new primary.
    let mut in_a_row = 0;
    wait_until("traffic to follow the new primary", || {
        match reached(&lb) {
            Some(port) if port == p2 => in_a_row += 1,
            _ => in_a_row = 0,
        }
        in_a_row >= 10
    });
    let took = failover.elapsed();
    let b1 = wait_backend(admin, "writes", &a1, "down as a replica", |b| {
        b["up"] == false
    });
    assert_eq!(last_error(&b1), "check: role is slave, not master");
    for _ in 0..20 {
        assert_eq!(
            reached(&lb),
            Some(p2),
            "every connection to the new primary"
        );
    }
    let bound = interval * (rise + 1) + Duration::from_secs(1);
    eprintln!(
        "traffic followed the new primary {took:?} after the failover (rise x interval = {:?})",
        interval * rise
    );
    assert!(
        took <= bound,
        "followed after {took:?}, more than {bound:?}"
    );
}

/// A MariaDB server on `port` with data in `dir` (no system tables, no
/// grants: the check reads only the server's handshake).
fn mariadb(dir: &Path, port: u16) -> Server {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut cmd = Command::new(program("mariadbd", &["/usr/sbin"]));
    cmd.arg("--no-defaults")
        .arg(format!("--datadir={}", data.display()))
        .arg(format!("--socket={}", dir.join("sock").display()))
        .arg(format!("--pid-file={}", dir.join("pid").display()))
        .arg(format!("--port={port}"))
        .args([
            "--bind-address=127.0.0.1",
            "--skip-grant-tables",
            "--skip-name-resolve",
        ])
        .args(["--innodb-buffer-pool-size=16M", "--innodb-log-file-size=4M"]);
    if is_root() {
        cmd.arg("--user=root");
    }
    Server::start("mariadbd", cmd, &dir.join("log"), port)
}

/// A PostgreSQL server on `port`, its cluster made in `dir` (as nobody
/// when run as root: postgres refuses root).
fn postgres(dir: &Path, port: u16) -> Server {
    std::fs::create_dir_all(dir).unwrap();
    let data = dir.join("data");
    let mut initdb = Command::new(postgres_program("initdb"));
    initdb
        .arg("-D")
        .arg(&data)
        .args([
            "--no-sync",
            "--auth=trust",
            "--username=test",
            "--no-instructions",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let out = unprivileged(initdb, dir).output().unwrap();
    assert!(
        out.status.success(),
        "initdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut cmd = Command::new(postgres_program("postgres"));
    cmd.arg("-D")
        .arg(&data)
        .args(["-p", &port.to_string()])
        // TCP only: no Unix socket (its directory list is comma-separated,
        // and the temporary directory's name may hold a comma).
        .args([
            "-c",
            "unix_socket_directories=",
            "-c",
            "listen_addresses=127.0.0.1",
        ])
        .args(["-c", "fsync=off"]);
    Server::start("postgres", unprivileged(cmd, dir), &dir.join("log"), port)
}

/// A service that is not MySQL: it greets as an SSH server would.
fn ssh_like(port: u16) -> Backend {
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    Backend::spawn_on(listener, |mut conn| {
        let _ = conn.write_all(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n");
        let _ = conn.read(&mut [0; 64]);
    })
}

/// A real MariaDB and a real PostgreSQL: down before they start, up once
/// they answer their protocol's check (for MariaDB, also with a login as
/// `mysql-user`), down once stopped; a mysql check
/// fails on a service that is not MySQL (one that greets otherwise, and a
/// PostgreSQL server, which waits for the client to speak first).
#[test]
fn mysql_and_postgres_checks_against_real_servers() {
    let dir = TempDir::new("health-db");
    let (my_port, pg_port) = (free_port(), free_port());
    let (my, pg) = (
        format!("127.0.0.1:{my_port}"),
        format!("127.0.0.1:{pg_port}"),
    );
    let health = |preset: &str| {
        format!("[frontend.health]\ninterval = \"100ms\"\ntimeout = \"500ms\"\nrise = 1\nfall = 1\npreset = \"{preset}\"\n")
    };
    let lb = start_lb(
        &dir,
        &format!(
            "[[frontend]]\nname = \"mysql\"\nlisten = \"127.0.0.1:0\"\nbackends = [\"{my}\"]\n{}\n\
             [[frontend]]\nname = \"pg\"\nlisten = \"127.0.0.1:0\"\nbackends = [\"{pg}\"]\n{}\n\
             [[frontend]]\nname = \"mysql-on-pg\"\nlisten = \"127.0.0.1:0\"\nbackends = [\"{pg}\"]\n{}\n\
             [[frontend]]\nname = \"mysql-login\"\nlisten = \"127.0.0.1:0\"\nbackends = [\"{my}\"]\n{}\
             mysql-user = \"ringlb\"\n",
            health("mysql"),
            health("postgres"),
            health("mysql"),
            health("mysql"),
        ),
    );
    let admin = lb.admin_addr();
    for (fe, addr) in [("mysql", &my), ("pg", &pg)] {
        wait_backend(admin, fe, addr, "down before its server starts", |b| {
            b["up"] == false
        });
    }
    // Both servers start at once: their start-up is most of this test's time.
    let started = Instant::now();
    let (my_dir, pg_dir) = (dir.0.join("mariadb"), dir.0.join("postgres"));
    let pg_thread = thread::spawn(move || postgres(&pg_dir, pg_port));
    let mut mariadb = mariadb(&my_dir, my_port);
    let mut postgres = pg_thread.join().unwrap();
    eprintln!("MariaDB and PostgreSQL started in {:?}", started.elapsed());

    wait_backend(admin, "mysql", &my, "up", |b| b["up"] == true);
    // Up only on an OK packet: MariaDB took the login (a malformed one is
    // answered with an error).
    wait_backend(admin, "mysql-login", &my, "up", |b| b["up"] == true);
    wait_backend(admin, "pg", &pg, "up", |b| b["up"] == true);
    let on_pg = wait_backend(admin, "mysql-on-pg", &pg, "failing the mysql check", |b| {
        last_error(b).contains("no answer within")
    });
    assert_eq!(on_pg["up"], false, "{on_pg}");
    // Through the proxy, a client gets MariaDB's handshake.
    let mysql_fe = lb.frontend_addr("mysql");
    let mut client = TcpStream::connect(mysql_fe).unwrap();
    client.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut head = [0u8; 5];
    client.read_exact(&mut head).unwrap();
    assert_eq!(head[4], 10, "protocol 10");
    drop(client);

    // Down once stopped (a check during the shutdown may fail otherwise
    // first, a reset for one; then connects are refused).
    mariadb.stop_with("TERM");
    wait_backend(admin, "mysql", &my, "down, refused", |b| {
        b["up"] == false && last_error(b).contains("refused")
    });
    wait_backend(admin, "mysql-login", &my, "down", |b| b["up"] == false);
    let _ssh = ssh_like(my_port);
    let down = wait_backend(admin, "mysql", &my, "failing on SSH", |b| {
        last_error(b).contains("not a MySQL handshake")
    });
    assert_eq!(down["up"], false, "{down}");

    postgres.stop_with("INT");
    wait_backend(admin, "pg", &pg, "down, refused", |b| {
        b["up"] == false && last_error(b).contains("refused")
    });
}

/// An agent on `ip`'s `port`, answering each connection with its current line.
struct Agent {
    line: Arc<Mutex<String>>,
    asked: Arc<AtomicUsize>,
    /// What the last check sent before reading the answer (agent-send).
    heard: Arc<Mutex<Vec<u8>>>,
    _server: Backend,
}

impl Agent {
    fn on(listener: TcpListener) -> Agent {
        let line = Arc::new(Mutex::new("up ready 100%".to_string()));
        let asked = Arc::new(AtomicUsize::new(0));
        let heard = Arc::new(Mutex::new(Vec::new()));
        let (said, count, got) = (line.clone(), asked.clone(), heard.clone());
        let server = Backend::spawn_on(listener, move |mut conn| {
            let mut sent = Vec::new();
            let mut byte = [0u8; 1];
            while !sent.ends_with(b"\n") && conn.read(&mut byte).unwrap_or(0) == 1 {
                sent.push(byte[0]);
            }
            *got.lock().unwrap() = sent;
            let text = format!("{}\n", said.lock().unwrap());
            let _ = conn.write_all(text.as_bytes());
            let _ = conn.shutdown(Shutdown::Write);
            count.fetch_add(1, Ordering::SeqCst);
        });
        Agent {
            line,
            asked,
            heard,
            _server: server,
        }
    }

    fn say(&self, line: &str) {
        *self.line.lock().unwrap() = line.to_string();
    }

    /// Waits until it was asked `n` more times.
    fn asked_again(&self, n: usize) {
        let from = self.asked.load(Ordering::SeqCst);
        wait_until("the agent to be asked again", || {
            self.asked.load(Ordering::SeqCst) >= from + n
        });
    }
}

/// A listener on `127.0.0.2:P` and one on `127.0.0.3:P`: one port for the
/// agents of two backends on two addresses.
fn agent_listeners() -> (TcpListener, TcpListener) {
    for _ in 0..100 {
        let a = TcpListener::bind("127.0.0.2:0").unwrap();
        let port = a.local_addr().unwrap().port();
        if let Ok(b) = TcpListener::bind(("127.0.0.3", port)) {
            return (a, b);
        }
    }
    panic!("no port free on both 127.0.0.2 and 127.0.0.3");
}

/// Which backends `n` connections through `lb` reach: (to A, to B).
fn visits(lb: &Ringlb, n: usize) -> (usize, usize) {
    let mut counts = (0, 0);
    for _ in 0..n {
        let (tag, _conn) = tag_of(lb.connect());
        match tag {
            1 => counts.0 += 1,
            2 => counts.1 += 1,
            t => panic!("tag {t}"),
        }
    }
    counts
}

/// A small agent server says every word in turn: weights, drain, maint,
/// down and up take effect, and combine with the admin endpoint's state as
/// docs/operations.md says: each side undoes only its own, the stricter
/// wins, and the agent's share applies to the admin weight.
#[test]
fn agent_checks_take_effect_and_combine_with_the_admin_state() {
    let dir = TempDir::new("health-agent");
    let a = Backend::echo_at("127.0.0.2:0".parse().unwrap(), Some(1));
    let b = Backend::echo_at("127.0.0.3:0".parse().unwrap(), Some(2));
    let (la, lb_) = agent_listeners();
    let port = la.local_addr().unwrap().port();
    let (agent_a, agent_b) = (Agent::on(la), Agent::on(lb_));
    let lb = start_lb(
        &dir,
        &format!(
            r#"
[[frontend]]
name = "web"
listen = "127.0.0.1:0"
backends = [{{ addr = "{a}", weight = 4 }}, {{ addr = "{b}", weight = 4 }}]
[frontend.health]
interval = "100ms"
timeout = "1s"
rise = 1
fall = 1
agent-port = {port}
agent-interval = "50ms"
agent-send = "web pool\n"
"#
        ),
    );
    let admin = lb.admin_addr();
    let addr_a = a.addr.to_string();
    // Waits until A's agent view (health, state, percent) is as given.
    let agent_is = |health: &str, state: &str, percent: u64| {
        wait_backend(
            admin,
            "web",
            &addr_a,
            &format!("agent {health} {state} {percent}%"),
            |e| {
                e["agent"]["health"] == health
                    && e["agent"]["state"] == state
                    && e["agent"]["weight_percent"] == percent
            },
        )
    };
    let patch = |body: &str| {
        let path = format!("/frontends/web/backends/{addr_a}");
        let (status, answer) = http_request(admin, "PATCH", &path, &[], body);
        assert_eq!(status, 200, "{answer}");
    };
    agent_is("up", "ready", 100);
    assert_eq!(agent_a.heard.lock().unwrap().as_slice(), b"web pool\n");
    wait_backend(admin, "web", &b.addr.to_string(), "agent seen", |e| {
        e["agent"]["state"] == "ready"
    });
    assert_eq!(visits(&lb, 10), (5, 5));

    // A weight share: 75% of 4 against 4, exact over whole rounds of 7.
    agent_a.say("75%");
    let e = agent_is("up", "ready", 75);
    assert_eq!(e["effective_weight"].as_f64(), Some(3.0), "75% of 4");
    assert_eq!(visits(&lb, 14), (6, 8));
    // ... of the admin weight: 50% of 8 is B's 4.
    agent_a.say("50%");
    agent_is("up", "ready", 50);
    patch(r#"{"weight": 8}"#);
    assert_eq!(visits(&lb, 10), (5, 5));
    patch(r#"{"weight": 4}"#);
    agent_a.say("0%");
    agent_is("up", "ready", 0);
    assert_eq!(visits(&lb, 6), (0, 6), "0% takes no new connection");
    agent_a.say("100%");
    agent_is("up", "ready", 100);
    assert_eq!(visits(&lb, 10), (5, 5));

    // Drain from the agent holds against the operator's ready.
    agent_a.say("drain");
    let e = agent_is("up", "drain", 100);
    assert_eq!(e["state"], "ready", "the operator's state is its own");
    assert_eq!(visits(&lb, 6), (0, 6));
    patch(r#"{"state": "ready"}"#);
    assert_eq!(
        visits(&lb, 6),
        (0, 6),
        "the operator's ready leaves the agent's drain"
    );
    agent_a.say("ready");
    agent_is("up", "ready", 100);
    assert_eq!(visits(&lb, 10), (5, 5));

    // Maint from the operator holds against the agent's ready.
    patch(r#"{"state": "maint"}"#);
    agent_a.asked_again(2);
    assert_eq!(
        visits(&lb, 6),
        (0, 6),
        "the agent's ready leaves the operator's maint"
    );
    patch(r#"{"state": "ready"}"#);
    assert_eq!(visits(&lb, 10), (5, 5));

    // Maint from the agent: no traffic and no health checks, only agent checks.
    agent_a.say("maint");
    agent_is("up", "maint", 100);
    assert_eq!(visits(&lb, 6), (0, 6));
    let checked = a.accepted();
    agent_a.asked_again(5);
    assert_eq!(a.accepted(), checked, "no health check while in maint");
    agent_a.say("ready");
    agent_is("up", "ready", 100);
    assert_eq!(visits(&lb, 10), (5, 5));

    // Down from the agent, whatever the health checks say; up gives them back.
    agent_a.say("down #disk full");
    let e = agent_is("down", "ready", 100);
    assert_eq!(e["up"], false);
    assert_eq!(last_error(&e), "agent: down: disk full");
    assert_eq!(visits(&lb, 6), (0, 6));
    agent_a.say("up");
    agent_is("up", "ready", 100);
    wait_backend(admin, "web", &addr_a, "up", |e| e["up"] == true);
    assert_eq!(visits(&lb, 10), (5, 5));

    // An unknown word changes nothing and is the last error.
    agent_a.say("sideways");
    wait_backend(admin, "web", &addr_a, "an agent error", |e| {
        last_error(e).contains("unknown word 'sideways'")
    });
    assert_eq!(visits(&lb, 10), (5, 5));
    agent_b.asked_again(1);
}

/// Reads an HTTP request head from `conn` (up to its blank line).
fn read_head(conn: &mut TcpStream) -> Vec<u8> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap_or(0) == 1 {
        head.push(byte[0]);
    }
    head
}

/// The `http` preset follows a backend's status code, `send`/`expect`
/// steps pass on the answer they wait for, and backends that answer
/// nothing, or send without end, fail their checks within the timeout
/// and the 64 KiB read bound, round after round, without the prober
/// keeping their sockets.
#[test]
fn http_and_steps_checks_and_backends_that_never_answer_right() {
    let dir = TempDir::new("health-steps");
    let status = Arc::new(AtomicUsize::new(200));
    let paths = Arc::new(Mutex::new(Vec::<String>::new()));
    let (code, seen) = (status.clone(), paths.clone());
    let web = Backend::spawn(move |mut conn| {
        let head = String::from_utf8_lossy(&read_head(&mut conn)).into_owned();
        seen.lock()
            .unwrap()
            .push(head.lines().next().unwrap_or("").to_string());
        let code = code.load(Ordering::SeqCst);
        let _ = write!(
            conn,
            "HTTP/1.1 {code} Whatever\r\nContent-Length: 0\r\n\r\n"
        );
    });
    let good = Backend::spawn(|mut conn| {
        let mut hello = [0u8; 7];
        if conn.read_exact(&mut hello).is_ok() && &hello == b"HELLO\r\n" {
            let _ = conn.write_all(b"+OK v2.1 ready\r\n");
        }
        let _ = conn.read(&mut [0; 16]);
    });
    let flood = Backend::spawn(|mut conn| {
        let chunk = [b'x'; 16 * 1024];
        while conn.write_all(&chunk).is_ok() {}
    });
    let silent = Backend::spawn(|mut conn| {
        let _ = conn.read_to_end(&mut Vec::new());
    });
    let lb = start_lb(
        &dir,
        &format!(
            r#"
[[frontend]]
name = "web"
listen = "127.0.0.1:0"
backends = ["{web}"]
[frontend.health]
interval = "100ms"
timeout = "500ms"
rise = 1
fall = 1
preset = "http"
http-path = "/healthz?deep=1"
http-status = "200-299"

[[frontend]]
name = "steps"
listen = "127.0.0.1:0"
backends = ["{good}", "{flood}", "{silent}"]
[frontend.health]
interval = "100ms"
timeout = "300ms"
rise = 1
fall = 1
[[frontend.health.steps]]
send = "HELLO\r\n"
expect-regex = "\\+OK v\\d+\\.\\d+"
[[frontend.health.steps]]
expect-hex = "72 65 61 64 79"
"#
        ),
    );
    let admin = lb.admin_addr();
    let web_addr = web.addr.to_string();
    wait_until("a check of the web backend", || {
        !paths.lock().unwrap().is_empty()
    });
    assert_eq!(paths.lock().unwrap()[0], "GET /healthz?deep=1 HTTP/1.1");
    assert_eq!(backend(admin, "web", &web_addr)["up"], true);
    status.store(503, Ordering::SeqCst);
    let down = wait_backend(admin, "web", &web_addr, "down on 503", |b| b["up"] == false);
    assert_eq!(
        last_error(&down),
        "check: HTTP status 503, not within 200-299"
    );
    status.store(204, Ordering::SeqCst);
    wait_backend(admin, "web", &web_addr, "up on 204", |b| b["up"] == true);
    // A reload that changes the check: the new one runs from then on.
    let path = dir.0.join("ringlb.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("\"200-299\"", "\"200-203\"")).unwrap();
    lb.signal("HUP");
    let down = wait_backend(admin, "web", &web_addr, "down after the reload", |b| {
        b["up"] == false
    });
    assert_eq!(
        last_error(&down),
        "check: HTTP status 204, not within 200-203"
    );

    let flooded = wait_backend(admin, "steps", &flood.addr.to_string(), "failing", |b| {
        b["up"] == false && last_error(b).contains("65536 bytes read without")
    });
    assert!(
        last_error(&flooded).starts_with("check: step 1: expected a match of /"),
        "{flooded}"
    );
    wait_backend(admin, "steps", &silent.addr.to_string(), "failing", |b| {
        b["up"] == false && last_error(b) == "check: no answer within 300ms"
    });
    // (A check slowed past the timeout on a loaded machine may have taken
    // it down once: it passes again at the next.)
    let good_addr = good.addr.to_string();
    wait_backend(admin, "steps", &good_addr, "up", |b| b["up"] == true);

    // Round after round, the failed checks leave no socket behind.
    let (silent_from, flood_from) = (silent.accepted(), flood.accepted());
    let fds = common::fd_count(lb.pid());
    wait_until("five more rounds", || {
        silent.accepted() >= silent_from + 5 && flood.accepted() >= flood_from + 5
    });
    let now = common::fd_count(lb.pid());
    assert!(now <= fds + 6, "descriptors grew from {fds} to {now}");
    wait_backend(admin, "steps", &good_addr, "up", |b| b["up"] == true);
}
