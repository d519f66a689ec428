//! Hot binary upgrade: `--control-socket` and `--takeover`. A new process
//! takes over the listeners of the running one while clients keep
//! connecting; no client is refused or reset, and a failed takeover leaves
//! the running process serving.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::*;
use sha2::{Digest, Sha256};

/// What the client loop saw.
#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    failures: Mutex<Vec<String>>,
}

impl Tally {
    fn failed(&self) -> bool {
        !self.failures.lock().unwrap().is_empty()
    }

    fn first_failures(&self) -> Vec<String> {
        self.failures
            .lock()
            .unwrap()
            .iter()
            .take(5)
            .cloned()
            .collect()
    }
}

/// One short connection: a request and its checked echo.
fn one_exchange(addr: SocketAddr, n: usize) -> Result<(), String> {
    let mut conn = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    conn.set_read_timeout(Some(PATIENCE)).unwrap();
    let started = std::time::Instant::now();
    let msg = format!("request {n} {}", "x".repeat(n % 200));
    conn.write_all(msg.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    conn.shutdown(Shutdown::Write)
        .map_err(|e| format!("shutdown: {e}"))?;
    let mut reply = Vec::new();
    conn.read_to_end(&mut reply).map_err(|e| {
        format!(
            "read of request {n} from {:?} after {:?}: {e}",
            conn.local_addr().ok(),
            started.elapsed()
        )
    })?;
    if reply != msg.as_bytes() {
        return Err(format!("reply of {} bytes for {}", reply.len(), msg.len()));
    }
    Ok(())
}

/// Makes about 200 connections a second until `stop`.
fn client_loop(addr: SocketAddr, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        match one_exchange(addr, n) {
            Ok(()) => {
                tally.ok.fetch_add(1, Ordering::SeqCst);
            }
            Err(err) => tally.failures.lock().unwrap().push(err),
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Streams `total` bytes through `addr`, slowly, while reading the echo;
/// returns whether the echo's digest matched what was sent.
fn long_transfer(addr: SocketAddr, total: usize, started: Arc<AtomicBool>) -> Result<(), String> {
    let mut conn = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    conn.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut reader = conn.try_clone().unwrap();
    let receiver = thread::spawn(move || {
        let mut digest = Sha256::new();
        let mut buf = vec![0; 64 * 1024];
        let mut got = 0;
        loop {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    digest.update(&buf[..n]);
                    got += n;
                }
                Err(e) => return Err(format!("read after {got} bytes: {e}")),
            }
        }
        Ok((got, digest.finalize()))
    });
    let data = pattern(7, total);
    let sent = Sha256::digest(&data);
    for (i, chunk) in data.chunks(16 * 1024).enumerate() {
        conn.write_all(chunk)
            .map_err(|e| format!("write of chunk {i}: {e}"))?;
        if i == 0 {
            started.store(true, Ordering::SeqCst);
        }
        thread::sleep(Duration::from_millis(10));
    }
    conn.shutdown(Shutdown::Write).unwrap();
    let (got, digest) = receiver.join().unwrap()?;
    if got != total || digest != sent {
        return Err(format!("echo of {got} bytes differs from the {total} sent"));
    }
    Ok(())
}

fn ctl_args(ctl: &str) -> Vec<&str> {
    vec!["--control-socket", ctl, "--takeover", ctl]
}

#[test]
fn three_upgrades_under_load_refuse_and_reset_nothing() {
    let backend = Backend::echo();
    let dir = TempDir::new("upgrade");
    let ctl = dir.0.join("ctl");
    let ctl = ctl.to_str().unwrap();
    let be = backend.arg();
    let start = |workers| {
        Ringlb::over(&be)
            .workers(workers)
            .admin()
            .args(&ctl_args(ctl))
            .start()
    };
    // The first start finds nobody at the control socket and starts fresh.
    let mut old = start(2);
    let addr = old.addr;
    let admin = old.admin_addr();
    let meta = std::fs::metadata(ctl).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let clients = {
        let (stop, tally) = (stop.clone(), tally.clone());
        thread::spawn(move || client_loop(addr, stop, tally))
    };
    // 4 MiB at 16 KiB per 10 ms: about 3 s, across the upgrades.
    let started = Arc::new(AtomicBool::new(false));
    let long = {
        let started = started.clone();
        thread::spawn(move || long_transfer(addr, 4 << 20, started))
    };
    wait_until("the long transfer starts", || {
        started.load(Ordering::SeqCst)
    });

    // Fewer workers than sockets, then more, then as many: every socket of
    // the group keeps an acceptor.
    // Every generation's log, for the failure message.
    let mut logs: Vec<String> = Vec::new();
    for workers in [1, 3, 2] {
        let before = tally.ok.load(Ordering::SeqCst);
        let deadline = std::time::Instant::now() + PATIENCE;
        while tally.ok.load(Ordering::SeqCst) < before + 40 && !tally.failed() {
            // A client stuck this long: say where its connection sits (a
            // listener's Recv-Q is its accept queue).
            assert!(
                std::time::Instant::now() < deadline,
                "clients stuck before upgrade to {workers} workers\nsockets:\n{}\nlogs of the earlier generations:\n{}\nlog of the running one:\n{}",
                sockets_on(addr.port()),
                logs.join("\n---\n"),
                old.log()
            );
            thread::sleep(Duration::from_millis(5));
        }
        assert!(
            !tally.failed(),
            "clients failed: {:?}\nlogs of the earlier generations:\n{}\nlog of the running one:\n{}",
            tally.first_failures(),
            logs.join("\n---\n"),
            old.log()
        );
        let new = start(workers);
        assert_eq!(
            new.addr, addr,
            "the new process listens where the old one did"
        );
        assert_eq!(
            new.admin_addr(),
            admin,
            "and serves the same admin listener"
        );
        let status = old.wait();
        assert!(
            status.success(),
            "the old process exits 0, got {status}; log:\n{}",
            old.log()
        );
        assert!(
            old.log().contains("took over"),
            "the old process logs the takeover:\n{}",
            old.log()
        );
        logs.push(old.log());
        old = new;
    }
    // A stuck exchange gives up after PATIENCE and is tallied as a failure,
    // so wait past that and report it with every generation's log.
    let before = tally.ok.load(Ordering::SeqCst);
    let deadline = std::time::Instant::now() + 2 * PATIENCE;
    while tally.ok.load(Ordering::SeqCst) < before + 40 && !tally.failed() {
        assert!(
            std::time::Instant::now() < deadline,
            "clients stuck after the last upgrade\nsockets:\n{}\nlogs of the earlier generations:\n{}\nlog of the running one:\n{}",
            sockets_on(addr.port()),
            logs.join("\n---\n"),
            old.log()
        );
        thread::sleep(Duration::from_millis(5));
    }
    assert!(
        !tally.failed(),
        "clients failed after the last upgrade: {:?}\nlogs of the earlier generations:\n{}\nlog of the running one:\n{}",
        tally.first_failures(),
        logs.join("\n---\n"),
        old.log()
    );
    stop.store(true, Ordering::SeqCst);
    clients.join().unwrap();
    long.join()
        .unwrap()
        .expect("the long transfer completes intact");

    let failures = tally.failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} connections failed, e.g. {:?}",
        failures.len(),
        failures.len() + tally.ok.load(Ordering::SeqCst),
        &failures[..failures.len().min(5)]
    );
    let (status, _) = http_get(admin, "/healthz");
    assert_eq!(
        status, 200,
        "the admin endpoint answers from the last process"
    );

    // A stopped ringlb removes its control socket.
    old.signal("TERM");
    assert!(old.wait().success());
    assert!(
        !std::path::Path::new(ctl).exists(),
        "control socket removed on exit"
    );
}

