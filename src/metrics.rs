//! Counters, kept per worker and summed only when scraped, so the data path
//! never shares a cache line between workers: each worker writes only its own
//! [`WorkerMetrics`] (single writer, so a relaxed load + store, no locked
//! read-modify-write), and the admin thread reads them all. Every metric name
//! is a constant here; [`render`] writes the Prometheus text format.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::pool::Pool;

/// Metric names, all in one place.
pub mod names {
    /// Client connections accepted.
    pub const CONNECTIONS_TOTAL: &str = "ringlb_connections_total";
    /// Client connections open now.
    pub const CONNECTIONS_ACTIVE: &str = "ringlb_connections_active";
    /// Bytes relayed from clients to backends.
    pub const BYTES_IN: &str = "ringlb_bytes_in_total";
    /// Bytes relayed from backends to clients.
    pub const BYTES_OUT: &str = "ringlb_bytes_out_total";
    /// Backend connect attempts that failed or timed out.
    pub const CONNECT_FAILURES: &str = "ringlb_connect_failures_total";
    /// Connections ended by a read or write error, by side.
    pub const RELAY_ERRORS: &str = "ringlb_relay_errors_total";
    /// Failed accept calls.
    pub const ACCEPT_ERRORS: &str = "ringlb_accept_errors_total";
    /// Clients closed because no backend could take them.
    pub const NO_BACKEND: &str = "ringlb_no_backend_total";
    /// Connections closed by the idle timeout or the lifetime limit.
    pub const TIMEOUTS: &str = "ringlb_timeouts_total";
    /// Clients closed for a bad or missing PROXY protocol header.
    pub const PROXY_HEADER_ERRORS: &str = "ringlb_proxy_header_errors_total";
    /// Clients waiting for a backend slot (max-conns) now.
    pub const QUEUE_LENGTH: &str = "ringlb_queue_length";
    /// Connections made to each backend.
    pub const BACKEND_CONNECTIONS_TOTAL: &str = "ringlb_backend_connections_total";
    /// Connections open to each backend now, across workers.
    pub const BACKEND_CONNECTIONS_ACTIVE: &str = "ringlb_backend_connections_active";
    /// Failed connects to each backend.
    pub const BACKEND_CONNECT_FAILURES: &str = "ringlb_backend_connect_failures_total";
    /// Bytes sent to each backend.
    pub const BACKEND_BYTES_IN: &str = "ringlb_backend_bytes_in_total";
    /// Bytes received from each backend.
    pub const BACKEND_BYTES_OUT: &str = "ringlb_backend_bytes_out_total";
    /// 1 while a backend passes its health checks, else 0.
    pub const BACKEND_UP: &str = "ringlb_backend_up";
}

/// A counter written by one thread only.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`. Only the owning worker calls this.
    pub fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Subtracts one (for gauges).
    pub fn dec(&self) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_sub(1),
            Ordering::Relaxed,
        );
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// One worker's counters; on its own cache lines.
#[derive(Debug)]
#[repr(align(128))]
pub struct WorkerMetrics {
    /// Accepted clients.
    pub connections_total: Counter,
    /// Open clients (gauge).
    pub connections_active: Counter,
    /// Client -> backend bytes.
    pub bytes_in: Counter,
    /// Backend -> client bytes.
    pub bytes_out: Counter,
    /// Failed backend connects.
    pub connect_failures: Counter,
    /// Relay errors on the client side.
    pub client_errors: Counter,
    /// Relay errors on the backend side.
    pub backend_errors: Counter,
    /// Failed accepts.
    pub accept_errors: Counter,
    /// Clients closed with no backend.
    pub no_backend: Counter,
    /// Idle-timeout and lifetime closes.
    pub timeouts: Counter,
    /// Bad or missing PROXY headers.
    pub proxy_header_errors: Counter,
    /// Clients waiting for a slot (gauge).
    pub queued: Counter,
    /// Per backend, in pool order.
    pub backends: Box<[BackendMetrics]>,
}

