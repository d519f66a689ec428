#!/usr/bin/env python3
"""Resident memory and CPU time of a whole process group, from /proc.

scripts/bench.sh starts every server with setsid, so a server and everything it
forks (nginx master + workers) share one process group whose id is the pid of
the first process.  Summing over the group is what makes "RSS of nginx" and
"RSS of haproxy" comparable: nginx spreads its memory over several processes,
haproxy and ringlb keep it in one (multi-threaded) process.

/proc/PID/stat's utime+stime already include every thread of that process
(not its reaped children, which is what we want: we count workers ourselves).

Usage: procstat.py PGID        -> prints "RSS_KIB CPU_SECONDS NPROCS"
No third-party dependencies.
"""
import os
import sys

CLK_TCK = os.sysconf("SC_CLK_TCK")


def group_pids(pgid):
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read().decode("ascii", "replace")
        except OSError:  # process exited while we were scanning
            continue
        # comm (field 2) is in parentheses and may contain spaces: split after
        # the last ')'.  rest[0] is field 3 (state), rest[2] is field 5 (pgrp).
        rest = stat[stat.rfind(")") + 2:].split()
        if int(rest[2]) == pgid and rest[0] != "Z":
            pids.append(int(name))
    return pids


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])  # always reported in kB
    except OSError:
        pass
    return 0


def cpu_seconds(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
    except OSError:
        return 0.0
    rest = stat[stat.rfind(")") + 2:].split()
    # fields 14 (utime) and 15 (stime), counted from 1 with rest[0] = field 3
    return (int(rest[11]) + int(rest[12])) / CLK_TCK


def group_stats(pgid):
    """(rss_kib, cpu_seconds, nprocs) summed over the process group."""
    pids = group_pids(pgid)
    return (sum(rss_kib(p) for p in pids),
            sum(cpu_seconds(p) for p in pids),
            len(pids))


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: procstat.py PGID")
    rss, cpu, n = group_stats(int(sys.argv[1]))
    if n == 0:
        sys.exit(f"procstat.py: no live process in group {sys.argv[1]}")
    print(f"{rss} {cpu:.2f} {n}")


if __name__ == "__main__":
    main()
