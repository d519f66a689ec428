//! SNI passthrough through the real binary with real TLS: a CA and server
//! certificates made with `openssl` here, `openssl s_server -www` and Python
//! `ssl` backends, Python's `ssl` as the client (which checks the
//! certificate chain and, given a name, the host name). Each name must reach
//! the backend whose certificate it sees, with checksummed data both ways and
//! under 200 concurrent handshakes; clients that are not TLS, too slow or
//! unroutable are closed and counted; routes come from flags or a file and
//! follow a reload.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, http_get, metric, wait_until, Ringlb, TempDir, PATIENCE};

/// The test client: connects through ringlb, completes a TLS handshake
/// (sending its ClientHello one byte at a time with `bytewise`), sends an
/// HTTP request over TLS, and prints the peer certificate's CN and the
/// response's status line. A name of `-` sends no SNI.
const CLIENT: &str = r#"
import socket, ssl, sys, time
host, port, name, ca, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
ctx = ssl.create_default_context(cafile=ca)
if name == "-":
    ctx.check_hostname = False
    name = None
inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
tls = ctx.wrap_bio(inc, out, server_hostname=name)
sock = socket.create_connection((host, port), timeout=10)
sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
first = True
def flush():
    global first
    data = out.read()
    if first and mode == "bytewise":
        for b in data:
            sock.sendall(bytes([b]))
            time.sleep(0.0005)
    elif data:
        sock.sendall(data)
    first = False
def pump():
    data = sock.recv(65536)
    if not data:
        raise EOFError("closed")
    inc.write(data)
while True:
    try:
        tls.do_handshake()
        break
    except ssl.SSLWantReadError:
        flush()
        pump()
flush()
cn = dict(x[0] for x in tls.getpeercert()["subject"])["commonName"]
tls.write(b"GET / HTTP/1.0\r\n\r\n")
flush()
body = b""
while True:
    try:
        chunk = tls.read(65536)
        if not chunk:
            break
        body += chunk
    except ssl.SSLWantReadError:
        try:
            pump()
        except EOFError:
            break
    except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
        break
print(cn)
print(body.split(b"\r\n")[0].decode())
"#;

/// A threaded TLS backend: per connection, reads an 8-byte length and that
/// many bytes, answers their SHA-256 and then that many bytes of its own
/// (a pattern seeded by the length), and prints its port once listening.
const SERVER: &str = r#"
import hashlib, random, socket, ssl, sys, threading
cert, key = sys.argv[1], sys.argv[2]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(1024)
print(srv.getsockname()[1], flush=True)
def exactly(t, n):
    buf = bytearray()
    while len(buf) < n:
        d = t.recv(min(65536, n - len(buf)))
        if not d:
            raise EOFError
        buf += d
    return bytes(buf)
def serve(c):
    try:
        with ctx.wrap_socket(c, server_side=True) as t:
            n = int.from_bytes(exactly(t, 8), "big")
            t.sendall(hashlib.sha256(exactly(t, n)).digest())
            t.sendall(random.Random(n).randbytes(n))
    except Exception:
        pass
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// The load client: `connections` TLS sessions at once through ringlb, the
/// i-th to the i-th name (round robin), each sending `size` random bytes and
/// checking the backend's digest of them, its certificate, and the
/// checksum of the `size` bytes it sends back. Prints `ok` and the count.
const LOAD: &str = r#"
import hashlib, os, random, socket, ssl, sys, threading
host, port, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3]
connections, size, names = int(sys.argv[4]), int(sys.argv[5]), sys.argv[6:]
ctx = ssl.create_default_context(cafile=ca)
expected = hashlib.sha256(random.Random(size).randbytes(size)).digest()
errors = []
def one(i):
    name = names[i % len(names)]
    try:
        with socket.create_connection((host, port), timeout=30) as s:
            with ctx.wrap_socket(s, server_hostname=name) as t:
                cn = dict(x[0] for x in t.getpeercert()["subject"])["commonName"]
                if cn != name:
                    raise Exception("wrong backend: " + cn)
                data = os.urandom(size)
                t.sendall(size.to_bytes(8, "big") + data)
                got = bytearray()
                while len(got) < 32 + size:
                    d = t.recv(65536)
                    if not d:
                        raise Exception("short answer")
                    got += d
                if bytes(got[:32]) != hashlib.sha256(data).digest():
                    raise Exception("upload corrupted")
                if hashlib.sha256(bytes(got[32:])).digest() != expected:
                    raise Exception("download corrupted")
    except Exception as e:
        errors.append(repr(e))
