//! The worker's kernel pipes for spliced relay directions. A direction
//! takes a pipe ([`take`]) when it starts to splice and gives it back
//! ([`put`]) empty as soon as it goes quiet, so a pipe is held only while
//! bytes flow; the pool keeps given-back pipes for the next direction and
//! closes those that sat unused for a whole trim interval ([`trim_unused`]).
//!
//! Bounded twice: at most `max-pipes` pipes open across workers, and each
//! pipe holds a slot under the process's connection ceiling, since its two
//! descriptors cost what a connection's two sockets do. When neither has
//! room, or the kernel refuses a pipe (`EMFILE`, the user's pipe-page
//! limit), [`take`] says no and the direction copies: a connection never
//! fails for want of a pipe.

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::ceiling::{Ceiling, Slot};
use crate::uring::Pipe;

/// Bytes a pipe holds (`F_SETPIPE_SZ`): what one splice moves at most, and
/// the most a spliced direction holds in the kernel while its reader is
/// slow. Measured (`uring::splice`'s ignored measurement, a steady stream
/// on loopback): 0.38-0.42 CPU s per GB with 64 KiB pipes, 0.31-0.33 with
/// 256 KiB, 0.24-0.27 with 1 MiB, against 0.50-0.52 copying. 64 pipes of
/// this size (the default `max-pipes`) are the 64 MiB an unprivileged user
/// may have in pipes (/proc/sys/fs/pipe-user-pages-soft); past it the
/// kernel refuses the size and the direction copies.
pub const PIPE_SIZE: usize = 1 << 20;

/// Pipes open in the process (in use or pooled), against `max-pipes`.
static OPEN: AtomicUsize = AtomicUsize::new(0);
/// `max-pipes`, as the last config generation said.
static MAX: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This worker's pool, once [`init`] set it up.
    static POOL: RefCell<Option<PipePool>> = const { RefCell::new(None) };
}

/// A worker's pipes that are open and empty, ready for the next direction.
struct PipePool {
    /// The process's ceiling, which every open pipe holds a slot of.
    ceiling: Arc<Ceiling>,
    /// Empty pipes, most recently given back last.
    free: Vec<Lease>,
    /// A ceiling slot per pipe of this worker open, in use or pooled: a
    /// pipe that closes gives one back. (Kept here rather than in each
    /// [`Lease`], which a spliced direction holds, to keep it small.)
    slots: Vec<Slot>,
    /// The fewest pipes in `free` since the last trim: that many were not
    /// needed during the interval.
    low_water: usize,
}

/// An open pipe of this worker; closing it (drop) frees its ceiling slot.
#[derive(Debug)]
pub struct Lease {
    /// The pipe.
    pipe: Pipe,
}

impl Lease {
    /// The pipe.
    pub fn pipe(&self) -> &Pipe {
        &self.pipe
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, Ordering::AcqRel);
        // Pipes never leave their worker's thread; as it ends, the pool
        // (and its slots) may be gone first.
        let _ = POOL.try_with(|p| {
            if let Ok(mut p) = p.try_borrow_mut() {
                p.as_mut().map(|pool| pool.slots.pop());
            }
        });
    }
}

/// Sets this worker's pool up under `ceiling`; call on the worker's thread.
pub fn init(ceiling: Arc<Ceiling>) {
    POOL.with(|p| {
        *p.borrow_mut() = Some(PipePool {
            ceiling,
            free: Vec::new(),
            slots: Vec::new(),
            low_water: 0,
        })
    });
}

/// Sets `max-pipes` (from a config generation).
pub fn set_max(max: usize) {
    MAX.store(max, Ordering::Release);
}

/// An empty pipe for a direction that starts to splice: a pooled one, or a
/// new one if `max-pipes`, the ceiling and the kernel allow; `None` sends
/// the direction down the copy path.
pub fn take() -> Option<Lease> {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        let pool = p.as_mut()?;
        if let Some(lease) = pool.free.pop() {
            pool.low_water = pool.low_water.min(pool.free.len());
            return Some(lease);
        }
        if OPEN.fetch_add(1, Ordering::AcqRel) >= MAX.load(Ordering::Acquire) {
            OPEN.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let Some(slot) = pool.ceiling.try_acquire() else {
            OPEN.fetch_sub(1, Ordering::AcqRel);
            return None;
        };
        match Pipe::new(PIPE_SIZE) {
            Ok(pipe) => {
                pool.slots.push(slot);
                Some(Lease { pipe })
            }
            Err(err) => {
                OPEN.fetch_sub(1, Ordering::AcqRel);
                tracing::debug!(%err, "no pipe: the direction copies");
                None
            }
        }
    })
}

/// Gives back a pipe its direction emptied. (A pipe that may still hold
/// bytes is dropped instead, which closes it.)
pub fn put(lease: Lease) {
    // The pool may be gone as the thread ends; the lease then closes.
    let _ = POOL.try_with(|p| {
        if let Some(pool) = p.borrow_mut().as_mut() {
            pool.free.push(lease);
        }
    });
}

/// Closes the pipes that stayed in the pool, unused, since the last call;
/// returns how many.
pub fn trim_unused() -> usize {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        let Some(pool) = p.as_mut() else { return 0 };
        let unused = pool.low_water.min(pool.free.len());
        // The oldest given back are at the front; they are closed after
        // the borrow ends, since closing one gives back its slot.
        let closed: Vec<Lease> = pool.free.drain(..unused).collect();
        pool.low_water = pool.free.len();
        drop(p);
        drop(closed);
        unused
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipes_are_bounded_pooled_and_trimmed() {
        let ceiling = Ceiling::new(100);
        init(ceiling.clone());
        set_max(2);
        let a = take().expect("a first pipe");
        let b = take().expect("a second pipe");
        assert!(take().is_none(), "max-pipes is 2");
        put(a);
        let a = take().expect("the pooled pipe");
        put(a);
        put(b);
        // Both were used in this interval: none goes yet.
        assert_eq!(trim_unused(), 0);
        assert_eq!(trim_unused(), 2, "unused for a whole interval");
        assert_eq!(OPEN.load(Ordering::Acquire), 0);
        // A ceiling with no room gives no pipe, whatever max-pipes says.
        let full = Ceiling::new(1);
        let _slot = full.try_acquire().unwrap();
        init(full);
        set_max(10);
        assert!(take().is_none(), "the ceiling is full");
    }
}
