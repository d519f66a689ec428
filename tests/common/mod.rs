//! Shared by every integration test: spawn the real `ringlb` binary on a free
//! port, real backends on loopback, and small helpers for bytes and polling.
#![allow(dead_code)] // each test file uses its own subset

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Upper bound for anything a test waits on; only reached when something is broken.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_ringlb")
}

/// A running ringlb, killed on drop.
pub struct Ringlb {
    child: Child,
    /// Where its first frontend listens (from its ready file).
    pub addr: SocketAddr,
    /// The `--ready-file` it writes its bound addresses to.
    ready: std::path::PathBuf,
    log: Arc<Mutex<String>>,
    /// Set once the log reader saw the end of stderr (the process exited).
    log_done: Arc<AtomicBool>,
}

impl Ringlb {
    /// A [`Start`] with no arguments yet: state what the test needs, then
    /// [`Start::start`]. ringlb's own defaults apply to everything not stated.
    pub fn builder() -> Start {
        Start::default()
    }

    /// A [`Start`] with `--backend to` (see [`Start::backend`]), the most
    /// common beginning.
    pub fn over(to: impl std::fmt::Display) -> Start {
        Ringlb::builder().backend(to)
    }

    /// Starts ringlb with `args` plus `--listen 127.0.0.1:0` (unless `args`
    /// give a listen address, a config file or the `PORT HOST BACKEND-PORT`
    /// form), under `wrapper` if not empty, and waits for its `--ready-file`
    /// (added unless `args` has one), which names the addresses it listens on
    /// once it accepts.
    fn try_start_wrapped(wrapper: &[&str], args: &[&str]) -> Result<Ringlb, String> {
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut cmd = Command::new(program);
                cmd.args(rest).arg(binary());
                cmd
            }
            None => Command::new(binary()),
        };
        let rsp_form = args.first().is_some_and(|a| a.parse::<u16>().is_ok());
        let has_listen = args
            .iter()
            .any(|a| matches!(*a, "--listen" | "-l" | "--config" | "-c"));
        if !rsp_form && !has_listen {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        let ready = match args.iter().position(|a| *a == "--ready-file") {
            Some(i) => std::path::PathBuf::from(args[i + 1]),
            None => {
                let path = std::env::temp_dir().join(format!(
                    "ringlb-ready-{}-{}",
                    std::process::id(),
                    STARTED.fetch_add(1, Ordering::SeqCst)
                ));
                let _ = std::fs::remove_file(&path);
                cmd.arg("--ready-file").arg(&path);
                path
            }
        };
        cmd.args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn ringlb");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        let log_done = Arc::new(AtomicBool::new(false));
        let done = log_done.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
            done.store(true, Ordering::SeqCst);
        });
        let deadline = Instant::now() + PATIENCE;
        // The ready file comes before the "ringlb started" line, which comes
        // after every start-up warning; the log is read by another thread,
        // so wait for the line too, or a test that reads the log at once
        // can miss a warning that is on its way.
        let first = loop {
            let started = || log.lock().unwrap().contains("ringlb started");
            if let Some(addr) = ready_addrs(&ready).into_iter().next() {
                if started() {
                    break connectable(addr.1);
                }
            }
            let exited = child.try_wait().ok().flatten().is_some();
            if exited || Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                // Let the reader thread take the last lines.
                thread::sleep(Duration::from_millis(50));
                return Err(log.lock().unwrap().clone());
            }
            thread::sleep(Duration::from_millis(5));
        };
        Ok(Ringlb {
            child,
            addr: first,
            ready,
            log,
            log_done,
        })
    }

    /// The ready file's `name address` lines as they are now.
    pub fn ready_addrs(&self) -> Vec<(String, SocketAddr)> {
        ready_addrs(&self.ready)
    }

    /// Where the admin endpoint listens (from the ready file).
    pub fn admin_addr(&self) -> SocketAddr {
        self.named_addr("admin")
    }

    /// The address the ready file gives for `name`, waiting for it to appear.
    fn named_addr(&self, name: &str) -> SocketAddr {
        let mut found = None;
        wait_until(&format!("{name} in the ready file"), || {
            found = self
                .ready_addrs()
                .into_iter()
                .find_map(|(n, a)| (n == name).then_some(connectable(a)));
            found.is_some()
        });
        found.unwrap()
    }

    /// Everything it wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (e.g. "TERM").
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{signal} failed");
    }

    /// Waits for the process to exit, panicking after `PATIENCE`.
    pub fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Its last lines may still be on their way to the reader
                // thread: a test that reads the log next must see them.
                wait_until("the end of its log", || {
                    self.log_done.load(Ordering::SeqCst)
                });
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "ringlb did not exit; log:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// A client connected through the proxy, with a read timeout so a bug fails rather than hangs.
    pub fn connect(&self) -> TcpStream {
        client(self.addr)
    }
}

