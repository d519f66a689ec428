//! The worker's provided-buffer ring ([`BufRing`]): buffers the kernel picks
//! when a receive completes, so a receive waiting on an idle socket holds no
//! buffer. A receive is a bundle one where the kernel takes them: one
//! completion fills as many consecutive buffers as the bytes waiting need,
//! which the ring records as the driver reaps it (vendored tokio-uring
//! patch 7, [`BufRing::reaped`]). What one receive filled belongs to one
//! [`Provided`] until it is dropped, which hands its buffers back; it is
//! sent with one send (one `sendmsg` for a bundle). [`recv_provided`] is the
//! one-shot receive into the ring. A ring that a burst grew is replaced by a
//! fresh small one once it goes unused ([`replace_grown_ring`]), and its
//! memory goes back to the system when the last operation that could write
//! into it has completed.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll};

use io_uring::{cqueue, opcode, squeue, types};
use tokio_uring::{InFlightMultishot, MultishotData, ReapHook, UnsubmittedMultishot};

use super::files::{pairs_in_use, Sock};
use super::recv_send::{
    cancel_op, send_sqe, with_ioprio, SendBuf, RECVSEND_POLL_FIRST, RECV_FLAGS_OK,
};

/// Buffer group ids a thread's rings take turns with: a ring that was
/// replaced keeps its id until the last operation that may select from it
/// has completed, so no receive armed on the old ring can select from a new
/// one under the same id (and read its bytes from the wrong memory).
const GROUPS: u16 = 16;

thread_local! {
    /// This thread's provided-buffer ring, once [`provide_buffers`] set it up.
    pub(super) static PROVIDED: std::cell::RefCell<Option<Rc<BufRing>>> = const { std::cell::RefCell::new(None) };
    /// The group ids held by this thread's rings, live or replaced, a bit each.
    static GROUPS_HELD: Cell<u16> = const { Cell::new(0) };
    /// The user data of every receive from a ring of this thread that is
    /// armed and has not ended, which a cancel names it by, a bit each: user
    /// data is the operation's index in the driver's slab (small, dense, and
    /// unique among the operations in flight), so arming and disarming, once
    /// per receive, are a bit set and cleared, with no hashing.
    static ARMED: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Whether receives into the ring are bundle ones; cleared by the first
    /// one a kernel older than 6.10 refuses ([`refuse_bundles`]).
    static BUNDLE_OK: Cell<bool> = const { Cell::new(true) };
}

/// Lists the receive `user_data` names as armed on a ring, until [`disarm`].
pub(super) fn arm(user_data: Option<u64>) {
    if let Some(user_data) = user_data.and_then(|u| usize::try_from(u).ok()) {
        ARMED.with(|a| {
            let mut words = a.borrow_mut();
            let word = user_data / 64;
            if words.len() <= word {
                words.resize(word + 1, 0);
            }
            words[word] |= 1 << (user_data % 64);
        });
    }
}

/// Takes the receive `user_data` names off the armed list, once it ended
/// (its user data may name another operation from then on) or, not ended,
/// was dropped (the driver cancels it).
pub(super) fn disarm(user_data: Option<u64>) {
    if let Some(user_data) = user_data.and_then(|u| usize::try_from(u).ok()) {
        ARMED.with(|a| {
            if let Some(word) = a.borrow_mut().get_mut(user_data / 64) {
                *word &= !(1 << (user_data % 64));
            }
        });
    }
}

/// Gives back what a burst made this thread's provided-buffer ring take:
/// replaces a ring that grew by a fresh small one if the last interval did
/// not need the growth (see [`replace_grown_ring`]), and cancels every
/// receive armed on the old one: a multishot receive then ends without
/// news, a one-shot one with [`Received::Cancelled`], and their owners arm
/// new ones, on the new ring. What arrived before the cancel still comes
/// out; what arrives after waits in the socket for the new receive. Call at
/// an interval (the worker's trim); returns whether it replaced the ring.
pub fn shrink_buffers() -> bool {
    if !replace_grown_ring() {
        return false;
    }
    // Collected first: a submission may reap completions, and nothing
    // should hold the list meanwhile.
    let armed: Vec<u64> = ARMED.with(|a| {
        let words = a.borrow();
        (0..words.len() * 64)
            .filter(|&i| words[i / 64] & (1 << (i % 64)) != 0)
            .map(|i| i as u64)
            .collect()
    });
    for user_data in armed {
        cancel_op(user_data);
    }
    true
}

