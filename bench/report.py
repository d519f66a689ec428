#!/usr/bin/env python3
"""Turn scripts/bench.sh's raw measurements into a Markdown report and an SVG chart.

Input
  --results  TSV, one line per measurement: LAYOUT ROUND PEER METRIC VALUE
             or per failure:                LAYOUT ROUND PEER FAIL   MESSAGE
  --meta     TSV of KEY VALUE lines (machine, versions, parameters; per layout
             "layout:NAME", "loadavg:NAME", "load_cpus:NAME")
Output
  --md       Markdown: machine, parameters, then per layout (pinned, unpinned)
             one table with the median of every figure, its spread over rounds
             and its ratio to direct and to HAProxy, with notes (TLS backend
             the bottleneck?  scaling on too few CPUs?); with two layouts a
             table of ringlb ÷ HAProxy in each; then any failures.  Also
             printed to stdout.
  --svg      grouped bar chart of every figure's ratio to HAProxy, for the
             first layout; a second layout's goes next to it as NAME-LAYOUT.svg.

No third-party dependencies.
"""
import argparse
import html
import statistics
import sys
from collections import defaultdict

PEERS = ["direct", "ringlb", "ringlb-copy", "haproxy", "haproxy-splice", "nginx"]
PEER_LABEL = {"direct": "direct (no proxy)", "ringlb": "ringlb", "haproxy": "HAProxy",
              "nginx": "nginx stream", "ringlb-copy": "ringlb (--splice never)",
              "haproxy-splice": "HAProxy (splice-auto)"}
PEER_COLOR = {"direct": "#9a9a9a", "ringlb": "#e4572e", "haproxy": "#4c78a8", "nginx": "#54a24b",
              "ringlb-copy": "#f4a582", "haproxy-splice": "#92c5de"}
# The zero-copy targets (issue 24): KEY, PEER, REFERENCE, the ratio's bound,
# "min" (at least) or "max" (at most).
TARGETS = [
    ("bulk_mbps", "ringlb", "direct", 0.95, "min"),
    ("bulk_cpu_s_per_gb", "ringlb", "haproxy-splice", 0.5, "max"),
    ("bulk_cpu_s_per_gb", "ringlb", "ringlb-copy", 0.7, "max"),
    ("stream_up_cpu_s_per_gb", "ringlb", "ringlb-copy", 0.5, "max"),
    ("stream_down_cpu_s_per_gb", "ringlb", "ringlb-copy", 0.5, "max"),
    ("stream_up_cpu_s_per_gb", "ringlb", "haproxy", 0.35, "max"),
    ("stream_down_cpu_s_per_gb", "ringlb", "haproxy", 0.35, "max"),
    ("idle_burst_kib_per_conn", "ringlb", "haproxy", 0.5, "max"),
]

# The sni workload's TLS backend counts as the bottleneck from this busy (percent
# of its workers' CPUs) on.
BACKEND_BOUND_PCT = 90
# A proxy whose sni connections/s come this close to direct's was held back by
# the load generator, not by its own cost.
CLIENT_BOUND = 0.9

SNI = "sni (TLS churn, routed by SNI)"
UDP = "udp (DNS, dnsperf)"


