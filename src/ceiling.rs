//! The process-wide connection ceiling, derived from the open-file limit as
//! HAProxy derives its `maxconn`: each proxied connection costs two
//! descriptors, and a reserve stays free for the admin endpoint, health
//! checks, listeners, rings and logs. At the ceiling, workers stop accepting,
//! so new clients wait in the kernel's backlog instead of being accepted and
//! then dropped for want of a descriptor to reach a backend with.
//!
//! Taking and releasing a slot is one atomic add; only a release while an
//! acceptor waits touches the `Notify` that wakes one, so each freed slot
//! wakes one waiter wherever it is (any worker), and none is left asleep
//! while there is room.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// Descriptors kept free besides the admin endpoint's: stdio, log files, the
/// signal thread, eventfds, and room for a reload's new listeners.
const RESERVE_BASE: u64 = 64;

/// How many client connections the fd limit allows, and the slots taken.
#[derive(Debug)]
pub struct Ceiling {
    /// Connections (and accepts in flight) holding a slot.
    open: AtomicUsize,
    /// Most slots.
    max: usize,
    /// Acceptors waiting for a slot.
    waiting: AtomicUsize,
    /// Wakes an acceptor waiting for a slot.
    freed: Notify,
}

/// The descriptors to keep free for everything but client connections:
/// admin connections, per worker its ring and a listener per frontend, a
/// health check per backend.
pub fn reserve(workers: usize, frontends: usize, backends: usize, admin: usize) -> u64 {
    RESERVE_BASE + admin as u64 + (workers * (frontends + 2)) as u64 + backends as u64
}

/// Client connections that `fd_limit` descriptors carry after `reserve`.
pub fn from_fd_limit(fd_limit: u64, reserve: u64) -> usize {
    (fd_limit.saturating_sub(reserve) / 2).clamp(1, usize::MAX as u64) as usize
}

impl Ceiling {
    /// A ceiling of `max` connections.
    pub fn new(max: usize) -> Arc<Ceiling> {
        Arc::new(Ceiling {
            open: AtomicUsize::new(0),
            max: max.max(1),
            waiting: AtomicUsize::new(0),
            freed: Notify::new(),
        })
    }

    /// The most connections it lets open at once.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Takes a slot, waiting while all are taken.
    pub async fn acquire(self: &Arc<Self>) -> Slot {
        if self.try_take() {
            return Slot(self.clone());
        }
        self.waiting.fetch_add(1, Ordering::AcqRel);
        let _waiting = Waiting(self);
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before the look, so a release in between is not missed.
            freed.as_mut().enable();
            if self.try_take() {
                return Slot(self.clone());
            }
            freed.await;
        }
    }

    /// Takes a slot if one is free, without waiting: for a UDP session, whose
    /// client cannot be kept waiting in a backlog, or a kernel pipe, which
    /// holds two descriptors as a connection does.
    pub fn try_acquire(self: &Arc<Self>) -> Option<Slot> {
        self.try_take().then(|| Slot(self.clone()))
    }

    fn try_take(&self) -> bool {
        if self.open.fetch_add(1, Ordering::AcqRel) < self.max {
            return true;
        }
        self.open.fetch_sub(1, Ordering::AcqRel);
        false
    }
}

/// Counts an acceptor as waiting until it has a slot (or is dropped).
struct Waiting<'a>(&'a Ceiling);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One connection's slot under the ceiling, returned on drop.
#[derive(Debug)]
pub struct Slot(Arc<Ceiling>);

impl Drop for Slot {
    fn drop(&mut self) {
        let ceiling = &self.0;
        ceiling.open.fetch_sub(1, Ordering::AcqRel);
        if ceiling.waiting.load(Ordering::Acquire) > 0 {
            ceiling.freed.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_descriptors_per_connection_after_the_reserve() {
        assert_eq!(reserve(2, 1, 1, 64), 64 + 64 + 2 * (1 + 2) + 1);
        assert_eq!(from_fd_limit(256, 135), 60);
        assert_eq!(from_fd_limit(100, 500), 1, "never zero");
    }

    #[test]
    fn a_full_ceiling_waits_for_a_release() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let ceiling = Ceiling::new(2);
            let a = ceiling.acquire().await;
            let _b = ceiling.acquire().await;
            let waiting =
                tokio::time::timeout(std::time::Duration::from_millis(20), ceiling.acquire()).await;
            assert!(waiting.is_err(), "a third slot was handed out");
            let other = {
                let ceiling = ceiling.clone();
                std::thread::spawn(move || {
                    tokio::runtime::Builder::new_current_thread()
                        .build()
                        .unwrap()
                        .block_on(async { drop(ceiling.acquire().await) })
                })
            };
            std::thread::sleep(std::time::Duration::from_millis(20));
            drop(a);
            other.join().unwrap();
            assert_eq!(ceiling.open.load(Ordering::Relaxed), 1);
        });
    }
}