#[test]
fn failed_takeovers_leave_the_running_process_serving() {
    let backend = Backend::echo();
    let dir = TempDir::new("upgrade-fail");
    let ctl = dir.0.join("ctl");
    let ctl = ctl.to_str().unwrap();
    let be = backend.arg();
    let lb = Ringlb::over(&be).arg("--control-socket", ctl).start();
    let serving = || assert_eq!(echo_once(&lb, b"still here").unwrap(), b"still here");
    serving();

    // --takeover alone, with nobody there: an error, not a fresh start.
    let missing = dir.0.join("nobody");
    refused_takeover(&missing, "takeover: cannot connect to the control socket");

    // A config that does not validate: nothing is asked of the old process.
    let (status, log) = run_to_exit(&[
        "--listen",
        "127.0.0.1:0",
        "--backend",
        "nonsense",
        "--takeover",
        ctl,
    ]);
    assert_eq!(status.code(), Some(2), "{log}");
    serving();

    // A listener the new config cannot bind (a port another program holds).
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = dir.write(
        "two.toml",
        &format!(
            "[[frontend]]\nname = \"default\"\nlisten = \"127.0.0.1:0\"\nbackends = [\"{be}\"]\n\n\
             [[frontend]]\nname = \"other\"\nlisten = \"{}\"\nbackends = [\"{be}\"]\n",
            taken.local_addr().unwrap()
        ),
    );
    let (status, log) = run_to_exit(&["--config", config.to_str().unwrap(), "--takeover", ctl]);
    assert!(!status.success(), "{log}");
    assert!(log.contains("cannot bind"), "{log}");
    assert_eq!(
        log.trim().lines().last().map(|l| l.starts_with("ringlb: ")),
        Some(true),
        "{log}"
    );
    serving();

    // Another protocol version is refused with its reason.
    let mut conn = UnixStream::connect(ctl).unwrap();
    conn.set_read_timeout(Some(PATIENCE)).unwrap();
    let hello = br#"{"protocol":"ringlb-takeover","version":99,"pid":1}"#;
    conn.write_all(&(hello.len() as u32).to_be_bytes()).unwrap();
    conn.write_all(hello).unwrap();
    let mut len = [0; 4];
    conn.read_exact(&mut len).unwrap();
    let mut reply = vec![0; u32::from_be_bytes(len) as usize];
    conn.read_exact(&mut reply).unwrap();
    let reply = String::from_utf8(reply).unwrap();
    assert!(reply.contains("version 99"), "{reply}");
    drop(conn);
    serving();

    // A second ringlb on the same control socket without --takeover.
    let (status, log) = run_to_exit(&[
        "--listen",
        "127.0.0.1:0",
        "--backend",
        &be,
        "--control-socket",
        ctl,
    ]);
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("--takeover"), "{log}");
    serving();

    // After all that, a real takeover still works.
    let mut lb = lb;
    let new = Ringlb::over(&be).args(&ctl_args(ctl)).start();
    assert_eq!(new.addr, lb.addr);
    assert!(lb.wait().success());
    assert_eq!(echo_once(&new, b"new").unwrap(), b"new");
}

