//! Measurements of the copy path's levers (issue 24, item 2), in unit tests
//! only: a multishot receive whose completions each cover several
//! consecutive buffers of a provided ring (IORING_RECVSEND_BUNDLE, Linux
//! 6.10), sent on with one `sendmsg` of them all; and a ring of large
//! buffers that the kernel consumes in parts (IOU_PBUF_RING_INC, 6.12);
//! each against a model of today's relay (2 KiB ring buffers, then the
//! large owned buffer) and the owned buffer alone. Each lever has its own
//! ring here, under a buffer group of its own, and raw operations of its
//! own. Where a completion's bytes are depends on the completions before
//! it in the order the kernel posted them, which tokio-uring's tasks do not
//! take them in; a test here takes them in that order from an io_uring of
//! its own. The figures, and why no lever was wired into the relay yet, are
//! in docs/performance.md ("Copy path levers").

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::marker::PhantomData;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::task::Poll;

use io_uring::{cqueue, opcode, squeue, types};
use tokio_uring::net::TcpStream;
use tokio_uring::{
    InFlightMultishot, MultishotData, OneshotOutputTransform, UnsubmittedMultishot,
    UnsubmittedOneshot,
};

use super::recv_send::{completion, with_ioprio, RECVSEND_POLL_FIRST};

/// `IORING_RECV_MULTISHOT`, in the SQE's `ioprio`.
const RECV_MULTISHOT: u16 = 2;
/// `IORING_RECVSEND_BUNDLE` (6.10), in the SQE's `ioprio`: one completion
/// covers as many consecutive ring buffers as the bytes waiting fill.
const RECVSEND_BUNDLE: u16 = 16;
/// `IORING_CQE_F_BUF_MORE` (6.12): the kernel will go on filling the
/// buffer this completion names.
const CQE_F_BUF_MORE: u32 = 16;
/// `IOU_PBUF_RING_INC` (6.12), a flag of the ring's registration.
const PBUF_RING_INC: u16 = 2;
/// `IORING_REGISTER_PBUF_RING` and `IORING_UNREGISTER_PBUF_RING`.
const REGISTER_PBUF_RING: libc::c_uint = 22;
const UNREGISTER_PBUF_RING: libc::c_uint = 23;
/// The buffer group of the ring under test (worker rings use 0; each case
/// runs on a runtime of its own anyway).
const BGID: u16 = 1;
/// Most pieces one `sendmsg` takes (`UIO_MAXIOV`).
const MAX_IOV: usize = 1024;

/// `struct io_uring_buf_reg` (linux/io_uring.h), with the `flags` that
/// io-uring 0.6's `register_buf_ring` does not pass.
#[repr(C)]
struct BufReg {
    ring_addr: u64,
    ring_entries: u32,
    bgid: u16,
    flags: u16,
    resv: [u64; 3],
}

/// `io_uring_register(ring_fd, opcode, reg, 1)` for a buffer ring.
fn register(ring_fd: RawFd, opcode: libc::c_uint, reg: &BufReg) -> io::Result<()> {
    // SAFETY: `reg` is a live `io_uring_buf_reg` for the call, and the
    // kernel only reads it; what it names is the caller's to keep valid.
    let res = unsafe {
        libc::syscall(
            libc::SYS_io_uring_register,
            ring_fd,
            opcode,
            reg as *const BufReg,
            1,
        )
    };
    if res < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// How the kernel consumes a ring's buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// One buffer per completion, as the worker's ring today.
    Whole,
    /// A completion covers consecutive buffers from the ring's head.
    Bundle,
    /// A buffer serves completions until it is full (IOU_PBUF_RING_INC).
    Incremental,
}

/// What the app knows of one buffer of an incremental ring.
#[derive(Clone, Copy, Default)]
struct Slot {
    /// Bytes the kernel put into it so far, by the completions seen.
    filled: u32,
    /// Pieces of it not yet sent.
    out: u32,
    /// Whether the kernel moved past it (a completion without BUF_MORE).
    done: bool,
}

/// A provided-buffer ring, as `ring::BufRing` without its growth, with the
/// ring position of every buffer handed back (a bundle names only its first
/// buffer) and, for an incremental ring, how far each buffer is filled.
struct Ring {
    /// The io_uring it is registered with.
    ring_fd: RawFd,
    entries: *mut types::BufRingEntry,
    count: u16,
    size: usize,
    memory: *mut u8,
    kind: Kind,
    tail: Cell<u16>,
    /// The buffer id at each ring position (the tail's, masked)...
    at: RefCell<Vec<u16>>,
    /// ...and the tail at which each buffer was handed back last. A bundle
    /// names its first buffer; the rest follow it in the ring. Found from
    /// where that first one was put, not from a head counted along the
    /// completions: the completions of several receives are taken in the
    /// order their tasks run, not the order the kernel posted them.
    pos_of: RefCell<Vec<u16>>,
    slots: RefCell<Vec<Slot>>,
    /// Completions that brought bytes, and the pieces they made.
    completions: Cell<u64>,
    pieces: Cell<u64>,
}

impl Ring {
    fn entries_layout(count: u16) -> std::alloc::Layout {
        let bytes = usize::from(count) * std::mem::size_of::<types::BufRingEntry>();
        std::alloc::Layout::from_size_align(bytes, 4096).unwrap()
    }

