//! The backend pool as every worker sees it: each backend's configuration plus
//! the few facts that must be the same across workers (active connections and
//! health), kept as atomics. Workers read health and counts without locks; the
//! prober writes health; a connection's [`Lease`] keeps its count.
//!
//! Clients waiting for a slot while every healthy backend is at `max-conns`
//! wait on the pool's [`Pool::room`], a `Notify` that works across worker
//! threads: a lease dropped on a full backend wakes one waiter, a backend
//! coming up wakes all. Nothing touches it while a backend has room, so the
//! data path takes no lock for it.
//!
//! Passive health, as nginx's `max_fails`/`fail_timeout` and HAProxy's
//! `observe layer4`: workers report each failed connect (and, with
//! observation on, each backend connection reset or closed before its first
//! byte) and each success. After `fall` failures in a row the worker that saw
//! the last one takes the backend down at once. With active checks the
//! prober brings it back after `rise` passed checks; without them it is
//! tried again by real traffic once `fail-timeout` has passed, and one more
//! failure takes it down again.
//!
//! Each backend's atomics sit on their own cache line so workers counting
//! connections to different backends do not contend.
//!
//! Runtime control (the admin endpoint's PATCH): each backend also has an
//! [`AdminState`] (`ready`, `drain`, `maint`) and a runtime weight, both
//! atomics that workers read at each pick without a lock. A backend takes new
//! connections only while `ready` with a weight above 0; `maint` also stops
//! its health checks. Open connections are never touched. A change bumps the
//! pool's weights generation, one relaxed load that each worker compares at
//! a pick to know when to rebuild its balancer from [`Pool::weights`].
//!
//! Agent checks ([`agent`](super::agent)) add a second opinion on each
//! backend, kept apart from the operator's: the agent's health (`down`
//! takes a backend out whatever its health checks say; `up` leaves them to
//! decide), the agent's state (`ready`, `drain`, `maint`) and its weight
//! share. Each side undoes only what it set, and the stricter of the two
//! wins: a backend takes new connections only while both the admin state
//! and the agent's are `ready`; `maint` from either stops its health checks
//! (not its agent checks); its effective weight is the admin weight times
//! the agent's share. See [`Pool::set_agent`].
//!
//! Slow start: a backend with `slow-start` ramps its effective weight
//! linearly ([`ramp`]) from almost nothing to its weight over that time after
//! it comes up: when the pool is built (start, or a reload that added it),
//! when its health recovers, and when it leaves `drain` or `maint` (or weight
//! 0). Weights reach the balancers multiplied by [`WEIGHT_SCALE`] (HAProxy's
//! `BE_WEIGHT_SCALE`), so even a weight-1 backend ramps in 16 steps instead
//! of jumping from 1 to 1. The ramp starts at 1/16 of a weight-1 backend's
//! share rather than at 10% of its weight: a backend that just came up (a cold
//! cache, a JIT warming up) is what slow start protects, and HAProxy also
//! starts near zero. While a ramp runs, workers rebuild their balancer at
//! most every [`RAMP_STEP`] (checked lazily at pick time, see
//! [`Pool::weights`]); no worker polls.
//!
//! Time in the pool is milliseconds since one process-wide epoch, so a
//! reload's new pool can take over its predecessor's times as they are.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

use tokio::sync::futures::Notified;
use tokio::sync::Notify;

use tracing::info;

use crate::config::BackendConfig;

/// Weights reach the balancers multiplied by this, so that slow start has
/// steps to ramp through even for a weight-1 backend.
pub const WEIGHT_SCALE: u32 = 16;

/// While a backend ramps up, how often a worker recomputes its weights:
/// often enough for a smooth ramp, rarely enough to cost nothing.
pub const RAMP_STEP: Duration = Duration::from_millis(200);

/// A backend's effective weight `since_up` after it came up with `weight`,
/// under `slow_start`: linear from 1 (never 0, so it still gets a little
/// traffic) up to `weight`, reached once `slow_start` has passed. A zero
/// `slow_start` is no ramp; a zero `weight` stays 0.
pub fn ramp(weight: u32, since_up: Duration, slow_start: Duration) -> u32 {
    if weight == 0 || since_up >= slow_start {
        return weight;
    }
    let share = u128::from(weight) * since_up.as_nanos() / slow_start.as_nanos();
    (share as u32).max(1)
}

/// What the operator set a backend to, on the admin endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminState {
    /// Normal: new connections while its health allows.
    Ready,
    /// No new connections; open ones go on.
    Drain,
    /// As drain, and no health checks either.
    Maint,
}

impl AdminState {
    const ALL: [AdminState; 3] = [AdminState::Ready, AdminState::Drain, AdminState::Maint];

    /// As /backends and the PATCH body spell it.
    pub fn name(self) -> &'static str {
        match self {
            AdminState::Ready => "ready",
            AdminState::Drain => "drain",
            AdminState::Maint => "maint",
        }
    }
}