threads = [threading.Thread(target=one, args=(i,)) for i in range(connections)]
for t in threads:
    t.start()
for t in threads:
    t.join()
if errors:
    print(len(errors), errors[:3])
    sys.exit(1)
print("ok", connections)
"#;

/// A CA and certificates signed by it, in a private directory.
struct Pki {
    dir: TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = TempDir::new("sni");
        let pki = Pki { dir };
        pki.req_new_key(
            &["-x509"],
            "ca.key",
            &[
                "-out",
                "ca.pem",
                "-subj",
                "/CN=ringlb test CA",
                "-days",
                "2",
            ],
        );
        pki.dir.write("client.py", CLIENT);
        pki.dir.write("server.py", SERVER);
        pki.dir.write("load.py", LOAD);
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.0.join(name)
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(&self.dir.0)
            .stdin(Stdio::null())
            .output()
            .expect("openssl (installed by .ci/run)");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    }

    /// `openssl req` with `first` (e.g. `-x509`), a new P-256 key written
    /// unencrypted to `key`, then `rest`.
    fn req_new_key(&self, first: &[&str], key: &str, rest: &[&str]) {
        let mut args = vec!["req"];
        args.extend_from_slice(first);
        args.extend([
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            key,
        ]);
        args.extend_from_slice(rest);
        self.openssl(&args);
    }

    /// A key and certificate for `cn` valid for `names`; returns the file stem.
    fn cert(&self, cn: &str, names: &[&str]) -> String {
        let stem = cn.replace('.', "_");
        let san: Vec<String> = names.iter().map(|n| format!("DNS:{n}")).collect();
        self.dir.write(
            &format!("{stem}.ext"),
            &format!("subjectAltName={}\n", san.join(",")),
        );
        self.req_new_key(
            &[],
            &format!("{stem}.key"),
            &[
                "-out",
                &format!("{stem}.csr"),
                "-subj",
                &format!("/CN={cn}"),
            ],
        );
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{stem}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &format!("{stem}.pem"),
            "-extfile",
            &format!("{stem}.ext"),
        ]);
        stem
    }

    /// Connects through `lb` as `name` and returns (certificate CN, status line).
    fn fetch(&self, lb: SocketAddr, name: &str, mode: &str) -> Result<(String, String), String> {
        let out = Command::new("python3")
            .arg(self.path("client.py"))
            .args([&lb.ip().to_string(), &lb.port().to_string(), name])
            .arg(self.path("ca.pem"))
            .arg(mode)
            .stdin(Stdio::null())
            .output()
            .expect("python3");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let mut lines = text.lines();
        match (out.status.success(), lines.next(), lines.next()) {
            (true, Some(cn), Some(status)) => Ok((cn.to_string(), status.to_string())),
            _ => Err(String::from_utf8_lossy(&out.stderr).to_string()),
        }
    }
}

/// A child process, killed on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An `openssl s_server -www` on a free port, killed on drop.
struct TlsBackend {
    _child: Killed,
    addr: SocketAddr,
}