/// A provided-buffer ring (IORING_REGISTER_PBUF_RING, kernel 5.19+): buffers
/// of this worker that the kernel picks one of when a receive *completes*,
/// so a receive waiting on an idle socket holds no buffer at all. A buffer
/// the kernel filled belongs to one [`Provided`] until it is dropped, which
/// hands it back to the kernel by writing a ring entry: no system call.
///
/// The kernel takes buffers in the order they were handed back, so over time
/// it writes into every buffer the ring holds, and each becomes resident
/// memory. The ring therefore starts with a few of its buffers and hands the
/// kernel more (doubling) only when a receive found none left: a burst of
/// many connections at once grows it, while connections that come and go
/// one at a time never touch more than the first few. A ring that grew is
/// replaced by a fresh one after an interval that did not need the growth
/// ([`replace_grown_ring`]).
#[derive(Debug)]
pub struct BufRing {
    /// The ring's entries, page-aligned, shared with the kernel.
    entries: *mut types::BufRingEntry,
    /// Number of entries (a power of two), also the most buffers.
    count: u16,
    /// Buffers handed to the kernel so far (ids `0..provided`).
    provided: Cell<u16>,
    /// Bytes per buffer.
    size: usize,
    /// Room for `count` buffers, `count * size` bytes, reserved but not
    /// touched (so not resident) until the kernel writes into a buffer.
    memory: *mut u8,
    /// The ring's tail as we last published it.
    tail: Cell<u16>,
    /// Its buffer group id, which receives name it by.
    group: u16,
    /// Buffers it started with, and goes back to when replaced.
    first: u16,
    /// Unregistered by [`replace_grown_ring`]: the kernel picks no more of its
    /// buffers, and those handed back stay out.
    retired: Cell<bool>,
    /// Buffers held by a [`Provided`] now.
    out: Cell<u16>,
    /// The most held at once since [`replace_grown_ring`] last looked.
    peak: Cell<u16>,
    /// Whether it grew since [`replace_grown_ring`] last looked.
    grew: Cell<bool>,
    /// The ring position (tail) at which each buffer was last handed to the
    /// kernel: a receive bundle names only its first buffer, and the rest
    /// follow it in the ring.
    pos_of: Box<[Cell<u16>]>,
    /// For a buffer of a bundle, the buffer after it in that bundle,
    /// recorded when the bundle's completion was reaped ([`ReapHook`]).
    next: Box<[Cell<u16>]>,
}

/// Most bytes a bundle receive brings at once (a few buffers): more waiting
/// than this is bulk, which a pump reads into a large buffer of its own or
/// splices, rather than spread over the shared ring.
pub(crate) const BUNDLE_MAX: usize = 16 * 1024;

/// `IORING_RECVSEND_BUNDLE` (linux/io_uring.h, kernel 6.10+), in the SQE's
/// `ioprio`: one completion covers as many consecutive ring buffers as the
/// bytes waiting fill.
const RECVSEND_BUNDLE: u16 = 16;

/// In [`BufRing::next`]: the buffer after this one could not be found
/// (never expected, see [`BufRing::reaped`]); no buffer id is this large.
const LOST: u16 = u16::MAX;

impl BufRing {
    /// Layout of the entries.
    fn entries_layout(count: u16) -> std::alloc::Layout {
        let bytes = usize::from(count) * std::mem::size_of::<types::BufRingEntry>();
        std::alloc::Layout::from_size_align(bytes, 4096).expect("a valid layout")
    }

    /// Registers a ring with room for `count` buffers of `size` bytes under
    /// a group id no other ring of this thread holds, and hands the kernel
    /// the first `first` of them.
    fn register(count: u16, first: u16, size: usize) -> io::Result<BufRing> {
        if !count.is_power_of_two() || size == 0 || size > u32::MAX as usize {
            return Err(io::Error::other(
                "a ring of a power of two of non-empty buffers",
            ));
        }
        let held = GROUPS_HELD.get();
        let group = held.trailing_ones() as u16;
        if group >= GROUPS {
            return Err(io::Error::other("every buffer group id is held"));
        }
        let first = first.clamp(1, count);
        let bytes = usize::from(count) * size;
        // SAFETY: non-zero sizes (count >= 1, size >= 1); zeroed, so every
        // entry and the tail start at 0.
        let entries = unsafe { std::alloc::alloc_zeroed(BufRing::entries_layout(count)) };
        if entries.is_null() {
            return Err(io::ErrorKind::OutOfMemory.into());
        }
        // Mapped rather than allocated, so that dropping the ring gives its
        // pages straight back to the system (an allocator could keep them),
        // and left untouched, so not resident until the kernel writes into a
        // buffer. SAFETY: a fresh anonymous private mapping; no pointer in.
        let memory = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if memory == libc::MAP_FAILED {
            let err = io::Error::last_os_error();
            // SAFETY: allocated just above with this layout; nobody saw it.
            unsafe { std::alloc::dealloc(entries, BufRing::entries_layout(count)) };
            return Err(err);
        }
        let ring = BufRing {
            entries: entries.cast(),
            count,
            provided: Cell::new(first),
            size,
            memory: memory.cast(),
            tail: Cell::new(0),
            group,
            first,
            retired: Cell::new(true),
            out: Cell::new(0),
            peak: Cell::new(0),
            grew: Cell::new(false),
            pos_of: (0..count).map(|_| Cell::new(0)).collect(),
            next: (0..count).map(|_| Cell::new(LOST)).collect(),
        };
        // SAFETY: `entries` is page-aligned, zeroed and sized for `count`
        // entries, and stays allocated until the ring is dropped, which
        // unregisters it first (or it was unregistered when replaced).
        tokio_uring::with_submitter(|s| unsafe {
            s.register_buf_ring(entries as u64, count, group)
        })
        .unwrap_or_else(|| Err(io::Error::other("not on a tokio-uring runtime")))?;
        // Registered: from here on dropping it unregisters it.
        ring.retired.set(false);
        GROUPS_HELD.set(held | 1 << group);
        for bid in 0..first {
            ring.give_back(bid);
        }
        Ok(ring)
    }