impl fmt::Display for AdminState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Milliseconds since the process-wide epoch, at least 1 so that 0 can mean
/// "not set".
fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// All backends of one frontend.
#[derive(Debug)]
pub struct Pool {
    backends: Vec<Shared>,
    /// Clients of every worker waiting for a backend slot.
    room: Notify,
    /// The clients waiting for a slot, across workers, by arrival: only the
    /// oldest may take a slot that frees. Locked only by clients that wait.
    queue: Mutex<std::collections::BTreeSet<u64>>,
    /// How many wait: newcomers look here, without the lock, to join the
    /// queue rather than take a slot a waiter is owed.
    queued: AtomicUsize,
    /// The next arrival's place in the queue.
    next_in_queue: AtomicU64,
    /// How failures seen on real traffic take a backend down.
    passive: Passive,
    /// Bumped whenever the balancers' weights change other than by a ramp
    /// running its course (a runtime weight or state, a ramp starting):
    /// workers compare it at each pick.
    weights_generation: AtomicU64,
    /// The pool a reload built from this one, which took over its runtime
    /// state: a change made here afterwards (the admin endpoint may still
    /// hold the old generation) is passed on to it. The lock orders a
    /// change against the take-over, so none is lost in between; only the
    /// admin endpoint and reloads take it, never a worker.
    successor: Mutex<Weak<Pool>>,
}

/// How failures seen on real traffic take a backend down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Passive {
    /// Failures in a row that take a backend down.
    pub fall: u32,
    /// How long a backend stays down without active checks before real
    /// traffic tries it again.
    pub fail_timeout: Duration,
    /// Whether active checks run (and so bring a downed backend back).
    pub active_checks: bool,
    /// Whether a backend connection reset or closed by the backend before
    /// its first byte counts as a failure (and only a byte as a success).
    pub observe_l4: bool,
}

/// One backend's configuration and cross-worker state.
#[derive(Debug)]
#[repr(align(64))]
struct Shared {
    /// As configured.
    config: BackendConfig,
    /// Open connections to it, plus connects in progress, across all workers.
    active: AtomicUsize,
    /// Whether health checks currently pass (starts up).
    up: AtomicBool,
    /// Failures in a row seen by workers (connects, layer-4 observations).
    streak: AtomicU32,
    /// Without active checks: when a passively downed backend may be tried
    /// again, in ms of [`now_ms`]; 0 when not down so.
    retry_at: AtomicU64,
    /// When it last went up or down, in ms of [`now_ms`];
    /// 0 when it never changed.
    changed_at: AtomicU64,
    /// Why it last failed (a check, or the failure that took it down), for
    /// the stats page. Written by the prober and at a flip, never per byte.
    last_error: Mutex<Option<String>>,
    /// Its [`AdminState`], as its index in `AdminState::ALL`.
    state: AtomicU8,
    /// Its weight now: the configured one until the admin endpoint sets one.
    weight: AtomicU32,
    /// Whether the admin endpoint set `weight` (a reload then keeps it).
    weight_set: AtomicBool,
    /// When it last came up (pool built, health back, state back to
    /// ready), in ms of [`now_ms`]: where its slow start ramps from.
    up_since: AtomicU64,
    /// Whether its agent ever answered (the agent fields mean something).
    agent_seen: AtomicBool,
    /// Whether its agent said `down` (and not `up` since).
    agent_down: AtomicBool,
    /// The agent's [`AdminState`], as its index in `AdminState::ALL`.
    agent_state: AtomicU8,
    /// The agent's share of its weight, in percent (100 until it says).
    agent_percent: AtomicU32,
}

/// What a backend's agent last said, as the pool holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentView {
    /// Up, unless it said `down` (and not `up` since).
    pub up: bool,
    /// Its administrative state.
    pub state: AdminState,
    /// Its share of the weight, in percent.
    pub percent: u32,
}

impl Pool {
    /// A pool with every backend up and idle.
    pub fn new(configs: &[BackendConfig], passive: Passive) -> Pool {
        let now = now_ms();
        Pool {
            backends: configs
                .iter()
                .map(|config| Shared {
                    config: config.clone(),
                    active: AtomicUsize::new(0),
                    up: AtomicBool::new(true),
                    streak: AtomicU32::new(0),
                    retry_at: AtomicU64::new(0),
                    changed_at: AtomicU64::new(0),
                    last_error: Mutex::new(None),
                    state: AtomicU8::new(0),
                    weight: AtomicU32::new(config.weight),
                    weight_set: AtomicBool::new(false),
                    up_since: AtomicU64::new(now),
                    agent_seen: AtomicBool::new(false),
                    agent_down: AtomicBool::new(false),
                    agent_state: AtomicU8::new(0),
                    agent_percent: AtomicU32::new(100),
                })
                .collect(),
            room: Notify::new(),
            queue: Mutex::default(),
            queued: AtomicUsize::new(0),
            next_in_queue: AtomicU64::new(0),
            passive: Passive {
                fall: passive.fall.max(1),
                ..passive
            },
            weights_generation: AtomicU64::new(0),
            successor: Mutex::new(Weak::new()),
        }
    }

    /// Number of backends.
    pub fn len(&self) -> usize {
        self.backends.len()
    }

    /// Backend `i`'s configuration.
    pub fn config(&self, i: usize) -> &BackendConfig {
        &self.backends[i].config
    }

    /// Backend `i`'s address.
    pub fn addr(&self, i: usize) -> SocketAddr {
        self.backends[i].config.addr
    }

