-- bench/wrk-report.lua: wrk's done() hook for scripts/bench.sh.
--
-- wrk's human-readable summary rounds numbers and mixes units (us/ms/s,
-- KB/MB/GB), so instead of scraping it we print one machine-readable line
-- with the raw figures.  bench.sh greps for the "@@bench " prefix.
-- Latencies are in microseconds, duration in microseconds, bytes as counted
-- by wrk (headers + bodies).  "%.0f" rather than "%d" because the byte counts
-- of the bulk workload overflow 32 bits and LuaJIT's %d handling varies.
function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      "@@bench requests=%.0f duration_us=%.0f bytes=%.0f connect=%.0f read=%.0f write=%.0f status=%.0f timeout=%.0f p50_us=%.0f p99_us=%.0f\n",
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(99)))
end