    /// Hands the kernel as many buffers again as it has, after a receive
    /// found none left: up to `count`, and up to two per connection the
    /// worker holds (a receive in each direction), so a few busy bulk
    /// connections do not grow it.
    fn grow(&self) {
        let provided = self.provided.get();
        let most = pairs_in_use().map_or(self.count, |pairs| {
            let want = pairs.saturating_mul(2).max(1).next_power_of_two();
            want.min(u32::from(self.count)) as u16
        });
        let more = provided.min(most.saturating_sub(provided));
        if self.retired.get() {
            return;
        }
        for bid in provided..provided + more {
            self.give_back(bid);
        }
        self.provided.set(provided + more);
        self.grew.set(true);
    }

    /// Buffers that `len` bytes received into this ring's buffers fill.
    fn buffers_for(&self, len: usize) -> usize {
        len.div_ceil(self.size).max(1)
    }

    /// The bytes a receive put into buffer `bid` of `ring` (`len` of them,
    /// in that buffer and, for a bundle, those after it in the ring),
    /// counted as held until the [`Provided`] is dropped; an error if the
    /// buffers of a bundle could not be found.
    fn take(ring: &Rc<BufRing>, bid: u16, len: usize, bundle: bool) -> io::Result<Provided> {
        let len = u32::try_from(len).unwrap_or(u32::MAX);
        let provided = Provided {
            ring: ring.clone(),
            bid,
            len,
            bundle,
            msg: None,
        };
        let buffers = provided.ids().count();
        let out = ring.out.get() + buffers as u16;
        ring.out.set(out);
        ring.peak.set(ring.peak.get().max(out));
        if buffers < ring.buffers_for(len as usize) {
            // Dropped, it hands back the buffers it found.
            return Err(io::Error::other(
                "a receive bundle's buffers were lost from the ring",
            ));
        }
        Ok(provided)
    }

    /// Hands buffer `bid` to the kernel again (unless the ring was replaced).
    pub(super) fn give_back(&self, bid: u16) {
        if self.retired.get() {
            return;
        }
        let tail = self.tail.get();
        let mask = self.count - 1;
        // SAFETY: `entries` holds `count` entries (allocated in
        // provide_buffers) and `tail & mask` is below `count`; the kernel
        // reads entries only between its head and the tail we publish, and
        // this slot is past the published tail until the store below (at
        // most `count` buffers exist, each in the ring at most once, so the
        // tail never laps an entry the kernel has not taken yet).
        unsafe {
            let entry = &mut *self.entries.add(usize::from(tail & mask));
            entry.set_addr(self.memory.add(usize::from(bid) * self.size) as u64);
            entry.set_len(self.size as u32);
            entry.set_bid(bid);
        }
        self.pos_of[usize::from(bid)].set(tail);
        let tail = tail.wrapping_add(1);
        self.tail.set(tail);
        // SAFETY: `entries` is this ring's, which lives as long as the ring.
        unsafe { publish_tail(self.entries, tail) };
    }
}

impl ReapHook for BufRing {
    /// A receive bundle's completion names its first buffer; the kernel
    /// took the others from the ring positions after that one's. Which
    /// buffers sat there is read now, as the completion is reaped in the
    /// order the kernel posted it, and kept as a chain in `next` for when a
    /// task takes the completion, maybe much later.
    ///
    /// Why the positions still hold those buffers now: an entry is
    /// overwritten only once the tail passes it by a whole ring, and between
    /// the kernel's posting of this completion and its reaping the tail
    /// moves only by buffers handed back in that time; each of those was
    /// taken from a completion reaped earlier (so posted earlier), and is
    /// handed back at most once before it is taken again, by a completion
    /// posted later, so reaped after this one. With the bundle's own
    /// buffers held, the tail stays below the first one's position plus the
    /// ring's size. Checked all the same: a buffer that was handed back
    /// again since is marked [`LOST`].
    fn reaped(&self, result: i32, flags: u32) {
        let Some(first) = cqueue::buffer_select(flags) else {
            return;
        };
        let Ok(len) = usize::try_from(result) else {
            return;
        };
        let (count, mask) = (usize::from(self.count), self.count - 1);
        let (Some(at), true) = (self.pos_of.get(usize::from(first)), len > self.size) else {
            return;
        };
        let first_pos = at.get();
        let mut prev = first;
        for i in 1..self.buffers_for(len).min(count) {
            let pos = first_pos.wrapping_add(i as u16);
            // SAFETY: `pos & mask` is below `count`, the entries' length;
            // the kernel does not write an entry's buffer id.
            let bid = unsafe { (*self.entries.add(usize::from(pos & mask))).bid() };
            let next = match self.pos_of.get(usize::from(bid)) {
                Some(at) if at.get() == pos => bid,
                _ => LOST,
            };
            self.next[usize::from(prev)].set(next);
            if next == LOST {
                return;
            }
            prev = bid;
        }
    }
}

