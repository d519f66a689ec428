//! Choosing a backend and connecting to it. The worker's balancer picks among
//! backends that are up, not yet tried for this client and not full; a connect
//! that is refused or times out counts against that backend's passive health
//! (see [`Pool::report_failure`]) and the next backend in pool order is tried,
//! until each has been tried once. A connect that fails for a local reason
//! (out of descriptors, ports, memory) blames no backend and ends the client's
//! attempt. When every healthy backend
//! is at its `max-conns`, the client waits in the pool's queue for a slot,
//! first in first out across workers ([`Pool::enqueue`]), up to the queue
//! timeout and the queue's bound; a slot freed on any worker wakes the
//! waiters (see [`Pool::room`]) and the oldest takes it, nothing polls. The connect itself is [`uring::connect`], which a
//! timeout can cut off.
//!
//! A backend the operator drained, put in maint or gave weight 0 is not
//! eligible ([`Pool::eligible`], the one test of whether a backend can take a client). The balancer is rebuilt from
//! [`Pool::weights`] when the pool's weights generation moved (a runtime
//! weight or state changed, a slow start began) and, while a backend ramps
//! up, at most every [`RAMP_STEP`]; both are checked at the pick, lazily: one
//! atomic load, plus a clock read only while a ramp runs.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_uring::net::TcpStream;
use tracing::warn;

use crate::backend::balance::{self, Algorithm, Balancer, PickContext};
use crate::backend::pool::{Lease, OwnedLease, Place, Pool, RAMP_STEP};
use crate::counters::{BackendMetrics, WorkerMetrics};
use crate::logging::Throttle;
use crate::uring;

/// Why a client got no backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoBackend {
    /// Every backend is marked down (by health checks or failures on real traffic).
    Down,
    /// Every candidate was tried and none answered.
    Failed,
    /// Every healthy backend was at its max-conns and the queue was full.
    Full,
    /// Every healthy backend stayed at its max-conns for the queue timeout.
    QueueTimeout,
    /// A connect failed for lack of local resources (descriptors, ports, memory).
    Local,
}

impl fmt::Display for NoBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NoBackend::Down => "no backend: all down",
            NoBackend::Failed => "no backend: all connects failed",
            NoBackend::Full => "no backend: all full, queue full",
            NoBackend::QueueTimeout => "no backend: all full until the queue timeout",
            NoBackend::Local => "no backend: out of local resources",
        })
    }
}

/// One worker's way to the backends.
pub struct Upstream {
    /// The shared pool: health, counts, addresses.
    pool: Arc<Pool>,
    /// Where the pool's backends start in the frontend's per-backend
    /// counters (after the pools before it, see `Frontend::pools`).
    first: usize,
    /// This worker's balancer.
    balancer: RefCell<Box<dyn Balancer>>,
    /// What it is rebuilt with when the weights change.
    algorithm: Algorithm,
    /// This worker's seed, varied per rebuild so a rebuilt rotation does
    /// not always start on the same backend.
    seed: Cell<u64>,
    /// The effective weights the balancer was built with.
    weights: RefCell<Vec<u32>>,
    /// The pool's weights generation they were read at.
    weights_seen: Cell<u64>,
    /// While a backend ramps up: when to read the weights again.
    ramp_check: Cell<Option<Instant>>,
    /// Limit per connect attempt.
    timeout: Duration,
    /// Limit for waiting in the queue.
    queue_timeout: Duration,
    /// Most clients waiting in the pool's queue, across workers.
    max_queue: usize,
    /// Keeps connect-failure warnings to one a second.
    warn_throttle: Throttle,
    /// The same for connects that failed for lack of local resources.
    local_throttle: Throttle,
}

/// A client in the pool's queue, as its worker counts it: in the queue
/// length from when it joins until it leaves (served, timed out or gone),
/// and then in the histogram of time spent queued.
struct Waiting<'p, 'm> {
    place: Place<'p>,
    since: Instant,
    metrics: &'m WorkerMetrics,
}

impl<'p, 'm> Waiting<'p, 'm> {
    fn new(place: Place<'p>, metrics: &'m WorkerMetrics) -> Self {
        metrics.queued.inc();
        Waiting {
            place,
            since: Instant::now(),
            metrics,
        }
    }
}

impl Drop for Waiting<'_, '_> {
    fn drop(&mut self) {
        self.metrics.queued.dec();
        self.metrics.queue_wait.observe(self.since.elapsed());
    }
}

/// The outcome of one pass over the candidates.
enum Pass<'a> {
    Connected(Lease<'a>, TcpStream),
    /// Nothing left to try; `full` says whether a healthy, untried backend was full.
    Exhausted {
        full: bool,
    },
    /// A connect failed for lack of local resources; trying on is pointless.
    Local,
}