    fn memory_layout(count: u16, size: usize) -> std::alloc::Layout {
        std::alloc::Layout::from_size_align(usize::from(count) * size, 4096).unwrap()
    }

    /// `count` buffers of `size` bytes registered with the io_uring `ring_fd`
    /// (this thread's) under [`BGID`], all handed to the kernel.
    fn new(ring_fd: RawFd, count: u16, size: usize, kind: Kind) -> io::Result<Rc<Ring>> {
        assert!(count.is_power_of_two() && size > 0);
        // SAFETY: non-zero sizes; zeroed, so the tail starts at 0.
        let entries = unsafe { std::alloc::alloc_zeroed(Self::entries_layout(count)) };
        // SAFETY: a non-zero size; nothing reads a buffer before the kernel
        // wrote into it.
        let memory = unsafe { std::alloc::alloc(Self::memory_layout(count, size)) };
        assert!(!entries.is_null() && !memory.is_null());
        let reg = BufReg {
            ring_addr: entries as u64,
            ring_entries: u32::from(count),
            bgid: BGID,
            flags: if kind == Kind::Incremental {
                PBUF_RING_INC
            } else {
                0
            },
            resv: [0; 3],
        };
        // The entries `reg` names are page-aligned, sized for `count` and
        // stay allocated until the ring is unregistered (Drop).
        register(ring_fd, REGISTER_PBUF_RING, &reg)?;
        let ring = Rc::new(Ring {
            ring_fd,
            entries: entries.cast(),
            count,
            size,
            memory,
            kind,
            tail: Cell::new(0),
            pos_of: RefCell::new(vec![0; usize::from(count)]),
            at: RefCell::new(vec![0; usize::from(count)]),
            slots: RefCell::new(vec![Slot::default(); usize::from(count)]),
            completions: Cell::new(0),
            pieces: Cell::new(0),
        });
        for bid in 0..count {
            ring.give_back(bid);
        }
        Ok(ring)
    }

    /// Hands buffer `bid` to the kernel again, whole.
    fn give_back(&self, bid: u16) {
        let tail = self.tail.get();
        let pos = usize::from(tail & (self.count - 1));
        // SAFETY: as in `ring::BufRing::give_back`: the slot is in the ring
        // and past the tail the kernel reads up to until the store below.
        unsafe {
            let entry = &mut *self.entries.add(pos);
            entry.set_addr(self.memory.add(usize::from(bid) * self.size) as u64);
            entry.set_len(self.size as u32);
            entry.set_bid(bid);
        }
        self.at.borrow_mut()[pos] = bid;
        self.pos_of.borrow_mut()[usize::from(bid)] = tail;
        self.slots.borrow_mut()[usize::from(bid)] = Slot::default();
        let tail = tail.wrapping_add(1);
        self.tail.set(tail);
        // SAFETY: the tail lives in the first entry, as long as the ring.
        unsafe { super::ring::publish_tail(self.entries, tail) };
    }

    /// Turns a receive's completion into the pieces of ring buffers it
    /// filled, appended to `into`.
    fn arrival(
        self: &Rc<Self>,
        res: io::Result<u32>,
        flags: u32,
        into: &mut VecDeque<Piece>,
    ) -> Arrival {
        let n = match res {
            Ok(0) => return Arrival::Eof,
            Ok(n) => n,
            Err(err) if err.raw_os_error() == Some(libc::ENOBUFS) => return Arrival::NoBuffers,
            Err(err) => panic!("receive failed: {err}"),
        };
        let bid = cqueue::buffer_select(flags).expect("a ring buffer");
        let before = into.len();
        let size = self.size as u32;
        let piece = |bid, off, len| Piece {
            ring: self.clone(),
            bid,
            off,
            len,
        };
        match self.kind {
            Kind::Whole => into.push_back(piece(bid, 0, n)),
            Kind::Bundle => {
                let (at, pos_of) = (self.at.borrow(), self.pos_of.borrow());
                let first = pos_of[usize::from(bid)];
                for i in 0..n.div_ceil(size) {
                    let pos = first.wrapping_add(i as u16);
                    let b = at[usize::from(pos & (self.count - 1))];
                    // Not so if the tail lapped the ring since the kernel
                    // took these (as many hand-backs as the ring has
                    // buffers, while this completion waited for its task).
                    assert_eq!(pos_of[usize::from(b)], pos, "the ring lapped a bundle");
                    into.push_back(piece(b, 0, (n - i * size).min(size)));
                }
            }
            Kind::Incremental => {
                let mut slots = self.slots.borrow_mut();
                let slot = &mut slots[usize::from(bid)];
                let off = slot.filled;
                assert!(off + n <= size, "buffer {bid}: {off} + {n} past its end");
                slot.filled += n;
                slot.out += 1;
                slot.done = flags & CQE_F_BUF_MORE == 0;
                drop(slots);
                into.push_back(piece(bid, off, n));
            }
        }
        self.completions.set(self.completions.get() + 1);
        self.pieces
            .set(self.pieces.get() + (into.len() - before) as u64);
        Arrival::Bytes
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        let reg = BufReg {
            ring_addr: 0,
            ring_entries: 0,
            bgid: BGID,
            flags: 0,
            resv: [0; 3],
        };
        // Left allocated if the io_uring is gone or refuses: never free
        // what the kernel may write.
        if register(self.ring_fd, UNREGISTER_PBUF_RING, &reg).is_ok() {
            // SAFETY: allocated in `new` with these layouts; the kernel let
            // go of them (unregistered just above).
            unsafe {
                std::alloc::dealloc(self.entries.cast(), Self::entries_layout(self.count));
                std::alloc::dealloc(self.memory, Self::memory_layout(self.count, self.size));
            }
        }
    }
}