/// Publishes `tail` as the tail of the provided-buffer ring at `entries`,
/// after the entries written before it.
///
/// # Safety
/// `entries` must point to the first entry of a live ring.
pub(super) unsafe fn publish_tail(entries: *mut types::BufRingEntry, tail: u16) {
    // SAFETY: the ring's tail is the `resv` field of its first entry, live
    // (the caller's word); the kernel reads it, so it is published with a
    // release store, after the entries.
    unsafe {
        let tail_ptr = types::BufRingEntry::tail(entries) as *const std::sync::atomic::AtomicU16;
        (*tail_ptr).store(tail, std::sync::atomic::Ordering::Release);
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // Never free memory the kernel may write into: only a ring it no
        // longer knows is freed. One that was replaced was unregistered
        // then, and the last operation that selected from it (each held an
        // `Rc` of it) has completed. Otherwise it is unregistered now; that
        // is impossible while the driver dispatches completions (the last
        // receive that held the ring ended there) or once the runtime is
        // going; the ring is then left allocated, and its group id held,
        // once per worker at most (a worker has one live ring, dropped when
        // it stops).
        let unregistered = self.retired.get()
            || matches!(
                tokio_uring::with_submitter(|s| s.unregister_buf_ring(self.group)),
                Some(Ok(()))
            );
        #[cfg(test)]
        tests::RINGS_DROPPED.with(|d| d.set(d.get() + 1));
        if !unregistered {
            #[cfg(test)]
            tests::RINGS_LEAKED.with(|l| l.set(l.get() + 1));
            return;
        }
        GROUPS_HELD.set(GROUPS_HELD.get() & !(1 << self.group));
        // SAFETY: both were allocated in `register` with these sizes and are
        // freed only here, once the kernel has let go of the ring (above).
        // No receive selects from it any more: each held an `Rc` of this
        // ring until its last completion. No `Provided` is out either: each
        // holds an `Rc` too.
        unsafe {
            std::alloc::dealloc(self.entries.cast(), Self::entries_layout(self.count));
            libc::munmap(self.memory.cast(), usize::from(self.count) * self.size);
        }
    }
}

/// Sets up this worker's provided-buffer ring: room for `count` (a power of
/// two up to 32768) buffers of `size` bytes, registered with the thread's
/// io_uring, of which the first `first` (at least 1) are handed to the kernel
/// now and the rest as bursts need them (see [`BufRing`]). Receives can then
/// take their buffer at completion ([`recv_provided`]). Call on the worker's
/// thread, inside its runtime.
pub fn provide_buffers(count: u16, first: u16, size: usize) -> io::Result<()> {
    let ring = BufRing::register(count, first, size)?;
    PROVIDED.with(|p| *p.borrow_mut() = Some(Rc::new(ring)));
    Ok(())
}

/// Replaces this thread's provided-buffer ring by a fresh one of the size
/// it started with, if a burst grew it and the last interval (since the
/// previous call) did not need the growth: it did not grow, and at most
/// half the buffers it started with were held at once; returns whether it
/// did. The old ring is unregistered, so the kernel selects none of its
/// buffers any more; receives still armed on it must be cancelled (the
/// caller, [`shrink_buffers`], does). Its memory
/// (every buffer the burst wrote into is resident) goes back to the system
/// once the last receive and the last [`Provided`] that hold it are gone; a
/// receive still waiting on it finds no buffer when bytes come (ENOBUFS),
/// and reads into a buffer of its own, as when a ring is empty.
fn replace_grown_ring() -> bool {
    let Some(ring) = PROVIDED.with(|p| p.borrow().clone()) else {
        return false;
    };
    let grew = ring.grew.replace(false);
    let peak = ring.peak.replace(ring.out.get());
    if grew || ring.provided.get() <= ring.first || peak > ring.first / 2 {
        return false;
    }
    let Ok(fresh) = BufRing::register(ring.count, ring.first, ring.size) else {
        return false;
    };
    if !matches!(
        tokio_uring::with_submitter(|s| s.unregister_buf_ring(ring.group)),
        Some(Ok(()))
    ) {
        return false;
    }
    ring.retired.set(true);
    PROVIDED.with(|p| *p.borrow_mut() = Some(Rc::new(fresh)));
    true
}

/// Drops this thread's provided-buffer ring, before its runtime goes.
pub fn release_buffers() {
    PROVIDED.with(|p| p.borrow_mut().take());
}

