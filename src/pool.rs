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

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::futures::Notified;
use tokio::sync::Notify;

use tracing::info;

use crate::config::BackendConfig;

/// All backends of one frontend.
#[derive(Debug)]
pub struct Pool {
    backends: Vec<Shared>,
    /// Clients of every worker waiting for a backend slot.
    room: Notify,
    /// How failures seen on real traffic take a backend down.
    passive: Passive,
    /// Zero point of the `retry_at` times.
    epoch: Instant,
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
    /// again, in milliseconds after the pool's epoch; 0 when not down so.
    retry_at: AtomicU64,
    /// When it last went up or down, in milliseconds after the pool's epoch;
    /// 0 when it never changed.
    changed_at: AtomicU64,
    /// Why it last failed (a check, or the failure that took it down), for
    /// the stats page. Written by the prober and at a flip, never per byte.
    last_error: Mutex<Option<String>>,
}

impl Pool {
    /// A pool with every backend up and idle.
    pub fn new(configs: &[BackendConfig], passive: Passive) -> Pool {
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
                })
                .collect(),
            room: Notify::new(),
            passive: Passive {
                fall: passive.fall.max(1),
                ..passive
            },
            epoch: Instant::now(),
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

    /// The weights, in backend order, for building balancers.
    pub fn weights(&self) -> Vec<u32> {
        self.backends.iter().map(|b| b.config.weight).collect()
    }

    /// Whether backend `i` may take new connections: it passes its health
    /// checks, or (without active checks) its fail-timeout has passed.
    pub fn is_up(&self, i: usize) -> bool {
        let b = &self.backends[i];
        b.up.load(Ordering::Relaxed) || self.retry_due(b)
    }

    /// Brings a passively downed backend back once its fail-timeout passed
    /// (only without active checks; the clock is read only while it is down).
    fn retry_due(&self, b: &Shared) -> bool {
        let at = b.retry_at.load(Ordering::Relaxed);
        if at == 0 || self.now_ms() < at {
            return false;
        }
        if b.retry_at
            .compare_exchange(at, 0, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            b.up.store(true, Ordering::Relaxed);
            b.changed_at.store(self.now_ms(), Ordering::Relaxed);
            info!(
                backend = %b.config.addr,
                "backend {} back after its fail-timeout: real traffic tries it again",
                b.config.addr
            );
            self.room.notify_waiters();
        }
        true
    }

    fn now_ms(&self) -> u64 {
        // At least 1, so that 0 can mean "not set".
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// Whether backend `i` may take new connections as far as the backup
    /// rule goes: a primary always, a backup only while no primary is up.
    /// `primary_up` is [`Pool::primary_up`], taken once per pick.
    pub fn serves(&self, i: usize, primary_up: bool) -> bool {
        !self.backends[i].config.backup || !primary_up
    }

    /// Whether a primary (non-backup) backend is up among those `untried`
    /// leaves for this client: once every primary failed it, a backup may
    /// take it.
    pub fn primary_up(&self, untried: impl Fn(usize) -> bool) -> bool {
        (0..self.len()).any(|i| !self.backends[i].config.backup && self.is_up(i) && untried(i))
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
            b.changed_at.store(self.now_ms(), Ordering::Relaxed);
        }
        if up && !was {
            b.streak.store(0, Ordering::Relaxed);
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
        (at != 0).then(|| Duration::from_millis(self.now_ms().saturating_sub(at)))
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

    /// Wakes one waiter, to hand on a wakeup its receiver cannot use.
    pub fn wake_one(&self) {
        self.room.notify_one();
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
    pub fn report_failure(&self, i: usize) -> Option<u32> {
        let b = &self.backends[i];
        let streak = b.streak.fetch_add(1, Ordering::Relaxed) + 1;
        if streak < self.passive.fall || !b.up.swap(false, Ordering::Relaxed) {
            return None;
        }
        let now = self.now_ms();
        b.changed_at.store(now, Ordering::Relaxed);
        if !self.passive.active_checks {
            let retry = now + self.passive.fail_timeout.as_millis() as u64;
            b.retry_at.store(retry, Ordering::Relaxed);
        }
        Some(streak)
    }

    /// Records a success of backend `i` on real traffic: the failure streak
    /// starts again (written only when there was one, to keep the line clean).
    pub fn report_success(&self, i: usize) {
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
        let b = &self.pool.backends[self.index];
        let before = b.active.fetch_sub(1, Ordering::Relaxed);
        // Only a backend that was full can have clients waiting for it. The
        // Notify orders this decrement before the woken client's look.
        if b.config.max_conns.is_some_and(|max| before >= max as usize) {
            self.pool.room.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
