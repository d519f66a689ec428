//! One client connection, from accept to close: pick and connect a backend,
//! relay, enforce the idle timeout and lifetime limit, then count it and log
//! its access line. Timeouts close by shutting both sockets down, which
//! completes the relay's pending operations; nothing is dropped in flight.

use std::cell::Cell;
use std::fmt;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio_uring::net::TcpStream;
use tracing::{debug, info};

use crate::limit::Slot;
use crate::logging::ACCESS_TARGET;
use crate::metrics::WorkerMetrics;
use crate::relay::{self, relay, Outcome, Side};
use crate::upstream::NoBackend;
use crate::worker::{Conn, FrontendState, Registration, Worker};

/// Why a connection closed, as the access log says it.
#[derive(Debug)]
enum Ended<'a> {
    /// Both directions ended; `side` sent EOF first.
    Eof(Side),
    /// A read or write failed.
    Error(&'a relay::RelayError),
    /// No byte either way for the idle timeout.
    IdleTimeout,
    /// The connection reached its maximum lifetime.
    Lifetime,
    /// Shutdown's drain timeout cut it off.
    Drain,
    /// No backend could take it.
    NoBackend(NoBackend),
}

impl fmt::Display for Ended<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ended::Eof(side) => write!(f, "{side} EOF"),
            Ended::Error(err) => err.fmt(f),
            Ended::IdleTimeout => f.write_str("idle timeout"),
            Ended::Lifetime => f.write_str("max lifetime"),
            Ended::Drain => f.write_str("drain"),
            Ended::NoBackend(why) => why.fmt(f),
        }
    }
}

/// Runs one client connection to its end. `slot` is its place under the
/// frontend's max-conns, freed when this returns.
pub async fn handle(
    worker: Rc<Worker>,
    fe: Rc<FrontendState>,
    client: TcpStream,
    peer: SocketAddr,
    slot: Option<Slot>,
) {
    let _slot = slot;
    let start = Instant::now();
    let metrics = fe.metrics(worker.id);
    metrics.connections_total.inc();
    metrics.connections_active.inc();
    let client = Rc::new(client);
    let key = worker.conns.borrow_mut().insert(Conn {
        client: client.clone(),
        backend: None,
    });
    let _registration = Registration {
        worker: worker.clone(),
        key,
    };

    let connected = if worker.aborting.get() {
        Err(NoBackend::AllFailed)
    } else {
        fe.upstream.connect(peer.ip(), metrics).await
    };
    let (lease, backend) = match connected {
        Ok(connected) => connected,
        Err(why) => {
            metrics.no_backend.inc();
            metrics.connections_active.dec();
            log_close(&fe, peer, None, 0, 0, start, &Ended::NoBackend(why));
            return;
        }
    };
    let index = lease.index();
    let backend = Rc::new(backend);
    worker.conns.borrow_mut()[key].backend = Some(backend.clone());
    if worker.aborting.get() {
        relay::teardown(&client, &backend);
    }

    let limits = &fe.limits;
    let activity = Cell::new(start);
    let track = limits.idle_timeout.map(|_| &activity);
    let relayed = relay(&client, &backend, &fe.buffers, track);
    let (outcome, timed_out) = if limits.idle_timeout.is_none() && limits.max_lifetime.is_none() {
        (relayed.await, None)
    } else {
        tokio::pin!(relayed);
        tokio::select! {
            outcome = &mut relayed => (outcome, None),
            ended = watchdog(&activity, limits.idle_timeout, limits.max_lifetime.map(|d| start + d)) => {
                relay::teardown(&client, &backend);
                (relayed.await, Some(ended))
            }
        }
    };

    count(fe.metrics(worker.id), index, &outcome, timed_out.is_some());
    let ended = if worker.aborting.get() {
        Ended::Drain
    } else if let Some(ended) = timed_out {
        ended
    } else if let Some(err) = &outcome.error {
        Ended::Error(err)
    } else {
        Ended::Eof(outcome.first_eof.unwrap_or(Side::Client))
    };
    let addr = fe.upstream.pool().addr(index);
    log_close(
        &fe,
        peer,
        Some(addr),
        outcome.to_backend,
        outcome.to_client,
        start,
        &ended,
    );
    drop(lease);
}

/// Adds a finished connection to this worker's counters.
fn count(m: &WorkerMetrics, backend: usize, outcome: &Outcome, timed_out: bool) {
    m.connections_active.dec();
    m.bytes_in.add(outcome.to_backend);
    m.bytes_out.add(outcome.to_client);
    if let Some(b) = m.backends.get(backend) {
        b.bytes_in.add(outcome.to_backend);
        b.bytes_out.add(outcome.to_client);
    }
    if timed_out {
        m.timeouts.inc();
    } else if let Some(err) = &outcome.error {
        match err.side() {
            Side::Client => m.client_errors.inc(),
            Side::Backend => m.backend_errors.inc(),
        }
    }
}

/// Resolves when the connection has been idle for `idle`, or at `deadline`.
async fn watchdog(
    activity: &Cell<Instant>,
    idle: Option<Duration>,
    deadline: Option<Instant>,
) -> Ended<'static> {
    loop {
        let idle_at = idle.map(|d| activity.get() + d);
        let wake = match (idle_at, deadline) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => return std::future::pending().await,
        };
        tokio::time::sleep_until(wake.into()).await;
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            return Ended::Lifetime;
        }
        if idle.is_some_and(|d| now >= activity.get() + d) {
            return Ended::IdleTimeout;
        }
    }
}

/// An address, or `-` when there is none; formatted only if the line is written.
struct MaybeAddr(Option<SocketAddr>);

impl fmt::Display for MaybeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(addr) => addr.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// The per-connection line: at info on the access log target when
/// `--access-log` is on, else at debug.
fn log_close(
    fe: &FrontendState,
    client: SocketAddr,
    backend: Option<SocketAddr>,
    bytes_in: u64,
    bytes_out: u64,
    start: Instant,
    reason: &Ended<'_>,
) {
    let backend = MaybeAddr(backend);
    let duration_ms = start.elapsed().as_secs_f64() * 1000.0;
    if fe.limits.access_log {
        info!(
            target: ACCESS_TARGET,
            client = %client,
            frontend = fe.name(),
            backend = %backend,
            bytes_in,
            bytes_out,
            duration_ms,
            reason = %reason,
            "connection closed"
        );
    } else {
        debug!(
            client = %client,
            frontend = fe.name(),
            backend = %backend,
            bytes_in,
            bytes_out,
            duration_ms,
            reason = %reason,
            "connection closed"
        );
    }
}