    /// The effective weights now, in backend order and in units of
    /// 1/[`WEIGHT_SCALE`], for building balancers; and whether any backend
    /// is still ramping up, so they will change with time alone.
    pub fn weights(&self) -> (Vec<u32>, bool) {
        let now = now_ms();
        let mut ramping = false;
        let weights = (0..self.len())
            .map(|i| {
                let (w, ramps) = self.effective_weight_at(i, now);
                ramping |= ramps;
                w
            })
            .collect();
        (weights, ramping)
    }

    /// Backend `i`'s effective weight now, in units of 1/[`WEIGHT_SCALE`].
    pub fn effective_weight(&self, i: usize) -> u32 {
        self.effective_weight_at(i, now_ms()).0
    }

    fn effective_weight_at(&self, i: usize, now: u64) -> (u32, bool) {
        let b = &self.backends[i];
        let weight = b
            .weight
            .load(Ordering::Relaxed)
            .saturating_mul(WEIGHT_SCALE);
        let weight = match b.agent_percent.load(Ordering::Relaxed) {
            100 => weight,
            0 => 0,
            // At least one step: a share above 0 still takes a little.
            percent => {
                (u64::from(weight) * u64::from(percent) / 100).clamp(1, u64::from(u32::MAX)) as u32
            }
        };
        match b.config.slow_start {
            Some(slow_start) if !slow_start.is_zero() => {
                let up_since = b.up_since.load(Ordering::Relaxed);
                let since = Duration::from_millis(now.saturating_sub(up_since));
                (ramp(weight, since, slow_start), since < slow_start)
            }
            _ => (weight, false),
        }
    }

    /// Changes when the weights change other than by a ramp's progress; one
    /// load, for a worker to compare at each pick.
    pub fn weights_generation(&self) -> u64 {
        self.weights_generation.load(Ordering::Acquire)
    }

    fn weights_changed(&self) {
        self.weights_generation.fetch_add(1, Ordering::Release);
    }

    /// Backend `i` starts its slow start again, if it has one.
    fn came_up(&self, i: usize) {
        let b = &self.backends[i];
        if b.config.slow_start.is_some_and(|d| !d.is_zero()) {
            b.up_since.store(now_ms(), Ordering::Relaxed);
            self.weights_changed();
        }
    }

    /// Backend `i`'s runtime state.
    pub fn state(&self, i: usize) -> AdminState {
        let n = self.backends[i].state.load(Ordering::Relaxed);
        AdminState::ALL[usize::from(n).min(2)]
    }

    /// Sets backend `i`'s runtime state, here and in the pool a reload
    /// built from this one. Back to ready, it starts its slow start and
    /// wakes the clients waiting for a slot.
    pub fn set_state(&self, i: usize, state: AdminState) {
        let successor = self
            .successor
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.set_state_here(i, state);
        if let Some((next, j)) = self.successor_of(&successor, i) {
            next.set_state(j, state);
        }
    }

    /// Backend `i`'s counterpart (same address) in `successor`, if any.
    fn successor_of(&self, successor: &Weak<Pool>, i: usize) -> Option<(Arc<Pool>, usize)> {
        let next = successor.upgrade()?;
        let addr = self.addr(i);
        let j = (0..next.len()).find(|&j| next.addr(j) == addr)?;
        Some((next, j))
    }

    fn set_state_here(&self, i: usize, state: AdminState) {
        let n = AdminState::ALL
            .iter()
            .position(|&s| s == state)
            .unwrap_or(0) as u8;
        let was = self.backends[i].state.swap(n, Ordering::Relaxed);
        if was != n {
            if state == AdminState::Ready {
                self.came_up(i);
                self.room.notify_waiters();
            }
            self.weights_changed();
        }
    }

    /// Backend `i`'s runtime weight (0 takes no new connections).
    pub fn weight(&self, i: usize) -> u32 {
        self.backends[i].weight.load(Ordering::Relaxed)
    }

    /// Sets backend `i`'s runtime weight, here and in the pool a reload
    /// built from this one; from 0 to more, it starts its slow start and
    /// wakes the clients waiting for a slot.
    pub fn set_weight(&self, i: usize, weight: u32) {
        let successor = self
            .successor
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.set_weight_here(i, weight);
        if let Some((next, j)) = self.successor_of(&successor, i) {
            next.set_weight(j, weight);
        }
    }

    fn set_weight_here(&self, i: usize, weight: u32) {
        let b = &self.backends[i];
        b.weight_set.store(true, Ordering::Relaxed);
        let was = b.weight.swap(weight, Ordering::Relaxed);
        if was == 0 && weight > 0 {
            self.came_up(i);
            self.room.notify_waiters();
        }
        self.weights_changed();
    }

    /// Whether backend `i` may take new connections as far as the operator
    /// goes: ready, with a weight above 0.
    pub fn admits(&self, i: usize) -> bool {
        let b = &self.backends[i];
        b.state.load(Ordering::Relaxed) == 0
            && b.weight.load(Ordering::Relaxed) > 0
            && b.agent_state.load(Ordering::Relaxed) == 0
            && b.agent_percent.load(Ordering::Relaxed) > 0
    }