/// One worker's counters for one backend; on its own cache lines, so the
/// slice of one worker never shares a line with another worker's allocation.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct BackendMetrics {
    /// Connections made.
    pub connections: Counter,
    /// Failed connects.
    pub connect_failures: Counter,
    /// Bytes sent to it.
    pub bytes_in: Counter,
    /// Bytes received from it.
    pub bytes_out: Counter,
}

impl WorkerMetrics {
    /// Zeroed counters for a pool of `backends` backends.
    pub fn new(backends: usize) -> Self {
        WorkerMetrics {
            connections_total: Counter::default(),
            connections_active: Counter::default(),
            bytes_in: Counter::default(),
            bytes_out: Counter::default(),
            connect_failures: Counter::default(),
            client_errors: Counter::default(),
            backend_errors: Counter::default(),
            accept_errors: Counter::default(),
            no_backend: Counter::default(),
            timeouts: Counter::default(),
            proxy_header_errors: Counter::default(),
            queued: Counter::default(),
            backends: (0..backends).map(|_| BackendMetrics::default()).collect(),
        }
    }
}

/// Everything a scrape reads: every worker's counters and the pool's state.
#[derive(Debug)]
pub struct Metrics {
    /// Frontend name, as a label.
    pub frontend: String,
    /// Indexed by worker id.
    pub workers: Box<[WorkerMetrics]>,
}

impl Metrics {
    /// Counters for `workers` workers over a pool of `backends` backends.
    pub fn new(frontend: &str, workers: usize, backends: usize) -> Self {
        Metrics {
            frontend: frontend.to_string(),
            workers: (0..workers).map(|_| WorkerMetrics::new(backends)).collect(),
        }
    }

    fn sum(&self, f: impl Fn(&WorkerMetrics) -> &Counter) -> u64 {
        self.workers
            .iter()
            .map(|w| f(w).get())
            .fold(0, u64::wrapping_add)
    }

    /// One backend's counter summed over workers.
    pub fn sum_backend(&self, i: usize, f: impl Fn(&BackendMetrics) -> &Counter) -> u64 {
        self.workers
            .iter()
            .filter_map(|w| w.backends.get(i))
            .map(|b| f(b).get())
            .fold(0, u64::wrapping_add)
    }
}

