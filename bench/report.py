#!/usr/bin/env python3
"""Turn scripts/bench.sh's raw measurements into a Markdown report and an SVG chart.

Input
  --results  TSV, one line per measurement: ROUND PEER METRIC VALUE
             or per failure:                ROUND PEER FAIL   MESSAGE
  --meta     TSV of KEY VALUE lines (machine, versions, parameters)
Output
  --md       Markdown: machine, parameters, one table with the median of every
             figure, its spread over rounds and its ratio to direct and to
             HAProxy, then any failures.  Also printed to stdout.
  --svg      grouped bar chart of every figure's ratio to HAProxy.

No third-party dependencies.
"""
import argparse
import html
import statistics
import sys
from collections import defaultdict

PEERS = ["direct", "ringlb", "haproxy", "nginx"]
PEER_LABEL = {"direct": "direct (no proxy)", "ringlb": "ringlb", "haproxy": "HAProxy",
              "nginx": "nginx stream"}
PEER_COLOR = {"direct": "#9a9a9a", "ringlb": "#e4572e", "haproxy": "#4c78a8", "nginx": "#54a24b"}

# key, workload, metric label, which direction is better, number format,
# applies to direct?  (Idle memory and CPU are properties of a proxy.)
METRICS = [
    ("keepalive_rps", "keep-alive", "requests/s", "higher", "{:,.0f}", True),
    ("keepalive_p50_ms", "keep-alive", "p50 latency, ms", "lower", "{:.3f}", True),
    ("keepalive_p99_ms", "keep-alive", "p99 latency, ms", "lower", "{:.3f}", True),
    ("cpu_s_per_100k", "keep-alive", "proxy CPU s / 100k req", "lower", "{:.3f}", False),
    ("churn_cps", "churn (Connection: close)", "connections/s", "higher", "{:,.0f}", True),
    ("bulk_mbps", "bulk 10 MiB", "MB/s", "higher", "{:,.0f}", True),
    ("idle_kib_per_conn", "idle", "proxy RSS KiB / idle conn", "lower", "{:.2f}", False),
]

# Short two-line labels for the chart.
CHART_LABEL = {
    "keepalive_rps": ("keep-alive", "req/s"),
    "keepalive_p50_ms": ("keep-alive", "p50 latency"),
    "keepalive_p99_ms": ("keep-alive", "p99 latency"),
    "cpu_s_per_100k": ("CPU per", "100k req"),
    "churn_cps": ("churn", "conn/s"),
    "bulk_mbps": ("bulk 10 MiB", "MB/s"),
    "idle_kib_per_conn": ("idle conn", "RSS KiB"),
}