    /// Whether backend `i` is health checked: in maint neither by the
    /// operator nor by its agent.
    pub fn checked(&self, i: usize) -> bool {
        let agent = self.backends[i].agent_state.load(Ordering::Relaxed);
        self.state(i) != AdminState::Maint && usize::from(agent) != 2
    }

    /// What backend `i`'s agent last said; `None` if it never answered.
    pub fn agent(&self, i: usize) -> Option<AgentView> {
        let b = &self.backends[i];
        if !b.agent_seen.load(Ordering::Relaxed) {
            return None;
        }
        let state = b.agent_state.load(Ordering::Relaxed);
        Some(AgentView {
            up: !b.agent_down.load(Ordering::Relaxed),
            state: AdminState::ALL[usize::from(state).min(2)],
            percent: b.agent_percent.load(Ordering::Relaxed),
        })
    }

    /// Records what backend `i`'s agent said; `None` is not mentioned, and
    /// stays as before. Returns the new view when it changed. A backend
    /// this lets back in starts its slow start and wakes the waiting clients.
    pub fn set_agent(
        &self,
        i: usize,
        up: Option<bool>,
        state: Option<AdminState>,
        percent: Option<u32>,
    ) -> Option<AgentView> {
        let b = &self.backends[i];
        let before = self.agent(i);
        let took = self.admits(i) && self.is_up(i);
        b.agent_seen.store(true, Ordering::Relaxed);
        if let Some(up) = up {
            b.agent_down.store(!up, Ordering::Relaxed);
        }
        if let Some(state) = state {
            let n = AdminState::ALL
                .iter()
                .position(|&s| s == state)
                .unwrap_or(0);
            b.agent_state.store(n as u8, Ordering::Relaxed);
        }
        if let Some(percent) = percent {
            b.agent_percent.store(percent, Ordering::Relaxed);
        }
        let after = self.agent(i);
        if after == before {
            return None;
        }
        if before.is_none_or(|v| v.up) != after.is_some_and(|v| v.up) {
            b.changed_at.store(now_ms(), Ordering::Relaxed);
        }
        if !took && self.admits(i) && self.is_up(i) {
            self.came_up(i);
            self.room.notify_waiters();
        }
        self.weights_changed();
        after
    }

    /// Whether any backend is up and admitted by the operator.
    pub fn any_available(&self) -> bool {
        (0..self.len()).any(|i| self.available(i))
    }

    /// Whether backend `i` is up and admitted by the operator.
    fn available(&self, i: usize) -> bool {
        self.is_up(i) && self.admits(i)
    }

    /// Whether backend `i` takes clients, its max-conns aside: available,
    /// and a backup only while no primary is up for this client
    /// (`primary_up`, see [`Pool::primary_up`]).
    pub fn in_service(&self, i: usize, primary_up: bool) -> bool {
        self.available(i) && self.serves(i, primary_up)
    }

    /// Whether backend `i` can take a client now: in service and below its
    /// max-conns. The one test the balancer, failover and the queue share.
    pub fn eligible(&self, i: usize, primary_up: bool) -> bool {
        self.in_service(i, primary_up) && !self.is_full(i)
    }

    /// Whether backend `i` may take new connections: it passes its health
    /// checks, or (without active checks) its fail-timeout has passed.
    pub fn is_up(&self, i: usize) -> bool {
        !self.backends[i].agent_down.load(Ordering::Relaxed) && self.checks_pass(i)
    }

    /// Whether backend `i` passes its health checks (or, without them, its
    /// fail-timeout has passed), whatever its agent says.
    pub fn checks_pass(&self, i: usize) -> bool {
        let b = &self.backends[i];
        b.up.load(Ordering::Relaxed) || self.retry_due(i)
    }

    /// Brings a passively downed backend back once its fail-timeout passed
    /// (only without active checks; the clock is read only while it is down).
    fn retry_due(&self, i: usize) -> bool {
        let b = &self.backends[i];
        let at = b.retry_at.load(Ordering::Relaxed);
        if at == 0 || now_ms() < at {
            return false;
        }
        if b.retry_at
            .compare_exchange(at, 0, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            b.up.store(true, Ordering::Relaxed);
            b.changed_at.store(now_ms(), Ordering::Relaxed);
            self.came_up(i);
            info!(
                backend = %b.config.addr,
                "backend {} back after its fail-timeout: real traffic tries it again",
                b.config.addr
            );
            self.room.notify_waiters();
        }
        true
    }

    /// Whether backend `i` may take new connections as far as the backup
    /// rule goes: a primary always, a backup only while no primary is up.
    /// `primary_up` is [`Pool::primary_up`], taken once per pick.
    fn serves(&self, i: usize, primary_up: bool) -> bool {
        !self.backends[i].config.backup || !primary_up
    }

    /// Whether a primary (non-backup) backend is up (and admitted by the
    /// operator) among those `untried` leaves for this client: once every
    /// primary failed it, a backup may take it.
    pub fn primary_up(&self, untried: impl Fn(usize) -> bool) -> bool {
        (0..self.len()).any(|i| !self.backends[i].config.backup && self.available(i) && untried(i))
    }

    /// Whether any backend passes its health checks.
    pub fn any_up(&self) -> bool {
        (0..self.len()).any(|i| self.is_up(i))
    }