/// How to start ringlb: its arguments in the order given, then
/// [`Start::start`]. `--listen 127.0.0.1:0` is added unless a listen address
/// or a config file is given, and a `--ready-file` unless one is.
#[derive(Clone, Default)]
pub struct Start {
    args: Vec<String>,
    wrapper: Vec<String>,
}

/// A backend's address as a flag value, so a [`Backend`] goes where an
/// address does (see [`Start::backend`]).
impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.addr.fmt(f)
    }
}

/// As for [`Backend`].
impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.addr.fmt(f)
    }
}

impl Start {
    /// `--backend to`: a [`Backend`], a [`Refused`] port, an address or a
    /// name.
    pub fn backend(self, to: impl std::fmt::Display) -> Start {
        self.arg("--backend", to.to_string())
    }

    /// `--backend to,options`, e.g. options `weight=3` or `backup`.
    pub fn backend_with(self, to: impl std::fmt::Display, options: &str) -> Start {
        self.arg("--backend", format!("{to},{options}"))
    }

    /// A `--backend` for each of `all`, in order.
    pub fn backends<T: std::fmt::Display>(self, all: &[T]) -> Start {
        all.iter().fold(self, |start, to| start.backend(to))
    }

    /// `--workers n`.
    pub fn workers(self, n: usize) -> Start {
        self.arg("--workers", n.to_string())
    }

    /// `--admin 127.0.0.1:0`: the admin endpoint on a free loopback port
    /// (see [`Ringlb::admin_addr`]).
    pub fn admin(self) -> Start {
        self.arg("--admin", "127.0.0.1:0")
    }

    /// `--no-health-checks`.
    pub fn no_health_checks(self) -> Start {
        self.flag("--no-health-checks")
    }

    /// `--health-interval every`, e.g. `50ms`.
    pub fn health_interval(self, every: &str) -> Start {
        self.arg("--health-interval", every)
    }

    /// `--connect-timeout after`, e.g. `200ms`.
    pub fn connect_timeout(self, after: &str) -> Start {
        self.arg("--connect-timeout", after)
    }

    /// `--access-log`.
    pub fn access_log(self) -> Start {
        self.flag("--access-log")
    }

    /// `--config path`.
    pub fn config(self, path: &std::path::Path) -> Start {
        self.arg("--config", path.to_str().unwrap())
    }

    /// Any flag with its value, e.g. `("--balance", "least-conn")`.
    pub fn arg(mut self, flag: &str, value: impl Into<String>) -> Start {
        self.args.push(flag.to_string());
        self.args.push(value.into());
        self
    }

    /// Any flag without a value, e.g. `--accept-proxy`.
    pub fn flag(mut self, flag: &str) -> Start {
        self.args.push(flag.to_string());
        self
    }

    /// `args` as they are (a list shared by several starts, or the
    /// `PORT HOST BACKEND-PORT` form).
    pub fn args<S: AsRef<str>>(mut self, args: &[S]) -> Start {
        self.args
            .extend(args.iter().map(|a| a.as_ref().to_string()));
        self
    }

    /// Runs ringlb under `wrapper`, e.g. `["prlimit", "--nofile=256:256", "--"]`.
    pub fn wrapped(mut self, wrapper: &[&str]) -> Start {
        self.wrapper = wrapper.iter().map(|w| w.to_string()).collect();
        self
    }