/// What one receive brought into buffers of the provided ring: one buffer,
/// or for a receive bundle several, each full but the last; handed back to
/// the kernel when dropped.
#[derive(Debug)]
pub struct Provided {
    /// Their ring, kept alive while the buffers are out.
    ring: Rc<BufRing>,
    /// The first buffer's id in the ring; the rest follow in `ring.next`.
    bid: u16,
    /// Bytes received.
    len: u32,
    /// Whether it came from a bundle receive (which may fill several).
    bundle: bool,
    /// A send's header and vector over the buffers, once a send of more
    /// than one buffer needed them (they stay put while it runs).
    msg: Option<Box<PiecesMsg>>,
}

/// A `sendmsg` header and the vector it points to.
#[derive(Debug)]
struct PiecesMsg {
    hdr: libc::msghdr,
    iov: Vec<libc::iovec>,
}

impl Provided {
    /// Bytes received.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether the receive stopped for want of room, not of bytes: more are
    /// likely waiting. A receive of one buffer filled it; a bundle receive
    /// brought [`BUNDLE_MAX`], as much as it may.
    pub fn filled(&self) -> bool {
        if self.bundle {
            self.len() >= BUNDLE_MAX
        } else {
            self.len() == self.ring.size
        }
    }

    /// Whether its last buffer is full, so that bytes received after it can
    /// follow in the next buffers ([`Provided::append`]).
    pub(super) fn ends_full(&self) -> bool {
        self.len().is_multiple_of(self.ring.size)
    }

    /// Takes `other`, what the next receive from the same ring brought,
    /// as the bytes after these, for one send of both; only if these end
    /// with a full buffer (the caller checks [`Provided::ends_full`]).
    pub(super) fn append(&mut self, mut other: Provided) {
        debug_assert!(self.ends_full() && Rc::ptr_eq(&self.ring, &other.ring));
        if let Some(last) = self.ids().last() {
            self.ring.next[usize::from(last)].set(other.bid);
        }
        self.len += other.len;
        // Its buffers are these now: dropped, it gives none back.
        other.len = 0;
    }

    /// The ids of its buffers, in order (as far as they were found).
    fn ids(&self) -> impl Iterator<Item = u16> + '_ {
        let buffers = self.ring.buffers_for(self.len());
        std::iter::successors(Some(self.bid), |&bid| {
            Some(self.ring.next[usize::from(bid)].get()).filter(|&next| next != LOST)
        })
        .take(buffers)
    }

    /// The bytes, a slice per buffer.
    pub fn pieces(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let (size, len) = (self.ring.size, self.len());
        self.ids().enumerate().map(move |(i, bid)| {
            // SAFETY: buffer `bid` is `size` bytes at `memory + bid * size`;
            // the kernel wrote the bytes of this piece there (every piece
            // but the last is full) and does not touch it again until
            // `give_back(bid)`, which only Drop calls.
            unsafe {
                std::slice::from_raw_parts(
                    self.ring.memory.add(usize::from(bid) * size),
                    (len - i * size).min(size),
                )
            }
        })
    }

    /// The bytes, copied out (for tests).
    #[cfg(test)]
    pub fn to_vec(&self) -> Vec<u8> {
        self.pieces().flatten().copied().collect()
    }
}

impl SendBuf for Provided {
    fn send_len(&self) -> usize {
        self.len()
    }

    fn send_sqe(&mut self, fd: types::Fd, sent: usize) -> squeue::Entry {
        if self.len() <= self.ring.size {
            let rest = self
                .pieces()
                .next()
                .map_or(&[][..], |p| &p[sent.min(p.len())..]);
            return send_sqe(fd, rest);
        }
        let mut iov: Vec<libc::iovec> = Vec::new();
        let mut skip = sent;
        for piece in self.pieces() {
            if skip >= piece.len() {
                skip -= piece.len();
                continue;
            }
            iov.push(libc::iovec {
                iov_base: piece[skip..].as_ptr() as *mut libc::c_void,
                iov_len: piece.len() - skip,
            });
            skip = 0;
        }
        // SAFETY: msghdr is plain data, for which zeroes are valid.
        let mut msg = Box::new(PiecesMsg {
            hdr: unsafe { std::mem::zeroed() },
            iov,
        });
        msg.hdr.msg_iov = msg.iov.as_mut_ptr();
        msg.hdr.msg_iovlen = msg.iov.len();
        let sqe = opcode::SendMsg::new(fd, &msg.hdr)
            .flags(libc::MSG_NOSIGNAL as u32)
            .build();
        // Boxed, so moving it does not move the header the SQE points to.
        self.msg = Some(msg);
        sqe
    }
}

impl Drop for Provided {
    fn drop(&mut self) {
        if self.len == 0 {
            // Appended to another (a receive never hands out 0 bytes).
            return;
        }
        // Handing a buffer back leaves `next` as it is, so the chain holds
        // while it is walked.
        for bid in self.ids() {
            self.ring.out.set(self.ring.out.get() - 1);
            self.ring.give_back(bid);
        }
    }
}

