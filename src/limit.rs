//! The frontend's `max-conns`: a count shared by all workers. An acceptor
//! takes a slot before it asks the kernel for the next client, so at the limit
//! no accept is pending and new clients wait in the kernel's backlog instead of
//! being accepted and closed. Closing a connection frees its slot and, if the
//! frontend was full, wakes the waiting acceptors.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// A cross-worker connection limit.
#[derive(Debug)]
pub struct ConnLimit {
    /// Most connections open at once.
    max: usize,
    /// Slots taken (open connections plus acceptors holding a slot).
    taken: AtomicUsize,
    /// Acceptors waiting for a free slot.
    freed: Notify,
}

/// One taken slot; dropping it frees the slot.
#[derive(Debug)]
pub struct Slot(Arc<ConnLimit>);

impl ConnLimit {
    /// A limit of `max` connections.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(ConnLimit {
            max,
            taken: AtomicUsize::new(0),
            freed: Notify::new(),
        })
    }

    /// Takes a slot, waiting until one is free.
    pub async fn acquire(self: &Arc<Self>) -> Slot {
        loop {
            // Registered before the check, so a slot freed in between is not missed.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(slot) = self.try_acquire() {
                return slot;
            }
            freed.await;
        }
    }

    /// Takes a slot if one is free.
    pub fn try_acquire(self: &Arc<Self>) -> Option<Slot> {
        let before = self.taken.fetch_add(1, Ordering::AcqRel);
        if before >= self.max {
            self.taken.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Slot(self.clone()))
    }

    /// Slots taken now.
    pub fn taken(&self) -> usize {
        self.taken.load(Ordering::Acquire)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let before = self.0.taken.fetch_sub(1, Ordering::AcqRel);
        if before >= self.0.max {
            self.0.freed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_and_freed() {
        let limit = ConnLimit::new(2);
        let a = limit.try_acquire().unwrap();
        let _b = limit.try_acquire().unwrap();
        assert!(limit.try_acquire().is_none());
        assert_eq!(limit.taken(), 2);
        drop(a);
        assert!(limit.try_acquire().is_some());
    }

    #[test]
    fn a_waiter_gets_the_freed_slot() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let limit = ConnLimit::new(1);
            let held = limit.acquire().await;
            let waiter = {
                let limit = limit.clone();
                tokio::spawn(async move { limit.acquire().await })
            };
            tokio::task::yield_now().await;
            assert!(!waiter.is_finished());
            drop(held);
            let slot = waiter.await.unwrap();
            assert_eq!(limit.taken(), 1);
            drop(slot);
            assert_eq!(limit.taken(), 0);
        });
    }
}
