#!/usr/bin/env python3
"""ringlb soak: long, hostile use with every byte checked.

Run through scripts/soak.sh, which builds ringlb and installs wrk. This file
holds the two halves:

* ``soak.py backend --port P --kind xfer|http``: one backend process. ``xfer``
  speaks the checked-transfer protocol below; ``http`` answers keep-alive GETs
  for wrk.
* ``soak.py run ...``: the driver. It starts ringlb (two frontends, one per
  backend kind), the backends, N transfer clients and wrk; it kills and
  restarts backends and reloads ringlb (SIGHUP) with changed weights and an
  added or removed backend, for the whole duration; then it waits for ringlb
  to go idle and prints one summary.

The transfer protocol (client -> backend, through ringlb), both ways at once:
  client sends   8-byte big-endian DOWN, then UP random bytes, then half-closes
  backend sends  DOWN random bytes while it reads, then, once it saw EOF,
                 sha256(what it read) and sha256(what it sent), then closes.
The client checks both digests, the exact length and the final EOF. A
transfer is a *mismatch* when a digest differs or a byte too many arrives:
corruption. It is *cut* when the stream ends early: legitimate while a backend
was being killed, a defect otherwise (a clean end that was not the end).

Exit status: 0 when nothing was corrupted, no transfer was cut without a
backend kill to explain it, and ringlb's fd count and RSS at the end are
within bounds of the start; 1 otherwise; 2 for bad usage.
"""

import argparse
import hashlib
import json
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request

HTTP_BODY = b"Hello, world\n"
MAX_XFER = 4 * 1024 * 1024
CHUNK = 64 * 1024


# ------------------------------------------------------------------ backends --


def serve_xfer(conn):
    """One checked transfer: read the upload while sending the download."""
    try:
        head = recv_exact(conn, 8)
        if head is None:
            return
        (down,) = struct.unpack(">Q", head)
        payload = random.randbytes(down) if down else b""
        sent = hashlib.sha256(payload).digest()

        def send():
            try:
                conn.sendall(payload)
            except OSError:
                pass

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        got = hashlib.sha256()
        while True:
            data = conn.recv(CHUNK)
            if not data:
                break
            got.update(data)
        sender.join()
        conn.sendall(got.digest() + sent)
        conn.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    finally:
        conn.close()


def serve_http(conn):
    """Keep-alive HTTP/1.1: one fixed answer per request head."""
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(HTTP_BODY), HTTP_BODY)
    buf = b""
    try:
        while True:
            data = conn.recv(CHUNK)
            if not data:
                return
            buf += data
            while b"\r\n\r\n" in buf:
                _, buf = buf.split(b"\r\n\r\n", 1)
                conn.sendall(answer)
    except OSError:
        pass
    finally:
        conn.close()


def backend_main(args):
    serve = serve_xfer if args.kind == "xfer" else serve_http
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", args.port))
    lsock.listen(1024)
    while True:
        conn, _ = lsock.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        data = sock.recv(n - len(buf))
        if not data:
            return None
        buf += data
    return bytes(buf)


# -------------------------------------------------------------------- driver --


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_duration(text):
    m = re.fullmatch(r"(\d+)(ms|s|m|h)?", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"bad duration '{text}' (use e.g. 30s, 10m)")
    n, unit = int(m.group(1)), m.group(2) or "s"
    return n * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