/// What a completion brought.
enum Arrival {
    Bytes,
    Eof,
    NoBuffers,
}

/// Bytes a receive put into one ring buffer, at `off`; sent, then dropped,
/// which hands the buffer back (an incremental one once the kernel moved
/// past it and every piece of it is sent).
struct Piece {
    ring: Rc<Ring>,
    bid: u16,
    off: u32,
    len: u32,
}

impl Piece {
    fn ptr(&self) -> *const u8 {
        // SAFETY: inside buffer `bid` (`off + len <= size`, checked when the
        // piece was made), which the kernel does not touch while it is out.
        unsafe {
            self.ring
                .memory
                .add(usize::from(self.bid) * self.ring.size + self.off as usize)
        }
    }
}

impl Drop for Piece {
    fn drop(&mut self) {
        if self.ring.kind != Kind::Incremental {
            self.ring.give_back(self.bid);
            return;
        }
        let back = {
            let mut slots = self.ring.slots.borrow_mut();
            let slot = &mut slots[usize::from(self.bid)];
            slot.out -= 1;
            slot.out == 0 && slot.done
        };
        if back {
            self.ring.give_back(self.bid);
        }
    }
}

/// A multishot receive's ring, kept in the driver with it.
struct Armed(#[allow(dead_code)] Rc<Ring>);

impl MultishotData for Armed {
    // The relays here take every completion up to the last.
    fn discard(&mut self, _flags: u32) {}
}

/// Arms a multishot receive on `src` into `ring` (a bundle one for a
/// bundle ring).
fn arm(src: RawFd, ring: &Rc<Ring>) -> InFlightMultishot<Armed> {
    let sqe = opcode::Recv::new(types::Fd(src), std::ptr::null_mut(), 0)
        .buf_group(BGID)
        .build()
        .flags(squeue::Flags::BUFFER_SELECT);
    let mut prio = RECV_MULTISHOT | RECVSEND_POLL_FIRST;
    if ring.kind == Kind::Bundle {
        prio |= RECVSEND_BUNDLE;
    }
    UnsubmittedMultishot::new(Armed(ring.clone()), with_ioprio(sqe, prio)).submit()
}

/// Hands a completion's result back with what the operation kept.
struct Done<T>(PhantomData<T>);

impl<T> OneshotOutputTransform for Done<T> {
    type Output = (io::Result<usize>, T);
    type StoredData = T;

    fn transform_oneshot_output(self, data: T, cqe: cqueue::Entry) -> Self::Output {
        (completion(&cqe), data)
    }
}

/// A `sendmsg`'s header and vector, and the pieces they point into.
struct Msg {
    hdr: libc::msghdr,
    iov: Vec<libc::iovec>,
    _pieces: Vec<Piece>,
}

/// Sends `pieces` to `dst`, all of them (MSG_WAITALL: the kernel retries a
/// short send itself): one IORING_OP_SEND for one piece, one
/// IORING_OP_SENDMSG of them all for more; then hands them back.
async fn send_pieces(dst: RawFd, pieces: Vec<Piece>) -> usize {
    let want: usize = pieces.iter().map(|p| p.len as usize).sum();
    let flags = libc::MSG_NOSIGNAL | libc::MSG_WAITALL;
    let res = if let [one] = &pieces[..] {
        let sqe = opcode::Send::new(types::Fd(dst), one.ptr(), one.len)
            .flags(flags)
            .build();
        UnsubmittedOneshot::new(pieces, Done(PhantomData), sqe)
            .submit()
            .await
            .0
    } else {
        let iov = pieces
            .iter()
            .map(|p| libc::iovec {
                iov_base: p.ptr() as *mut libc::c_void,
                iov_len: p.len as usize,
            })
            .collect();
        // SAFETY: msghdr is plain data, for which zeroes are valid.
        let mut msg = Box::new(Msg {
            hdr: unsafe { std::mem::zeroed() },
            iov,
            _pieces: pieces,
        });
        msg.hdr.msg_iov = msg.iov.as_mut_ptr();
        msg.hdr.msg_iovlen = msg.iov.len();
        let sqe = opcode::SendMsg::new(types::Fd(dst), &msg.hdr)
            .flags(flags as u32)
            .build();
        // The box moves into the driver: the header, the vector and the
        // bytes stay where the SQE points until the send completes.
        UnsubmittedOneshot::new(msg, Done(PhantomData), sqe)
            .submit()
            .await
            .0
    };
    let sent = res.expect("a send");
    assert_eq!(sent, want, "MSG_WAITALL sends everything");
    sent
}

/// Relays `src` to `dst` through a multishot receive into `ring` until EOF,
/// then half-closes `dst`. One send in flight at a time; while it runs the
/// receive keeps filling ring buffers, and the next send takes one piece
/// (`batch` false) or every piece waiting (`batch`). A receive that ran the
/// ring dry is armed again once every buffer came back.
async fn relay_ring(src: Rc<TcpStream>, dst: Rc<TcpStream>, ring: Rc<Ring>, batch: bool) -> u64 {
    let (src_fd, dst_fd) = (src.as_raw_fd(), dst.as_raw_fd());
    let mut pending = VecDeque::new();
    let mut stream = Some(arm(src_fd, &ring));
    let mut eof = false;
    let mut total = 0;
    loop {
        // Everything that arrived; wait only when there is nothing to send.
        std::future::poll_fn(|cx| loop {
            let Some(op) = stream.as_mut() else {
                return Poll::Ready(());
            };
            match op.poll_next(cx) {
                Poll::Ready(Some((res, flags))) => {
                    if op.is_done() {
                        stream = None;
                    }
                    if let Arrival::Eof = ring.arrival(res, flags, &mut pending) {
                        eof = true;
                    }
                }
                Poll::Ready(None) => stream = None,
                Poll::Pending if pending.is_empty() => return Poll::Pending,
                Poll::Pending => return Poll::Ready(()),
            }
        })
        .await;
        if pending.is_empty() {
            if eof {
                break;
            }
            if stream.is_none() {
                stream = Some(arm(src_fd, &ring));
            }
            continue;
        }
        let take = if batch { pending.len().min(MAX_IOV) } else { 1 };
        total += send_pieces(dst_fd, pending.drain(..take).collect()).await as u64;
    }
    dst.shutdown(Shutdown::Write).unwrap();
    total
}

/// Relays `src` to `dst` through a buffer of its own of `size` bytes, a
/// receive and a send at a time, until EOF; then half-closes `dst`.
async fn relay_owned(src: Rc<TcpStream>, dst: Rc<TcpStream>, size: usize, poll_first: bool) -> u64 {
    let mut buf = Vec::with_capacity(size);
    let mut total = 0;
    loop {
        let (res, got) = super::recv(&*src, buf, poll_first).await;
        if res.unwrap() == 0 {
            break;
        }
        let (res, sent) = super::send_all(&*dst, got).await;
        res.unwrap();
        total += sent.len() as u64;
        buf = sent;
    }
    dst.shutdown(Shutdown::Write).unwrap();
    total
}

/// Relays `src` to `dst` as `tcp::relay`'s pump copies today (a compact
/// model of its decisions, with the worker's own ring and operations):
/// a read that waits goes to the provided ring, a multishot receive once a
/// ring buffer's read came back short; a full ring buffer stops the stream
/// and switches to a large owned buffer, and a short owned read back to the
/// ring. `poll_first` is the pump's start (yes for the backend's side).
async fn relay_today(src: Rc<TcpStream>, dst: Rc<TcpStream>, mut poll_first: bool) -> u64 {
    use super::{recv, recv_provided, recv_stream, send_all, Received};
    const LARGE: usize = 256 << 10;
    const SMALL: usize = 512;
    let mut stream_ok = false;
    let mut own: Option<Vec<u8>> = None;
    // The worker's pool of large buffers, as far as one pump uses it.
    let mut pool: Option<Vec<u8>> = None;
    let mut total = 0;
    // After a ring buffer's send: read on at once into a large buffer when
    // it was full, else wait, in a stream.
    let after_ring_send = |full: bool,
                           poll_first: &mut bool,
                           stream_ok: &mut bool,
                           own: &mut Option<Vec<u8>>,
                           pool: &mut Option<Vec<u8>>| {
        *poll_first = !full;
        *stream_ok = !full;
        if full && own.is_none() {
            *own = Some(pool.take().unwrap_or_else(|| Vec::with_capacity(LARGE)));
        }
    };
    loop {
        if !poll_first {
            let buf = own.take().unwrap_or_else(|| Vec::with_capacity(SMALL));
            let (res, buf) = recv(&*src, buf, false).await;
            let n = res.unwrap();
            if n == 0 {
                break;
            }
            let (res, buf) = send_all(&*dst, buf).await;
            res.unwrap();
            total += n as u64;
            let cap = buf.capacity();
            poll_first = n < cap;
            stream_ok = false;
            own = Some(if cap < LARGE && n == cap {
                pool.take().unwrap_or_else(|| Vec::with_capacity(LARGE))
            } else if cap >= LARGE && n < SMALL {
                pool = Some(buf);
                Vec::with_capacity(SMALL)
            } else {
                buf
            });
            continue;
        }
        if let Some(buf) = own.take().filter(|b| b.capacity() >= LARGE) {
            pool = Some(buf);
        }
        if !stream_ok {
            match recv_provided(&*src, true, true)
                .await
                .expect("a ring")
                .unwrap()
            {
                Received::Eof => break,
                Received::RingEmpty => poll_first = false,
                // The ring was replaced (no shrink runs here): again.
                Received::Cancelled => {}
                Received::Bytes(got) => {
                    let (n, full) = (got.len(), got.filled());
                    let (res, _) = send_all(&*dst, got).await;
                    res.unwrap();
                    total += n as u64;
                    after_ring_send(full, &mut poll_first, &mut stream_ok, &mut own, &mut pool);
                }
            }
            continue;
        }
        let mut stream = recv_stream(&*src).expect("a multishot receive");
        let mut stopping = false;
        let mut eof = false;
        while !stream.is_done() {
            match std::future::poll_fn(|cx| stream.poll_next(cx)).await {
                Some(Ok(Received::Bytes(got))) => {
                    let (n, full) = (got.len(), got.filled());
                    // While the send waits, the stream may fill at most
                    // four ring buffers (STREAM_BACKLOG) before it stops.
                    let mut send = send_all(&*dst, got);
                    let (res, _) = std::future::poll_fn(|cx| {
                        if !stopping && stream.poll_backlog(cx, 4).is_ready() {
                            stopping = true;
                            stream.cancel();
                        }
                        std::future::Future::poll(std::pin::Pin::new(&mut send), cx)
                    })
                    .await;
                    res.unwrap();
                    total += n as u64;
                    after_ring_send(full, &mut poll_first, &mut stream_ok, &mut own, &mut pool);
                    if full && !std::mem::replace(&mut stopping, true) {
                        stream.cancel();
                    }
                }
                Some(Ok(Received::Eof)) if stream.is_done() => eof = true,
                Some(Ok(Received::RingEmpty)) => {
                    poll_first = false;
                    if !std::mem::replace(&mut stopping, true) {
                        stream.cancel();
                    }
                }
                Some(Err(err)) if stream.is_done() => panic!("receive failed: {err}"),
                _ => {
                    if !std::mem::replace(&mut stopping, true) {
                        stream.cancel();
                    }
                }
            }
        }
        if eof {
            break;
        }
    }
    dst.shutdown(Shutdown::Write).unwrap();
    total
}

/// One way of relaying, measured.
#[derive(Clone, Copy, Debug)]
enum Lever {
    /// A multishot receive into a ring of `count` buffers of `size` bytes
    /// consumed as `kind` says; `batch`: one `sendmsg` of every piece
    /// waiting, rather than a send per piece.
    Ring {
        kind: Kind,
        count: u16,
        size: usize,
        batch: bool,
    },
    /// A one-shot receive into a buffer of its own, then a send of it.
    Owned { size: usize, poll_first: bool },
    /// Today's relay ([`relay_today`]), on the worker's ring and its
    /// receives, bundles included.
    Today,
}

impl Lever {
    fn name(self) -> String {
        match self {
            Lever::Ring {
                kind,
                count,
                size,
                batch,
            } => format!(
                "{kind:?} ring {count} x {} KiB, {}",
                size >> 10,
                if batch { "sendmsg of all" } else { "send each" }
            ),
            Lever::Owned { size, poll_first } => format!(
                "owned {} KiB RECV/SEND{}",
                size >> 10,
                if poll_first { ", poll first" } else { "" }
            ),
            Lever::Today => "today's relay (2 KiB ring with bundles, then 256 KiB owned)".into(),
        }
    }

    /// The ring this lever receives into, registered with this thread's
    /// io_uring; none for an owned buffer.
    fn ring(self) -> Option<Rc<Ring>> {
        if let Lever::Today = self {
            super::provide_buffers(
                super::PROVIDED_BUFFERS,
                super::FIRST_PROVIDED_BUFFERS,
                super::PROVIDED_BUFFER_SIZE,
            )
            .expect("the worker's ring");
        }
        let Lever::Ring {
            kind, count, size, ..
        } = self
        else {
            return None;
        };
        Some(Ring::new(this_ring_fd(), count, size, kind).expect("a registered ring"))
    }

    /// Relays `src` to `dst` this way, with `ring` from [`Lever::ring`];
    /// `backend` says `src` is the backend's side.
    async fn relay(
        self,
        src: Rc<TcpStream>,
        dst: Rc<TcpStream>,
        ring: Option<Rc<Ring>>,
        backend: bool,
    ) -> u64 {
        match self {
            Lever::Ring { batch, .. } => relay_ring(src, dst, ring.unwrap(), batch).await,
            Lever::Owned { size, poll_first } => relay_owned(src, dst, size, poll_first).await,
            Lever::Today => relay_today(src, dst, backend).await,
        }
    }
}

/// A connected loopback pair ([`crate::testing::pair`]) with TCP_NODELAY on
/// both ends, as ringlb sets it on every socket it relays.
fn pair() -> (std::net::TcpStream, TcpStream) {
    let (peer, ours) = crate::testing::pair();
    peer.set_nodelay(true).unwrap();
    // SAFETY: `ours` is open for the call.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(ours.as_raw_fd()) };
    socket2::SockRef::from(&fd).set_nodelay(true).unwrap();
    (peer, ours)
}

/// This thread's io_uring (io-uring 0.6's `Submitter` does not give its
/// descriptor out).
fn this_ring_fd() -> RawFd {
    tokio_uring::ring_fd().expect("on a tokio-uring runtime")
}

/// CPU seconds of this thread or this process (see `splice.rs`).
fn cpu_seconds(who: libc::c_int) -> f64 {
    // SAFETY: rusage is plain data; getrusage fills the one we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid `who` and a pointer to a live rusage.
    assert_eq!(unsafe { libc::getrusage(who, &mut usage) }, 0);
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// The byte at stream offset `i` of the bulk transfer: a period (251) that
/// no buffer size divides, so bytes out of order do not compare equal.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// Moves `total` bytes (rounded to whole chunks) from a writer thread
/// through `lever` on this thread's ring to a reader thread that checks
/// every byte; returns the relay's CPU seconds (the process's, less the
/// writer's and the reader's) and the wall time.
fn bulk(lever: Lever, total: usize) -> (f64, f64, usize, String) {
    const CHUNK: usize = 251 * 4096;
    let chunks = total / CHUNK;
    tokio_uring::start(async move {
        let (mut src_peer, src) = pair();
        let (mut dst_peer, dst) = pair();
        let ring = lever.ring();
        let writer = std::thread::spawn(move || {
            let chunk = pattern(CHUNK);
            for _ in 0..chunks {
                std::io::Write::write_all(&mut src_peer, &chunk).unwrap();
            }
            drop(src_peer);
            cpu_seconds(libc::RUSAGE_THREAD)
        });
        let reader = std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 20];
            let expected = pattern(251 + buf.len());
            let mut got = 0;
            loop {
                match std::io::Read::read(&mut dst_peer, &mut buf).unwrap() {
                    0 => break,
                    n => {
                        let at = got % 251;
                        assert!(
                            buf[..n] == expected[at..at + n],
                            "bytes out of order near {got}"
                        );
                        got += n;
                    }
                }
            }
            (got, cpu_seconds(libc::RUSAGE_THREAD))
        });
        let (start, cpu0) = (std::time::Instant::now(), cpu_seconds(libc::RUSAGE_SELF));
        let relayed = lever
            .relay(Rc::new(src), Rc::new(dst), ring.clone(), false)
            .await;
        super::release_buffers();
        let per_completion = ring.map_or(String::new(), |r| {
            let n = r.completions.get().max(1) as f64;
            format!(
                ", {:.1} KiB and {:.1} buffers per completion",
                relayed as f64 / n / 1024.0,
                r.pieces.get() as f64 / n
            )
        });
        let writer = writer.join().unwrap();
        let (got, reader) = reader.join().unwrap();
        let cpu = cpu_seconds(libc::RUSAGE_SELF) - cpu0 - writer - reader;
        assert_eq!((relayed as usize, got), (chunks * CHUNK, chunks * CHUNK));
        (cpu, start.elapsed().as_secs_f64(), got, per_completion)
    })
}