impl TlsBackend {
    fn start(pki: &Pki, stem: &str) -> TlsBackend {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = Command::new("openssl")
            .args(["s_server", "-www", "-quiet", "-accept"])
            .arg(addr.to_string())
            .arg("-cert")
            .arg(pki.path(&format!("{stem}.pem")))
            .arg("-key")
            .arg(pki.path(&format!("{stem}.key")))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_server");
        wait_until("s_server to listen", || TcpStream::connect(addr).is_ok());
        TlsBackend {
            _child: Killed(child),
            addr,
        }
    }

    fn arg(&self) -> String {
        self.addr.to_string()
    }
}

/// The Python TLS backend of [`SERVER`], killed on drop.
struct PyBackend {
    _child: Killed,
    addr: SocketAddr,
}

impl PyBackend {
    fn start(pki: &Pki, stem: &str) -> PyBackend {
        let mut child = Command::new("python3")
            .arg(pki.path("server.py"))
            .arg(pki.path(&format!("{stem}.pem")))
            .arg(pki.path(&format!("{stem}.key")))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let port: u16 = line.trim().parse().expect("the backend's port");
        PyBackend {
            _child: Killed(child),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }
}

/// Two routes (one with a wildcard) and a default, each its own backend.
struct Setup {
    pki: Pki,
    _backends: Vec<TlsBackend>,
    lb: Ringlb,
}

fn setup(default: bool, extra: &[&str]) -> Setup {
    let pki = Pki::new();
    let api = pki.cert("api.example.com", &["api.example.com"]);
    let www = pki.cert("www.example.com", &["www.example.com", "*.web.example.com"]);
    let fallback = pki.cert("fallback", &["other.example.com"]);
    let backends: Vec<TlsBackend> = [api, www, fallback]
        .iter()
        .map(|stem| TlsBackend::start(&pki, stem))
        .collect();
    let api_route = format!("api.example.com={}", backends[0].arg());
    let www_route = format!("www.example.com,*.web.example.com={}", backends[1].arg());
    let mut start = Ringlb::builder()
        .arg("--route-by", "sni")
        .arg("--route", api_route)
        .arg("--route", www_route)
        .admin();
    if default {
        start = start.backend(backends[2].arg());
    }
    let lb = start.args(extra).start();
    Setup {
        pki,
        _backends: backends,
        lb,
    }
}

fn rejects(lb: &Ringlb, reason: &str) -> u64 {
    let (_, text) = http_get(lb.admin_addr(), "/metrics");
    metric(
        &text,
        &format!("ringlb_sni_rejects_total{{frontend=\"default\",reason=\"{reason}\"}}"),
    )
}

/// Whether the server closed `conn` (EOF or reset) without sending a byte.
fn closed_silently(conn: &mut TcpStream) -> bool {
    conn.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut buf = [0u8; 64];
    matches!(conn.read(&mut buf), Ok(0) | Err(_))
}

#[test]
fn each_name_reaches_its_own_backend() {
    let s = setup(true, &[]);
    let ok = "HTTP/1.0 200 ok".to_string();
    for (name, mode, cn) in [
        ("api.example.com", "whole", "api.example.com"),
        ("www.example.com", "whole", "www.example.com"),
        ("a.web.example.com", "whole", "www.example.com"),
        ("other.example.com", "whole", "fallback"),
        ("-", "whole", "fallback"),
        ("api.example.com", "bytewise", "api.example.com"),
        ("a.web.example.com", "bytewise", "www.example.com"),
    ] {
        let got = s.pki.fetch(s.lb.addr, name, mode);
        assert_eq!(got, Ok((cn.to_string(), ok.clone())), "{name} {mode}");
    }
    // /backends lists the routes' backends with their route.
    let (_, backends) = http_get(s.lb.admin_addr(), "/backends");
    assert!(
        backends.contains("\"route\":\"api.example.com\""),
        "{backends}"
    );
    assert!(
        backends.contains("\"route\":\"www.example.com\""),
        "{backends}"
    );
}

#[test]
fn not_tls_oversized_and_unroutable_are_closed_and_counted() {
    let s = setup(false, &[]);
    let mut http = TcpStream::connect(s.lb.addr).unwrap();
    http.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert!(closed_silently(&mut http));
    wait_until("not_tls counted", || rejects(&s.lb, "not_tls") == 1);

    // A handshake declaring more than 16 KiB is refused at its header.
    let mut big = TcpStream::connect(s.lb.addr).unwrap();
    big.write_all(&[0x16, 3, 1, 0x40, 0, 1, 0, 0x40, 0])
        .unwrap();
    assert!(closed_silently(&mut big));
    wait_until("oversized counted", || rejects(&s.lb, "oversized") == 1);

    // A ClientHello that would fit, but in 1-byte records: closed at the
    // 16 KiB cap, not read on.
    let mut tiny = TcpStream::connect(s.lb.addr).unwrap();
    let mut records = Vec::new();
    for byte in [1u8, 0, 0x30, 0]
        .into_iter()
        .chain(std::iter::repeat_n(0, 3000))
    {
        records.extend([0x16, 3, 1, 0, 1, byte]);
    }
    // The peer may close mid-write; what counts is what it did.
    let _ = tiny.write_all(&records);
    assert!(closed_silently(&mut tiny));
    wait_until("oversized counted", || rejects(&s.lb, "oversized") == 2);

    // No default route: an unknown name and no name are closed.
    assert!(s
        .pki
        .fetch(s.lb.addr, "other.example.com", "whole")
        .is_err());
    assert!(s.pki.fetch(s.lb.addr, "-", "whole").is_err());
    wait_until("no_route counted", || rejects(&s.lb, "no_route") == 2);
    // Routed names still work.
    let (cn, _) = s.pki.fetch(s.lb.addr, "api.example.com", "whole").unwrap();
    assert_eq!(cn, "api.example.com");
}

#[test]
fn a_silent_client_is_closed_at_sni_timeout() {
    let s = setup(true, &["--sni-timeout", "300ms"]);
    let started = Instant::now();
    let mut silent = TcpStream::connect(s.lb.addr).unwrap();
    assert!(closed_silently(&mut silent));
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(250), "{waited:?}");
    wait_until("timeout counted", || rejects(&s.lb, "timeout") == 1);
}