impl Upstream {
    /// A worker's upstream over `pool`, whose counters start at backend
    /// counter `first`; `seed` (the worker id) spreads workers' starting
    /// points. `queue` is how long a client may wait for a slot and how many
    /// may wait.
    pub fn new(
        pool: Arc<Pool>,
        first: usize,
        algorithm: Algorithm,
        timeout: Duration,
        queue: (Duration, usize),
        seed: u64,
    ) -> Self {
        let weights_seen = pool.weights_generation();
        let (weights, ramping) = pool.weights();
        let balancer = RefCell::new(balance::build(algorithm, &weights, seed));
        Upstream {
            pool,
            first,
            balancer,
            algorithm,
            seed: Cell::new(seed),
            weights: RefCell::new(weights),
            weights_seen: Cell::new(weights_seen),
            ramp_check: Cell::new(ramping.then(|| Instant::now() + RAMP_STEP)),
            timeout,
            queue_timeout: queue.0,
            max_queue: queue.1,
            warn_throttle: Throttle::new(Duration::from_secs(1)),
            local_throttle: Throttle::new(Duration::from_secs(1)),
        }
    }

    /// Rebuilds the balancer if the pool's weights changed since it was
    /// built, or may have while a backend ramps up.
    fn refresh_weights(&self) {
        let generation = self.pool.weights_generation();
        let ramp_due = self.ramp_check.get().is_some_and(|at| Instant::now() >= at);
        if generation == self.weights_seen.get() && !ramp_due {
            return;
        }
        self.weights_seen.set(generation);
        let (weights, ramping) = self.pool.weights();
        self.ramp_check
            .set(ramping.then(|| Instant::now() + RAMP_STEP));
        if weights != *self.weights.borrow() {
            // Workers differ by their seed's low bits: step by a large odd
            // number so they keep differing.
            let seed = self.seed.get().wrapping_add(0x9e37_79b9);
            self.seed.set(seed);
            *self.balancer.borrow_mut() = balance::build(self.algorithm, &weights, seed);
            *self.weights.borrow_mut() = weights;
        }
    }