/// `conns` clients each make `trips` round trips through `lever` (both
/// directions of each connection relayed by this thread, sharing one ring)
/// to a backend thread: a `req`-byte request, answered with `resp` bytes,
/// every byte checked; returns the relay's CPU seconds and the wall time.
fn ping_pong(lever: Lever, conns: usize, trips: usize, req: usize, resp: usize) -> (f64, f64) {
    tokio_uring::start(async move {
        let ring = lever.ring();
        let mut threads = Vec::new();
        let mut relays = Vec::new();
        let (start, cpu0) = (std::time::Instant::now(), cpu_seconds(libc::RUSAGE_SELF));
        // The bytes of a message: which connection, which trip, where.
        let fill = |buf: &mut [u8], conn: usize, trip: usize| {
            for (i, b) in buf.iter_mut().enumerate() {
                *b = (conn * 31 + trip * 7 + i % 251) as u8;
            }
        };
        for conn in 0..conns {
            let (mut client_peer, client) = pair();
            let (mut backend_peer, backend) = pair();
            threads.push(std::thread::spawn(move || {
                let (mut out, mut want, mut back) = (vec![0; req], vec![0; resp], vec![0; resp]);
                for trip in 0..trips {
                    fill(&mut out, conn, trip);
                    fill(&mut want, conn, trip + 1);
                    std::io::Write::write_all(&mut client_peer, &out).unwrap();
                    std::io::Read::read_exact(&mut client_peer, &mut back).unwrap();
                    assert!(want == back, "connection {conn}, trip {trip}: wrong answer");
                }
                drop(client_peer);
                cpu_seconds(libc::RUSAGE_THREAD)
            }));
            threads.push(std::thread::spawn(move || {
                let (mut got, mut want, mut answer) = (vec![0; req], vec![0; req], vec![0; resp]);
                for trip in 0..trips {
                    std::io::Read::read_exact(&mut backend_peer, &mut got).unwrap();
                    fill(&mut want, conn, trip);
                    assert!(want == got, "connection {conn}, trip {trip}: wrong request");
                    fill(&mut answer, conn, trip + 1);
                    std::io::Write::write_all(&mut backend_peer, &answer).unwrap();
                }
                let n = std::io::Read::read(&mut backend_peer, &mut got).unwrap();
                assert_eq!(n, 0, "EOF after the last request");
                cpu_seconds(libc::RUSAGE_THREAD)
            }));
            let (client, backend) = (Rc::new(client), Rc::new(backend));
            let up = lever.relay(client.clone(), backend.clone(), ring.clone(), false);
            relays.push(tokio_uring::spawn(up));
            let down = lever.relay(backend, client, ring.clone(), true);
            relays.push(tokio_uring::spawn(down));
        }
        drop(ring);
        for relay in relays {
            relay.await.unwrap();
        }
        super::release_buffers();
        let others: f64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
        let cpu = cpu_seconds(libc::RUSAGE_SELF) - cpu0 - others;
        (cpu, start.elapsed().as_secs_f64())
    })
}