    /// Starts ringlb and waits until it is ready; panics with its log if it
    /// does not start.
    pub fn start(&self) -> Ringlb {
        self.try_start()
            .unwrap_or_else(|log| panic!("ringlb did not start; log:\n{log}"))
    }

    /// Like [`Start::start`], but returns the log instead of panicking when
    /// ringlb does not start (e.g. a port picked by [`free_port`] got taken).
    pub fn try_start(&self) -> Result<Ringlb, String> {
        let wrapper: Vec<&str> = self.wrapper.iter().map(String::as_str).collect();
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        Ringlb::try_start_wrapped(&wrapper, &args)
    }
}

impl Drop for Ringlb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.ready);
    }
}

/// Parses a ready file: `name address` per line.
fn ready_addrs(path: &std::path::Path) -> Vec<(String, SocketAddr)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let (name, addr) = line.rsplit_once(' ')?;
            Some((name.to_string(), addr.parse().ok()?))
        })
        .collect()
}

/// `addr`, with a wildcard IP replaced by the loopback address of its family,
/// so a client can connect to it.
fn connectable(mut addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    addr
}

/// Runs ringlb with `args` to completion (it must exit by itself); returns status and stderr.
pub fn run_to_exit(args: &[&str]) -> (ExitStatus, String) {
    let mut child = Command::new(binary())
        .args(args)
        // Unresolvable names must fail fast even where DNS is unreachable.
        .env("RES_OPTIONS", "timeout:1 attempts:1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + PATIENCE;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("ringlb {args:?} did not exit");
        }
        thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stdout));
    (out.status, text)
}

/// A TCP connection to `addr` with read/write timeouts.
pub fn client(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.set_write_timeout(Some(PATIENCE)).unwrap();
    s
}

/// A listener on `addr` with room for 1024 pending connections. std's
/// `TcpListener::bind` allows 128: a test opening hundreds of connections at
/// once would then see the kernel drop handshakes and reset connections
/// behind a full accept queue, failures of the test's backend, not ringlb's.
pub fn listen(addr: SocketAddr) -> TcpListener {
    try_listen(addr).unwrap_or_else(|err| panic!("listen on {addr}: {err}"))
}

/// [`listen`], or why `addr` could not be bound (taken, say).
pub fn try_listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// A port nothing listens on (bound, then released), so connects to it are refused.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A loopback address where connects are refused for as long as this lives:
/// the port is bound (so no one else gets it) but not listening.
pub struct Refused {
    /// The address to point a backend at.
    pub addr: SocketAddr,
    _socket: socket2::Socket,
}

impl Refused {
    /// Binds a fresh port without listening on it.
    pub fn new() -> Refused {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket
            .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        let addr = socket.local_addr().unwrap().as_socket().unwrap();
        Refused {
            addr,
            _socket: socket,
        }
    }

    /// The address as a flag value.
    pub fn arg(&self) -> String {
        self.addr.to_string()
    }
}

/// A real backend on a free loopback port: a thread per connection running `handler`.
pub struct Backend {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Connections it accepted (health checks included).
    pub accepted: Arc<AtomicUsize>,
    /// Connections that carried at least one byte from the client (echo backends only).
    pub served: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    /// A second handle on the listening socket, to shut it down from here.
    control: Arc<TcpListener>,
}

impl Backend {
    /// Starts a backend running `handler` on each accepted connection.
    pub fn spawn<F>(handler: F) -> Backend
    where
        F: Fn(TcpStream) + Send + Sync + 'static,
    {
        Backend::spawn_at("127.0.0.1:0".parse().unwrap(), handler)
    }

    /// Like [`Backend::spawn`] on a given address (to restart a stopped backend).
    pub fn spawn_at<F>(addr: SocketAddr, handler: F) -> Backend
    where
        F: Fn(TcpStream) + Send + Sync + 'static,
    {
        Backend::spawn_on(listen(addr), handler)
    }

