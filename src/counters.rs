//! Counters, kept per worker and summed only when scraped, so the data path
//! never shares a cache line between workers: each worker writes only its own
//! [`WorkerMetrics`] (single writer, so a relaxed load + store, no locked
//! read-modify-write), and the admin thread reads them all. What they are
//! called and how they are exposed is [`metrics`](crate::metrics)' table;
//! this module is the storage the data path writes, and imports nothing of
//! the crate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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

/// The upper bounds, in seconds, of the buckets of time spent in the queue
/// at max-conns; one more bucket holds everything above the last.
pub const QUEUE_WAIT_BOUNDS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A histogram of durations written by one thread only: a counter per
/// bucket of [`QUEUE_WAIT_BOUNDS`] (not cumulative; the exposition adds them
/// up) and their sum.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket, the last for those above every bound.
    buckets: [Counter; QUEUE_WAIT_BOUNDS.len() + 1],
    /// The sum of the observations, in microseconds.
    sum_us: Counter,
}

impl Histogram {
    /// Counts one observation. Only the owning worker calls this.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = QUEUE_WAIT_BOUNDS
            .iter()
            .position(|&bound| secs <= bound)
            .unwrap_or(QUEUE_WAIT_BOUNDS.len());
        self.buckets[i].inc();
        self.sum_us.add(d.as_micros() as u64);
    }
}

/// A histogram summed over workers.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSum {
    /// Observations per bucket of [`QUEUE_WAIT_BOUNDS`] and the one above.
    pub buckets: Vec<u64>,
    /// The sum of the observations, in microseconds.
    pub sum_us: u64,
}

impl HistogramSum {
    /// How many observations.
    pub fn count(&self) -> u64 {
        self.buckets.iter().fold(0, |a, &b| a.wrapping_add(b))
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
    /// Of `bytes_in` and `bytes_out`, those spliced (never copied).
    pub spliced: Counter,
    /// Sends made zero-copy (`send-zc`).
    pub send_zc: Counter,
    /// Of those, the ones whose notification said the kernel copied anyway.
    pub send_zc_copied: Counter,
    /// Failed backend connects.
    pub connect_failures: Counter,
    /// Backend connects that failed for lack of local resources.
    pub local_connect_failures: Counter,
    /// Backend connections ended by the backend before its first byte.
    pub l4_failures: Counter,
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
    /// Clients closed after waiting the queue timeout for a slot.
    pub queue_timeouts: Counter,
    /// How long clients that queued waited, served or not.
    pub queue_wait: Histogram,
    /// Clients refused at accept by allow/deny.
    pub refused_source: Counter,
    /// Clients refused at accept by accept-proxy-from.
    pub refused_proxy_source: Counter,
    /// Clients refused for max-conns-per-source.
    pub refused_source_conns: Counter,
    /// Clients refused for rate-per-source.
    pub refused_source_rate: Counter,
    /// Clients of a new source served without a per-source limit: the
    /// source table had no room.
    pub source_untracked: Counter,
    /// SNI routing: clients whose first bytes were not TLS.
    pub sni_not_tls: Counter,
    /// SNI routing: clients whose ClientHello was malformed.
    pub sni_malformed: Counter,
    /// SNI routing: clients whose ClientHello passed the buffer cap.
    pub sni_oversized: Counter,
    /// SNI routing: clients that sent no complete ClientHello within sni-timeout.
    pub sni_timeout: Counter,
    /// SNI routing: clients that closed before their ClientHello was complete.
    pub sni_truncated: Counter,
    /// SNI routing: clients whose ClientHello matched no route, with no default.
    pub sni_no_route: Counter,
    /// UDP sessions opened.
    pub udp_sessions_total: Counter,
    /// UDP sessions open (gauge).
    pub udp_sessions_active: Counter,
    /// Datagrams from clients relayed to backends.
    pub udp_datagrams_in: Counter,
    /// Datagrams from backends relayed to clients.
    pub udp_datagrams_out: Counter,
    /// Datagrams of new clients dropped: no backend could take them.
    pub udp_drops_no_backend: Counter,
    /// Datagrams of new clients dropped at max-sessions or the connection ceiling.
    pub udp_drops_session_limit: Counter,
    /// Datagrams dropped because they came in cut (MSG_TRUNC).
    pub udp_drops_truncated: Counter,
    /// Datagrams dropped because the backend was unreachable (ECONNREFUSED).
    pub udp_drops_unreachable: Counter,
    /// Per backend: the frontend's own pool, then each route's (see
    /// `Frontend::pools`).
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
            spliced: Counter::default(),
            send_zc: Counter::default(),
            send_zc_copied: Counter::default(),
            connect_failures: Counter::default(),
            local_connect_failures: Counter::default(),
            l4_failures: Counter::default(),
            client_errors: Counter::default(),
            backend_errors: Counter::default(),
            accept_errors: Counter::default(),
            no_backend: Counter::default(),
            timeouts: Counter::default(),
            proxy_header_errors: Counter::default(),
            queued: Counter::default(),
            queue_timeouts: Counter::default(),
            queue_wait: Histogram::default(),
            refused_source: Counter::default(),
            refused_proxy_source: Counter::default(),
            refused_source_conns: Counter::default(),
            refused_source_rate: Counter::default(),
            source_untracked: Counter::default(),
            sni_not_tls: Counter::default(),
            sni_malformed: Counter::default(),
            sni_oversized: Counter::default(),
            sni_timeout: Counter::default(),
            sni_truncated: Counter::default(),
            sni_no_route: Counter::default(),
            udp_sessions_total: Counter::default(),
            udp_sessions_active: Counter::default(),
            udp_datagrams_in: Counter::default(),
            udp_datagrams_out: Counter::default(),
            udp_drops_no_backend: Counter::default(),
            udp_drops_session_limit: Counter::default(),
            udp_drops_truncated: Counter::default(),
            udp_drops_unreachable: Counter::default(),
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

    /// One frontend counter summed over workers.
    pub fn sum(&self, f: impl Fn(&WorkerMetrics) -> &Counter) -> u64 {
        self.workers
            .iter()
            .map(|w| f(w).get())
            .fold(0, u64::wrapping_add)
    }

    /// One histogram summed over workers.
    pub fn sum_histogram(&self, f: impl Fn(&WorkerMetrics) -> &Histogram) -> HistogramSum {
        let mut sum = HistogramSum {
            buckets: vec![0; QUEUE_WAIT_BOUNDS.len() + 1],
            sum_us: 0,
        };
        for w in self.workers.iter() {
            let h = f(w);
            for (total, bucket) in sum.buckets.iter_mut().zip(&h.buckets) {
                *total = total.wrapping_add(bucket.get());
            }
            sum.sum_us = sum.sum_us.wrapping_add(h.sum_us.get());
        }
        sum
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