/// The Prometheus text exposition of every frontend's counters and pool.
pub fn render(frontends: &[(&Metrics, &Pool)]) -> String {
    use names::*;
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, u64)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    };
    let front = |f: &dyn Fn(&WorkerMetrics) -> &Counter| -> Vec<(String, u64)> {
        frontends
            .iter()
            .map(|(m, _)| (format!("frontend=\"{}\"", m.frontend), m.sum(f)))
            .collect()
    };
    family(
        CONNECTIONS_TOTAL,
        "counter",
        "Client connections accepted.",
        front(&|w| &w.connections_total),
    );
    family(
        CONNECTIONS_ACTIVE,
        "gauge",
        "Client connections open.",
        front(&|w| &w.connections_active),
    );
    family(
        BYTES_IN,
        "counter",
        "Bytes relayed from clients to backends.",
        front(&|w| &w.bytes_in),
    );
    family(
        BYTES_OUT,
        "counter",
        "Bytes relayed from backends to clients.",
        front(&|w| &w.bytes_out),
    );
    family(
        CONNECT_FAILURES,
        "counter",
        "Backend connects that failed or timed out.",
        front(&|w| &w.connect_failures),
    );
    let by_side = frontends
        .iter()
        .flat_map(|(m, _)| {
            [
                (
                    format!("frontend=\"{}\",side=\"client\"", m.frontend),
                    m.sum(|w| &w.client_errors),
                ),
                (
                    format!("frontend=\"{}\",side=\"backend\"", m.frontend),
                    m.sum(|w| &w.backend_errors),
                ),
            ]
        })
        .collect();
    family(
        RELAY_ERRORS,
        "counter",
        "Connections ended by a read or write error, by side.",
        by_side,
    );
    family(
        ACCEPT_ERRORS,
        "counter",
        "Failed accept calls.",
        front(&|w| &w.accept_errors),
    );
    family(
        NO_BACKEND,
        "counter",
        "Clients closed because no backend could take them.",
        front(&|w| &w.no_backend),
    );
    family(
        TIMEOUTS,
        "counter",
        "Connections closed by the idle timeout or lifetime limit.",
        front(&|w| &w.timeouts),
    );
    family(
        PROXY_HEADER_ERRORS,
        "counter",
        "Clients closed for a bad PROXY protocol header.",
        front(&|w| &w.proxy_header_errors),
    );
    family(
        QUEUE_LENGTH,
        "gauge",
        "Clients waiting for a backend slot.",
        front(&|w| &w.queued),
    );

    let per_backend = |f: &dyn Fn(&Metrics, &Pool, usize) -> u64| -> Vec<(String, u64)> {
        frontends
            .iter()
            .flat_map(|(m, pool)| {
                (0..pool.len()).map(move |i| {
                    (
                        format!("frontend=\"{}\",backend=\"{}\"", m.frontend, pool.addr(i)),
                        f(m, pool, i),
                    )
                })
            })
            .collect()
    };
    family(
        BACKEND_CONNECTIONS_TOTAL,
        "counter",
        "Connections made to each backend.",
        per_backend(&|m, _, i| m.sum_backend(i, |b| &b.connections)),
    );
    family(
        BACKEND_CONNECTIONS_ACTIVE,
        "gauge",
        "Connections open to each backend.",
        per_backend(&|_, p, i| p.active(i) as u64),
    );
    family(
        BACKEND_CONNECT_FAILURES,
        "counter",
        "Failed connects to each backend.",
        per_backend(&|m, _, i| m.sum_backend(i, |b| &b.connect_failures)),
    );
    family(
        BACKEND_BYTES_IN,
        "counter",
        "Bytes sent to each backend.",
        per_backend(&|m, _, i| m.sum_backend(i, |b| &b.bytes_in)),
    );
    family(
        BACKEND_BYTES_OUT,
        "counter",
        "Bytes received from each backend.",
        per_backend(&|m, _, i| m.sum_backend(i, |b| &b.bytes_out)),
    );
    family(
        BACKEND_UP,
        "gauge",
        "1 while the backend passes health checks.",
        per_backend(&|_, p, i| p.is_up(i) as u64),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BackendConfig;

    #[test]
    fn sums_workers_and_renders_prometheus_text() {
        let pool = Pool::new(&[BackendConfig {
            addr: "127.0.0.1:9000".parse().unwrap(),
            weight: 1,
            max_conns: None,
        }]);
        let m = Metrics::new("web", 2, 1);
        m.workers[0].connections_total.add(3);
        m.workers[1].connections_total.add(4);
        m.workers[0].backends[0].bytes_in.add(10);
        m.workers[1].backends[0].bytes_in.add(5);
        m.workers[1].connections_active.inc();
        m.workers[1].connections_active.inc();
        m.workers[1].connections_active.dec();
        let text = render(&[(&m, &pool)]);
        assert!(
            text.contains("ringlb_connections_total{frontend=\"web\"} 7\n"),
            "{text}"
        );
        assert!(
            text.contains("ringlb_connections_active{frontend=\"web\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "ringlb_backend_bytes_in_total{frontend=\"web\",backend=\"127.0.0.1:9000\"} 15\n"
            ),
            "{text}"
        );
        assert!(text.contains("ringlb_backend_up{frontend=\"web\",backend=\"127.0.0.1:9000\"} 1\n"));
        assert!(text.contains("# TYPE ringlb_queue_length gauge\n"));
    }
}
