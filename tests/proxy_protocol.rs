//! PROXY protocol through the real binary: the bytes a backend receives with
//! --send-proxy v1/v2, a header accepted from an upstream balancer with
//! --accept-proxy, and bad or late headers closing only their own connection.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::mpsc;
use std::sync::Mutex;

use common::{http_get, metric, read_to_end, wait_until, Backend, Ringlb, PATIENCE};

/// A backend that reports everything it received, once the client is done.
fn recorder() -> (Backend, mpsc::Receiver<Vec<u8>>) {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let backend = Backend::spawn(move |mut conn| {
        let mut got = Vec::new();
        let _ = conn.read_to_end(&mut got);
        if !got.is_empty() {
            let _ = tx.lock().unwrap().send(got);
        }
    });
    (backend, rx)
}

fn send_and_close(lb: &Ringlb, bytes: &[u8]) -> TcpStream {
    let mut conn = lb.connect();
    conn.write_all(bytes).unwrap();
    conn.shutdown(Shutdown::Write).unwrap();
    conn
}

/// Sends `payload` through ringlb with `--send-proxy version` to a
/// [`recorder`]; returns ringlb, the client connection and what the backend
/// received.
fn through_send_proxy(version: &str, payload: &[u8]) -> (Ringlb, TcpStream, Vec<u8>) {
    let (backend, got) = recorder();
    let lb = Ringlb::over(&backend).arg("--send-proxy", version).start();
    let conn = send_and_close(&lb, payload);
    let received = got.recv_timeout(PATIENCE).unwrap();
    (lb, conn, received)
}

#[test]
fn send_proxy_v1_announces_the_client() {
    let (lb, conn, received) = through_send_proxy("v1", b"hello");
    let client = conn.local_addr().unwrap();
    let expected = format!(
        "PROXY TCP4 {} {} {} {}\r\nhello",
        client.ip(),
        lb.addr.ip(),
        client.port(),
        lb.addr.port()
    );
    assert_eq!(String::from_utf8_lossy(&received), expected);
}

#[test]
fn send_proxy_v2_announces_the_client() {
    let (lb, conn, received) = through_send_proxy("v2", b"payload");
    let client = conn.local_addr().unwrap();
    let mut expected = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    expected.extend_from_slice(&[0x21, 0x11, 0x00, 12]);
    let (SocketAddr::V4(c), SocketAddr::V4(l)) = (client, lb.addr) else {
        panic!("IPv4 expected")
    };
    expected.extend_from_slice(&c.ip().octets());
    expected.extend_from_slice(&l.ip().octets());
    expected.extend_from_slice(&c.port().to_be_bytes());
    expected.extend_from_slice(&l.port().to_be_bytes());
    expected.extend_from_slice(b"payload");
    assert_eq!(received, expected);
}

#[test]
fn accept_proxy_takes_the_client_from_the_header_and_passes_it_on() {
    let (backend, got) = recorder();
    let lb = Ringlb::over(&backend)
        .flag("--accept-proxy")
        .arg("--send-proxy", "v1")
        .access_log()
        .start();
    // The header and the first payload bytes in one write, as a balancer sends them.
    let _conn = send_and_close(&lb, b"PROXY TCP4 192.0.2.1 198.51.100.7 5555 443\r\nhello");
    let received = got.recv_timeout(PATIENCE).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&received),
        "PROXY TCP4 192.0.2.1 198.51.100.7 5555 443\r\nhello"
    );
    wait_until("access line with the real client", || {
        lb.log().contains("client=192.0.2.1:5555")
    });

    // v2 in, payload only out.
    let (backend2, got2) = recorder();
    let lb2 = Ringlb::over(&backend2).flag("--accept-proxy").start();
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.extend_from_slice(&[
        0x21, 0x11, 0x00, 12, 192, 0, 2, 1, 127, 0, 0, 1, 0x15, 0xb3, 0, 80,
    ]);
    header.extend_from_slice(b"data");
    let _conn = send_and_close(&lb2, &header);
    assert_eq!(got2.recv_timeout(PATIENCE).unwrap(), b"data");
}