/// How many connections may share `lever`'s ring, of `want`: one for an
/// incremental ring. The offset of a piece in an incremental buffer is the
/// sum of the pieces before it, in the order the kernel posted their
/// completions; here each receive's task takes its completions when it is
/// polled, in an order of its own across sockets, so with several sockets
/// filling one buffer the offsets come out wrong (16 connections: wrong
/// echoes within 15 round trips each). Counting in completion order needs
/// a hook in the driver's reap (tokio-uring patch 2 has none).
fn conns_sharing(lever: Lever, want: usize) -> usize {
    match lever {
        Lever::Ring {
            kind: Kind::Incremental,
            ..
        } => 1,
        _ => want,
    }
}

/// The levers measured, in the order they are printed.
fn levers() -> Vec<Lever> {
    let ring = |kind, count, size, batch| Lever::Ring {
        kind,
        count,
        size,
        batch,
    };
    vec![
        Lever::Today,
        // Today's ring path alone: 512 buffers of 2 KiB (the worker's ring
        // as it starts), a send per buffer.
        ring(Kind::Whole, 512, 2 << 10, false),
        // The same, each send taking every piece waiting.
        ring(Kind::Whole, 512, 2 << 10, true),
        ring(Kind::Bundle, 512, 2 << 10, true),
        // The same 1 MiB of ring as 16 buffers of 64 KiB consumed in parts.
        ring(Kind::Incremental, 16, 64 << 10, false),
        ring(Kind::Incremental, 16, 64 << 10, true),
        // Today's bulk path: the large owned buffer (--buffer-size).
        Lever::Owned {
            size: 256 << 10,
            poll_first: false,
        },
    ]
}