    /// Publishes backend `i`'s health; one that comes up wakes every client
    /// waiting for a slot.
    pub fn set_up(&self, i: usize, up: bool) {
        let b = &self.backends[i];
        let was = b.up.swap(up, Ordering::Relaxed);
        if up != was {
            b.changed_at.store(now_ms(), Ordering::Relaxed);
        }
        if up && !was {
            b.streak.store(0, Ordering::Relaxed);
            self.came_up(i);
            self.room.notify_waiters();
        }
    }

    /// Records why backend `i` last failed.
    pub fn set_last_error(&self, i: usize, error: String) {
        if let Ok(mut last) = self.backends[i].last_error.lock() {
            *last = Some(error);
        }
    }

    /// Why backend `i` last failed, if it ever did.
    pub fn last_error(&self, i: usize) -> Option<String> {
        self.backends[i].last_error.lock().ok()?.clone()
    }

    /// How long since backend `i` last went up or down; `None` if it never did.
    pub fn since_change(&self, i: usize) -> Option<Duration> {
        let at = self.backends[i].changed_at.load(Ordering::Relaxed);
        (at != 0).then(|| Duration::from_millis(now_ms().saturating_sub(at)))
    }

    /// Takes over the health of every backend `old` also has (same address),
    /// so a reload that changes the pool does not send clients to a backend
    /// already known to be down, nor make a known-good one prove itself again.
    pub fn carry_health_from(&self, old: &Pool) {
        for b in &self.backends {
            if let Some(o) = old.backends.iter().find(|o| o.config.addr == b.config.addr) {
                b.up.store(o.up.load(Ordering::Relaxed), Ordering::Relaxed);
            }
        }
    }

    /// Takes over the runtime state of every backend `old` also has (same
    /// address): its admin state, its weight if the admin endpoint set one,
    /// and where its slow start ramps from, so a reload neither puts a
    /// drained backend back in service nor ramps a kept one again. Changes
    /// made on `old` from now on are passed on here.
    pub fn carry_runtime_from(self: &Arc<Pool>, old: &Pool) {
        let mut successor = old.successor.lock().unwrap_or_else(PoisonError::into_inner);
        for b in &self.backends {
            let Some(j) = old
                .backends
                .iter()
                .position(|o| o.config.addr == b.config.addr)
            else {
                continue;
            };
            let o = &old.backends[j];
            b.state
                .store(o.state.load(Ordering::Relaxed), Ordering::Relaxed);
            if o.weight_set.load(Ordering::Relaxed) {
                b.weight.store(old.weight(j), Ordering::Relaxed);
                b.weight_set.store(true, Ordering::Relaxed);
            }
            let since = o.up_since.load(Ordering::Relaxed);
            b.up_since.store(since, Ordering::Relaxed);
            for (new, old) in [
                (&b.agent_seen, &o.agent_seen),
                (&b.agent_down, &o.agent_down),
            ] {
                new.store(old.load(Ordering::Relaxed), Ordering::Relaxed);
            }
            let agent_state = o.agent_state.load(Ordering::Relaxed);
            b.agent_state.store(agent_state, Ordering::Relaxed);
            let percent = o.agent_percent.load(Ordering::Relaxed);
            b.agent_percent.store(percent, Ordering::Relaxed);
        }
        *successor = Arc::downgrade(self);
        self.weights_changed();
    }

    /// Connections open (or opening) to backend `i`, across workers.
    pub fn active(&self, i: usize) -> usize {
        self.backends[i].active.load(Ordering::Relaxed)
    }

    /// Resolves when a slot may have freed: one waiter per lease dropped on a
    /// full backend, every waiter when a backend comes up. Enable it (see
    /// `Notified::enable`) before looking for room, so a slot freed between
    /// the look and the wait is not missed.
    pub fn room(&self) -> Notified<'_> {
        self.room.notified()
    }

    /// Clients waiting for a slot, across workers.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// A place at the back of the queue, or `None` when `max` wait already.
    pub fn enqueue(&self, max: usize) -> Option<Place<'_>> {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        if queue.len() >= max {
            return None;
        }
        let at = self.next_in_queue.fetch_add(1, Ordering::Relaxed);
        queue.insert(at);
        self.queued.store(queue.len(), Ordering::Relaxed);
        Some(Place { pool: self, at })
    }

    /// Whether backend `i` is at its `max-conns`.
    pub fn is_full(&self, i: usize) -> bool {
        let b = &self.backends[i];
        b.config
            .max_conns
            .is_some_and(|max| b.active.load(Ordering::Relaxed) >= max as usize)
    }

    /// Takes one connection slot on backend `i`, or `None` if it is full.
    pub fn try_acquire(&self, i: usize) -> Option<Lease<'_>> {
        let b = &self.backends[i];
        let before = b.active.fetch_add(1, Ordering::Relaxed);
        if b.config.max_conns.is_some_and(|max| before >= max as usize) {
            b.active.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Lease {
            pool: self,
            index: i,
        })
    }

    /// Records a failure of backend `i` seen on real traffic. Returns the
    /// streak when this failure took the backend down (exactly one caller
    /// sees that), so it can say so.
    pub(super) fn report_failure(&self, i: usize) -> Option<u32> {
        let b = &self.backends[i];
        let streak = b.streak.fetch_add(1, Ordering::Relaxed) + 1;
        if streak < self.passive.fall || !b.up.swap(false, Ordering::Relaxed) {
            return None;
        }
        let now = now_ms();
        b.changed_at.store(now, Ordering::Relaxed);
        if !self.passive.active_checks {
            let retry = now + self.passive.fail_timeout.as_millis() as u64;
            b.retry_at.store(retry, Ordering::Relaxed);
        }
        Some(streak)
    }

    /// Records a success of backend `i` on real traffic: the failure streak
    /// starts again (written only when there was one, to keep the line clean).
    pub(super) fn report_success(&self, i: usize) {
        let b = &self.backends[i];
        if b.streak.load(Ordering::Relaxed) != 0 {
            b.streak.store(0, Ordering::Relaxed);
        }
    }

    /// How failures on real traffic take backends down.
    pub fn passive(&self) -> Passive {
        self.passive
    }
}