    /// Like [`Backend::spawn`] on a listener the caller bound.
    pub fn spawn_on<F>(listener: TcpListener, handler: F) -> Backend
    where
        F: Fn(TcpStream) + Send + Sync + 'static,
    {
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let handler = Arc::new(handler);
        let (count, stopped) = (accepted.clone(), stop.clone());
        let control = Arc::new(listener.try_clone().unwrap());
        thread::spawn(move || {
            for conn in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                conn.set_read_timeout(Some(PATIENCE)).unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                let handler = handler.clone();
                thread::spawn(move || handler(conn));
            }
        });
        Backend {
            addr,
            accepted,
            served: Arc::new(AtomicUsize::new(0)),
            stop,
            control,
        }
    }

    /// An echo server: writes back what it reads, half-closes on EOF.
    pub fn echo() -> Backend {
        Backend::echo_at("127.0.0.1:0".parse().unwrap(), None)
    }

    /// An echo server that first sends `tag`, so a client can tell which backend it reached.
    pub fn tagged(tag: u8) -> Backend {
        Backend::echo_at("127.0.0.1:0".parse().unwrap(), Some(tag))
    }

    /// An echo server on `addr`, optionally sending `tag` first.
    pub fn echo_at(addr: SocketAddr, tag: Option<u8>) -> Backend {
        Backend::echo_on(listen(addr), tag)
    }

    /// An echo server on a listener the caller bound, optionally sending `tag` first.
    pub fn echo_on(listener: TcpListener, tag: Option<u8>) -> Backend {
        let served = Arc::new(AtomicUsize::new(0));
        let count = served.clone();
        let backend = Backend::spawn_on(listener, move |mut conn| {
            if let Some(tag) = tag {
                if conn.write_all(&[tag]).is_err() {
                    return;
                }
            }
            let mut buf = vec![0u8; 64 * 1024];
            let mut first = true;
            loop {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if std::mem::take(&mut first) {
                            count.fetch_add(1, Ordering::SeqCst);
                        }
                        if conn.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = conn.shutdown(Shutdown::Write);
        });
        Backend { served, ..backend }
    }

    /// Connections that carried client bytes so far.
    pub fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }

    /// This backend's address as a flag value.
    pub fn arg(&self) -> String {
        self.addr.to_string()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Stops listening at once: from when this returns, connects are refused
    /// (connections still in the backlog are reset, as when a server dies).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        // shutdown() on a listening socket stops it listening and wakes the
        // accept loop, which sees the flag and drops its handle.
        let _ = socket2::SockRef::from(&*self.control).shutdown(Shutdown::Both);
    }
}

/// Deterministic pseudo-random bytes (xorshift), so both ends can check content.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Reads until EOF.
pub fn read_to_end(conn: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    conn.read_to_end(&mut out).expect("read to EOF");
    out
}

/// Resident memory of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// `ss`'s view of every TCP socket on `port`, for a failure message.
pub fn sockets_on(port: u16) -> String {
    let filter = format!("( sport = :{port} or dport = :{port} )");
    match std::process::Command::new("ss")
        .args(["-tanpi", &filter])
        .output()
    {
        Ok(out) => String::from_utf8_lossy(&out.stdout).into_owned(),
        Err(err) => format!("(ss: {err})"),
    }
}

/// Polls `cond` every few milliseconds until it holds; panics with `what` after `PATIENCE`.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

impl Ringlb {
    /// The value of `key=` in the first log line that has it, waiting for it to appear.
    pub fn log_value(&self, key: &str) -> String {
        let prefix = format!("{key}=");
        let mut found = None;
        wait_until(&format!("{key}= in the log"), || {
            found = self
                .log()
                .split_whitespace()
                .find_map(|w| w.strip_prefix(&prefix).map(str::to_string));
            found.is_some()
        });
        found.unwrap()
    }
}

/// A plain HTTP/1.1 GET; returns the status code and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_request(addr, "GET", path, &[], "")
}

/// One HTTP/1.1 request with `headers` (`("Name", "value")`) and `body`
/// (with its Content-Length when not empty); returns the status code and
/// the body.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut conn = client(addr);
    // The address it connects to, as curl sends it.
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    request.push_str(body);
    conn.write_all(request.as_bytes()).unwrap();
    let text = String::from_utf8(read_to_end(&mut conn)).unwrap();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad HTTP response: {text}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

