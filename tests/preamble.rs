//! What ringlb sends a backend before relaying (a PROXY header, the client
//! bytes it read to route) is under the idle timeout like the relay: a
//! backend that takes none of it is cut, not waited on for ever.
//!
//! On loopback a socket's send buffer grows to megabytes, so no preamble
//! (at most a 16 KiB ClientHello) can fill it. The test makes its own
//! network namespace whose TCP buffers are 4 KiB, and runs ringlb, a backend
//! that never reads, and the client in it; the namespace is removed when the
//! test ends, and any left by a killed run is removed by the next.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use common::{wait_until, Ringlb};

/// Prefix of the namespaces this test makes; the test's pid follows.
const PREFIX: &str = "ringlb-preamble-";

/// A network namespace of this test, removed on drop.
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        // Namespaces of runs that were killed before they could clean up.
        let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
        for line in String::from_utf8_lossy(&list.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if let Some(pid) = name.strip_prefix(PREFIX) {
                if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                    let _ = Command::new("ip").args(["netns", "del", name]).status();
                }
            }
        }
        let name = format!("{PREFIX}{}", std::process::id());
        run(&["ip", "netns", "add", &name]);
        let ns = Netns(name);
        ns.run(&["ip", "link", "set", "lo", "up"]);
        // Send and receive buffers of 4 KiB at most, for every socket in it.
        for key in ["net.ipv4.tcp_wmem", "net.ipv4.tcp_rmem"] {
            ns.run(&["sysctl", "-qw", &format!("{key}=4096 4096 4096")]);
        }
        ns
    }

    /// `argv` run in the namespace.
    fn command(&self, argv: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.0]).args(argv);
        cmd
    }

    fn run(&self, argv: &[&str]) {
        let status = self.command(argv).status().unwrap();
        assert!(status.success(), "{argv:?} in {}: {status}", self.0);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn run(argv: &[&str]) {
    let status = Command::new(argv[0]).args(&argv[1..]).status().unwrap();
    assert!(status.success(), "{argv:?}: {status}");
}

/// A child killed on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A backend that accepts and never reads a byte; prints its port.
const BACKEND: &str = r#"
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
s.bind(("127.0.0.1", 0))
s.listen()
print(s.getsockname()[1], flush=True)
held = []
while True:
    held.append(s.accept()[0])
"#;

/// A client that sends a 15 KiB ClientHello (a padding extension makes it
/// large) to argv[1]:argv[2], then says whether ringlb closed the
/// connection within 20 s.
const CLIENT: &str = r#"
import socket, struct, sys
def ext(kind, data):
    return struct.pack(">HH", kind, len(data)) + data
name = b"big.test"
sni = ext(0, struct.pack(">HBH", len(name) + 3, 0, len(name)) + name)
exts = sni + ext(21, bytes(15000))
body = (b"\x03\x03" + bytes(32) + b"\x00" + struct.pack(">H", 2) + b"\x13\x01"
        + b"\x01\x00" + struct.pack(">H", len(exts)) + exts)
hs = b"\x01" + struct.pack(">I", len(body))[1:] + body
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
s.sendall(b"\x16\x03\x01" + struct.pack(">H", len(hs)) + hs)
s.settimeout(20)
try:
    while s.recv(4096):
        pass
    print("closed")
except ConnectionResetError:
    print("closed")
except socket.timeout:
    print("still open after 20 s")
"#;

#[test]
fn a_backend_that_takes_no_preamble_is_cut_at_the_idle_timeout() {
    let ns = Netns::new();
    let mut backend = Killed(
        ns.command(&["python3", "-c", BACKEND])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut port = String::new();
    BufReader::new(backend.0.stdout.as_mut().unwrap())
        .read_line(&mut port)
        .unwrap();
    let backend_addr = format!("127.0.0.1:{}", port.trim());
    let wrapper = ["ip", "netns", "exec", ns.0.as_str()];
    let lb = Ringlb::builder()
        .wrapped(&wrapper)
        .workers(1)
        .no_health_checks()
        .access_log()
        .arg("--route-by", "sni")
        .backend(backend_addr.as_str())
        .arg("--idle-timeout", "1s")
        .start();

    let port = lb.addr.port().to_string();
    let out = ns
        .command(&["python3", "-c", CLIENT, "127.0.0.1", &port])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        said.trim(),
        "closed",
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        lb.log()
    );
    wait_until("the close logged as an idle timeout", || {
        lb.log().contains("reason=idle timeout")
    });
}