#[test]
fn bad_headers_close_only_their_connection_and_are_counted() {
    let backend = Backend::echo();
    let lb = Ringlb::over(&backend)
        .flag("--accept-proxy")
        .arg("--proxy-header-timeout", "300ms")
        .admin()
        .workers(2)
        .start();
    let admin: SocketAddr = lb.admin_addr();
    // A client that stays open throughout, to show others are not harmed.
    let mut steady = lb.connect();
    steady
        .write_all(b"PROXY TCP4 10.0.0.1 10.0.0.2 1 2\r\n")
        .unwrap();
    steady.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    steady.read_exact(&mut buf).unwrap();

    let mut long_v1 = b"PROXY TCP4 ".to_vec();
    long_v1.extend(std::iter::repeat_n(b'1', 200));
    let mut v2_oversized = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    v2_oversized.extend_from_slice(&[0x21, 0x11, 0xEA, 0x60]);
    let mut v2_bad_version = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    v2_bad_version.extend_from_slice(&[0x11, 0x11, 0x00, 12]);
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("plain HTTP", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        (
            "bad protocol",
            b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(),
        ),
        (
            "bad address",
            b"PROXY TCP4 1.2.3.400 5.6.7.8 1 2\r\n".to_vec(),
        ),
        ("family mismatch", b"PROXY TCP4 ::1 ::1 1 2\r\n".to_vec()),
        (
            "bad port",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n".to_vec(),
        ),
        ("v1 too long", long_v1),
        ("v2 oversized", v2_oversized),
        ("v2 bad version", v2_bad_version),
        ("truncated then closed", b"PROXY TCP4 1.2.3.4".to_vec()),
    ];
    for (what, bytes) in &bad {
        let mut conn = send_and_close(&lb, bytes);
        let mut rest = Vec::new();
        let _ = conn.read_to_end(&mut rest);
        assert!(rest.is_empty(), "{what}: got {rest:?}");
    }
    // A client that sends nothing is closed after the header timeout.
    let mut silent = lb.connect();
    let mut rest = Vec::new();
    let _ = silent.read_to_end(&mut rest);
    assert!(rest.is_empty());

    let expected = bad.len() as u64 + 1;
    wait_until("errors counted", || {
        let text = http_get(admin, "/metrics").1;
        metric(
            &text,
            "ringlb_proxy_header_errors_total{frontend=\"default\"}",
        ) == expected
    });
    assert_eq!(backend.served(), 1, "a bad header reached a backend");
    steady.write_all(b"pong").unwrap();
    steady.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"pong");
    steady.shutdown(Shutdown::Write).unwrap();
    assert!(read_to_end(&mut steady).is_empty());
}

/// A v2 header from 192.0.2.1:5555 to 127.0.0.1:80 carrying `tlvs`.
fn v2_header_with(tlvs: &[u8]) -> Vec<u8> {
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.extend_from_slice(&[0x21, 0x11]);
    header.extend_from_slice(&(12 + tlvs.len() as u16).to_be_bytes());
    header.extend_from_slice(&[192, 0, 2, 1, 127, 0, 0, 1, 0x15, 0xb3, 0, 80]);
    header.extend_from_slice(tlvs);
    header
}

#[test]
fn proxy_v2_tlvs_are_passed_on_only_when_forwarded_and_the_endpoint_is_logged() {
    // An AWS VPC endpoint ID (type 0xEA, subtype 0x01), an authority (0x02),
    // and a CRC32C (0x03) that describes the client's header, not ringlb's.
    let endpoint = [0xea, 0x00, 0x05, 0x01, b'v', b'p', b'c', b'e'];
    let authority = [0x02, 0x00, 0x03, b'a', b'p', b'i'];
    let crc = [0x03, 0x00, 0x04, 1, 2, 3, 4];
    let tlvs = [&endpoint[..], &authority, &crc].concat();
    let mut sent = v2_header_with(&tlvs);
    sent.extend_from_slice(b"data");

    for (forward, passed_on) in [
        (true, [&endpoint[..], &authority].concat()),
        (false, Vec::new()),
    ] {
        let (backend, got) = recorder();
        let mut start = Ringlb::over(&backend)
            .flag("--accept-proxy")
            .arg("--send-proxy", "v2")
            .access_log()
            .arg("--log-format", "json");
        if forward {
            start = start.arg("--proxy-tlvs", "forward");
        }
        let lb = start.start();
        let _conn = send_and_close(&lb, &sent);
        let mut expected = v2_header_with(&passed_on);
        // The same addresses, announced by ringlb: the backend sees the
        // client from the header, and the destination it named.
        expected.extend_from_slice(b"data");
        assert_eq!(
            got.recv_timeout(PATIENCE).unwrap(),
            expected,
            "forward: {forward}"
        );
        // Forwarded or not, the access line names the endpoint.
        let mut line = None;
        wait_until("access line", || {
            line = lb
                .log()
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|v| v["target"] == "ringlb::access");
            line.is_some()
        });
        let fields = &line.unwrap()["fields"];
        assert_eq!(fields["endpoint"], "vpce", "forward: {forward}");
        assert_eq!(fields["client"], "192.0.2.1:5555");
    }
}

#[test]
fn forwarding_tlvs_where_none_can_come_or_go_is_refused() {
    let (status, err) = common::run_to_exit(&[
        "--listen",
        "127.0.0.1:0",
        "--backend",
        "127.0.0.1:9",
        "--proxy-tlvs",
        "forward",
        "--send-proxy",
        "v1",
        "--accept-proxy",
    ]);
    assert!(!status.success());
    assert!(
        err.contains("--proxy-tlvs forward needs --accept-proxy and --send-proxy v2"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}
