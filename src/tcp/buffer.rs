//! Relay buffers, sized to the traffic. A pump starts with a small buffer, so
//! an idle connection holds little memory; when a read fills it, the pump
//! takes a large buffer from its worker's pool, and gives it back as soon as
//! reads turn small again. Buffers are only swapped between a completed write
//! and the next read, so the read-then-write-the-same-buffer rule holds.
//!
//! The pool is per worker (`RefCell`, no locks) and bounded, and the worker
//! trims it every few seconds: buffers that sat unused in the pool for a whole
//! interval go back to the allocator, so memory taken by a burst is given back
//! once the burst is over.

use std::cell::{Cell, RefCell};

/// Bytes in the buffer a pump reads into while traffic is light.
pub const SMALL: usize = 512;
/// Most bytes of large buffers a worker keeps for reuse.
const MAX_POOLED_BYTES: usize = 32 << 20;

/// A worker's stock of large buffers.
#[derive(Debug)]
pub struct BufPool {
    /// Capacity of a large buffer (`--buffer-size`).
    large: usize,
    /// Buffers ready for reuse, each with capacity `large`.
    free: RefCell<Vec<Vec<u8>>>,
    /// How many of them to keep at most.
    max_free: usize,
    /// The fewest buffers in `free` since the last trim: that many were not
    /// needed during the interval.
    low_water: Cell<usize>,
}

impl BufPool {
    /// A pool of buffers of `large` bytes (at least [`SMALL`]).
    pub fn new(large: usize) -> Self {
        let large = large.max(SMALL);
        BufPool {
            large,
            free: RefCell::new(Vec::new()),
            max_free: (MAX_POOLED_BYTES / large).max(1),
            low_water: Cell::new(0),
        }
    }

    /// Capacity of a large buffer (`--buffer-size`).
    pub fn large(&self) -> usize {
        self.large
    }

    /// A buffer to start a pump with.
    pub fn small(&self) -> Vec<u8> {
        Vec::with_capacity(SMALL)
    }

    /// The buffer to use for the next read, given the last one read `n` bytes
    /// into `buf`: grows when the read filled a small buffer, shrinks when a
    /// large buffer got only a small read.
    pub fn resize(&self, buf: Vec<u8>, n: usize) -> Vec<u8> {
        let cap = buf.capacity();
        if cap < self.large && n == cap {
            self.large_buf()
        } else if cap >= self.large && n < SMALL && self.large > SMALL {
            self.put(buf);
            self.small()
        } else {
            buf
        }
    }

    /// A large buffer, from the pool if it has one.
    pub fn large_buf(&self) -> Vec<u8> {
        let mut free = self.free.borrow_mut();
        let buf = free.pop();
        self.low_water.set(self.low_water.get().min(free.len()));
        buf.unwrap_or_else(|| Vec::with_capacity(self.large))
    }

    /// Frees the buffers that stayed in the pool, unused, since the last call;
    /// returns how many bytes that gave back.
    pub fn trim_unused(&self) -> usize {
        let mut free = self.free.borrow_mut();
        let keep = free.len() - self.low_water.get().min(free.len());
        let unused = free.len() - keep;
        free.truncate(keep);
        self.low_water.set(free.len());
        unused * self.large
    }

    /// Returns a buffer when its pump is done.
    pub fn put(&self, mut buf: Vec<u8>) {
        if buf.capacity() == self.large {
            let mut free = self.free.borrow_mut();
            if free.len() < self.max_free {
                buf.clear();
                free.push(buf);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_on_a_full_read_and_shrinks_on_a_small_one() {
        let pool = BufPool::new(65536);
        let buf = pool.small();
        assert_eq!(buf.capacity(), SMALL);
        let buf = pool.resize(buf, 100);
        assert_eq!(
            buf.capacity(),
            SMALL,
            "a partial read keeps the small buffer"
        );
        let buf = pool.resize(buf, SMALL);
        assert_eq!(buf.capacity(), 65536, "a full small read grows");
        let buf = pool.resize(buf, 4096);
        assert_eq!(
            buf.capacity(),
            65536,
            "a medium read keeps the large buffer"
        );
        let buf = pool.resize(buf, 10);
        assert_eq!(buf.capacity(), SMALL, "a small read shrinks");
        assert_eq!(
            pool.free.borrow().len(),
            1,
            "the large buffer went back to the pool"
        );
        let big = pool.resize(buf, SMALL);
        assert_eq!(big.capacity(), 65536);
        assert!(pool.free.borrow().is_empty(), "reused from the pool");
    }

    #[test]
    fn pool_is_bounded() {
        let pool = BufPool::new(1 << 20);
        for _ in 0..100 {
            pool.put(Vec::with_capacity(1 << 20));
        }
        pool.put(Vec::with_capacity(SMALL));
        assert_eq!(pool.free.borrow().len(), MAX_POOLED_BYTES >> 20);
    }

    #[test]
    fn trimming_frees_what_an_interval_did_not_use() {
        let pool = BufPool::new(65536);
        for _ in 0..4 {
            pool.put(Vec::with_capacity(65536));
        }
        assert_eq!(pool.trim_unused(), 0, "the first interval starts now");
        // One buffer taken and put back: three were never needed.
        let buf = pool.resize(pool.small(), SMALL);
        pool.put(buf);
        assert_eq!(pool.trim_unused(), 3 * 65536);
        assert_eq!(pool.free.borrow().len(), 1);
        assert_eq!(pool.trim_unused(), 65536, "unused for a whole interval");
        assert!(pool.free.borrow().is_empty());
    }

    #[test]
    fn small_large_size_never_shrinks() {
        let pool = BufPool::new(SMALL);
        let buf = pool.resize(pool.small(), 1);
        assert_eq!(buf.capacity(), SMALL);
    }
}