def metrics(meta):
    """Rows of the report, in order: key, workload, metric label, which
    direction is better (None: no ratios, informational), number format,
    applies to direct?  (Idle memory, CPU and scaling are properties of a
    proxy.)  The many and scaling rows follow the run's parameters."""
    many = [int(n) for n in meta.get("many_conns", "").split()]
    rate = meta.get("udp_rate", "?")
    lo, hi = (meta.get("scale_workers", "1 2").split() + ["1", "2"])[:2]
    rows = [
        ("keepalive_rps", "keep-alive", "requests/s", "higher", "{:,.0f}", True),
        ("keepalive_p50_ms", "keep-alive", "p50 latency, ms", "lower", "{:.3f}", True),
        ("keepalive_p99_ms", "keep-alive", "p99 latency, ms", "lower", "{:.3f}", True),
        ("keepalive_cpu_s_per_100k", "keep-alive", "proxy CPU s / 100k req", "lower", "{:.3f}", False),
    ]
    for size, label in (("4k", "4 KiB"), ("16k", "16 KiB")):
        wl = f"keep-alive, {label} answers"
        rows += [
            (f"answers{size}_rps", wl, "requests/s", "higher", "{:,.0f}", True),
            (f"answers{size}_p99_ms", wl, "p99 latency, ms", "lower", "{:.3f}", True),
            (f"answers{size}_cpu_s_per_100k", wl, "proxy CPU s / 100k req", "lower", "{:.3f}", False),
        ]
    for n in many:
        wl = f"keep-alive, {n:,} conns"
        rows += [
            (f"many{n}_rps", wl, "requests/s", "higher", "{:,.0f}", True),
            (f"many{n}_p50_ms", wl, "p50 latency, ms", "lower", "{:.3f}", True),
            (f"many{n}_p99_ms", wl, "p99 latency, ms", "lower", "{:.3f}", True),
            (f"many{n}_cpu_s_per_100k", wl, "proxy CPU s / 100k req", "lower", "{:.3f}", False),
        ]
    rows += [
        (f"scale_w{lo}_rps", "scaling (keep-alive)", f"requests/s, {lo} worker(s)", "higher", "{:,.0f}", False),
        (f"scale_w{hi}_rps", "scaling (keep-alive)", f"requests/s, {hi} workers", "higher", "{:,.0f}", False),
        ("scale_factor", "scaling (keep-alive)", f"factor, {hi} ÷ {lo} workers", "higher", "{:.2f}×", False),
        ("churn_cps", "churn (Connection: close)", "connections/s", "higher", "{:,.0f}", True),
        ("sni_cps", SNI, "connections/s", "higher", "{:,.0f}", True),
        ("sni_cpu_us_per_conn", SNI, "proxy CPU µs / conn", "lower", "{:.0f}", False),
        ("sni_backend_cpu_pct", SNI, "TLS backend busy, % of its CPU", None, "{:.0f}", True),
        ("bulk1m_mbps", "bulk 1 MiB", "MB/s", "higher", "{:,.0f}", True),
        ("bulk1m_cpu_s_per_gb", "bulk 1 MiB", "proxy CPU s / GB", "lower", "{:.3f}", False),
        ("bulk_mbps", "bulk 10 MiB", "MB/s", "higher", "{:,.0f}", True),
        ("bulk_cpu_s_per_gb", "bulk 10 MiB", "proxy CPU s / GB", "lower", "{:.3f}", False),
        ("bulk100m_mbps", "bulk 100 MiB", "MB/s", "higher", "{:,.0f}", True),
        ("bulk100m_cpu_s_per_gb", "bulk 100 MiB", "proxy CPU s / GB", "lower", "{:.3f}", False),
        ("stream_up_gbps", "stream (iperf3, upload)", "Gbit/s", "higher", "{:.1f}", True),
        ("stream_up_cpu_s_per_gb", "stream (iperf3, upload)", "proxy CPU s / GB", "lower", "{:.3f}", False),
        ("stream_down_gbps", "stream (iperf3, download)", "Gbit/s", "higher", "{:.1f}", True),
        ("stream_down_cpu_s_per_gb", "stream (iperf3, download)", "proxy CPU s / GB", "lower", "{:.3f}", False),
        ("idle_kib_per_conn", "idle", "proxy RSS KiB / idle conn", "lower", "{:.2f}", False),
        ("idle_burst_kib_per_conn", "idle, opened in a burst", "proxy RSS KiB / idle conn", "lower", "{:.2f}", False),
        ("udp_qps", UDP, "queries/s", "higher", "{:,.0f}", True),
        ("udp_cpu_s_per_100k", UDP, "proxy CPU s / 100k queries", "lower", "{:.3f}", False),
        ("udp_p99_ms", UDP, f"p99 latency at {rate}/s, ms", "lower", "{:.3f}", True),
        ("udp_lost", UDP, f"queries lost at {rate}/s", None, "{:.0f}", True),
    ]
    return rows


