//! Each worker's ring and what it is sized for: the runtime it runs on
//! ([`build_runtime`]: queue sizes, COOP_TASKRUN or SQPOLL), and the sizes
//! of its provided-buffer ring and registered file table, which the worker
//! sets up inside that runtime.

use std::io;

/// Submission queue entries per ring.
const RING_ENTRIES: u32 = 1024;
/// Completion queue entries per ring: room for both pumps' operations of
/// 8,000 connections at once. A completion that finds the queue full goes
/// to the kernel's overflow list (an allocation each), and while that list
/// is not empty every later completion goes there too: at 4,000 busy
/// connections with the default (twice [`RING_ENTRIES`]) nearly all did.
/// 16 bytes each, touched as the queue cycles.
const CQ_ENTRIES: u32 = 16384;
/// How long the SQPOLL kernel thread spins without work before it sleeps.
const SQPOLL_IDLE_MS: u32 = 1000;
/// Most buffers in each worker's provided ring (see [`provide_buffers`](super::provide_buffers)):
/// enough for the receives completed and not yet sent at any one moment,
/// which at 4,000 busy connections is thousands (with 512, receives kept
/// finding the ring empty, and each fell back to a buffer of its own and
/// an extra receive: 0.84× HAProxy's requests/s there, in two A/B pairs,
/// against 0.88–0.98× growing to this). Reserved, not resident, until a
/// burst needs them.
pub(crate) const PROVIDED_BUFFERS: u16 = 4096;
/// Buffers the ring starts with: connections that come one at a time, or a
/// few at once, never make it grow, so each buffer it holds stays a small
/// part of what an idle connection costs.
pub(crate) const FIRST_PROVIDED_BUFFERS: u16 = 512;
/// Bytes per provided buffer: a typical request or response in one piece.
pub(crate) const PROVIDED_BUFFER_SIZE: usize = 2048;
/// Most slots in each worker's table of registered files, two per relayed
/// connection (see [`FixedPair`](super::FixedPair)); past them, and past the process's
/// connection ceiling, sockets are named by descriptor.
pub(crate) const FIXED_FILES: usize = 65536;

/// A ring with COOP_TASKRUN (fewer interrupts; kernel 5.19+), falling back to
/// a plain one. With `sqpoll`, a kernel thread polls the submission queue
/// (no fallback: the user asked for it).
pub(crate) fn build_runtime(sqpoll: bool) -> io::Result<tokio_uring::Runtime> {
    let mut uring = tokio_uring::uring_builder();
    uring.setup_cqsize(CQ_ENTRIES);
    if sqpoll {
        // COOP_TASKRUN is not allowed with SQPOLL.
        uring.setup_sqpoll(SQPOLL_IDLE_MS);
        return tokio_uring::Runtime::new(
            tokio_uring::builder()
                .entries(RING_ENTRIES)
                .uring_builder(&uring),
        )
        .map_err(|err| {
            io::Error::new(
                err.kind(),
                format!("cannot set up io_uring with SQPOLL: {err}"),
            )
        });
    }
    uring.setup_coop_taskrun();
    tokio_uring::Runtime::new(
        tokio_uring::builder()
            .entries(RING_ENTRIES)
            .uring_builder(&uring),
    )
    .or_else(|_| {
        let mut plain = tokio_uring::uring_builder();
        plain.setup_cqsize(CQ_ENTRIES);
        tokio_uring::Runtime::new(
            tokio_uring::builder()
                .entries(RING_ENTRIES)
                .uring_builder(&plain),
        )
    })
    .map_err(|err| io::Error::new(err.kind(), format!("cannot set up io_uring: {err}")))
}