#[test]
fn every_lever_relays_exact_bytes_both_ways() {
    for lever in levers() {
        let (_, _, got, _) = bulk(lever, 8 << 20);
        assert!(got > 0, "{}", lever.name());
        for resp in [300, 20_000] {
            ping_pong(lever, conns_sharing(lever, 16), 100, 300, resp);
        }
    }
}

/// Several multishot receives fill one shared ring while writer threads
/// send each socket a stream of odd-sized writes; the completions are taken
/// in the order the kernel posted them (an io_uring of our own, no
/// tokio-uring), and every byte is checked against its socket's stream.
/// This is the order a reap-time mapping would see: a bundle starts where
/// the head counted along the completions says, and an incremental piece
/// where the completions before it on its buffer ended.
#[test]
fn in_posting_order_a_shared_ring_maps_every_byte() {
    const SOCKETS: usize = 8;
    const BYTES: usize = 512 << 10;
    let expected = |sock: usize, at: usize| (sock * 37 + at % 251) as u8;
    for (kind, count, size) in [
        (Kind::Bundle, 64, 2 << 10),
        (Kind::Incremental, 16, 16 << 10),
    ] {
        let mut uring = io_uring::IoUring::new(64).unwrap();
        let ring = Ring::new(uring.as_raw_fd(), count, size, kind).unwrap();
        let mut socks = Vec::new();
        let mut writers = Vec::new();
        for sock in 0..SOCKETS {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let mut peer = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            socks.push(listener.accept().unwrap().0);
            writers.push(std::thread::spawn(move || {
                let mut rng = crate::testing::XorShift(sock as u64 + 1);
                let mut at = 0;
                while at < BYTES {
                    let n = (1 + rng.below(1500)).min(BYTES - at);
                    let chunk: Vec<u8> = (at..at + n).map(|i| expected(sock, i)).collect();
                    std::io::Write::write_all(&mut peer, &chunk).unwrap();
                    at += n;
                    // Paced, so that receives often find a little: pieces
                    // of several sockets then share a buffer.
                    if rng.below(2) == 0 {
                        std::thread::sleep(std::time::Duration::from_micros(20));
                    }
                }
            }));
        }
        let arm = |uring: &mut io_uring::IoUring, sock: usize| {
            let sqe =
                opcode::Recv::new(types::Fd(socks[sock].as_raw_fd()), std::ptr::null_mut(), 0)
                    .buf_group(BGID)
                    .build()
                    .flags(squeue::Flags::BUFFER_SELECT)
                    .user_data(sock as u64);
            let mut prio = RECV_MULTISHOT;
            if kind == Kind::Bundle {
                prio |= RECVSEND_BUNDLE;
            }
            // SAFETY: the receive names a socket that outlives the ring
            // (dropped after it) and a buffer group whose memory does too.
            unsafe { uring.submission().push(&with_ioprio(sqe, prio)).unwrap() };
        };
        for sock in 0..SOCKETS {
            arm(&mut uring, sock);
        }
        let (mut got, mut ended) = ([0usize; SOCKETS], 0);
        let mut head = 0u16;
        let mut pieces = VecDeque::new();
        // Per buffer, the socket whose piece came last, and how often a
        // buffer's next piece was another socket's.
        let (mut last, mut shared) = (vec![usize::MAX; usize::from(count)], 0);
        while ended < SOCKETS {
            uring.submit_and_wait(1).unwrap();
            let cqes: Vec<_> = uring.completion().collect();
            for cqe in cqes {
                let sock = cqe.user_data() as usize;
                let res = completion(&cqe).map(|n| n as u32);
                if let (Kind::Bundle, Ok(n @ 1..), Some(bid)) =
                    (kind, &res, cqueue::buffer_select(cqe.flags()))
                {
                    let first = ring.pos_of.borrow()[usize::from(bid)];
                    assert_eq!(first, head, "a bundle starts at the head counted in order");
                    head = head.wrapping_add(n.div_ceil(size as u32) as u16);
                }
                match ring.arrival(res, cqe.flags(), &mut pieces) {
                    Arrival::Eof => ended += 1,
                    Arrival::NoBuffers | Arrival::Bytes if !cqueue::more(cqe.flags()) => {
                        arm(&mut uring, sock)
                    }
                    _ => {}
                }
                for piece in pieces.drain(..) {
                    // SAFETY: the piece's bytes, in its buffer, which stays
                    // out until the piece is dropped.
                    let bytes =
                        unsafe { std::slice::from_raw_parts(piece.ptr(), piece.len as usize) };
                    for (i, &b) in bytes.iter().enumerate() {
                        assert_eq!(
                            b,
                            expected(sock, got[sock] + i),
                            "{kind:?}: socket {sock}, byte {}",
                            got[sock] + i
                        );
                    }
                    got[sock] += bytes.len();
                    let bid = usize::from(piece.bid);
                    shared += usize::from(piece.off > 0 && last[bid] != sock);
                    last[bid] = sock;
                }
            }
        }
        for writer in writers {
            writer.join().unwrap();
        }
        assert_eq!(got, [BYTES; SOCKETS]);
        // The mapping was put to the test: bundles of several buffers, and
        // buffers holding several sockets' pieces.
        match kind {
            Kind::Incremental => assert!(shared > 0, "no buffer held two sockets' pieces"),
            _ => assert!(ring.pieces.get() > ring.completions.get(), "no bundle"),
        }
        // Pieces and ring go before the io_uring they are registered with.
        drop(ring);
        drop(uring);
    }
}