/// A client's place in its pool's queue; dropping it (served, timed out or
/// gone) lets the next one be the oldest.
#[derive(Debug)]
pub struct Place<'a> {
    pool: &'a Pool,
    at: u64,
}

impl Place<'_> {
    /// Whether no client has waited longer.
    pub fn is_first(&self) -> bool {
        let queue = self
            .pool
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        queue.first() == Some(&self.at)
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        let mut queue = self
            .pool
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        queue.remove(&self.at);
        self.pool.queued.store(queue.len(), Ordering::Relaxed);
        drop(queue);
        // The next oldest may be first now.
        self.pool.room.notify_waiters();
    }
}

/// One connection's slot on a backend; dropping it frees the slot.
#[derive(Debug)]
pub struct Lease<'a> {
    pool: &'a Pool,
    index: usize,
}

impl Lease<'_> {
    /// Which backend.
    pub fn index(&self) -> usize {
        self.index
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        self.pool.release(self.index);
    }
}

/// A [`Lease`] that holds its pool, for a client that outlives any borrow
/// (a UDP session in its worker's table).
#[derive(Debug)]
pub struct OwnedLease {
    pool: Arc<Pool>,
    index: usize,
}

impl OwnedLease {
    /// Takes one slot on backend `i` of `pool`, or `None` if it is full.
    pub fn try_new(pool: &Arc<Pool>, i: usize) -> Option<OwnedLease> {
        // The borrowed lease's slot moves into the owned one, which gives
        // it back on drop.
        std::mem::forget(pool.try_acquire(i)?);
        Some(OwnedLease {
            pool: pool.clone(),
            index: i,
        })
    }

    /// Which backend.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Its pool.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }
}

impl Drop for OwnedLease {
    fn drop(&mut self) {
        self.pool.release(self.index);
    }
}

