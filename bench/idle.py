#!/usr/bin/env python3
"""Idle-connection memory cost of a proxy, for scripts/bench.sh.

Opens N TCP connections through the proxy, carries one tiny HTTP/1.1
keep-alive request/response over each (so every connection has really been
proxied end to end and any lazily allocated per-connection state exists),
keeps them all open, then reads the proxy's resident memory (VmRSS summed
over its whole process group, see procstat.py) and compares it with the
figure taken just before opening them.

Prints one machine-readable line, e.g.
  @@idle opened=4000 failed=0 recheck_failed=0 rss_before_kib=8120 \
         rss_after_kib=30544 kib_per_conn=5.606
and exits non-zero if any connection failed.

Sequential blocking sockets are deliberate: 4000 round trips on loopback take
about a second, and it keeps the script obviously correct.  No third-party
dependencies.

With --burst it opens every connection first, then sends each one's request
before reading any response, then reads them all: every connection has bytes
in flight at once, as when a fleet restart makes every client reconnect at
the same moment (the proxy's receive buffers are all wanted together).
"""
import argparse
import os
import socket
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the repo's bench/ dir
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from procstat import group_stats  # noqa: E402

REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\nUser-Agent: ringlb-bench-idle\r\n\r\n"


def round_trip(sock):
    """Send one keep-alive GET and read exactly one response. Raise on error."""
    sock.sendall(REQUEST)
    read_response(sock)


def read_response(sock):
    """Read exactly one response to a GET. Raise on error."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("connection closed before response headers")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = lines[0].split()
    if len(status) < 2 or status[1] != b"200":
        raise ConnectionError(f"unexpected status line {lines[0]!r}")
    length = None
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    if length is None:
        raise ConnectionError("response without Content-Length")
    while len(body) < length:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("connection closed mid-body")
        body += chunk
    if len(body) != length:
        raise ConnectionError("more bytes than Content-Length (pipelining bug?)")


def burst(args):
    """Opens args.conns connections, sends a request on each, then reads
    every response; returns the open sockets, the failures, the first error."""
    socks, failed, first_error = [], 0, None
    for _ in range(args.conns):
        try:
            socks.append(socket.create_connection(("127.0.0.1", args.port), timeout=args.timeout))
        except OSError as e:
            failed += 1
            first_error = first_error or repr(e)
            if failed > max(10, args.conns // 100):
                break
    sent = []
    for s in socks:
        try:
            s.sendall(REQUEST)
            sent.append(s)
        except OSError as e:
            failed += 1
            first_error = first_error or repr(e)
            s.close()
    ok = []
    for s in sent:
        try:
            read_response(s)
            ok.append(s)
        except (OSError, ValueError) as e:
            failed += 1
            first_error = first_error or repr(e)
            s.close()
    return ok, failed, first_error


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True, help="proxy port on 127.0.0.1")
    ap.add_argument("--conns", type=int, default=4000, help="connections to hold open")
    ap.add_argument("--pgid", type=int, required=True, help="proxy's process group")
    ap.add_argument("--settle", type=float, default=0.5,
                    help="seconds to wait before reading RSS (lets the proxy finish bookkeeping)")
    ap.add_argument("--timeout", type=float, default=5.0, help="per-socket-operation timeout")
    ap.add_argument("--burst", action="store_true",
                    help="open all, send on all, then read all (see above)")
    args = ap.parse_args()

    rss_before, _, nprocs = group_stats(args.pgid)
    if nprocs == 0:
        print(f"idle.py: no live process in group {args.pgid}", file=sys.stderr)
        return 2

    socks, failed, first_error = [], 0, None
    if args.burst:
        socks, failed, first_error = burst(args)
    for _ in range(0 if args.burst else args.conns):
        s = None
        try:
            s = socket.create_connection(("127.0.0.1", args.port), timeout=args.timeout)
            round_trip(s)
            socks.append(s)
        except (OSError, ValueError) as e:
            failed += 1
            first_error = first_error or repr(e)
            if s is not None:
                s.close()
            if failed > max(10, args.conns // 100):
                break  # clearly broken; don't spend minutes timing out

    time.sleep(args.settle)
    rss_after, _, _ = group_stats(args.pgid)

    # Check a sample of the connections is still usable, i.e. the proxy did
    # not silently drop idle connections (which would also make it look cheap).
    recheck_failed = 0
    step = max(1, len(socks) // 20)
    for s in socks[::step]:
        try:
            round_trip(s)
        except (OSError, ValueError) as e:
            recheck_failed += 1
            first_error = first_error or "recheck: " + repr(e)
    for s in socks:
        s.close()

    opened = len(socks)
    per_conn = (rss_after - rss_before) / opened if opened else 0.0
    print(f"@@idle opened={opened} failed={failed} recheck_failed={recheck_failed} "
          f"rss_before_kib={rss_before} rss_after_kib={rss_after} kib_per_conn={per_conn:.3f}")
    if first_error:
        print(f"idle.py: first error: {first_error}", file=sys.stderr)
    return 0 if failed == 0 and recheck_failed == 0 and opened == args.conns else 1


if __name__ == "__main__":
    sys.exit(main())