    /// The pool.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// This worker's counters for backend `i` of the pool.
    pub fn counters<'m>(&self, metrics: &'m WorkerMetrics, i: usize) -> Option<&'m BackendMetrics> {
        metrics.backends.get(self.first + i)
    }

    /// Connects `client` to a backend, trying each at most once. While every
    /// eligible backend is full it waits in the pool's queue, first in first
    /// out across workers, up to the queue timeout: a newcomer does not take
    /// a slot while others wait, and a waiter takes one only once it is the
    /// oldest.
    pub async fn connect(
        &self,
        client: IpAddr,
        metrics: &WorkerMetrics,
    ) -> Result<(Lease<'_>, TcpStream), NoBackend> {
        let pool = &*self.pool;
        let n = pool.len();
        let mut tried = vec![false; n];
        let mut deadline = None;
        let mut place: Option<Waiting<'_, '_>> = None;
        loop {
            let turn = match &place {
                None => pool.queued() == 0,
                Some(waiting) => waiting.place.is_first(),
            };
            if turn {
                match self.pass(client, &mut tried, metrics).await {
                    Pass::Connected(lease, stream) => return Ok((lease, stream)),
                    Pass::Exhausted { full: false } if !pool.any_available() => {
                        return Err(NoBackend::Down)
                    }
                    Pass::Exhausted { full: false } => return Err(NoBackend::Failed),
                    Pass::Local => return Err(NoBackend::Local),
                    Pass::Exhausted { full: true } => {}
                }
            }
            let now = Instant::now();
            let deadline = *deadline.get_or_insert(now + self.queue_timeout);
            if now >= deadline {
                metrics.queue_timeouts.inc();
                return Err(NoBackend::QueueTimeout);
            }
            let waiting = match &place {
                Some(waiting) => waiting,
                None => {
                    let at = pool.enqueue(self.max_queue).ok_or(NoBackend::Full)?;
                    place.insert(Waiting::new(at, metrics))
                }
            };
            self.wait_for_turn(&waiting.place, &tried, deadline).await;
        }
    }

    /// Waits until this client is the oldest in the queue and a backend it
    /// has not tried may have a free slot, or something changed that may
    /// make it so, or until `deadline`.
    async fn wait_for_turn(&self, place: &Place<'_>, tried: &[bool], deadline: Instant) {
        let pool = &*self.pool;
        let room = pool.room();
        tokio::pin!(room);
        room.as_mut().enable();
        // Checked after the wakeup is armed, so none can slip between.
        let primary_up = pool.primary_up(|i| !tried[i]);
        if place.is_first() && (0..pool.len()).any(|i| !tried[i] && pool.eligible(i, primary_up)) {
            return;
        }
        tokio::select! {
            _ = room => {}
            _ = tokio::time::sleep_until(deadline.into()) => {}
        }
    }

    /// Picks and connects until one connect succeeds or no candidate is left.
    /// Only the first pick goes through the balancer: a retry after a failed
    /// connect takes the next eligible backend in pool order, so failing over
    /// does not use up a turn of the shared rotation, and the next client's
    /// first pick is the one it would have had anyway.
    async fn pass(&self, client: IpAddr, tried: &mut [bool], metrics: &WorkerMetrics) -> Pass<'_> {
        let pool = &*self.pool;
        let n = pool.len();
        // Backends that filled up between pick and lease; skipped for this pass only.
        let mut raced = vec![false; n];
        let mut failed: Option<usize> = None;
        loop {
            // Backups only while no primary is up, or once every primary
            // that is up has failed this client.
            let primary_up = pool.primary_up(|i| !tried[i]);
            let eligible = |i: usize| !tried[i] && !raced[i] && pool.eligible(i, primary_up);
            let pick = match failed {
                Some(last) => (1..n).map(|k| (last + k) % n).find(|&i| eligible(i)),
                None => {
                    self.refresh_weights();
                    let active = |i: usize| pool.active(i);
                    let ctx = PickContext {
                        client,
                        eligible: &eligible,
                        active: &active,
                    };
                    self.balancer.borrow_mut().pick(&ctx)
                }
            };
            let Some(i) = pick else {
                let full = (0..n).any(|i| {
                    !tried[i] && pool.in_service(i, primary_up) && (raced[i] || pool.is_full(i))
                });
                return Pass::Exhausted { full };
            };
            // Another worker may have taken the last slot since the pick.
            let Some(lease) = pool.try_acquire(i) else {
                raced[i] = true;
                continue;
            };
            tried[i] = true;
            let counters = self.counters(metrics, i);
            match uring::connect(pool.addr(i), self.timeout).await {
                Ok(stream) => {
                    if let Some(c) = counters {
                        c.connections.inc();
                    }
                    // With layer-4 observation, success is the backend's
                    // first byte, which the connection reports.
                    if !pool.passive().observe_l4 {
                        self.succeeded(i);
                    }
                    return Pass::Connected(lease, stream);
                }
                Err(err) if err.is_local() => {
                    // Our own shortage (descriptors, ports, memory): the
                    // backend is not to blame, and others would fail alike.
                    metrics.local_connect_failures.inc();
                    if let Some(suppressed) = self.local_throttle.allow(Instant::now()) {
                        warn!(%err, suppressed, "backend connect failed for lack of local resources; the backend is not marked down");
                    }
                    return Pass::Local;
                }
                Err(err) => {
                    metrics.connect_failures.inc();
                    if let Some(c) = counters {
                        c.connect_failures.inc();
                    }
                    if let Some(suppressed) = self.warn_throttle.allow(Instant::now()) {
                        warn!(%err, suppressed, "backend connect failed");
                    }
                    self.failed(i, &err);
                    failed = Some(i);
                }
            }
        }
    }

    /// Picks a backend for a client that cannot wait (a UDP session's first
    /// datagram) and takes a slot on it: the balancer's pick among the
    /// eligible backends, passing over those that filled up meanwhile.
    /// Nothing is connected, so nothing fails over.
    pub fn lease_now(&self, client: IpAddr) -> Result<OwnedLease, NoBackend> {
        let pool = &*self.pool;
        let mut raced = vec![false; pool.len()];
        self.refresh_weights();
        loop {
            let primary_up = pool.primary_up(|_| true);
            let eligible = |i: usize| !raced[i] && pool.eligible(i, primary_up);
            let active = |i: usize| pool.active(i);
            let ctx = PickContext {
                client,
                eligible: &eligible,
                active: &active,
            };
            let pick = self.balancer.borrow_mut().pick(&ctx);
            let Some(i) = pick else {
                let full = (0..pool.len()).any(|i| pool.in_service(i, primary_up));
                return Err(if full {
                    NoBackend::Full
                } else {
                    NoBackend::Down
                });
            };
            match OwnedLease::try_new(&self.pool, i) {
                Some(lease) => return Ok(lease),
                None => raced[i] = true,
            }
        }
    }

    /// Reports a success of backend `i` on real traffic (a connect, or with
    /// layer-4 observation the backend's first byte): its failure streak ends.
    pub fn succeeded(&self, i: usize) {
        self.pool.report_success(i);
    }

    /// Reports a failure of backend `i` seen on real traffic (a connect, or
    /// a connection the backend ended before its first byte); says so when
    /// that took the backend down.
    pub fn failed(&self, i: usize, why: &dyn fmt::Display) {
        let pool = &*self.pool;
        if let Some(streak) = pool.report_failure(i) {
            pool.set_last_error(i, why.to_string());
            let addr = pool.addr(i);
            let passive = pool.passive();
            if passive.active_checks {
                warn!(backend = %addr, "backend {addr} down after {streak} failed connections in a row on real traffic; health checks bring it back");
            } else {
                warn!(backend = %addr, "backend {addr} down after {streak} failed connections in a row on real traffic; tried again in {:?}", passive.fail_timeout);
            }
        }
    }
}