impl Pool {
    /// Gives back one slot on backend `i`.
    fn release(&self, i: usize) {
        let b = &self.backends[i];
        let before = b.active.fetch_sub(1, Ordering::Relaxed);
        // Only a backend that was full can have clients waiting for it. The
        // Notify orders this decrement before the woken client's look.
        if b.config.max_conns.is_some_and(|max| before >= max as usize) {
            self.room.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_keeps_arrival_order_and_its_bound() {
        let pool = Pool::new(&[backend(Some(1))], CHECKED);
        let a = pool.enqueue(3).unwrap();
        let b = pool.enqueue(3).unwrap();
        let c = pool.enqueue(3).unwrap();
        assert!(pool.enqueue(3).is_none(), "bounded at 3");
        assert_eq!(pool.queued(), 3);
        assert!(a.is_first() && !b.is_first() && !c.is_first());
        // A waiter that leaves from the middle keeps the order of the rest.
        drop(b);
        assert!(a.is_first() && !c.is_first());
        drop(a);
        assert!(c.is_first());
        let d = pool.enqueue(3).unwrap();
        assert!(c.is_first() && !d.is_first());
        drop((c, d));
        assert_eq!(pool.queued(), 0);
    }

    /// Active checks on, fall 3.
    const CHECKED: Passive = Passive {
        fall: 3,
        fail_timeout: Duration::from_secs(10),
        active_checks: true,
        observe_l4: true,
    };

    fn backend(max_conns: Option<u32>) -> BackendConfig {
        BackendConfig {
            addr: "127.0.0.1:1".parse().unwrap(),
            weight: 1,
            max_conns,
            backup: false,
            slow_start: None,
            name: None,
        }
    }

    #[test]
    fn leases_count_and_respect_max_conns() {
        let pool = Pool::new(&[backend(Some(2)), backend(None)], CHECKED);
        let a = pool.try_acquire(0).unwrap();
        let b = pool.try_acquire(0).unwrap();
        assert!(pool.is_full(0));
        assert!(pool.try_acquire(0).is_none());
        assert_eq!(pool.active(0), 2);
        drop(a);
        assert!(!pool.is_full(0));
        assert_eq!(pool.active(0), 1);
        drop(b);
        let many: Vec<_> = (0..100).map(|_| pool.try_acquire(1).unwrap()).collect();
        assert_eq!(pool.active(1), 100);
        assert!(!pool.is_full(1));
        drop(many);
        assert_eq!(pool.active(1), 0);
    }

    #[test]
    fn health_carries_over_by_address() {
        let addr = |port| BackendConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            ..backend(None)
        };
        let old = Pool::new(&[addr(1), addr(2)], CHECKED);
        old.set_up(0, false);
        let new = Pool::new(&[addr(3), addr(2), addr(1)], CHECKED);
        new.carry_health_from(&old);
        assert_eq!(
            (0..3).map(|i| new.is_up(i)).collect::<Vec<_>>(),
            [true, true, false],
            "new backend up, kept ones as they were"
        );
    }

    /// Waits on `pool.room()` on its own thread and runtime, as another
    /// worker would; returns once woken.
    fn waiter(pool: &std::sync::Arc<Pool>) -> std::thread::JoinHandle<()> {
        let pool = pool.clone();
        let (enabled_tx, enabled_rx) = std::sync::mpsc::channel();
        let handle = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let room = pool.room();
                tokio::pin!(room);
                room.as_mut().enable();
                enabled_tx.send(()).unwrap();
                room.await;
            });
        });
        enabled_rx.recv().unwrap();
        handle
    }

    #[test]
    fn a_lease_freed_on_a_full_backend_wakes_a_waiter_on_another_thread() {
        let pool = std::sync::Arc::new(Pool::new(&[backend(Some(2))], CHECKED));
        let a = pool.try_acquire(0).unwrap();
        let b = pool.try_acquire(0).unwrap();
        let woken = waiter(&pool);
        drop(a);
        woken.join().unwrap();
        drop(b);
    }

    #[test]
    fn a_backend_coming_up_wakes_every_waiter() {
        let pool = std::sync::Arc::new(Pool::new(&[backend(Some(1))], CHECKED));
        pool.set_up(0, false);
        let waiters: Vec<_> = (0..3).map(|_| waiter(&pool)).collect();
        pool.set_up(0, true);
        for w in waiters {
            w.join().unwrap();
        }
    }

    #[test]
    fn fall_failures_in_a_row_take_a_backend_down_once() {
        let pool = Pool::new(&[backend(None)], CHECKED);
        assert_eq!(pool.report_failure(0), None);
        pool.report_success(0);
        assert_eq!(pool.report_failure(0), None);
        assert_eq!(pool.report_failure(0), None);
        assert!(pool.is_up(0), "a success broke the streak");
        assert_eq!(pool.report_failure(0), Some(3));
        assert!(!pool.is_up(0));
        assert_eq!(pool.report_failure(0), None, "only one report flips it");
        assert!(
            !pool.is_up(0),
            "with active checks only the prober brings it back"
        );
        pool.set_up(0, true);
        assert_eq!(pool.report_failure(0), None, "coming up resets the streak");
    }

    #[test]
    fn without_active_checks_the_fail_timeout_brings_a_backend_back() {
        let pool = Pool::new(
            &[backend(None)],
            Passive {
                fall: 1,
                fail_timeout: Duration::from_millis(30),
                active_checks: false,
                observe_l4: true,
            },
        );
        assert_eq!(pool.report_failure(0), Some(1));
        assert!(!pool.is_up(0));
        std::thread::sleep(Duration::from_millis(40));
        assert!(pool.is_up(0), "tried again after the fail-timeout");
        assert_eq!(
            pool.report_failure(0),
            Some(2),
            "one more failure: down again"
        );
        assert!(!pool.is_up(0));
    }

    #[test]
    fn the_ramp_is_linear_from_almost_nothing_to_the_weight() {
        let s = |secs: u64| Duration::from_secs(secs);
        let w = 10 * WEIGHT_SCALE;
        assert_eq!(ramp(w, s(0), s(30)), 1, "never 0 while it ramps");
        assert_eq!(ramp(w, s(3), s(30)), w / 10);
        assert_eq!(ramp(w, s(15), s(30)), w / 2);
        assert_eq!(ramp(w, Duration::from_millis(29_999), s(30)), w - 1);
        assert_eq!(ramp(w, s(30), s(30)), w);
        assert_eq!(ramp(w, s(3600), s(30)), w, "done ramping");
        assert_eq!(
            ramp(WEIGHT_SCALE, s(8), s(16)),
            WEIGHT_SCALE / 2,
            "weight 1 ramps too"
        );
        assert_eq!(ramp(w, s(0), Duration::ZERO), w, "zero is no ramp");
        assert_eq!(ramp(0, s(1), s(30)), 0, "weight 0 stays 0");
        assert_eq!(ramp(u32::MAX, s(1), s(2)), u32::MAX / 2);
        let mut last = 0;
        for ms in (0..=30_000).step_by(250) {
            let now = ramp(w, Duration::from_millis(ms), s(30));
            assert!(now >= last, "the ramp never goes back");
            last = now;
        }
    }

    #[test]
    fn only_a_ready_backend_with_weight_takes_new_connections() {
        let pool = Pool::new(&[backend(None)], CHECKED);
        let generation = pool.weights_generation();
        assert!(pool.admits(0));
        pool.set_state(0, AdminState::Drain);
        assert!(!pool.admits(0) && pool.checked(0));
        assert!(pool.weights_generation() > generation);
        pool.set_state(0, AdminState::Maint);
        assert!(!pool.admits(0) && !pool.checked(0));
        assert_eq!(pool.state(0), AdminState::Maint);
        pool.set_state(0, AdminState::Ready);
        assert!(pool.admits(0));
        pool.set_weight(0, 0);
        assert!(!pool.admits(0));
        assert!(!pool.any_available());
        assert!(pool.any_up(), "health is another matter");
        pool.set_weight(0, 3);
        assert_eq!(pool.weights().0, [3 * WEIGHT_SCALE]);
    }

    #[test]
    fn the_agent_and_the_operator_each_undo_only_their_own() {
        use AdminState::*;
        let pool = Pool::new(
            &[BackendConfig {
                weight: 4,
                ..backend(None)
            }],
            CHECKED,
        );
        assert_eq!(pool.agent(0), None, "no answer yet");
        let view = pool.set_agent(0, None, Some(Drain), None).unwrap();
        assert_eq!((view.up, view.state, view.percent), (true, Drain, 100));
        assert!(!pool.admits(0) && pool.checked(0));
        assert_eq!(
            pool.set_agent(0, None, Some(Drain), None),
            None,
            "no change"
        );
        pool.set_state(0, Ready);
        assert!(
            !pool.admits(0),
            "the operator's ready leaves the agent's drain"
        );
        pool.set_state(0, Maint);
        pool.set_agent(0, None, Some(Ready), None);
        assert!(
            !pool.admits(0) && !pool.checked(0),
            "the agent's ready leaves the operator's maint"
        );
        pool.set_state(0, Ready);
        assert!(pool.admits(0));
        pool.set_agent(0, None, Some(Maint), None);
        assert!(
            !pool.admits(0) && !pool.checked(0),
            "maint from the agent stops health checks"
        );
        pool.set_agent(0, None, Some(Ready), Some(50));
        assert_eq!(pool.weights().0, [2 * WEIGHT_SCALE], "half the weight");
        pool.set_weight(0, 10);
        assert_eq!(
            pool.weights().0,
            [5 * WEIGHT_SCALE],
            "half the operator's weight"
        );
        pool.set_agent(0, None, None, Some(0));
        assert!(!pool.admits(0), "0% takes no new connections");
        pool.set_agent(0, Some(false), None, Some(100));
        assert!(
            !pool.is_up(0) && pool.checks_pass(0),
            "down from the agent alone"
        );
        pool.set_up(0, false);
        pool.set_agent(0, Some(true), None, None);
        assert!(
            !pool.is_up(0),
            "the agent's up leaves the health checks to decide"
        );
        pool.set_up(0, true);
        assert!(pool.is_up(0) && pool.admits(0));
        let carried = Arc::new(Pool::new(&[backend(None)], CHECKED));
        pool.set_agent(0, None, Some(Drain), Some(30));
        carried.carry_runtime_from(&pool);
        let view = carried.agent(0).unwrap();
        assert_eq!(
            (view.state, view.percent),
            (Drain, 30),
            "a reload keeps what the agent said"
        );
    }

    #[test]
    fn coming_up_restarts_the_slow_start() {
        let slow = BackendConfig {
            slow_start: Some(Duration::from_secs(60)),
            weight: 10,
            ..backend(None)
        };
        let pool = Pool::new(&[slow, backend(None)], CHECKED);
        let (weights, ramping) = pool.weights();
        assert!(ramping);
        assert!(weights[0] < 10 * WEIGHT_SCALE / 10, "{weights:?}");
        assert_eq!(weights[1], WEIGHT_SCALE, "no slow start, no ramp");
        let up_since = pool.backends[0].up_since.load(Ordering::Relaxed);
        let half = pool.effective_weight_at(0, up_since + 30_000);
        assert_eq!(half, (10 * WEIGHT_SCALE / 2, true));
        let later = pool.effective_weight_at(0, up_since + 61_000);
        assert_eq!(later, (10 * WEIGHT_SCALE, false));
        let generation = pool.weights_generation();
        pool.set_up(0, false);
        pool.set_up(0, true);
        assert!(pool.weights_generation() > generation);
        assert!(pool.weights().1, "health back: ramping again");
    }

    #[test]
    fn runtime_state_carries_over_by_address() {
        let addr = |port| BackendConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            weight: 2,
            ..backend(None)
        };
        let old = Pool::new(&[addr(1), addr(2), addr(4)], CHECKED);
        old.set_state(0, AdminState::Drain);
        old.set_weight(1, 7);
        let new = Arc::new(Pool::new(&[addr(3), addr(2), addr(1), addr(4)], CHECKED));
        new.carry_runtime_from(&old);
        let states: Vec<_> = (0..4).map(|i| new.state(i)).collect();
        use AdminState::*;
        assert_eq!(states, [Ready, Ready, Drain, Ready]);
        let weights: Vec<_> = (0..4).map(|i| new.weight(i)).collect();
        assert_eq!(
            weights,
            [2, 7, 2, 2],
            "only a weight set at runtime is kept"
        );
        // The admin endpoint may still hold the old pool: changes reach the new one.
        old.set_state(2, AdminState::Maint);
        old.set_weight(0, 9);
        assert_eq!((new.state(3), new.weight(2)), (Maint, 9));
        assert_eq!(old.state(2), Maint);
        drop(new);
        old.set_state(2, AdminState::Ready);
        assert_eq!(old.state(2), Ready, "a successor gone is no matter");
    }
}