def chart_label(key, meta):
    """Short two-line chart label, or None: not in the chart."""
    fixed = {
        "keepalive_rps": ("keep-alive", "req/s"),
        "keepalive_p50_ms": ("keep-alive", "p50 latency"),
        "keepalive_p99_ms": ("keep-alive", "p99 latency"),
        "keepalive_cpu_s_per_100k": ("CPU per", "100k req"),
        "scale_factor": ("scaling", "factor"),
        "churn_cps": ("churn", "conn/s"),
        "sni_cps": ("sni TLS", "conn/s"),
        "sni_cpu_us_per_conn": ("sni CPU", "per conn"),
        "bulk_mbps": ("bulk 10 MiB", "MB/s"),
        "bulk_cpu_s_per_gb": ("bulk CPU", "per GB"),
        "stream_down_cpu_s_per_gb": ("stream CPU", "per GB"),
        "idle_kib_per_conn": ("idle conn", "RSS KiB"),
        "udp_qps": ("udp DNS", "queries/s"),
    }
    if key in fixed:
        return fixed[key]
    if key.startswith("many"):
        n, _, what = key[4:].partition("_")
        if what == "rps":
            return (f"{int(n):,} conns", "req/s")
        if what == "p99_ms":
            return (f"{int(n):,} conns", "p99 latency")
    return None