#[test]
fn a_stale_control_socket_is_replaced() {
    let backend = Backend::echo();
    let dir = TempDir::new("upgrade-stale");
    let ctl = dir.0.join("ctl");
    drop(UnixListener::bind(&ctl).unwrap());
    assert!(ctl.exists(), "a socket file left behind, as by a crash");
    let be = backend.arg();
    let ctl = ctl.to_str().unwrap();
    let mut lb = Ringlb::over(&be).args(&ctl_args(ctl)).start();
    assert_eq!(echo_once(&lb, b"x").unwrap(), b"x");
    wait_until("the control socket is served", || {
        UnixStream::connect(ctl).is_ok()
    });
    lb.signal("TERM");
    assert!(lb.wait().success());
}

/// Writes `msg` as the control protocol frames it: a 4-byte big-endian
/// length, then the JSON.
fn write_frame(conn: &mut UnixStream, msg: &str) {
    conn.write_all(&(msg.len() as u32).to_be_bytes()).unwrap();
    conn.write_all(msg.as_bytes()).unwrap();
}

/// Reads one frame written by [`write_frame`].
fn read_frame(conn: &mut UnixStream) -> std::io::Result<String> {
    let mut len = [0; 4];
    conn.read_exact(&mut len)?;
    let mut msg = vec![0; u32::from_be_bytes(len) as usize];
    conn.read_exact(&mut msg)?;
    Ok(String::from_utf8_lossy(&msg).into_owned())
}

/// A fake old ringlb at `path`, in a thread: it answers the first
/// connection's hello with `offer`, sends `fds` descriptors of a listening
/// socket bound to `addr` in one message, then reads until the other side
/// hangs up. Returns every message it read.
fn fake_old_process(
    path: &std::path::Path,
    offer: String,
    fds: usize,
) -> thread::JoinHandle<Vec<String>> {
    let listener = UnixListener::bind(path).unwrap();
    thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut read = vec![read_frame(&mut conn).unwrap()];
        write_frame(&mut conn, &offer);
        if fds > 0 {
            use std::os::fd::AsRawFd;
            let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let many = vec![socket.as_raw_fd(); fds];
            nix::sys::socket::sendmsg::<()>(
                conn.as_raw_fd(),
                &[std::io::IoSlice::new(b"F")],
                &[nix::sys::socket::ControlMessage::ScmRights(&many)],
                nix::sys::socket::MsgFlags::empty(),
                None,
            )
            .unwrap();
        }
        while let Ok(msg) = read_frame(&mut conn) {
            read.push(msg);
        }
        read
    })
}

/// An offer of one frontend named `default` whose group declares `sockets`.
fn offer_of(sockets: &str, addr: SocketAddr) -> String {
    format!(
        r#"{{"version":1,"pid":1,"error":null,"frontends":[{{"name":"default","listen":"{addr}","addr":"{addr}","sockets":{sockets}}}],"admin":null}}"#
    )
}

