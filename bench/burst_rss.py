#!/usr/bin/env python3
"""RSS of a ringlb before, at the peak of, and after two bursts.

    bench/burst_rss.py RINGLB_BIN [--conns 10000] [--busy 100] [--bytes 4194304]

Burst 1: CONNS connections opened through ringlb at once (one echoed byte
each), held, then closed. Burst 2: BUSY connections each echoing BYTES through
ringlb at once, then closed. After each burst the script waits for ringlb to
go idle plus SETTLE seconds and prints VmRSS: it shows whether memory goes
back towards the baseline after a burst. Loopback only, ports from the OS.
"""

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def echo(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


def backend_main(port):
    async def serve():
        server = await asyncio.start_server(echo, "127.0.0.1", port, backlog=4096)
        await server.serve_forever()

    asyncio.run(serve())


async def one_byte(port, hold, echoed):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"x")
    await writer.drain()
    assert await reader.readexactly(1) == b"x"
    echoed.append(1)
    await hold.wait()
    writer.close()


async def busy(port, nbytes):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    block = os.urandom(65536)

    async def send():
        for _ in range(nbytes // len(block)):
            writer.write(block)
            await writer.drain()
        writer.write_eof()

    sender = asyncio.create_task(send())
    got = 0
    while data := await reader.read(262144):
        got += len(data)
    await sender
    writer.close()
    assert got == nbytes // len(block) * len(block), got


def wait_listening(port):
    for _ in range(400):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.025)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def main(args):
    bport, lport = free_port(), free_port()
    backend = subprocess.Popen([sys.executable, __file__, "--backend", str(bport)])
    wait_listening(bport)
    lb = subprocess.Popen(
        [args.ringlb, "--listen", f"127.0.0.1:{lport}", "--backend", f"127.0.0.1:{bport}",
         "--workers", "2", "--no-health-checks", "--log-level", "warn"]
    )
    try:
        wait_listening(lport)
        await asyncio.sleep(args.settle)
        print(f"baseline            {rss_kib(lb.pid):>8} KiB")

        hold, echoed, tasks = asyncio.Event(), [], []
        for i in range(0, args.conns, 500):
            n = min(500, args.conns - i)
            tasks += [asyncio.create_task(one_byte(lport, hold, echoed)) for _ in range(n)]
            await asyncio.sleep(0.05)
        while len(echoed) < args.conns:
            if any(t.done() and t.exception() for t in tasks):
                raise SystemExit("a held connection failed")
            await asyncio.sleep(0.05)
        print(f"{args.conns} conns held    {rss_kib(lb.pid):>8} KiB")
        hold.set()
        await asyncio.gather(*tasks)
        await asyncio.sleep(args.settle)
        print(f"after they closed   {rss_kib(lb.pid):>8} KiB")

        await asyncio.gather(*[busy(lport, args.bytes) for _ in range(args.busy)])
        await asyncio.sleep(args.settle)
        print(f"after {args.busy} busy       {rss_kib(lb.pid):>8} KiB")
    finally:
        lb.terminate()
        backend.kill()
        lb.wait()
        backend.wait()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--backend":
        backend_main(int(sys.argv[2]))
        sys.exit(0)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("ringlb")
    p.add_argument("--conns", type=int, default=10000)
    p.add_argument("--busy", type=int, default=100)
    p.add_argument("--bytes", type=int, default=4 * 1024 * 1024)
    p.add_argument("--settle", type=float, default=3.0)
    asyncio.run(main(p.parse_args()))
