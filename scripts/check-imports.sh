#!/usr/bin/env bash
# Imports follow the byte. Every module of src/ (a file, or a folder's
# mod.rs) is a node; every path it names (`crate::a::b`, `super::x`) is an
# arrow to the deepest module that path reaches. An arrow between a module
# and its own parent or child is how Rust folders work and is left alone;
# every other arrow is counted between the two siblings it crosses (for
# src/tcp/accept.rs -> src/backend/pool.rs: tcp -> backend; for
# src/backend/upstream.rs -> src/backend/pool.rs: upstream -> pool).
#
# It fails when
# - the top-level modules' arrows do not all point down LEVELS below, the
#   byte's path from the process to the ring (a top-level module missing
#   from LEVELS fails too: give it its place);
# - siblings anywhere import each other in a circle.
# `--graph` prints the top-level arrows with their levels instead.
set -euo pipefail
cd "$(dirname "$0")/.."

exec python3 - "$@" <<'EOF'
import os, re, sys

# Top down, one line per level: a module may import only modules on a
# lower line. Modules on one line may not import each other.
LEVELS = """
server
upgrade
admin
stats
worker
tcp udp
service
frontend
access ceiling sources
metrics
backend
counters
protocol
net shutdown logging
uring
config
testing
"""
level = {}
for i, line in enumerate(l for l in LEVELS.strip().splitlines()):
    for name in line.split():
        level[name] = i

modules = {}  # module path (tuple) -> file
for root, _, files in os.walk("src"):
    for f in files:
        if not f.endswith(".rs"):
            continue
        path = os.path.join(root, f)
        parts = os.path.relpath(path, "src")[:-3].split(os.sep)
        if parts in (["main"], ["lib"]):
            continue
        if parts[-1] == "mod":
            parts = parts[:-1]
        modules[tuple(parts)] = path

def resolve(segments):
    """The deepest module a path of module names reaches."""
    for n in range(len(segments), 0, -1):
        if tuple(segments[:n]) in modules:
            return tuple(segments[:n])
    return None

ref = re.compile(r"\b(crate|super)((?:::[a-z_][a-z0-9_]*)+)")
arrows = {}  # (parent, a, b) -> first file:line that made it
for mod, path in sorted(modules.items()):
    with open(path) as f:
        for n, line in enumerate(f, 1):
            code = line.split("//", 1)[0]
            for kind, tail in ref.findall(code):
                segs = tail.strip(":").split("::")
                if kind == "super":
                    base = list(mod[:-1])
                    while segs and segs[0] == "super":
                        base, segs = base[:-1], segs[1:]
                    segs = base + segs
                target = resolve(segs)
                if target is None:
                    continue
                k = 0
                while k < min(len(mod), len(target)) and mod[k] == target[k]:
                    k += 1
                if k == len(mod) or k == len(target):
                    continue  # itself, its parent or its child
                key = (mod[:k], mod[k], target[k])
                arrows.setdefault(key, f"{path}:{n}")

if "--graph" in sys.argv:
    for (parent, a, b), where in sorted(arrows.items()):
        if parent:
            print(f"{'/'.join(parent)}: {a} -> {b}  {where}")
        else:
            print(f"{a} ({level.get(a, '?')}) -> {b} ({level.get(b, '?')})  {where}")
    sys.exit(0)

bad = False
for name in sorted({m[0] for m in modules}):
    if name not in level:
        print(f"src/{name}: not placed on the byte's path: add it to LEVELS in scripts/check-imports.sh")
        bad = True
for (parent, a, b), where in sorted(arrows.items()):
    if not parent and a in level and b in level and level[b] <= level[a]:
        print(f"{where}: {a} imports {b}, which is not below it")
        bad = True

# Circles among siblings, folder by folder.
graphs = {}
for parent, a, b in arrows:
    graphs.setdefault(parent, {}).setdefault(a, set()).add(b)
for parent, graph in sorted(graphs.items()):
    state = {}
    def visit(node, trail):
        global bad
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                circle = trail[trail.index(nxt):] + [nxt]
                where = "src/" + "/".join(parent) if parent else "src"
                print(f"{where}: import cycle " + " -> ".join(circle) + f" ({arrows[(parent, node, nxt)]})")
                bad = True
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = "done"
    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
sys.exit(1 if bad else 0)
EOF