/// The median, lowest and highest of `samples`.
fn spread(mut samples: Vec<f64>) -> (f64, f64, f64) {
    samples.sort_by(f64::total_cmp);
    (
        samples[samples.len() / 2],
        samples[0],
        samples[samples.len() - 1],
    )
}

/// Prints each lever's relay CPU per GB moved one way, and per 100k round
/// trips of a 128-byte request and its answer: the median, lowest and
/// highest of [`ROUNDS`] samples, the levers taking turns within each round
/// so that other load on the machine falls on all of them alike. See
/// docs/performance.md, "Copy path levers".
#[test]
#[ignore = "a measurement: cargo test --release --lib -- --ignored --nocapture copy_path_levers"]
fn copy_path_levers_cpu() {
    const ROUNDS: usize = 5;
    const BULK: usize = 1 << 30;
    const TRIPS: usize = 20_000;
    let bulk_levers = levers();
    let mut cpu = vec![Vec::new(); bulk_levers.len()];
    let mut rate = vec![Vec::new(); bulk_levers.len()];
    for _ in 0..ROUNDS {
        for (i, &lever) in bulk_levers.iter().enumerate() {
            let (secs_cpu, secs, got, _) = bulk(lever, BULK);
            let gb = got as f64 / 1e9;
            cpu[i].push(secs_cpu / gb);
            rate[i].push(gb * 8.0 / secs);
        }
    }
    for (i, lever) in bulk_levers.iter().enumerate() {
        let (med, lo, hi) = spread(cpu[i].clone());
        let (gbit, _, _) = spread(rate[i].clone());
        println!(
            "bulk | {} | {med:.3} ({lo:.3}-{hi:.3}) CPU s per GB | {gbit:.1} Gbit/s",
            lever.name()
        );
    }
    // Request/response: today's relay, the levers that could replace its
    // ring path, and an owned buffer with a poll first for reference.
    let rr_levers: Vec<Lever> = levers()
        .into_iter()
        .filter_map(|lever| match lever {
            Lever::Owned { .. } => Some(Lever::Owned {
                size: 256 << 10,
                poll_first: true,
            }),
            Lever::Ring { batch: false, .. }
            | Lever::Ring {
                kind: Kind::Whole, ..
            } => None,
            lever => Some(lever),
        })
        .collect();
    for (resp, conns) in [
        (128, 1),
        (128, 8),
        (4 << 10, 8),
        (16 << 10, 1),
        (16 << 10, 8),
        (64 << 10, 8),
    ] {
        let levers: Vec<Lever> = rr_levers
            .iter()
            .copied()
            .filter(|&lever| conns_sharing(lever, conns) == conns)
            .collect();
        let mut cpu = vec![Vec::new(); levers.len()];
        let mut rate = vec![Vec::new(); levers.len()];
        for _ in 0..ROUNDS {
            for (i, &lever) in levers.iter().enumerate() {
                let (secs_cpu, secs) = ping_pong(lever, conns, TRIPS / conns, 128, resp);
                cpu[i].push(secs_cpu * 100_000.0 / TRIPS as f64);
                rate[i].push(TRIPS as f64 / secs);
            }
        }
        for (i, lever) in levers.iter().enumerate() {
            let (med, lo, hi) = spread(cpu[i].clone());
            let (trips, _, _) = spread(rate[i].clone());
            println!(
                "request/response 128 B -> {resp} B, {conns} conn | {} | {med:.3} ({lo:.3}-{hi:.3}) CPU s per 100k round trips | {trips:.0} trips/s",
                lever.name()
            );
        }
    }
}