/// Runs `ringlb --takeover ctl` to its exit and checks that it refused with
/// one line (no panic, no abort) that contains `expect`; returns that line.
fn refused_takeover(ctl: &std::path::Path, expect: &str) -> String {
    let be = Backend::echo().arg();
    let (status, log) = run_to_exit(&[
        "--listen",
        "127.0.0.1:0",
        "--backend",
        &be,
        "--takeover",
        ctl.to_str().unwrap(),
    ]);
    assert_eq!(status.code(), Some(1), "exit status {status}; log:\n{log}");
    assert!(!log.contains("panicked"), "{log}");
    let last = log.trim().lines().last().unwrap_or_default().to_owned();
    assert!(
        last.starts_with("ringlb: ") && last.contains(expect),
        "the last line names the reason ({expect:?}); log:\n{log}"
    );
    println!("refused: {last}");
    last
}

/// The process exits right after, so whether the descriptors that did
/// arrive were closed is checked where it can be seen, by the unit test of
/// the receive (`upgrade::tests`, with the process's descriptor table).
#[test]
fn a_takeover_refuses_more_descriptors_in_a_message_than_its_buffer_holds() {
    let dir = TempDir::new("upgrade-trunc");
    let ctl = dir.0.join("ctl");
    let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
    // 100 declared and sent in one message, where the receiver takes 64.
    let fake = fake_old_process(&ctl, offer_of("100", addr), 100);
    refused_takeover(&ctl, "truncated");
    let read = fake.join().unwrap();
    assert_eq!(read.len(), 1, "nothing after the hello: {read:?}");
}

#[test]
fn a_takeover_refuses_an_absurd_socket_count_without_aborting() {
    let dir = TempDir::new("upgrade-huge");
    let ctl = dir.0.join("ctl");
    let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let huge = (1u64 << 61).to_string();
    let fake = fake_old_process(&ctl, offer_of(&huge, addr), 0);
    refused_takeover(&ctl, &huge);
    let read = fake.join().unwrap();
    assert_eq!(read.len(), 1, "nothing after the hello: {read:?}");
}

/// Python run as uid 65534 (nobody), for the peer credential tests.
fn as_nobody(script: &str, args: &[&str]) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    std::process::Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .uid(65534)
        .gid(65534)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("run /usr/bin/python3 as uid 65534")
}

/// The control protocol's framing, for the Python fakes.
const PY_FRAMES: &str = r#"
import json, os, socket, struct, sys
def recv_all(conn, n):
    data = b""
    while len(data) < n:
        more = conn.recv(n - len(data))
        if not more:
            raise EOFError
        data += more
    return data
def read_frame(conn):
    (n,) = struct.unpack(">I", recv_all(conn, 4))
    return recv_all(conn, n).decode()
def write_frame(conn, msg):
    data = json.dumps(msg).encode()
    conn.sendall(struct.pack(">I", len(data)) + data)
"#;

fn running_as_root() -> bool {
    // SAFETY: geteuid takes nothing and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn a_takeover_refuses_a_control_socket_served_by_another_user() {
    if !running_as_root() {
        eprintln!("skipped: needs root to run the fake old process as another user");
        return;
    }
    let dir = TempDir::new("upgrade-peer");
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o777)).unwrap();
    let ctl = dir.0.join("ctl");
    // The fake old process offers nothing and would confirm a drain.
    let script = format!(
        "{PY_FRAMES}{}",
        r#"
listener = socket.socket(socket.AF_UNIX)
listener.bind(sys.argv[1])
listener.listen(1)
listener.settimeout(60)
print("listening", flush=True)
conn, _ = listener.accept()
conn.settimeout(60)
try:
    print("read", read_frame(conn), flush=True)
    write_frame(conn, {"version": 1, "pid": os.getpid(), "error": None, "frontends": [], "admin": None})
    print("read", read_frame(conn), flush=True)
    write_frame(conn, {"stopped": True})
except EOFError:
    pass
"#
    );
    let mut fake = as_nobody(&script, &[ctl.to_str().unwrap()]);
    let mut out = std::io::BufReader::new(fake.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "listening");

    let last = refused_takeover(&ctl, "uid 65534");
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    let _ = fake.wait();
    assert!(
        !rest.contains("read"),
        "nothing was said to a control socket of another user ({last}); it read:\n{rest}"
    );
}