#[test]
fn routes_from_a_config_file_and_reload() {
    let pki = Pki::new();
    let api = pki.cert("api.example.com", &["api.example.com"]);
    let www = pki.cert("www.example.com", &["www.example.com"]);
    let (api, www) = (TlsBackend::start(&pki, &api), TlsBackend::start(&pki, &www));
    let config = |routes: &[(&str, &TlsBackend)]| {
        let mut text =
            "[[frontend]]\nname = \"tls\"\nlisten = \"127.0.0.1:0\"\nroute-by = \"sni\"\n"
                .to_string();
        for (name, backend) in routes {
            text += &format!(
                "[[frontend.route]]\nsni = [\"{name}\"]\nbackends = [\"{}\"]\nbalance = \"least-conn\"\n",
                backend.arg()
            );
        }
        text
    };
    let path = pki
        .dir
        .write("ringlb.toml", &config(&[("API.example.com.", &api)]));
    let lb = Ringlb::builder().config(&path).start();
    let addr = lb.frontend_addr("tls");
    let ok = |cn: &str| Ok((cn.to_string(), "HTTP/1.0 200 ok".to_string()));
    assert_eq!(
        pki.fetch(addr, "api.example.com", "whole"),
        ok("api.example.com")
    );
    assert!(pki.fetch(addr, "www.example.com", "whole").is_err());

    // A reload adds a route; the kept one goes on working.
    let both = config(&[("api.example.com", &api), ("www.example.com", &www)]);
    std::fs::write(&path, both).unwrap();
    lb.signal("HUP");
    wait_until("reloaded", || lb.log().contains("config reloaded"));
    assert_eq!(
        pki.fetch(addr, "www.example.com", "whole"),
        ok("www.example.com")
    );
    assert_eq!(
        pki.fetch(addr, "api.example.com", "whole"),
        ok("api.example.com")
    );
}