def load(results_path, meta_path):
    values = defaultdict(list)  # (peer, metric) -> [value per round]
    failures = []  # (round, peer, message)
    with open(results_path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t", 3)
            if len(parts) != 4:
                continue
            rnd, peer, metric, value = parts
            if metric == "FAIL":
                failures.append((rnd, peer, value))
            else:
                values[(peer, metric)].append(float(value))
    meta = {}
    with open(meta_path) as f:
        for line in f:
            k, _, v = line.rstrip("\n").partition("\t")
            meta[k] = v
    return values, failures, meta


def ratio(a, b):
    return a / b if a is not None and b not in (None, 0) else None


def fmt_ratio(r):
    return "-" if r is None else f"{r:.2f}×"


def markdown(values, failures, meta):
    peers = [p for p in PEERS if p in meta.get("peers", " ".join(PEERS)).split()]
    failed = {p for _, p, _ in failures}
    med = {k: statistics.median(v) for k, v in values.items() if v}
    out = []
    w = out.append
    smoke = meta.get("mode") == "smoke"
    w("# ringlb benchmark" + (" (smoke run: numbers are not meaningful)" if smoke else ""))
    w("")
    w(f"Generated {meta.get('date', '?')} by `scripts/bench.sh`"
      f"{' --smoke' if smoke else ''}. Median of {meta.get('rounds')} interleaved round(s) "
      "(A B C D, D C B A, ...); *range* is min-max over the rounds. "
      "Ratios are *this peer ÷ reference*: above 1 is better for throughput "
      "(req/s, conn/s, MB/s), worse for latency, CPU and memory.")
    w("")
    w("| Machine | |")
    w("|---|---|")
    w(f"| CPU | {meta.get('cpu', '?')} (nproc {meta.get('nproc', '?')}) |")
    w(f"| Kernel | {meta.get('kernel', '?')} |")
    for key, label in (("ringlb", "ringlb"), ("haproxy", "HAProxy"), ("nginx", "nginx"), ("wrk", "wrk")):
        if key in meta:
            w(f"| {label} | `{meta[key]}` |")
    w("")
    workers = meta.get("workers", "?")
    w(f"Setup: every proxy with {workers} worker(s) (HAProxy `nbthread {workers}`, "
      f"nginx `worker_processes {workers}`, ringlb `--workers {workers}`), all in front of one "
      f"nginx HTTP backend ({meta.get('backend_workers', '?')} worker process(es)); "
      f"CPU layout: {meta.get('layout', '?')}. "
      f"wrk {meta.get('wrk_threads', '?')} thread(s), {meta.get('duration', '?')} s per run "
      f"({meta.get('bulk_duration', '?')} s for bulk), "
      f"{meta.get('connections', '?')} connections (keep-alive, churn), "
      f"{meta.get('bulk_connections', '?')} (bulk); idle test holds "
      f"{meta.get('idle_conns', '?')} connections. All on 127.0.0.1. "
      f"1-minute load average at start: {meta.get('loadavg', '?')}.")
    w("")
    w("| Workload | Metric | Peer | Median | Range | ÷ direct | ÷ HAProxy |")
    w("|---|---|---|---:|---:|---:|---:|")
    for key, workload, label, better, fmt, for_direct in METRICS:
        arrow = "↑" if better == "higher" else "↓"
        for peer in peers:
            if peer == "direct" and not for_direct:
                continue
            vals = values.get((peer, key), [])
            name = PEER_LABEL[peer]
            if not vals:
                status = "**FAILED**" if peer in failed else "-"
                w(f"| {workload} | {label} {arrow} | {name} | {status} | | | |")
                continue
            m = med[(peer, key)]
            rng = f"{fmt.format(min(vals))}-{fmt.format(max(vals))}" if len(vals) > 1 else ""
            r_direct = ratio(m, med.get(("direct", key))) if for_direct else None
            r_haproxy = ratio(m, med.get(("haproxy", key)))
            mark = " ⚠" if peer in failed else ""
            w(f"| {workload} | {label} {arrow} | {name}{mark} | {fmt.format(m)} | {rng} "
              f"| {fmt_ratio(r_direct)} | {fmt_ratio(r_haproxy)} |")
    w("")
    w("↑ higher is better, ↓ lower is better. CPU is user+system time of all the proxy's "
      "processes and threads during the keep-alive run; idle memory is VmRSS summed over "
      "the proxy's processes, after minus before opening the idle connections.")
    if failures:
        w("")
        w("## Failures")
        w("")
        w("A peer marked ⚠ or FAILED did not serve correctly in at least one run "
          "(its figures, if any, come from the runs that succeeded):")
        w("")
        for rnd, peer, msg in failures:
            where = "startup" if rnd == "0" else f"round {rnd}"
            w(f"- **{PEER_LABEL.get(peer, peer)}** ({where}): {msg}")
    w("")
    return "\n".join(out), med, failed, peers


def nice_step(span):
    for step in (0.1, 0.2, 0.25, 0.5, 1, 2, 2.5, 5, 10, 20, 25, 50, 100):
        if span / step <= 8:
            return step
    return span / 8


def svg_chart(med, failed, peers, meta):
    e = html.escape
    metrics = METRICS
    base = {m[0]: med.get(("haproxy", m[0])) for m in metrics}
    ratios = {}
    for key, *_ in metrics:
        for p in peers:
            ratios[(p, key)] = ratio(med.get((p, key)), base[key])
    shown = [r for r in ratios.values() if r is not None]
    top = max(shown + [1.0]) * 1.12
    step = nice_step(top)
    ymax = step * int(top / step + 0.999)

    width, ml, mr, mt, mb = 1040, 64, 20, 96, 92
    ph = 320
    height = mt + ph + mb
    pw = width - ml - mr
    gw = pw / len(metrics)
    bw = min(26, (gw - 20) / max(1, len(peers)))

    def y(v):
        return mt + ph - (v / ymax) * ph

    s = []
    a = s.append
    a(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
      f'viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif">')
    a(f'<rect width="{width}" height="{height}" fill="white"/>')
    title = "ringlb vs HAProxy vs nginx stream: ratio to HAProxy"
    if meta.get("mode") == "smoke":
        title += " (smoke run)"
    a(f'<text x="{width / 2}" y="24" text-anchor="middle" font-size="18" font-weight="bold">{e(title)}</text>')
    sub = (f"median of {meta.get('rounds', '?')} round(s), {meta.get('workers', '?')} worker(s) each, "
           f"{meta.get('cpu', '?')} × {meta.get('nproc', '?')}, {meta.get('date', '')}")
    a(f'<text x="{width / 2}" y="44" text-anchor="middle" font-size="12" fill="#444">{e(sub)}</text>')
    # legend
    lx = ml
    for p in peers:
        a(f'<rect x="{lx}" y="60" width="14" height="14" fill="{PEER_COLOR[p]}"/>')
        a(f'<text x="{lx + 19}" y="72" font-size="13">{e(PEER_LABEL[p])}</text>')
        lx += 40 + 8 * len(PEER_LABEL[p])
    a(f'<text x="{width - mr}" y="72" text-anchor="end" font-size="12" fill="#444">'
      '1.0 = HAProxy (dashed)</text>')

    if base_missing := all(v is None for v in base.values()):
        a(f'<text x="{width / 2}" y="{mt + ph / 2}" text-anchor="middle" font-size="16" fill="#b00">'
          'HAProxy was not measured: no ratios to draw</text>')
    # grid + y axis
    v = 0.0
    while v <= ymax + 1e-9:
        a(f'<line x1="{ml}" x2="{width - mr}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#e4e4e4"/>')
        a(f'<text x="{ml - 6}" y="{y(v) + 4:.1f}" text-anchor="end" font-size="11" fill="#555">{v:g}×</text>')
        v += step
    a(f'<line x1="{ml}" x2="{ml}" y1="{mt}" y2="{mt + ph}" stroke="#888"/>')
    a(f'<line x1="{ml}" x2="{width - mr}" y1="{mt + ph}" y2="{mt + ph}" stroke="#888"/>')
    a(f'<text x="16" y="{mt + ph / 2}" font-size="12" fill="#444" text-anchor="middle" '
      f'transform="rotate(-90 16 {mt + ph / 2})">ratio to HAProxy</text>')

    labels = []  # value labels go on top of the 1.0 line, drawn last
    for gi, (key, _workload, _label, better, _fmt, _fd) in enumerate(metrics):
        gx = ml + gi * gw
        x0 = gx + (gw - bw * len(peers)) / 2
        for pi, p in enumerate(peers):
            r = ratios[(p, key)]
            x = x0 + pi * bw
            if r is None:
                if p in failed and not base_missing and not (p == "direct" and key in ("cpu_s_per_100k", "idle_kib_per_conn")):
                    a(f'<text x="{x + bw / 2:.1f}" y="{mt + ph - 4}" text-anchor="middle" font-size="10" '
                      f'fill="#b00">fail</text>')
                continue
            a(f'<rect x="{x + 1:.1f}" y="{y(r):.1f}" width="{bw - 2:.1f}" height="{mt + ph - y(r):.1f}" '
              f'fill="{PEER_COLOR[p]}"><title>{e(PEER_LABEL[p])}: {r:.2f}× HAProxy</title></rect>')
            labels.append(f'<text x="{x + bw / 2:.1f}" y="{y(r) - 4:.1f}" text-anchor="middle" font-size="10" '
                          f'paint-order="stroke" stroke="white" stroke-width="3">{r:.2f}</text>')
        l1, l2 = CHART_LABEL[key]
        cx = gx + gw / 2
        a(f'<text x="{cx:.1f}" y="{mt + ph + 20}" text-anchor="middle" font-size="12">{e(l1)}</text>')
        a(f'<text x="{cx:.1f}" y="{mt + ph + 36}" text-anchor="middle" font-size="12">{e(l2)}</text>')
        hint = "↑ higher is better" if better == "higher" else "↓ lower is better"
        color = "#2a7" if better == "higher" else "#a52"
        a(f'<text x="{cx:.1f}" y="{mt + ph + 54}" text-anchor="middle" font-size="11" fill="{color}">{hint}</text>')
    if not base_missing:
        a(f'<line x1="{ml}" x2="{width - mr}" y1="{y(1):.1f}" y2="{y(1):.1f}" stroke="#333" '
          'stroke-dasharray="6,4" stroke-width="1.2"/>')
    s.extend(labels)
    a(f'<text x="{width / 2}" y="{height - 10}" text-anchor="middle" font-size="11" fill="#555">'
      'CPU and idle memory are per proxy (no bar for direct). Exact figures: the .md report '
      'written next to this chart by scripts/bench.sh.</text>')
    a("</svg>")
    return "\n".join(s) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", required=True)
    ap.add_argument("--meta", required=True)
    ap.add_argument("--md", required=True)
    ap.add_argument("--svg", required=True)
    args = ap.parse_args()
    values, failures, meta = load(args.results, args.meta)
    md, med, failed, peers = markdown(values, failures, meta)
    with open(args.md, "w") as f:
        f.write(md)
    with open(args.svg, "w") as f:
        f.write(svg_chart(med, failed, peers, meta))
    sys.stdout.write(md)


if __name__ == "__main__":
    main()