/// The bytes a receive into a provided buffer brought: none at EOF.
#[derive(Debug)]
pub enum Received {
    /// The peer closed its side.
    Eof,
    /// Bytes, in one of the ring's buffers.
    Bytes(Provided),
    /// Bytes are waiting, but every buffer of the ring is out (ENOBUFS):
    /// read them into a buffer of one's own, at once.
    RingEmpty,
    /// Cancelled before anything arrived, as the ring it waited on was
    /// replaced ([`shrink_buffers`]): receive again.
    Cancelled,
}

/// Receives into a buffer of this thread's provided ring, which the kernel
/// picks when data arrives; with `poll_first` it waits for readiness before
/// it tries. With `bundle` (and a kernel that takes them) it is a bundle
/// receive: what is waiting comes in one completion, over as many buffers
/// as it fills; otherwise one buffer's worth. Resolves to `None` when there
/// is no ring on this thread (or the kernel refuses the receive's flags):
/// then receive into a buffer of one's own, as without a ring.
pub fn recv_provided<'a>(
    sock: impl Into<Sock<'a>>,
    poll_first: bool,
    bundle: bool,
) -> RecvProvided {
    let sock = sock.into();
    let poll_first = poll_first && RECV_FLAGS_OK.get();
    let bundle = bundle && BUNDLE_OK.get();
    let ioprio = if poll_first { RECVSEND_POLL_FIRST } else { 0 };
    RecvProvided {
        poll_first,
        bundle,
        op: PROVIDED
            .with(|p| p.borrow().clone())
            .map(|ring| recv_into_ring(sock, ring, ioprio, bundle)),
    }
}

/// The receive [`recv_provided`] started.
pub struct RecvProvided {
    /// Whether it was to poll first.
    poll_first: bool,
    /// Whether it is a bundle receive.
    bundle: bool,
    /// The receive in flight; none without a ring.
    op: Option<InFlightMultishot<RingRecv>>,
}

impl Future for RecvProvided {
    type Output = Option<io::Result<Received>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Some(op) = &mut this.op else {
            return Poll::Ready(None);
        };
        let user_data = op.user_data();
        // Its one completion; the operation has ended with it.
        let next = ready!(op.poll_next(cx));
        let bundle = this.bundle;
        let got =
            next.map(|(res, flags)| op.data().received(res.map(|n| n as usize), flags, bundle));
        this.op = None;
        disarm(user_data);
        let Some(got) = got else {
            // No completion (not expected for a receive in flight): receive
            // into a buffer of one's own.
            return Poll::Ready(None);
        };
        Poll::Ready(match got {
            Err(err) if err.raw_os_error() == Some(libc::ECANCELED) => {
                Some(Ok(Received::Cancelled))
            }
            // A kernel that refuses bundle receives, or the receive flags:
            // this thread stops asking for bundles, and the caller's own
            // receive learns about the flags and stops passing them.
            Err(err)
                if err.raw_os_error() == Some(libc::EINVAL)
                    && ((bundle && refuse_bundles()) || this.poll_first) =>
            {
                None
            }
            res => Some(res),
        })
    }
}

impl Drop for RecvProvided {
    fn drop(&mut self) {
        // Not ended: the driver cancels it and keeps it until its
        // completion.
        disarm(self.op.as_ref().and_then(|op| op.user_data()));
    }
}

/// What a receive into `ring` brought, from its result and the id of the
/// (first) buffer the kernel filled, if it took one; a buffer that holds no
/// bytes goes back to the ring at once. `bundle`: the receive was a bundle
/// one.
fn received(
    res: io::Result<usize>,
    bid: Option<u16>,
    ring: &Rc<BufRing>,
    bundle: bool,
) -> io::Result<Received> {
    match (res, bid) {
        (Ok(n), Some(bid)) if n > 0 => BufRing::take(ring, bid, n, bundle).map(Received::Bytes),
        (res, bid) => {
            if let Some(bid) = bid {
                ring.give_back(bid);
            }
            match res {
                Ok(_) => Ok(Received::Eof),
                Err(err) if err.raw_os_error() == Some(libc::ENOBUFS) => {
                    ring.grow();
                    Ok(Received::RingEmpty)
                }
                Err(err) => Err(err),
            }
        }
    }
}

/// Gives up bundle receives on this thread, after a kernel refused a
/// receive (EINVAL); returns whether they were on, so that the refusal was
/// theirs (older kernels refuse bundles, 6.10+ take them, and a receive
/// armed with them that was refused brought no bytes).
pub(super) fn refuse_bundles() -> bool {
    BUNDLE_OK.replace(false)
}

/// The ring a receive from it fills, kept in the driver with the receive:
/// its memory outlives the receive even if the receive's owner is dropped,
/// and the buffers of completions nobody takes go back to it.
pub(super) struct RingRecv(Rc<BufRing>);

impl RingRecv {
    /// What a completion of the receive, with this result and these CQE
    /// flags, brought; `bundle`: it was a bundle receive.
    pub(super) fn received(
        &self,
        res: io::Result<usize>,
        flags: u32,
        bundle: bool,
    ) -> io::Result<Received> {
        received(res, cqueue::buffer_select(flags), &self.0, bundle)
    }
}