class Stats:
    """Counters shared by the client threads (one lock; the clients are the load)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.ok = 0
        self.bytes_verified = 0
        self.mismatches = 0
        self.failures = {}  # cause -> count
        self.unexplained = []  # cut transfers with no backend kill during them

    def fail(self, cause):
        with self.lock:
            self.failures[cause] = self.failures.get(cause, 0) + 1


class Backends:
    """The backend processes, their ports, and when each kill happened."""

    def __init__(self, script, kind, count, spare):
        self.script, self.kind = script, kind
        self.ports = [free_port() for _ in range(count + spare)]
        self.procs = {}
        self.kills = []  # (start, end) windows in which a backend was down
        self.lock = threading.Lock()
        for port in self.ports:
            self.start(port)

    def start(self, port):
        self.procs[port] = subprocess.Popen(
            [sys.executable, self.script, "backend", "--port", str(port), "--kind", self.kind],
            stdin=subprocess.DEVNULL,
        )
        wait_listening(port)

    def kill_one(self, rng, down_for):
        port = rng.choice(self.ports)
        # The window opens before the kill, so that a transfer the kill cuts
        # finds it even while the backend is still down.
        with self.lock:
            self.kills.append((time.monotonic(), float("inf")))
            index = len(self.kills) - 1
        proc = self.procs[port]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        time.sleep(down_for)
        self.start(port)
        with self.lock:
            self.kills[index] = (self.kills[index][0], time.monotonic())

    def explains(self, t0, t1):
        """Whether a backend was killed while a transfer [t0, t1] was open."""
        with self.lock:
            return any(k0 <= t1 and t0 <= k1 for k0, k1 in self.kills)

    def stop(self):
        for proc in self.procs.values():
            proc.kill()
            proc.wait()


def wait_listening(port, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.02)
    raise SystemExit(f"soak: nothing listens on 127.0.0.1:{port} after {timeout}s")


def transfer_size(rng):
    """1 B to 4 MiB, spread evenly over the orders of magnitude."""
    return min(MAX_XFER, max(1, int(2 ** rng.uniform(0, 22))))


def one_transfer(addr, rng, stats, backends, timeout):
    up, down = transfer_size(rng), transfer_size(rng)
    payload = random.randbytes(up)
    want_up = hashlib.sha256(payload).digest()
    t0 = time.monotonic()
    try:
        sock = socket.create_connection(addr, timeout=timeout)
    except OSError as err:
        stats.fail(f"connect: {err.strerror or err}")
        return
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    send_err = []

    def send():
        try:
            sock.sendall(struct.pack(">Q", down) + payload)
            sock.shutdown(socket.SHUT_WR)
        except OSError as err:
            send_err.append(err)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    got = hashlib.sha256()
    received = 0
    trailer = b""
    cause = None
    try:
        while True:
            data = sock.recv(CHUNK)
            if not data:
                break
            if received < down:
                take = min(len(data), down - received)
                got.update(data[:take])
                received += take
                data = data[take:]
            trailer += data
            if len(trailer) > 64:
                break
    except socket.timeout:
        cause = "timeout"
    except OSError as err:
        cause = f"reset ({err.strerror or err})"
    finally:
        sender.join()
        sock.close()
    t1 = time.monotonic()
    if cause is None and len(trailer) > 64:
        cause = "mismatch"
    elif cause is None and len(trailer) == 64:
        if trailer[:32] == want_up and trailer[32:] == got.digest():
            with stats.lock:
                stats.ok += 1
                stats.bytes_verified += up + down
            return
        cause = "mismatch"
    elif cause is None:
        cause = "cut (clean end before the last byte)"
    if cause == "mismatch":
        with stats.lock:
            stats.mismatches += 1
            stats.unexplained.append(f"mismatch: up={up} down={down}")
        return
    explained = backends.explains(t0, t1)
    stats.fail(cause + ("" if explained else ", no backend kill to explain it"))
    if not explained and cause.startswith("cut"):
        with stats.lock:
            stats.unexplained.append(f"cut: up={up} down={down} received={received}+{len(trailer)}")


def client_loop(addr, seed, stats, backends, stop, timeout):
    rng = random.Random(seed)
    while not stop.is_set():
        one_transfer(addr, rng, stats, backends, timeout)


def proc_stat(pid):
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def write_config(path, fe, weights, with_spare):
    def backends(ports, ws):
        return ", ".join(f'{{ addr = "127.0.0.1:{p}", weight = {w} }}' for p, w in zip(ports, ws))

    xfer_ports = fe["xfer"].ports if with_spare else fe["xfer"].ports[:-1]
    text = f"""workers = 2
drain-timeout = "10s"
access-log = true
admin = "127.0.0.1:{fe['admin']}"

