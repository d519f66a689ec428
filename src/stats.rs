//! The stats page the admin endpoint serves at `GET /`, and the snapshot
//! behind it at `GET /stats.json`. The page is one self-contained HTML file
//! (inline CSS and script, nothing fetched from elsewhere, since admin ports
//! often sit on boxes without internet) that polls the snapshot every 2 s.
//!
//! The snapshot carries only counters, gauges and the time it was taken;
//! rates are left to the reader, who divides the difference of two snapshots
//! by the difference of their times. So a rate is never invented: the page
//! shows none until it has two samples, and none across a counter that went
//! back (a reload that started a pool's counters afresh). Reads atomics only.

use std::time::Instant;

use serde_json::{json, Value};

use crate::backend::pool::{Pool, WEIGHT_SCALE};
use crate::config::Protocol;
use crate::frontend::{Frontend, Generation};

/// The page: HTML, CSS and script in one file.
pub const PAGE: &str = include_str!("stats.html");

/// Everything the page shows, read now. `since` is when the admin endpoint
/// started; `sampled_ms` counts from it on a monotonic clock, so two
/// snapshots give the exact interval between them.
pub fn snapshot(generation: &Generation, since: Instant) -> Value {
    json!({
        "sampled_ms": since.elapsed().as_millis() as u64,
        "generation": generation.id,
        "frontends": generation.frontends.iter().map(|f| frontend(f)).collect::<Vec<_>>(),
    })
}

fn frontend(f: &Frontend) -> Value {
    let m = &f.metrics;
    let backends: Vec<Value> = f
        .pools()
        .into_iter()
        .flat_map(|(route, pool, first)| (0..pool.len()).map(move |i| (route, pool, first, i)))
        .map(|(route, pool, first, i)| {
            let config = pool.config(i);
            let n = first + i;
            json!({
                "address": config.addr.to_string(),
                "name": config.name.as_ref().map(|n| n.to_string()),
                "route": route,
                "up": pool.is_up(i),
                "since_change_s": pool.since_change(i).map(|d| d.as_secs()),
                "last_error": pool.last_error(i),
                "weight": pool.weight(i),
                "effective_weight": effective_weight(pool, i),
                "state": pool.state(i).name(),
                "agent": pool.agent(i).map(|a| json!({
                    "health": if a.up { "up" } else { "down" },
                    "state": a.state.name(),
                    "weight_percent": a.percent,
                })),
                "active": pool.active(i),
                "max_conns": config.max_conns,
                "backup": config.backup,
                "connections_total": m.sum_backend(n, |b| &b.connections),
                "connect_failures": m.sum_backend(n, |b| &b.connect_failures),
                "bytes_in": m.sum_backend(n, |b| &b.bytes_in),
                "bytes_out": m.sum_backend(n, |b| &b.bytes_out),
            })
        })
        .collect();
    let wait = m.sum_histogram(|w| &w.queue_wait);
    // A UDP frontend's clients are its sessions.
    let (active, total) = match f.config.protocol {
        Protocol::Tcp => (
            m.sum(|w| &w.connections_active),
            m.sum(|w| &w.connections_total),
        ),
        Protocol::Udp => (
            m.sum(|w| &w.udp_sessions_active),
            m.sum(|w| &w.udp_sessions_total),
        ),
    };
    json!({
        "name": m.frontend,
        "listen": f.listeners.addr.to_string(),
        "protocol": f.config.protocol.to_string(),
        "algorithm": f.config.balance.to_string(),
        "max_conns": f.config.max_clients(),
        "connections_active": active,
        "connections_total": total,
        "datagrams_in": m.sum(|w| &w.udp_datagrams_in),
        "datagrams_out": m.sum(|w| &w.udp_datagrams_out),
        "bytes_in": m.sum(|w| &w.bytes_in),
        "bytes_out": m.sum(|w| &w.bytes_out),
        "connect_failures": m.sum(|w| &w.connect_failures),
        "no_backend": m.sum(|w| &w.no_backend),
        "queued": m.sum(|w| &w.queued),
        "max_queue": f.config.max_queue,
        "queue_timeouts": m.sum(|w| &w.queue_timeouts),
        "queue_waits": wait.count(),
        "queue_wait_ms": wait.sum_us / 1000,
        "backends": backends,
    })
}

/// Backend `i`'s share of new connections now, in units of its weight: its
/// slow start's progress, 0 while drained, in maint or at weight 0.
pub fn effective_weight(pool: &Pool, i: usize) -> f64 {
    if !pool.admits(i) {
        return 0.0;
    }
    f64::from(pool.effective_weight(i)) / f64::from(WEIGHT_SCALE)
}

#[cfg(test)]
mod tests {
    use super::PAGE;

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        for needle in ["http://", "https://", "//cdn", "@import", "<link", "src="] {
            assert!(!PAGE.contains(needle), "the page references {needle}");
        }
        assert!(PAGE.contains("stats.json"));
    }
}