impl Ringlb {
    /// Where frontend `name` listens, from the ready file (rewritten on reload).
    pub fn frontend_addr(&self, name: &str) -> SocketAddr {
        self.named_addr(name)
    }
}

/// A fresh private directory under the system temp dir, removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    /// Creates it.
    pub fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "ringlb-test-{tag}-{}-{:?}",
            std::process::id(),
            Instant::now()
        ));
        let dir = std::path::PathBuf::from(dir.to_string_lossy().replace([' ', '{', '}', ':'], ""));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    /// Writes `name` in it and returns its path.
    pub fn write(&self, name: &str, text: &str) -> std::path::PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One sample from Prometheus text, by its series, e.g. `ringlb_connections_total{frontend="default"}`.
pub fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("{series} not in:\n{text}"))
}

/// Reads a tagged backend's tag byte (see [`Backend::tagged`]); returns it
/// with the open connection.
pub fn tag_of(mut conn: TcpStream) -> (u8, TcpStream) {
    let mut tag = [0u8; 1];
    conn.read_exact(&mut tag).unwrap();
    (tag[0], conn)
}

/// One short request through `lb` to tagged backends; returns which one answered.
pub fn visit(lb: &Ringlb) -> u8 {
    let (tag, mut conn) = tag_of(lb.connect());
    conn.write_all(b"x").unwrap();
    conn.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_end(&mut conn), b"x");
    tag
}

/// One client through `lb`: sends `msg`, half-closes, reads to the end.
pub fn echo_once(lb: &Ringlb, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut conn = lb.connect();
    conn.write_all(msg)?;
    conn.shutdown(Shutdown::Write)?;
    let mut out = Vec::new();
    conn.read_to_end(&mut out)?;
    Ok(out)
}

/// Open descriptors of a process.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// A listener whose one-slot accept queue is full, so further SYNs are
/// dropped and a connect to it hangs until its timeout (a black-holed host).
/// Keep all three alive for as long as the black hole is needed.
pub fn black_hole() -> (TcpListener, Vec<TcpStream>, SocketAddr) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.listen(0).unwrap();
    let listener: TcpListener = socket.into();
    let addr = listener.local_addr().unwrap();
    let fillers = (0..2)
        .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok())
        .collect();
    (listener, fillers, addr)
}

// The relay's transfers, shared by the tests of its paths (tests/splice.rs,
// tests/send_zc.rs): each takes the flags that choose the path.

/// Sends `data` through `addr` to an echo backend, writing from a thread of
/// its own while this one reads, and returns what came back.
pub fn echo_transfer(
    addr: SocketAddr,
    data: &[u8],
    pace: Option<Duration>,
) -> Result<Vec<u8>, String> {
    let mut conn = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    conn.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut writer = conn.try_clone().unwrap();
    let data = data.to_vec();
    let sender = thread::spawn(move || -> Result<(), String> {
        for chunk in data.chunks(256 * 1024) {
            writer.write_all(chunk).map_err(|e| format!("write: {e}"))?;
            if let Some(pace) = pace {
                thread::sleep(pace);
            }
        }
        writer
            .shutdown(Shutdown::Write)
            .map_err(|e| format!("shutdown: {e}"))
    });
    let mut got = Vec::new();
    let read = conn.read_to_end(&mut got);
    sender.join().unwrap()?;
    read.map_err(|e| format!("read after {} bytes: {e}", got.len()))?;
    Ok(got)
}

/// One frontend counter, summed over its series.
pub fn counter(lb: &Ringlb, name: &str) -> u64 {
    let (status, text) = http_get(lb.admin_addr(), "/metrics");
    assert_eq!(status, 200);
    metric(&text, &format!("{name}{{frontend=\"default\"}}"))
}

/// Waits until every connection has closed and been counted.
pub fn wait_closed(lb: &Ringlb) {
    wait_until("every connection closed", || {
        counter(lb, "ringlb_connections_active") == 0
    });
}