#[test]
fn a_mebibyte_each_way_and_200_concurrent_handshakes_across_routes() {
    let pki = Pki::new();
    let names = ["api.example.com", "www.example.com"];
    let backends: Vec<PyBackend> = names
        .iter()
        .map(|n| PyBackend::start(&pki, &pki.cert(n, &[n])))
        .collect();
    let routes: Vec<String> = names
        .iter()
        .zip(&backends)
        .map(|(n, b)| format!("{n}={}", b.addr))
        .collect();
    let lb = Ringlb::builder()
        .arg("--route-by", "sni")
        .arg("--route", &routes[0])
        .arg("--route", &routes[1])
        .start();
    let load = |connections: &str, size: &str| {
        let out = Command::new("python3")
            .arg(pki.path("load.py"))
            .args([&lb.addr.ip().to_string(), &lb.addr.port().to_string()])
            .arg(pki.path("ca.pem"))
            .args([connections, size])
            .args(names)
            .stdin(Stdio::null())
            .output()
            .expect("python3");
        assert!(out.status.success(), "{out:?}");
    };
    load("2", &(1 << 20).to_string());
    load("200", "1000");
}

#[test]
fn a_route_sends_its_own_proxy_header_then_the_client_hello_untouched() {
    const HELLO: &[u8] = include_bytes!("data/client_hello_openssl.bin");
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let recorder = common::Backend::spawn(move |mut conn| {
        let mut got = Vec::new();
        let _ = conn.read_to_end(&mut got);
        // Health checks connect and send nothing.
        if !got.is_empty() {
            let _ = tx.lock().unwrap().send(got);
        }
    });
    let dir = TempDir::new("sni-proxy");
    let config = dir.write(
        "ringlb.toml",
        &format!(
            "[[frontend]]\nname = \"tls\"\nlisten = \"127.0.0.1:0\"\nroute-by = \"sni\"\n\
             [[frontend.route]]\nsni = [\"api.example.com\"]\nbackends = [\"{}\"]\nsend-proxy = \"v1\"\n",
            recorder.arg()
        ),
    );
    let lb = Ringlb::builder().config(&config).start();
    let addr = lb.frontend_addr("tls");
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.write_all(HELLO).unwrap();
    conn.write_all(b"after").unwrap();
    conn.shutdown(std::net::Shutdown::Write).unwrap();
    let got = rx.recv_timeout(PATIENCE).unwrap();
    let client = conn.local_addr().unwrap();
    let mut expected = format!(
        "PROXY TCP4 {} {} {} {}\r\n",
        client.ip(),
        addr.ip(),
        client.port(),
        addr.port()
    )
    .into_bytes();
    expected.extend_from_slice(HELLO);
    expected.extend_from_slice(b"after");
    assert_eq!(got, expected);
}

#[test]
fn bad_route_flags_exit_2_with_one_line() {
    for (args, message) in [
        (
            &["--route-by", "sni"][..],
            "route-by sni needs a route (--route NAME=ADDR) or default backends",
        ),
        (
            &[
                "--route-by",
                "sni",
                "--route",
                "a.example=127.0.0.1:1",
                "--route",
                "A.example.=127.0.0.1:2",
            ][..],
            "server name 'a.example' is in two routes",
        ),
        (
            &["--route", "a.example=127.0.0.1:1"][..],
            "routes need --route-by sni",
        ),
        (
            &["--route-by", "sni", "--route", "a b=127.0.0.1:1"][..],
            "invalid server name 'a b'",
        ),
    ] {
        let mut all = vec!["--check", "--listen", "127.0.0.1:0"];
        all.extend_from_slice(args);
        let (status, out) = common::run_to_exit(&all);
        assert_eq!(status.code(), Some(2), "{args:?}: {out}");
        assert!(out.contains(message), "{args:?}: {out}");
    }
}