#[test]
fn the_control_socket_refuses_a_peer_of_another_user() {
    if !running_as_root() {
        eprintln!("skipped: needs root to connect as another user");
        return;
    }
    let backend = Backend::echo();
    let dir = TempDir::new("upgrade-peer-in");
    let ctl = dir.0.join("ctl");
    let lb = Ringlb::over(backend.arg())
        .arg("--control-socket", ctl.to_str().unwrap())
        .start();
    // Say an operator loosened the modes: the process itself still refuses.
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&ctl, std::fs::Permissions::from_mode(0o666)).unwrap();
    let script = format!(
        "{PY_FRAMES}{}",
        r#"
conn = socket.socket(socket.AF_UNIX)
conn.settimeout(60)
conn.connect(sys.argv[1])
try:
    write_frame(conn, {"protocol": "ringlb-takeover", "version": 1, "pid": os.getpid()})
except BrokenPipeError:
    pass  # refused before the hello was read: the answer is queued all the same
try:
    print(read_frame(conn), flush=True)
except EOFError:
    print("closed", flush=True)
"#
    );
    let fake = as_nobody(&script, &[ctl.to_str().unwrap()]);
    let out = fake.wait_with_output().unwrap();
    let reply = String::from_utf8_lossy(&out.stdout);
    assert!(
        reply.contains(r#""error":"#)
            && reply.contains("uid 65534")
            && !reply.contains(r#""error":null"#),
        "a refusal naming the peer's uid, not an offer: {reply}"
    );
    wait_until("the refusal is logged", || lb.log().contains("uid 65534"));
    assert_eq!(echo_once(&lb, b"still here").unwrap(), b"still here");
}

/// inotify events on a directory, read without blocking: (mask, name).
struct DirWatch(std::fs::File);

impl DirWatch {
    fn new(dir: &std::path::Path) -> DirWatch {
        use std::os::fd::FromRawFd;
        let path = std::ffi::CString::new(dir.to_str().unwrap()).unwrap();
        // SAFETY: takes no pointer; the result is checked below.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(
            fd >= 0,
            "inotify_init1: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: a descriptor just made and owned by nothing else.
        let file = unsafe { std::fs::File::from_raw_fd(fd) };
        let mask = libc::IN_CREATE | libc::IN_ATTRIB | libc::IN_MOVED_TO | libc::IN_MOVED_FROM;
        // SAFETY: `path` is a NUL-terminated string alive for the call.
        let wd = unsafe { libc::inotify_add_watch(fd, path.as_ptr(), mask) };
        assert!(
            wd >= 0,
            "inotify_add_watch: {}",
            std::io::Error::last_os_error()
        );
        DirWatch(file)
    }

    fn events(&mut self) -> Vec<(u32, String)> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match self.0.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return out,
                Err(e) => panic!("inotify read: {e}"),
            };
            let mut at = 0;
            while at + 16 <= n {
                let word =
                    |i: usize| u32::from_ne_bytes(buf[at + i..at + i + 4].try_into().unwrap());
                let (mask, len) = (word(4), word(12) as usize);
                let name = &buf[at + 16..at + 16 + len];
                let name = String::from_utf8_lossy(name)
                    .trim_end_matches('\0')
                    .to_owned();
                out.push((mask, name));
                at += 16 + len;
            }
        }
    }
}

#[test]
fn the_control_socket_is_never_open_to_group_or_others() {
    let backend = Backend::echo();
    let dir = TempDir::new("upgrade-mode");
    let ctl = dir.0.join("ctl");
    let mut watch = DirWatch::new(&dir.0);
    // umask 000: a socket file that is not made private from the start is
    // srwxrwxrwx until something changes its mode.
    let mut lb = Ringlb::over(backend.arg())
        .wrapped(&["sh", "-c", "umask 000; exec \"$@\"", "sh"])
        .arg("--control-socket", ctl.to_str().unwrap())
        .start();
    let meta = std::fs::metadata(&ctl).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    // A file created in the directory must have had its final mode (0600,
    // as above) from its creation: no mode change may follow, or it was
    // reachable under its first mode until then.
    let events = watch.events();
    let created: Vec<&String> = events
        .iter()
        .filter(|(mask, _)| mask & libc::IN_CREATE != 0 && mask & libc::IN_ISDIR == 0)
        .map(|(_, name)| name)
        .collect();
    let changed: Vec<&String> = events
        .iter()
        .filter(|(mask, name)| mask & libc::IN_ATTRIB != 0 && created.contains(&name))
        .map(|(_, name)| name)
        .collect();
    assert!(
        changed.is_empty(),
        "created with the umask's mode, then changed: {changed:?} (events {events:?})"
    );
    assert!(
        events
            .iter()
            .any(|(mask, name)| name == "ctl" && mask & (libc::IN_CREATE | libc::IN_MOVED_TO) != 0),
        "the watch saw the control socket arrive: {events:?}"
    );
    lb.signal("TERM");
    assert!(lb.wait().success());
}