/// Echoes 1 byte to 64 MiB through `lb`, each size its own connection and
/// every byte checked (`what` names the run in a failure); waits until every
/// connection was counted and returns the bytes sent.
pub fn echo_every_size(lb: &Ringlb, what: &str) -> u64 {
    const MIB: usize = 1024 * 1024;
    let mut sent = 0u64;
    for (i, size) in [1, 1000, 300_000, 4 * MIB + 3, 64 * MIB]
        .into_iter()
        .enumerate()
    {
        let data = pattern(i as u64 + 1, size);
        let got = echo_transfer(lb.addr, &data, None)
            .unwrap_or_else(|e| panic!("{what}, {size} bytes: {e}\n{}", lb.log()));
        assert!(
            got == data,
            "{what}: the echo of {size} bytes differs ({} came back)",
            got.len()
        );
        sent += size as u64;
    }
    wait_closed(lb);
    sent
}

/// Half-closes each way in turn through ringlb started with `args`, 8 MiB
/// each way: the client first, then the backend; what follows each FIN
/// arrives whole.
pub fn half_close_each_way(args: &[&str]) {
    const MIB: usize = 1024 * 1024;
    let what = args.join(" ");
    // The client closes its side first: the backend reads to EOF, then
    // answers and closes.
    let backend = Backend::spawn(|mut conn| {
        let mut got = Vec::new();
        conn.read_to_end(&mut got).unwrap();
        assert!(got == pattern(3, 8 * MIB), "the backend got other bytes");
        conn.write_all(&pattern(4, 8 * MIB)).unwrap();
    });
    let lb = Ringlb::over(&backend).args(args).start();
    let mut conn = lb.connect();
    conn.set_read_timeout(Some(PATIENCE)).unwrap();
    conn.write_all(&pattern(3, 8 * MIB)).unwrap();
    conn.shutdown(Shutdown::Write).unwrap();
    let got = read_to_end(&mut conn);
    assert!(
        got == pattern(4, 8 * MIB),
        "{what}: the answer after the client's FIN differs"
    );

    // The backend closes its side first, then reads what the client sends.
    let (tx, rx) = std::sync::mpsc::channel();
    let backend = Backend::spawn(move |mut conn| {
        conn.write_all(&pattern(5, 8 * MIB)).unwrap();
        conn.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        let _ = conn.read_to_end(&mut got);
        tx.send(got).unwrap();
    });
    let lb = Ringlb::over(&backend).args(args).start();
    let mut conn = lb.connect();
    conn.set_read_timeout(Some(PATIENCE)).unwrap();
    let got = read_to_end(&mut conn);
    assert!(
        got == pattern(5, 8 * MIB),
        "{what}: the backend's bytes before its FIN differ"
    );
    conn.write_all(&pattern(6, 8 * MIB)).unwrap();
    conn.shutdown(Shutdown::Write).unwrap();
    let upload = rx.recv_timeout(PATIENCE).unwrap();
    assert!(
        upload == pattern(6, 8 * MIB),
        "{what}: the upload after the backend's FIN differs"
    );
}

/// A backend that dies (reset, then closed) in the middle of sending 8 MiB
/// through ringlb started with `args`: the client sees EOF or an error,
/// never a hang.
pub fn a_backend_that_dies_mid_transfer_ends_the_client(args: &[&str]) {
    for reset in [true, false] {
        let backend = Backend::spawn(move |mut conn| {
            let _ = conn.write_all(&pattern(11, 8 << 20));
            if reset {
                // Dies with bytes unread: the kernel resets.
                socket2::SockRef::from(&conn)
                    .set_linger(Some(Duration::ZERO))
                    .unwrap();
            }
        });
        let lb = Ringlb::over(&backend).args(args).start();
        let mut conn = lb.connect();
        conn.set_read_timeout(Some(PATIENCE)).unwrap();
        // Unread by the backend, so its close is a reset when asked for.
        conn.write_all(&[1; 1000]).unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let mut got = 0;
        let end = loop {
            match conn.read(&mut buf) {
                Ok(0) => break None,
                Ok(n) => got += n,
                Err(e) => break Some(e),
            }
        };
        if let Some(e) = end {
            assert!(
                !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                "reset={reset}: the client hung after {got} bytes"
            );
        }
    }
}
