#!/usr/bin/env python3
"""One TLS request through a proxy with a given server name (SNI).

scripts/bench.sh's sni workload uses it to check that a proxy is up and routes
each name to its own TLS backend: the backend's certificate is not verified
(self-signed, made for the run), but its one-line answer must be the expected
one ("tls-a" or "tls-b").

Usage: tls_probe.py PORT SERVER_NAME EXPECTED_BODY
Exit status 0 if the answer is HTTP 200 with that body, 1 otherwise.
No third-party dependencies.
"""
import socket
import ssl
import sys


def main():
    port, name, expected = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as raw:
            with ctx.wrap_socket(raw, server_hostname=name) as tls:
                tls.sendall(b"GET / HTTP/1.1\r\nHost: " + name.encode()
                            + b"\r\nConnection: close\r\n\r\n")
                data = b""
                while chunk := tls.recv(4096):
                    data += chunk
    except (OSError, ssl.SSLError) as e:
        sys.exit(f"tls_probe: {name} on port {port}: {e}")
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200") or body.strip() != expected.encode():
        status = head.split(b"\r\n", 1)[0]
        sys.exit(f"tls_probe: {name} on port {port}: got {status!r} {body[:40]!r}, wanted 200 {expected}")


if __name__ == "__main__":
    main()