/// Whether receives into the ring are bundle ones on this thread (until a
/// kernel refused one).
pub(super) fn bundles_on() -> bool {
    BUNDLE_OK.get()
}

impl MultishotData for RingRecv {
    fn discard(&mut self, flags: u32) {
        if let Some(bid) = cqueue::buffer_select(flags) {
            self.0.give_back(bid);
        }
    }

    /// Every buffer the completion filled goes back: for a bundle, the
    /// ones after the first too, which its reap hook recorded.
    fn discard_result(&mut self, result: &io::Result<u32>, flags: u32) {
        match result {
            Ok(n) if *n > 0 => {
                let bid = cqueue::buffer_select(flags);
                // Dropped at once, the bytes' buffers go back.
                let _ = received(Ok(*n as usize), bid, &self.0, true);
            }
            _ => self.discard(flags),
        }
    }
}

/// Submits a receive on `sock` into `ring`, with `ioprio`'s flags (multishot,
/// poll first) and, with `bundle`, as a bundle one: a completion then
/// covers as many consecutive buffers of the ring as the bytes waiting
/// fill, which the ring's reap hook records. Listed as armed (the caller
/// disarms it once it ended).
pub(super) fn recv_into_ring(
    sock: Sock<'_>,
    ring: Rc<BufRing>,
    ioprio: u16,
    bundle: bool,
) -> InFlightMultishot<RingRecv> {
    // Length 0: as much as the buffers hold. (A multishot receive takes no
    // other, and a bundle one given a length ends after its first
    // completion, on Linux 6.18.)
    let sqe = sock.sqe(|fd| {
        opcode::Recv::new(fd, std::ptr::null_mut(), 0)
            .buf_group(ring.group)
            .build()
            .flags(squeue::Flags::BUFFER_SELECT)
    });
    let op = if bundle {
        let sqe = with_ioprio(sqe, ioprio | RECVSEND_BUNDLE);
        let hook: Rc<dyn ReapHook> = ring.clone();
        UnsubmittedMultishot::with_reap_hook(RingRecv(ring), sqe, hook).submit()
    } else {
        UnsubmittedMultishot::new(RingRecv(ring), with_ioprio(sqe, ioprio)).submit()
    };
    arm(op.user_data());
    op
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::testing::pair;
    use crate::uring::{register_file_table, release_file_table, FixedPair};
    use std::io::Write;

    thread_local! {
        /// Rings this thread dropped, and of those the ones left allocated.
        pub(super) static RINGS_DROPPED: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
        pub(super) static RINGS_LEAKED: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    }

    /// `n` receives on sockets of their own, each of a byte, and the buffers
    /// of those that got one from the ring, held (with the sockets).
    pub(in crate::uring) async fn hold_receives(
        n: usize,
    ) -> (
        Vec<Provided>,
        Vec<(std::net::TcpStream, tokio_uring::net::TcpStream)>,
    ) {
        let mut held = Vec::new();
        let mut peers = Vec::new();
        for _ in 0..n {
            let (mut peer, ours) = pair();
            peer.write_all(b"x").unwrap();
            if let Some(Ok(Received::Bytes(got))) = recv_provided(&ours, false, true).await {
                held.push(got);
            }
            peers.push((peer, ours));
        }
        (held, peers)
    }

    #[test]
    fn a_ring_that_ran_empty_grows_up_to_its_room() {
        tokio_uring::start(async {
            // Room for 4 buffers, 1 handed out at first.
            provide_buffers(4, 1, 16).unwrap();
            let mut held = Vec::new();
            let mut empties = 0;
            let mut peers = Vec::new();
            // Each receive keeps its buffer; the ring runs empty at 1, then
            // at 2 (grown to 2), then at 4, then stays empty at its room.
            for _ in 0..8 {
                let (mut peer, ours) = pair();
                peer.write_all(b"x").unwrap();
                match recv_provided(&ours, false, true).await {
                    Some(Ok(Received::Bytes(got))) => held.push(got),
                    Some(Ok(Received::RingEmpty)) => empties += 1,
                    other => panic!("expected bytes or an empty ring, got {other:?}"),
                }
                peers.push((peer, ours));
            }
            assert_eq!(held.len(), 4, "the ring grew to its room of 4, no further");
            assert_eq!(empties, 4);
            // Handed back, they serve again.
            held.clear();
            let (mut peer, ours) = pair();
            peer.write_all(b"y").unwrap();
            assert!(matches!(
                recv_provided(&ours, false, true).await,
                Some(Ok(Received::Bytes(_)))
            ));
            release_buffers();
        });
    }

    #[test]
    fn a_ring_still_registered_is_never_freed() {
        use crate::uring::recv_stream;
        tokio_uring::start(async {
            provide_buffers(4, 4, 64).unwrap();
            let (peer, ours) = pair();
            // A multishot receive is the ring's last holder once the
            // worker lets go of it; dropped, the driver keeps it (and its
            // ring) until its last completion, which the kernel posts when
            // the peer goes, and the ring goes with it inside the
            // driver's completion dispatch.
            let stream = recv_stream(&ours).expect("a multishot receive");
            release_buffers();
            let dropped = RINGS_DROPPED.with(|d| d.get());
            drop(stream);
            drop(peer);
            // Sleeping parks the thread, which submits and reaps.
            while RINGS_DROPPED.with(|d| d.get()) == dropped {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            // It could not be unregistered there: the kernel still has it...
            let still = tokio_uring::with_submitter(|s| s.unregister_buf_ring(0));
            assert!(matches!(still, Some(Ok(()))), "still registered: {still:?}");
            // ...so its memory was left alone, not freed.
            assert_eq!(RINGS_LEAKED.with(|l| l.get()), 1);
        });
        // A ring the worker drops itself is unregistered and freed.
        tokio_uring::start(async {
            provide_buffers(4, 4, 64).unwrap();
            release_buffers();
        });
        assert_eq!(RINGS_LEAKED.with(|l| l.get()), 1);
    }

    #[test]
    fn a_ring_grows_to_two_buffers_per_connection_held_not_further() {
        tokio_uring::start(async {
            // One relayed connection in the file table: room for 8, but
            // two buffers are all it may grow to.
            register_file_table(4).unwrap();
            let (_pa, a) = pair();
            let (_pb, b) = pair();
            let _held_pair = FixedPair::register(&a, &b).expect("a free pair");
            provide_buffers(8, 1, 16).unwrap();
            let (held, _peers) = hold_receives(6).await;
            assert_eq!(held.len(), 2, "grown to two buffers for one connection");
            drop(held);
            release_buffers();
            release_file_table();
        });
    }

    #[test]
    fn a_grown_ring_unused_for_an_interval_is_replaced_and_freed() {
        use crate::uring::recv_stream;
        use std::future::poll_fn;
        tokio_uring::start(async {
            // Room for 8, 2 at first; held receives grow it to 8.
            provide_buffers(8, 2, 16).unwrap();
            let old = PROVIDED.with(|p| p.borrow().clone()).unwrap();
            let (mut held, peers) = hold_receives(8).await;
            assert_eq!(old.provided.get(), 8, "grown");
            // An idle connection's receive stays armed on the old ring, and
            // one buffer of the old ring is still out.
            let (mut idle_peer, idle) = pair();
            let mut stream = recv_stream(&idle).expect("a multishot receive");
            // And a one-shot receive that polls first, too.
            let (_quiet_peer, quiet) = pair();
            let one_shot = recv_provided(&quiet, true, true);
            let kept = held.pop().unwrap();
            drop(held);
            assert!(!shrink_buffers(), "it grew in this interval");
            // Still held, one of the two it started with: busy enough.
            let busy = old.out.get();
            assert_eq!(busy, 1);
            assert!(shrink_buffers(), "an interval without use");
            assert!(old.retired.get());
            let fresh = PROVIDED.with(|p| p.borrow().clone()).unwrap();
            assert_ne!(fresh.group, old.group);
            assert_eq!(fresh.provided.get(), 2, "back to the first two");
            drop(old);
            // The armed receives were cancelled: the one-shot one says so,
            // the multishot one ends without news...
            assert!(matches!(one_shot.await, Some(Ok(Received::Cancelled))));
            assert!(poll_fn(|cx| stream.poll_next(cx)).await.is_none());
            assert!(stream.is_done());
            drop(stream);
            // ...and one armed again takes the new ring's buffers.
            let mut stream = recv_stream(&idle).expect("a multishot receive");
            idle_peer.write_all(b"after").unwrap();
            match poll_fn(|cx| stream.poll_next(cx)).await {
                Some(Ok(Received::Bytes(got))) => {
                    assert_eq!(got.to_vec(), b"after");
                    assert!(Rc::ptr_eq(&got.ring, &fresh));
                }
                other => panic!("expected bytes, got {other:?}"),
            }
            // The buffer still out of the old ring keeps its bytes; when it
            // goes, so does the old ring, unregistered already, and freed.
            assert_eq!(kept.to_vec(), b"x");
            let dropped = RINGS_DROPPED.with(|d| d.get());
            drop(kept);
            assert_eq!(RINGS_DROPPED.with(|d| d.get()), dropped + 1);
            assert_eq!(RINGS_LEAKED.with(|l| l.get()), 0);
            // Unused, the fresh ring has not grown: nothing to replace.
            assert!(!shrink_buffers());
            assert!(!shrink_buffers());
            drop((stream, fresh, peers));
            release_buffers();
        });
    }

    #[test]
    fn a_grown_ring_still_in_use_is_kept() {
        tokio_uring::start(async {
            provide_buffers(8, 2, 16).unwrap();
            let (mut held, _peers) = hold_receives(8).await;
            // Eight held through two intervals: more than half the first two.
            assert!(!shrink_buffers());
            assert!(!shrink_buffers());
            // Given back, the next interval sees the peak of the last one.
            held.clear();
            assert!(!shrink_buffers(), "the last interval held eight");
            assert!(shrink_buffers());
            release_buffers();
        });
    }
}
