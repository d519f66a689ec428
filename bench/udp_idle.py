#!/usr/bin/env python3
"""Memory per idle UDP session: opens --sessions sessions through a UDP
frontend (one client socket each, one datagram answered), then reports the
proxy's RSS growth per session while they sit idle.  Usage:

    python3 bench/udp_idle.py --port PORT --pid PID [--sessions N]

Prints one line: `@@udpidle sessions=N rss_before_kib=A rss_after_kib=B
bytes_per_session=C`.  The proxy must forward to an echo backend and keep
sessions open for longer than the run (its default 60 s session timeout).
"""
import argparse
import socket
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise SystemExit(f"no VmRSS for pid {pid}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--sessions", type=int, default=10000)
    args = ap.parse_args()
    to = ("127.0.0.1", args.port)
    # Warm up: one session, so the first-use allocations are not counted.
    warm = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    warm.settimeout(5)
    warm.sendto(b"warm", to)
    warm.recvfrom(64)
    time.sleep(0.5)
    before = rss_kib(args.pid)
    socks = []
    for i in range(args.sessions):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(5)
        s.sendto(b"q%d" % i, to)
        socks.append(s)
        # Keep the number in flight bounded: read the answers in batches.
        if len(socks) % 200 == 0:
            for t in socks[-200:]:
                t.recvfrom(64)
    for t in socks[len(socks) - len(socks) % 200:]:
        t.recvfrom(64)
    time.sleep(1.0)
    after = rss_kib(args.pid)
    per = (after - before) * 1024 / args.sessions
    print(f"@@udpidle sessions={args.sessions} rss_before_kib={before} "
          f"rss_after_kib={after} bytes_per_session={per:.0f}")


if __name__ == "__main__":
    main()