def load(results_path, meta_path):
    values = defaultdict(list)  # (layout, peer, metric) -> [value per round]
    failures = []  # (layout, round, peer, message)
    with open(results_path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t", 4)
            if len(parts) != 5:
                continue
            layout, rnd, peer, metric, value = parts
            if metric == "FAIL":
                failures.append((layout, rnd, peer, value))
            else:
                values[(layout, peer, metric)].append(float(value))
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


def layout_table(w, layout, values, failed, peers, med, meta):
    w("| Workload | Metric | Peer | Median | Range | ÷ direct | ÷ HAProxy |")
    w("|---|---|---|---:|---:|---:|---:|")
    for key, workload, label, better, fmt, for_direct in metrics(meta):
        arrow = {"higher": " ↑", "lower": " ↓"}.get(better, "")
        for peer in peers:
            if peer == "direct" and not for_direct:
                continue
            vals = values.get((layout, peer, key), [])
            name = PEER_LABEL[peer]
            if key.startswith("udp_") and peer == "haproxy":
                if any(k[0] == layout and k[2] == key for k in values):
                    w(f"| {workload} | {label} | {name} | no UDP | | | |")
                continue
            if not vals:
                # Not measured at all in this run (workload left out): no row.
                if not any(k[0] == layout and k[2] == key for k in values):
                    break
                status = "**FAILED**" if peer in failed else "-"
                w(f"| {workload} | {label}{arrow} | {name} | {status} | | | |")
                continue
            m = med[(layout, peer, key)]
            rng = f"{fmt.format(min(vals))}-{fmt.format(max(vals))}" if len(vals) > 1 else ""
            r_direct = ratio(m, med.get((layout, "direct", key))) if for_direct and better else None
            r_haproxy = ratio(m, med.get((layout, "haproxy", key))) if better else None
            mark = " ⚠" if peer in failed else ""
            w(f"| {workload} | {label}{arrow} | {name}{mark} | {fmt.format(m)} | {rng} "
              f"| {fmt_ratio(r_direct)} | {fmt_ratio(r_haproxy)} |")


def targets(w, layout, med):
    """The zero-copy targets' ratios, each with its bound, where measured."""
    rows = []
    for key, peer, ref, bound, kind in TARGETS:
        r = ratio(med.get((layout, peer, key)), med.get((layout, ref, key)))
        if r is None:
            continue
        met = r >= bound if kind == "min" else r <= bound
        rows.append(f"| {key} | {PEER_LABEL[peer]} ÷ {PEER_LABEL[ref]} | {r:.2f}× "
                    f"| {'≥' if kind == 'min' else '≤'} {bound}× | {'met' if met else 'missed'} |")
    if rows:
        w("")
        w("Zero-copy targets (issue 24), ratios of medians in this run:")
        w("")
        w("| Figure | Ratio | Measured | Target | |")
        w("|---|---|---:|---:|---|")
        for row in rows:
            w(row)


def notes(w, layout, med, peers, meta):
    busy = {p: med.get((layout, p, "sni_backend_cpu_pct")) for p in peers}
    busy = {p: v for p, v in busy.items() if v is not None}
    if busy:
        bound = [PEER_LABEL[p] for p, v in busy.items() if v >= BACKEND_BOUND_PCT]
        if bound:
            w(f"- **sni: the TLS backend was the bottleneck** for {', '.join(bound)} (busy "
              f"{BACKEND_BOUND_PCT}% or more of its CPU): there, connections/s is the backend's "
              "handshake rate, and the ratios understate the proxies' differences; compare "
              "proxy CPU per connection instead.")
        else:
            w(f"- sni: the TLS backend stayed below {BACKEND_BOUND_PCT}% of its CPU in every run, "
              "so connections/s is set by the proxy and wrk (which does the client side of "
              "every handshake) on their CPU(s).")
        direct = med.get((layout, "direct", "sni_cps"))
        close = [PEER_LABEL[p] for p in peers if p != "direct" and direct
                 and (v := med.get((layout, p, "sni_cps"))) and v >= CLIENT_BOUND * direct]
        if close:
            w(f"- sni: {', '.join(close)} reached {CLIENT_BOUND:.0%} or more of direct's "
              "connections/s: wrk's own handshakes, not the proxy, set the pace there, so "
              "connections/s hardly tells those proxies apart; proxy CPU per connection does.")
    ringlb_qps, nginx_qps = (med.get((layout, p, "udp_qps")) for p in ("ringlb", "nginx"))
    if ringlb_qps and nginx_qps:
        cpu = ratio(med.get((layout, "ringlb", "udp_cpu_s_per_100k")),
                    med.get((layout, "nginx", "udp_cpu_s_per_100k")))
        w(f"- udp: ringlb ÷ nginx: {fmt_ratio(ratio(ringlb_qps, nginx_qps))} the queries/s, "
          f"{fmt_ratio(cpu)} the proxy CPU per 100k queries (the DNS backend: one NSD "
          "process). HAProxy has no UDP (its community edition proxies TCP only).")
    cpus = meta.get(f"load_cpus:{layout}")
    hi = (meta.get("scale_workers", "1 2").split() + ["2"])[1]
    if any((layout, p, "scale_factor") in med for p in peers) and cpus and int(cpus) < int(hi):
        w(f"- scaling: wrk and the proxy have {cpus} CPU(s) in this layout, so {hi} workers "
          "share them with each other and with wrk: the factor shows the cost of "
          "oversubscription here, not per-core scaling.")


def markdown(values, failures, meta):
    peers = [p for p in PEERS if p in meta.get("peers", " ".join(PEERS)).split()]
    layouts = meta.get("layouts", "pinned").split()
    med = {k: statistics.median(v) for k, v in values.items() if v}
    out = []
    w = out.append
    smoke = meta.get("mode") == "smoke"
    w("# ringlb benchmark" + (" (smoke run: numbers are not meaningful)" if smoke else ""))
    w("")
    w(f"Generated {meta.get('date', '?')} by `scripts/bench.sh`"
      f"{' --smoke' if smoke else ''}"
      f"{' --layout both' if len(layouts) > 1 else ''}. Median of {meta.get('rounds')} "
      "interleaved round(s) (A B C D, D C B A, ...); *range* is min-max over the rounds. "
      "Ratios are *this peer ÷ reference*: above 1 is better for throughput "
      "(req/s, conn/s, MB/s) and scaling, worse for latency, CPU and memory.")
    w("")
    w("| Machine | |")
    w("|---|---|")
    w(f"| CPU | {meta.get('cpu', '?')} (nproc {meta.get('nproc', '?')}) |")
    w(f"| Kernel | {meta.get('kernel', '?')} |")
    for key, label in (("ringlb", "ringlb"), ("haproxy", "HAProxy"), ("nginx", "nginx"),
                       ("wrk", "wrk"), ("openssl", "OpenSSL")):
        if key in meta:
            w(f"| {label} | `{meta[key]}` |")
    w("")
    workers = meta.get("workers", "?")
    wl = meta.get("workloads", "").split()
    setup = (f"Setup: every proxy with {workers} worker(s) (HAProxy `nbthread {workers}`, "
             f"nginx `worker_processes {workers}`, ringlb `--workers {workers}`), all in front of one "
             f"nginx HTTP backend ({meta.get('backend_workers', '?')} worker process(es)). "
             f"wrk {meta.get('wrk_threads', '?')} thread(s), {meta.get('duration', '?')} s per run "
             f"({meta.get('bulk_duration', '?')} s for bulk), "
             f"{meta.get('connections', '?')} connections (keep-alive, churn, sni, scaling), "
             f"{meta.get('bulk_connections', '?')} (bulk); idle test holds "
             f"{meta.get('idle_conns', '?')} connections. All on 127.0.0.1.")
    if "sni" in wl:
        b, a = (meta.get("sni_names", "? localhost").split() + ["?", "?"])[:2]
        setup += (f" sni: each proxy routes `{b}` and `{a}` (in that order) to two TLS "
                  f"backends (one nginx, ECDSA P-256 self-signed certificates), `{b}` also "
                  f"being the default route; wrk sends `{a}` (its URL host) and a new "
                  "connection, hence a full TLS handshake, per request "
                  "(ringlb `--route-by sni`, HAProxy `req.ssl_sni` ACLs after "
                  "`tcp-request inspect-delay`, nginx `ssl_preread` + `map`).")
    if "scaling" in wl:
        lo, hi = (meta.get("scale_workers", "1 2").split() + ["1", "2"])[:2]
        setup += (f" scaling: fresh instances with {lo} and with {hi} worker(s), keep-alive, "
                  "each round.")
    w(setup)
    failed_in = defaultdict(set)
    for layout, _, p, _ in failures:
        failed_in[layout].add(p)
    for layout in layouts:
        w("")
        w(f"## Layout: {layout}")
        w("")
        w(f"CPU layout: {meta.get(f'layout:{layout}', '?')}. 1-minute load average at start: "
          f"{meta.get(f'loadavg:{layout}', '?')}.")
        w("")
        layout_table(w, layout, values, failed_in[layout], peers, med, meta)
        w("")
        notes(w, layout, med, peers, meta)
        targets(w, layout, med)
    if len(layouts) > 1 and "ringlb" in peers and "haproxy" in peers:
        w("")
        w("## ringlb ÷ HAProxy, by layout")
        w("")
        w("| Workload | Metric | " + " | ".join(layouts) + " |")
        w("|---|---|" + "---:|" * len(layouts))
        for key, workload, label, better, _fmt, _fd in metrics(meta):
            if not better:
                continue
            rs = [ratio(med.get((lay, "ringlb", key)), med.get((lay, "haproxy", key)))
                  for lay in layouts]
            if all(r is None for r in rs):
                continue
            arrow = "↑" if better == "higher" else "↓"
            w(f"| {workload} | {label} {arrow} | " + " | ".join(fmt_ratio(r) for r in rs) + " |")
    w("")
    w("↑ higher is better, ↓ lower is better. CPU is user+system time of all the proxy's "
      "processes and threads during that run (keep-alive, answers, many connections, sni); the TLS "
      "backend's busy share is its CPU time over the run's wall time and its worker count; "
      "idle memory is VmRSS summed over the proxy's processes, after minus before opening "
      "the idle connections.")
    if failures:
        w("")
        w("## Failures")
        w("")
        w("A peer marked ⚠ or FAILED did not serve correctly in at least one run "
          "(its figures, if any, come from the runs that succeeded):")
        w("")
        for layout, rnd, peer, msg in failures:
            where = "startup" if rnd == "0" else f"round {rnd}"
            w(f"- **{PEER_LABEL.get(peer, peer)}** ({layout}, {where}): {msg}")
    w("")
    return "\n".join(out), med, failed_in, peers, layouts


def nice_step(span):
    for step in (0.1, 0.2, 0.25, 0.5, 1, 2, 2.5, 5, 10, 20, 25, 50, 100):
        if span / step <= 8:
            return step
    return span / 8


def svg_chart(med, failed, peers, meta, layout):
    e = html.escape
    # The rows that have a ratio, a chart label and a figure in this layout.
    rows = [m for m in metrics(meta)
            if m[3] and chart_label(m[0], meta) and any((layout, p, m[0]) in med for p in peers)]
    base = {m[0]: med.get((layout, "haproxy", m[0])) for m in rows}
    ratios = {}
    for key, *_ in rows:
        for p in peers:
            ratios[(p, key)] = ratio(med.get((layout, p, key)), base[key])
    shown = [r for r in ratios.values() if r is not None]
    top = max(shown + [1.0]) * 1.12
    step = nice_step(top)
    ymax = step * int(top / step + 0.999)

    width, ml, mr, mt, mb = max(1040, 84 + 96 * len(rows)), 64, 20, 96, 92
    ph = 320
    height = mt + ph + mb
    pw = width - ml - mr
    gw = pw / max(1, len(rows))
    bw = min(26, (gw - 20) / max(1, len(peers)))

    def y(v):
        return mt + ph - (v / ymax) * ph

    s = []
    a = s.append
    a(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
      f'viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif">')
    a(f'<rect width="{width}" height="{height}" fill="white"/>')
    title = f"ringlb vs HAProxy vs nginx stream: ratio to HAProxy ({layout})"
    if meta.get("mode") == "smoke":
        title += " (smoke run)"
    a(f'<text x="{width / 2}" y="24" text-anchor="middle" font-size="18" font-weight="bold">{e(title)}</text>')
    sub = (f"median of {meta.get('rounds', '?')} round(s), {meta.get('workers', '?')} worker(s) each, "
           f"{meta.get('cpu', '?')} × {meta.get('nproc', '?')}, {meta.get('date', '')}; "
           f"{meta.get(f'layout:{layout}', '')}")
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
    for gi, (key, _workload, _label, better, _fmt, _fd) in enumerate(rows):
        gx = ml + gi * gw
        x0 = gx + (gw - bw * len(peers)) / 2
        for pi, p in enumerate(peers):
            r = ratios[(p, key)]
            x = x0 + pi * bw
            if r is None:
                if p in failed and not base_missing and not (p == "direct" and not _fd):
                    a(f'<text x="{x + bw / 2:.1f}" y="{mt + ph - 4}" text-anchor="middle" font-size="10" '
                      f'fill="#b00">fail</text>')
                continue
            a(f'<rect x="{x + 1:.1f}" y="{y(r):.1f}" width="{bw - 2:.1f}" height="{mt + ph - y(r):.1f}" '
              f'fill="{PEER_COLOR[p]}"><title>{e(PEER_LABEL[p])}: {r:.2f}× HAProxy</title></rect>')
            labels.append(f'<text x="{x + bw / 2:.1f}" y="{y(r) - 4:.1f}" text-anchor="middle" font-size="10" '
                          f'paint-order="stroke" stroke="white" stroke-width="3">{r:.2f}</text>')
        l1, l2 = chart_label(key, meta)
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
      'CPU, scaling and idle memory are per proxy (no bar for direct). Exact figures: the .md '
      'report written next to this chart by scripts/bench.sh.</text>')
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
    md, med, failed_in, peers, layouts = markdown(values, failures, meta)
    with open(args.md, "w") as f:
        f.write(md)
    # The first layout's chart at --svg, any other's next to it as NAME-LAYOUT.svg.
    for i, layout in enumerate(layouts):
        path = args.svg if i == 0 else f"{args.svg[:-4]}-{layout}.svg"
        with open(path, "w") as f:
            f.write(svg_chart(med, failed_in[layout], peers, meta, layout))
    sys.stdout.write(md)


if __name__ == "__main__":
    main()