[[frontend]]
name = "xfer"
listen = "127.0.0.1:{fe['xfer_port']}"
balance = "least-conn"
connect-timeout = "2s"
splice = "auto"
backends = [{backends(xfer_ports, weights)}]
[frontend.health]
interval = "500ms"
timeout = "500ms"

[[frontend]]
name = "http"
listen = "127.0.0.1:{fe['http_port']}"
splice = "auto"
backends = [{backends(fe['http'].ports, [1] * len(fe['http'].ports))}]
[frontend.health]
interval = "500ms"
timeout = "500ms"
"""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def admin_get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return r.read().decode()


def active_connections(admin_port):
    total = 0
    for line in admin_get(admin_port, "/metrics").splitlines():
        if line.startswith("ringlb_connections_active"):
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def run_main(args):
    script = os.path.abspath(__file__)
    workdir = args.workdir
    os.makedirs(workdir, exist_ok=True)
    rng = random.Random(args.seed)
    fe = {
        "xfer": Backends(script, "xfer", 3, spare=1),
        "http": Backends(script, "http", 2, spare=0),
        "xfer_port": free_port(),
        "http_port": free_port(),
        "admin": free_port(),
    }
    config = os.path.join(workdir, "soak.toml")
    write_config(config, fe, [1, 1, 1], with_spare=False)
    log = open(os.path.join(workdir, "ringlb.log"), "w")
    lb = subprocess.Popen(
        [args.ringlb, "--config", config], stdin=subprocess.DEVNULL, stdout=log, stderr=log
    )
    try:
        return drive(args, rng, fe, config, lb)
    finally:
        if lb.poll() is None:
            lb.send_signal(signal.SIGTERM)
            try:
                lb.wait(timeout=15)
            except subprocess.TimeoutExpired:
                lb.kill()
        fe["xfer"].stop()
        fe["http"].stop()
        log.close()


def drive(args, rng, fe, config, lb):
    for port in (fe["xfer_port"], fe["http_port"], fe["admin"]):
        wait_listening(port)
    rss0, fds0 = proc_stat(lb.pid)
    print(f"[soak] ringlb pid {lb.pid}: start RSS {rss0} KiB, {fds0} fds; "
          f"{args.connections} transfer clients + wrk for {args.duration:g}s", flush=True)

    stats = Stats()
    stop = threading.Event()
    addr = ("127.0.0.1", fe["xfer_port"])
    clients = [
        threading.Thread(target=client_loop, args=(addr, args.seed + i, stats, fe["xfer"], stop, 30),
                         daemon=True)
        for i in range(args.connections)
    ]
    for c in clients:
        c.start()
    wrk = subprocess.Popen(
        ["wrk", "-t1", f"-c{args.wrk_connections}", f"-d{max(1, int(args.duration))}s",
         "--timeout", "5s", f"http://127.0.0.1:{fe['http_port']}/"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )

    # Chaos until the time is up: a backend kill or a reload every few seconds.
    kills = reloads = 0
    deadline = time.monotonic() + args.duration
    next_kill = time.monotonic() + min(3, args.duration / 4)
    next_reload = time.monotonic() + min(2, args.duration / 5)
    with_spare = False
    while time.monotonic() < deadline:
        now = time.monotonic()
        if lb.poll() is not None:
            print(f"[soak] ringlb exited with {lb.returncode} during the soak", flush=True)
            stop.set()
            return 1
        if now >= next_kill:
            pool = fe["xfer"] if kills % 3 != 2 else fe["http"]
            pool.kill_one(rng, down_for=0.5)
            kills += 1
            next_kill = now + args.kill_every
        elif now >= next_reload:
            with_spare = not with_spare
            n = len(fe["xfer"].ports) if with_spare else len(fe["xfer"].ports) - 1
            write_config(config, fe, [rng.randint(1, 5) for _ in range(n)], with_spare)
            lb.send_signal(signal.SIGHUP)
            reloads += 1
            next_reload = now + args.reload_every
        else:
            time.sleep(0.05)
    stop.set()
    for c in clients:
        c.join(timeout=60)
    wrk_out, _ = wrk.communicate(timeout=60)

    # Let ringlb go idle, then compare its footprint with the start.
    idle_deadline = time.monotonic() + 30
    active = None
    while time.monotonic() < idle_deadline:
        try:
            active = active_connections(fe["admin"])
        except OSError:
            active = None
        if active == 0:
            break
        time.sleep(0.1)
    time.sleep(1)  # health probes in flight settle
    # Pipes of spliced transfers stay pooled until a worker's trim finds
    # them unused for a whole interval (2 s).
    settle = time.monotonic() + 6
    rss1, fds1 = proc_stat(lb.pid)
    while fds1 > fds0 + args.max_fd_growth and time.monotonic() < settle:
        time.sleep(0.5)
        rss1, fds1 = proc_stat(lb.pid)
    try:
        spliced = sum(
            int(float(line.rsplit(" ", 1)[1]))
            for line in admin_get(fe["admin"], "/metrics").splitlines()
            if line.startswith("ringlb_spliced_bytes_total")
        )
    except OSError:
        spliced = None

    reqs = re.search(r"(\d+) requests in", wrk_out)
    wrk_errors = re.search(r"Socket errors: (.*)", wrk_out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", wrk_out)
    problems = []
    if stats.mismatches:
        problems.append(f"{stats.mismatches} corrupted transfer(s)")
    cut = [u for u in stats.unexplained if u.startswith("cut")]
    if cut:
        problems.append(f"{len(cut)} transfer(s) cut short with a clean end and no backend kill")
    if fds1 > fds0 + args.max_fd_growth:
        problems.append(f"fds grew from {fds0} to {fds1} (bound +{args.max_fd_growth})")
    if rss1 > rss0 + args.max_rss_growth_mib * 1024:
        problems.append(f"RSS grew from {rss0} to {rss1} KiB (bound +{args.max_rss_growth_mib} MiB)")
    if active != 0:
        problems.append(f"ringlb still had {active} active connection(s) 30 s after the load stopped")
    if stats.ok == 0:
        problems.append("no transfer succeeded")
    if not reqs or int(reqs.group(1)) == 0:
        problems.append("wrk served no request")

    summary = {
        "duration_s": args.duration,
        "transfer_clients": args.connections,
        "transfers_ok": stats.ok,
        "bytes_verified": stats.bytes_verified,
        "bytes_spliced_by_ringlb": spliced,
        "mismatches": stats.mismatches,
        "failures_by_cause": stats.failures,
        "http_requests": int(reqs.group(1)) if reqs else 0,
        "http_socket_errors": wrk_errors.group(1) if wrk_errors else "none",
        "http_non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "backend_kills": kills,
        "reloads": reloads,
        "rss_kib": [rss0, rss1],
        "fds": [fds0, fds1],
        "result": "FAIL: " + "; ".join(problems) if problems else "PASS",
    }
    print("[soak] summary")
    print(json.dumps(summary, indent=2))
    for line in stats.unexplained[:10]:
        print(f"[soak]   {line}")
    return 1 if problems else 0


def main():
    parser = argparse.ArgumentParser(prog="soak.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("backend")
    b.add_argument("--port", type=int, required=True)
    b.add_argument("--kind", choices=["xfer", "http"], required=True)
    r = sub.add_parser("run")
    r.add_argument("--ringlb", required=True)
    r.add_argument("--duration", type=parse_duration, default=parse_duration("30s"))
    r.add_argument("--connections", type=int, default=16)
    r.add_argument("--wrk-connections", type=int, default=16)
    r.add_argument("--kill-every", type=parse_duration, default=parse_duration("4s"))
    r.add_argument("--reload-every", type=parse_duration, default=parse_duration("3s"))
    r.add_argument("--max-fd-growth", type=int, default=16)
    r.add_argument("--max-rss-growth-mib", type=int, default=128)
    r.add_argument("--seed", type=int, default=1)
    r.add_argument("--workdir", required=True)
    args = parser.parse_args()
    if args.cmd == "backend":
        backend_main(args)
        return 0
    if args.connections < 1:
        parser.error(f"--connections must be at least 1, got {args.connections}")
    return run_main(args)


if __name__ == "__main__":
    sys.exit(main())
