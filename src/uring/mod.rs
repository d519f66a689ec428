//! Every raw io_uring operation and every `unsafe` block of ringlb, in one
//! audited module; the rest of the crate is `#![deny(unsafe_code)]`. It
//! holds what tokio-uring's `TcpStream` does not offer. A connect that can
//! be cut off: the socket is ours, so a timeout shuts it down, which
//! completes the pending connect at once (a merely dropped io_uring connect
//! would keep its socket until the kernel gave up on the SYN, minutes). The
//! relay's socket operations: a receive (IORING_OP_RECV) that can wait for
//! readiness before it tries, used when the last read drained the socket so
//! the kernel skips a receive that would only fail with EAGAIN; and a send
//! (IORING_OP_SEND); both reach the socket more directly than the generic
//! read and write tokio-uring uses. These are futures written by hand
//! ([`Recv`], [`RecvProvided`], [`SendAll`]), so a task waiting on one holds
//! only the operation in flight. A multishot receive ([`RecvStream`]): armed
//! once, it completes at every arrival into a buffer of the worker's
//! provided ring. The worker's table of registered files ([`FixedPair`]), so
//! the relay names its two sockets by slot ([`Sock`]) and the kernel skips a
//! descriptor lookup per operation. And the socket's local address
//! (getsockname), to tell a backend in a PROXY protocol header which address
//! the client connected to.
//!
//! A cancellation of every operation on one socket ([`cancel_all_on`]),
//! which is how a worker stops accepting on a listener that another process
//! shares during a hot upgrade.
//!
//! Two more `unsafe` calls live here, being the crate's others: [`trim_heap`]
//! (libc's `malloc_trim`), which hands memory freed after a burst back to the
//! OS, and [`adopt_received`], which takes ownership of the descriptors a
//! hot upgrade receives over its control socket.
//!
//! Each operation hands the kernel pointers into memory it moves into the
//! driver with the operation (a buffer, a socket address, the socket
//! itself), so that memory outlives the operation even if its future is
//! dropped.

#![allow(unsafe_code)]

/// Gives the heap's free pages back to the OS (glibc's `malloc_trim`), after
/// a burst of connections freed their memory: glibc keeps freed memory in its
/// arenas otherwise, so RSS would stay at the burst's peak. Walks every
/// arena, so it is for after a burst, not for every connection.
pub fn trim_heap() {
    // SAFETY: malloc_trim takes no pointers and only rearranges the
    // allocator's own free lists under its own locks; any thread may call it.
    unsafe {
        libc::malloc_trim(0);
    }
}

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use io_uring::{cqueue, opcode, squeue, types};
use socket2::{Domain, Protocol, SockAddr, SockRef, Socket, Type};
use tokio_uring::net::TcpStream;
use tokio_uring::{
    InFlightMultishot, InFlightOneshot, MultishotData, OneshotOutputTransform,
    UnsubmittedMultishot, UnsubmittedOneshot,
};

/// Why one connect attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The OS refused or failed the connect.
    #[error("connect to {addr} failed: {source}")]
    Io {
        /// The backend.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// No answer within the connect timeout.
    #[error("connect to {addr} timed out after {timeout:?}")]
    Timeout {
        /// The backend.
        addr: SocketAddr,
        /// The limit that passed.
        timeout: Duration,
    },
}

impl ConnectError {
    /// Whether the failure is this host's, not the backend's: out of
    /// descriptors, buffers, memory or local ports. Such a failure says
    /// nothing about the backend's health.
    pub fn is_local(&self) -> bool {
        match self {
            ConnectError::Io { source, .. } => matches!(
                source.raw_os_error(),
                Some(
                    libc::EMFILE
                        | libc::ENFILE
                        | libc::ENOBUFS
                        | libc::ENOMEM
                        | libc::EADDRNOTAVAIL
                )
            ),
            ConnectError::Timeout { .. } => false,
        }
    }
}

/// Connects to `addr` within `timeout` with an io_uring connect, TCP_NODELAY
/// set. On timeout the socket is shut down, which completes the pending
/// connect in the kernel (dropping it would not), and then closed.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ConnectError> {
    let io_err = |source| ConnectError::Io { addr, source };
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.cloexec(),
        Some(Protocol::TCP),
    )
    .map_err(io_err)?;
    socket.set_nodelay(true).map_err(io_err)?;
    let fd = socket.as_raw_fd();
    // The socket and the address live in the driver with the operation until
    // the kernel is done with them, so the descriptor cannot close (and its
    // number be reused) under a connect still in flight.
    let target = Box::new(Target {
        addr: SockAddr::from(addr),
        socket,
    });
    let sqe = opcode::Connect::new(types::Fd(fd), target.addr.as_ptr(), target.addr.len()).build();
    let mut op = UnsubmittedOneshot::new(target, ConnectDone, sqe).submit();
    let (res, target) = tokio::select! {
        done = &mut op => done,
        _ = tokio::time::sleep(timeout) => {
            {
                // SAFETY: `op` owns the socket and has not handed it back, so
                // the driver holds it and `fd` is open; the borrow ends in
                // this block, before `op` can return the socket.
                let fd = unsafe { BorrowedFd::borrow_raw(fd) };
                let _ = SockRef::from(&fd).shutdown(Shutdown::Both);
            }
            let _ = op.await;
            return Err(ConnectError::Timeout { addr, timeout });
        }
    };
    res.map_err(io_err)?;
    Ok(TcpStream::from_std(target.socket.into()))
}

/// What a connect hands the driver: the address the kernel reads, and the
/// socket, kept open for as long as the operation runs.
struct Target {
    /// Where to connect.
    addr: SockAddr,
    /// The connecting socket.
    socket: Socket,
}

/// Turns a connect completion into its result and hands the socket back.
struct ConnectDone;

impl OneshotOutputTransform for ConnectDone {
    type Output = (io::Result<()>, Box<Target>);
    type StoredData = Box<Target>;

    fn transform_oneshot_output(self, target: Box<Target>, cqe: cqueue::Entry) -> Self::Output {
        (completion(&cqe).map(drop), target)
    }
}

/// The address `stream` is bound to on this host.
pub fn local_addr(stream: &TcpStream) -> io::Result<SocketAddr> {
    // SAFETY: `stream` owns this descriptor and outlives the borrow, which
    // ends with this call.
    let fd = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
    SockRef::from(&fd)
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("not an IP socket"))
}

/// A socket as the relay's operations name it: by its descriptor, or by its
/// slot in this thread's table of registered files ([`FixedPair`]), which
/// spares the kernel looking the descriptor up (`fget`, `fput`, two atomic
/// counts on a shared cache line) on every operation. Borrows the stream, so
/// the descriptor stays open while it is named.
#[derive(Clone, Copy)]
pub struct Sock<'a> {
    /// The descriptor, for what is not an io_uring operation (shutdown).
    fd: RawFd,
    /// Its slot in the registered table, or [`NO_SLOT`].
    slot: u32,
    /// The stream the descriptor belongs to.
    stream: std::marker::PhantomData<&'a TcpStream>,
}

/// The slot of a socket that is not registered.
const NO_SLOT: u32 = u32::MAX;

impl<'a> From<&'a TcpStream> for Sock<'a> {
    fn from(stream: &'a TcpStream) -> Self {
        Sock {
            fd: stream.as_raw_fd(),
            slot: NO_SLOT,
            stream: std::marker::PhantomData,
        }
    }
}

impl Sock<'_> {
    /// The SQE `build` makes for a target descriptor, aimed at this socket:
    /// its slot, flagged as one (IOSQE_FIXED_FILE), when it has one.
    fn sqe(self, build: impl FnOnce(types::Fd) -> squeue::Entry) -> squeue::Entry {
        if self.slot == NO_SLOT {
            build(types::Fd(self.fd))
        } else {
            build(types::Fd(self.slot as RawFd)).flags(squeue::Flags::FIXED_FILE)
        }
    }

    /// Shuts the socket down, as `TcpStream::shutdown` does.
    pub fn shutdown(self, how: Shutdown) -> io::Result<()> {
        // SAFETY: the descriptor belongs to a stream borrowed for as long as
        // this `Sock` lives, so it is open; the borrow ends with this call.
        let fd = unsafe { BorrowedFd::borrow_raw(self.fd) };
        SockRef::from(&fd).shutdown(how)
    }
}

thread_local! {
    /// This thread's table of registered files, once [`register_file_table`]
    /// set it up.
    static FILES: std::cell::RefCell<Option<FileTable>> = const { std::cell::RefCell::new(None) };
}

/// Which pairs of slots of the registered table are free: every pair from
/// `next` on, and those in `free`, handed back. Grows only as far as the
/// most connections relayed at once, not the table's size.
struct FileTable {
    /// Pairs, by their first slot, that were used and are free again.
    free: Vec<u32>,
    /// The first slot of the first pair never used.
    next: u32,
    /// Slots in the table.
    slots: u32,
}

/// Registers a sparse table of `slots` files with this thread's io_uring
/// (IORING_REGISTER_FILES2, kernel 5.19+; at most the open-file limit), for
/// [`FixedPair`]. Call on the worker's thread, inside its runtime.
pub fn register_file_table(slots: u32) -> io::Result<()> {
    tokio_uring::with_submitter(|s| s.register_files_sparse(slots))
        .unwrap_or_else(|| Err(io::Error::other("not on a tokio-uring runtime")))?;
    FILES.with(|f| {
        *f.borrow_mut() = Some(FileTable {
            free: Vec::new(),
            next: 0,
            slots,
        })
    });
    Ok(())
}

/// Connections whose sockets this thread's table holds now (pairs in use),
/// if it has one.
fn pairs_in_use() -> Option<u32> {
    FILES.with(|f| {
        f.borrow()
            .as_ref()
            .map(|t| (t.next / 2).saturating_sub(t.free.len() as u32))
    })
}

/// Forgets this thread's table (it goes with its io_uring).
pub fn release_file_table() {
    FILES.with(|f| f.borrow_mut().take());
}

/// Both sockets of a relayed connection, registered in this thread's table
/// of files for as long as this lives: one `io_uring_register` call to add
/// them, and one IORING_OP_FILES_UPDATE, sent with the next submission, to
/// remove them. The pair of slots is free again only once the kernel has
/// removed them, so a later pair cannot be clobbered by an earlier removal.
pub struct FixedPair<'a> {
    /// The first of the two slots.
    slot: u32,
    /// The sockets.
    socks: (&'a TcpStream, &'a TcpStream),
}

impl<'a> FixedPair<'a> {
    /// Registers `a` and `b`; `None` when this thread has no table, or no
    /// free pair of slots in it, or the kernel refuses: then name the
    /// sockets by descriptor.
    pub fn register(a: &'a TcpStream, b: &'a TcpStream) -> Option<Self> {
        let slot = FILES.with(|f| {
            let mut f = f.borrow_mut();
            let table = f.as_mut()?;
            table.free.pop().or_else(|| {
                (table.next + 2 <= table.slots).then(|| {
                    table.next += 2;
                    table.next - 2
                })
            })
        })?;
        let fds = [a.as_raw_fd(), b.as_raw_fd()];
        match tokio_uring::with_submitter(|s| s.register_files_update(slot, &fds)) {
            Some(Ok(2)) => Some(FixedPair {
                slot,
                socks: (a, b),
            }),
            _ => {
                // Whatever it took is replaced by the next pair to use it.
                free_pair(slot);
                None
            }
        }
    }

    /// The two sockets, named by their slots.
    pub fn socks(&self) -> (Sock<'_>, Sock<'_>) {
        let named = |stream, slot| Sock {
            slot,
            ..Sock::from(stream)
        };
        (
            named(self.socks.0, self.slot),
            named(self.socks.1, self.slot + 1),
        )
    }
}

impl Drop for FixedPair<'_> {
    fn drop(&mut self) {
        let removal = Box::new(Removal {
            fds: [-1, -1],
            slot: self.slot,
        });
        let sqe = opcode::FilesUpdate::new(removal.fds.as_ptr(), 2)
            .offset(self.slot as i32)
            .build();
        // Dropped at once: the driver keeps the removal until the kernel
        // completes it, and then drops it, which frees the pair. The fds
        // array is in the box, so it does not move meanwhile.
        drop(UnsubmittedOneshot::new(removal, RemovalDone, sqe).submit());
    }
}

/// A removal of a pair of slots, in flight.
struct Removal {
    /// What the slots become: empty.
    fds: [RawFd; 2],
    /// The first slot.
    slot: u32,
}

impl Drop for Removal {
    fn drop(&mut self) {
        free_pair(self.slot);
    }
}

/// Hands the pair of slots starting at `slot` back to this thread's table.
fn free_pair(slot: u32) {
    // The driver may drop a removal as the thread ends, after the table.
    let _ = FILES.try_with(|f| {
        if let Some(table) = f.borrow_mut().as_mut() {
            table.free.push(slot);
        }
    });
}

/// The completion of a removal: nothing to report (a slot the kernel could
/// not empty is overwritten by the next registration in it).
struct RemovalDone;

impl OneshotOutputTransform for RemovalDone {
    type Output = ();
    type StoredData = Box<Removal>;

    fn transform_oneshot_output(self, _: Box<Removal>, _: cqueue::Entry) {}
}

/// `IORING_RECVSEND_POLL_FIRST` (linux/io_uring.h, kernel 5.19+), a flag in
/// the SQE's `ioprio` field: arm the readiness poll at once instead of first
/// trying a receive that is expected to find nothing.
const RECVSEND_POLL_FIRST: u16 = 1;

thread_local! {
    /// Whether this thread's ring takes receive flags; cleared by the first
    /// receive a kernel older than 5.19 refuses for its flags (EINVAL).
    static RECV_FLAGS_OK: Cell<bool> = const { Cell::new(true) };
}

/// Receives into `buf`, from its start and up to its capacity, like
/// `TcpStream::read`; resolves to the byte count (0 at EOF) with the buffer,
/// its length set to the bytes received. With `poll_first` the kernel waits
/// until the socket is readable before it tries: cheaper when the socket is
/// known to be empty, dearer (an extra round through the ring) when it is
/// not. Kernels without the flag get plain receives.
pub fn recv<'a>(sock: impl Into<Sock<'a>>, buf: Vec<u8>, poll_first: bool) -> Recv<'a> {
    let flags = if poll_first && RECV_FLAGS_OK.get() {
        RECVSEND_POLL_FIRST
    } else {
        0
    };
    recv_with(sock.into(), buf, flags)
}

/// [`recv`] with the SQE's receive flags (`ioprio`) given.
fn recv_with(sock: Sock<'_>, buf: Vec<u8>, flags: u16) -> Recv<'_> {
    Recv {
        sock,
        flags,
        op: recv_once(sock, buf, flags),
    }
}

/// The receive [`recv`] started. The operations of the relay are futures
/// written by hand, not `async fn`s: a task waiting on one holds only the
/// operation in flight (a `Vec` or ring handle and its slot in the driver),
/// not an `async fn`'s copies of its arguments and of the 64-byte SQE, and
/// every idle connection's task waits on two of them.
pub struct Recv<'a> {
    /// The socket, for a retry without flags.
    sock: Sock<'a>,
    /// The receive flags the operation in flight was given.
    flags: u16,
    /// The receive in flight.
    op: InFlightOneshot<Vec<u8>, RecvDone>,
}

impl Future for Recv<'_> {
    type Output = (io::Result<usize>, Vec<u8>);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            let (res, buf) = ready!(Pin::new(&mut this.op).poll(cx));
            match res {
                // A kernel older than 5.19 refuses the flags: this thread
                // stops passing them, and the receive is retried without.
                Err(err) if this.flags != 0 && err.raw_os_error() == Some(libc::EINVAL) => {
                    RECV_FLAGS_OK.set(false);
                    this.flags = 0;
                    this.op = recv_once(this.sock, buf, 0);
                }
                res => return Poll::Ready((res, buf)),
            }
        }
    }
}

/// One IORING_OP_RECV with receive flags `flags`, submitted.
fn recv_once(sock: Sock<'_>, mut buf: Vec<u8>, flags: u16) -> InFlightOneshot<Vec<u8>, RecvDone> {
    let len = u32::try_from(buf.capacity()).unwrap_or(u32::MAX);
    let mut sqe = sock.sqe(|fd| opcode::Recv::new(fd, buf.as_mut_ptr(), len).build());
    if flags != 0 {
        sqe = with_ioprio(sqe, flags);
    }
    // The buffer lives in the driver with the operation until the kernel is
    // done with it; moving the `Vec` does not move its bytes.
    UnsubmittedOneshot::new(buf, RecvDone, sqe).submit()
}

/// Bytes a send can take from memory that stays put while the send runs
/// (it moves into the driver with the operation).
pub trait SendBuf: Unpin + 'static {
    /// The bytes to send.
    fn bytes(&self) -> &[u8];
}

impl SendBuf for Vec<u8> {
    fn bytes(&self) -> &[u8] {
        self
    }
}

/// Sends all of `buf` (its length, not its capacity) as IORING_OP_SEND, one
/// send after another until the kernel has taken every byte; hands the
/// buffer back either way.
pub fn send_all<'a, B: SendBuf>(sock: impl Into<Sock<'a>>, buf: B) -> SendAll<'a, B> {
    let sock = sock.into();
    let state = if buf.bytes().is_empty() {
        Sending::Nothing(Some(buf))
    } else {
        Sending::InFlight(send_from(sock, buf, 0))
    };
    SendAll {
        sock,
        sent: 0,
        state,
    }
}

/// The sends [`send_all`] started.
pub struct SendAll<'a, B: SendBuf> {
    /// The socket, for the next send of a partly sent buffer.
    sock: Sock<'a>,
    /// Bytes the kernel has taken so far.
    sent: usize,
    /// The send in flight, or the empty buffer there was nothing to send of.
    state: Sending<B>,
}

/// Where a [`SendAll`] is.
enum Sending<B: SendBuf> {
    /// A send is in flight.
    InFlight(InFlightOneshot<B, SendDone<B>>),
    /// The buffer was empty: done, once it is handed back.
    Nothing(Option<B>),
}

impl<B: SendBuf> Future for SendAll<'_, B> {
    type Output = (io::Result<()>, B);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            let op = match &mut this.state {
                Sending::InFlight(op) => op,
                Sending::Nothing(buf) => {
                    return Poll::Ready((Ok(()), buf.take().expect("polled after completion")));
                }
            };
            let (res, buf) = ready!(Pin::new(op).poll(cx));
            match res {
                Ok(0) => return Poll::Ready((Err(io::ErrorKind::WriteZero.into()), buf)),
                Ok(n) => {
                    this.sent += n;
                    if this.sent >= buf.bytes().len() {
                        return Poll::Ready((Ok(()), buf));
                    }
                    this.state = Sending::InFlight(send_from(this.sock, buf, this.sent));
                }
                Err(err) => return Poll::Ready((Err(err), buf)),
            }
        }
    }
}

/// One IORING_OP_SEND of `buf`'s bytes from `sent` on, submitted.
fn send_from<B: SendBuf>(sock: Sock<'_>, buf: B, sent: usize) -> InFlightOneshot<B, SendDone<B>> {
    let rest = &buf.bytes()[sent..];
    let len = u32::try_from(rest.len()).unwrap_or(u32::MAX);
    let sqe = sock.sqe(|fd| {
        opcode::Send::new(fd, rest.as_ptr(), len)
            .flags(libc::MSG_NOSIGNAL)
            .build()
    });
    // The buffer lives in the driver with the operation; its bytes do not
    // move with it.
    UnsubmittedOneshot::new(buf, SendDone::new(), sqe).submit()
}

/// Sets the `ioprio` field of `sqe`, which io-uring 0.6's `Recv` builder does
/// not expose (its `RecvMsg` does, but costs a msghdr copy per receive).
fn with_ioprio(sqe: squeue::Entry, ioprio: u16) -> squeue::Entry {
    // SAFETY: `squeue::Entry` is `#[repr(C)]` around the kernel's 64-byte
    // `io_uring_sqe` (transmute checks the size), which starts with
    // `opcode: u8, flags: u8, ioprio: u16`; any bit pattern is a valid SQE
    // to Rust, and the kernel validates the flags (a test below checks it
    // reads ours).
    let mut raw: [u8; 64] = unsafe { std::mem::transmute(sqe) };
    raw[2..4].copy_from_slice(&ioprio.to_ne_bytes());
    // SAFETY: as above, back to the type it came from.
    unsafe { std::mem::transmute::<[u8; 64], squeue::Entry>(raw) }
}

/// Cancels every operation this thread's ring has in flight on the socket
/// `fd` refers to (IORING_OP_ASYNC_CANCEL matching by file, kernel 5.19+),
/// and waits until the kernel took the cancellation in; returns how many it
/// found. Each cancelled operation completes with ECANCELED, while one that
/// had already completed (an accept that took a client) keeps its result.
/// This is how a worker stops accepting on a listener it shares with another
/// process without touching the socket itself: shutting it down would reset
/// every client queued on it, for both processes. The caller keeps `fd` open
/// until this returns, so its number cannot be reused meanwhile.
pub async fn cancel_all_on(fd: RawFd) -> io::Result<usize> {
    let sqe = opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fd(fd)).all()).build();
    match UnsubmittedOneshot::new((), CancelDone, sqe).submit().await {
        Err(err) if err.raw_os_error() == Some(libc::ENOENT) => Ok(0),
        res => res,
    }
}

/// Turns a cancellation's completion into the number of operations it hit.
struct CancelDone;

impl OneshotOutputTransform for CancelDone {
    type Output = io::Result<usize>;
    type StoredData = ();

    fn transform_oneshot_output(self, (): (), cqe: cqueue::Entry) -> Self::Output {
        completion(&cqe)
    }
}

/// Takes ownership of descriptors the kernel installed in this process for
/// a message received with SCM_RIGHTS, so they are closed when dropped.
pub fn adopt_received(fds: &[RawFd]) -> Vec<OwnedFd> {
    fds.iter()
        // SAFETY: recvmsg(2) just installed each of these descriptors in our
        // table for the message we read; nothing else in the process knows
        // their numbers, so each gets exactly one owner, here.
        .map(|&fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect()
}

/// A completion's result: a count, or the error the kernel returned as a
/// negative errno.
fn completion(cqe: &cqueue::Entry) -> io::Result<usize> {
    match cqe.result() {
        res if res < 0 => Err(io::Error::from_raw_os_error(-res)),
        n => Ok(n as usize),
    }
}

/// Turns a receive completion into its result and hands the buffer back.
struct RecvDone;

impl OneshotOutputTransform for RecvDone {
    type Output = (io::Result<usize>, Vec<u8>);
    type StoredData = Vec<u8>;

    fn transform_oneshot_output(self, mut buf: Vec<u8>, cqe: cqueue::Entry) -> Self::Output {
        let res = completion(&cqe);
        if let Ok(n) = res {
            // SAFETY: the kernel wrote `n` bytes, at most the length we gave
            // it (the capacity), at the start of the buffer.
            unsafe { buf.set_len(n.min(buf.capacity())) };
        }
        (res, buf)
    }
}

/// Turns a send completion into its byte count and hands the buffer back.
struct SendDone<B>(std::marker::PhantomData<B>);

impl<B> SendDone<B> {
    fn new() -> Self {
        SendDone(std::marker::PhantomData)
    }
}

impl<B: SendBuf> OneshotOutputTransform for SendDone<B> {
    type Output = (io::Result<usize>, B);
    type StoredData = B;

    fn transform_oneshot_output(self, buf: B, cqe: cqueue::Entry) -> Self::Output {
        (completion(&cqe), buf)
    }
}

/// The buffer group id of every worker's provided-buffer ring (one ring per
/// io_uring, so one id is enough).
const BUF_GROUP: u16 = 0;

thread_local! {
    /// This thread's provided-buffer ring, once [`provide_buffers`] set it up.
    static PROVIDED: std::cell::RefCell<Option<Rc<BufRing>>> = const { std::cell::RefCell::new(None) };
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
/// one at a time never touch more than the first few.
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
}

impl BufRing {
    /// Layout of the entries.
    fn entries_layout(count: u16) -> std::alloc::Layout {
        let bytes = usize::from(count) * std::mem::size_of::<types::BufRingEntry>();
        std::alloc::Layout::from_size_align(bytes, 4096).expect("a valid layout")
    }

    /// Layout of the buffers.
    fn memory_layout(count: u16, size: usize) -> std::alloc::Layout {
        std::alloc::Layout::from_size_align(usize::from(count) * size, 4096)
            .expect("a valid layout")
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
        for bid in provided..provided + more {
            self.give_back(bid);
        }
        self.provided.set(provided + more);
    }

    /// Hands buffer `bid` to the kernel again.
    fn give_back(&self, bid: u16) {
        let tail = self.tail.get();
        let mask = self.count - 1;
        // SAFETY: `entries` holds `count` entries (allocated in
        // provide_buffers) and `tail & mask` is below `count`; the kernel
        // reads entries only between its head and the tail we publish, and
        // this slot is past the published tail until the store below.
        unsafe {
            let entry = &mut *self.entries.add(usize::from(tail & mask));
            entry.set_addr(self.memory.add(usize::from(bid) * self.size) as u64);
            entry.set_len(self.size as u32);
            entry.set_bid(bid);
        }
        let tail = tail.wrapping_add(1);
        self.tail.set(tail);
        // SAFETY: the ring's tail is the `resv` field of its first entry,
        // which lives as long as the ring; the kernel reads it, so it is
        // published with a release store, after the entry above.
        unsafe {
            let tail_ptr =
                types::BufRingEntry::tail(self.entries) as *const std::sync::atomic::AtomicU16;
            (*tail_ptr).store(tail, std::sync::atomic::Ordering::Release);
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        let _ = tokio_uring::with_submitter(|s| s.unregister_buf_ring(BUF_GROUP));
        // SAFETY: both were allocated in provide_buffers with these layouts;
        // the ring is unregistered (or its io_uring is gone), so the kernel
        // no longer writes to them.
        unsafe {
            std::alloc::dealloc(self.entries.cast(), Self::entries_layout(self.count));
            std::alloc::dealloc(self.memory, Self::memory_layout(self.count, self.size));
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
    if !count.is_power_of_two() || size == 0 || size > u32::MAX as usize {
        return Err(io::Error::other(
            "a ring of a power of two of non-empty buffers",
        ));
    }
    let first = first.clamp(1, count);
    // SAFETY: non-zero sizes (count >= 1, size >= 1); zeroed, so every entry
    // and the tail start at 0.
    let entries = unsafe { std::alloc::alloc_zeroed(BufRing::entries_layout(count)) };
    let memory = unsafe { std::alloc::alloc(BufRing::memory_layout(count, size)) };
    if entries.is_null() || memory.is_null() {
        return Err(io::ErrorKind::OutOfMemory.into());
    }
    let ring = BufRing {
        entries: entries.cast(),
        count,
        provided: Cell::new(first),
        size,
        memory,
        tail: Cell::new(0),
    };
    // SAFETY: `entries` is page-aligned, zeroed and sized for `count`
    // entries, and stays allocated until the ring is dropped, which
    // unregisters it first.
    let registered = tokio_uring::with_submitter(|s| unsafe {
        s.register_buf_ring(entries as u64, count, BUF_GROUP)
    })
    .unwrap_or_else(|| Err(io::Error::other("not on a tokio-uring runtime")));
    if let Err(err) = registered {
        // Not registered: dropping it must not unregister another ring.
        // SAFETY: as in Drop; the kernel never saw these.
        unsafe {
            std::alloc::dealloc(entries, BufRing::entries_layout(count));
            std::alloc::dealloc(memory, BufRing::memory_layout(count, size));
        }
        std::mem::forget(ring);
        return Err(err);
    }
    for bid in 0..first {
        ring.give_back(bid);
    }
    PROVIDED.with(|p| *p.borrow_mut() = Some(Rc::new(ring)));
    Ok(())
}

/// Drops this thread's provided-buffer ring, before its runtime goes.
pub fn release_buffers() {
    PROVIDED.with(|p| p.borrow_mut().take());
}

/// A buffer of the provided ring that a receive filled; handed back to the
/// kernel when dropped.
#[derive(Debug)]
pub struct Provided {
    /// Its ring, kept alive while the buffer is out.
    ring: Rc<BufRing>,
    /// Its id in the ring.
    bid: u16,
    /// Bytes received into it.
    len: usize,
}

impl Provided {
    /// Bytes received.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Bytes it can hold: a receive that filled it may have left more.
    pub fn capacity(&self) -> usize {
        self.ring.size
    }
}

impl SendBuf for Provided {
    fn bytes(&self) -> &[u8] {
        // SAFETY: buffer `bid` is `size` bytes at `memory + bid * size`, the
        // kernel wrote `len <= size` bytes there and does not touch it again
        // until `give_back(bid)`, which only Drop calls.
        unsafe {
            std::slice::from_raw_parts(
                self.ring.memory.add(usize::from(self.bid) * self.ring.size),
                self.len,
            )
        }
    }
}

impl Drop for Provided {
    fn drop(&mut self) {
        self.ring.give_back(self.bid);
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
}

/// Receives into a buffer of this thread's provided ring, which the kernel
/// picks when data arrives; with `poll_first` it waits for readiness before
/// it tries. Resolves to `None` when there is no ring on this thread (or the
/// kernel refuses the receive's flags): then receive into a buffer of one's
/// own, as without a ring.
pub fn recv_provided<'a>(sock: impl Into<Sock<'a>>, poll_first: bool) -> RecvProvided {
    let sock = sock.into();
    let poll_first = poll_first && RECV_FLAGS_OK.get();
    RecvProvided {
        poll_first,
        op: PROVIDED
            .with(|p| p.borrow().clone())
            .map(|ring| recv_provided_once(sock, ring, poll_first)),
    }
}

/// The receive [`recv_provided`] started.
pub struct RecvProvided {
    /// Whether it was to poll first.
    poll_first: bool,
    /// The receive in flight; none without a ring.
    op: Option<InFlightOneshot<Rc<BufRing>, ProvidedDone>>,
}

impl Future for RecvProvided {
    type Output = Option<io::Result<Received>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Some(op) = &mut this.op else {
            return Poll::Ready(None);
        };
        let (res, bid, ring) = ready!(Pin::new(op).poll(cx));
        this.op = None;
        Poll::Ready(match received(res, bid, &ring) {
            // A kernel that refuses the receive flags: the caller's own
            // receive learns that and stops passing them.
            Err(err) if this.poll_first && err.raw_os_error() == Some(libc::EINVAL) => None,
            res => Some(res),
        })
    }
}

/// What a receive into `ring` brought, from its result and the id of the
/// buffer the kernel filled, if it took one; a buffer that holds no bytes
/// goes back to the ring at once.
fn received(res: io::Result<usize>, bid: Option<u16>, ring: &Rc<BufRing>) -> io::Result<Received> {
    match (res, bid) {
        (Ok(n), Some(bid)) if n > 0 => Ok(Received::Bytes(Provided {
            ring: ring.clone(),
            bid,
            len: n.min(ring.size),
        })),
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

/// One IORING_OP_RECV into a buffer the kernel picks from `ring`, polling
/// first if `poll_first`, submitted.
fn recv_provided_once(
    sock: Sock<'_>,
    ring: Rc<BufRing>,
    poll_first: bool,
) -> InFlightOneshot<Rc<BufRing>, ProvidedDone> {
    let len = u32::try_from(ring.size).unwrap_or(u32::MAX);
    let mut sqe = sock.sqe(|fd| {
        opcode::Recv::new(fd, std::ptr::null_mut(), len)
            .buf_group(BUF_GROUP)
            .build()
            .flags(squeue::Flags::BUFFER_SELECT)
    });
    if poll_first {
        sqe = with_ioprio(sqe, RECVSEND_POLL_FIRST);
    }
    // The ring moves into the driver with the operation: its memory outlives
    // the receive even if this future is dropped.
    UnsubmittedOneshot::new(ring, ProvidedDone, sqe).submit()
}

/// `IORING_RECV_MULTISHOT` (linux/io_uring.h, kernel 6.0+), in the SQE's
/// `ioprio`: the receive stays armed and completes once per arrival.
const RECV_MULTISHOT: u16 = 2;

thread_local! {
    /// Whether this thread's ring takes multishot receives; cleared by the
    /// first one a kernel older than 6.0 refuses (EINVAL).
    static MULTISHOT_OK: Cell<bool> = const { Cell::new(true) };
}

/// The ring a multishot receive fills, kept in the driver with it.
struct StreamRing(Rc<BufRing>);

impl MultishotData for StreamRing {
    fn discard(&mut self, flags: u32) {
        if let Some(bid) = cqueue::buffer_select(flags) {
            self.0.give_back(bid);
        }
    }
}

/// A receive armed once that completes every time bytes arrive, each time
/// into a buffer of this thread's provided ring (a multishot receive): a
/// connection in request-response traffic submits no receive per request.
/// What it brings comes out in order ([`RecvStream::poll_next`]) until its
/// last completion; dropped before that, the buffers of the completions
/// nobody took go back to the ring as they arrive.
pub struct RecvStream {
    /// The receive in flight.
    op: InFlightMultishot<StreamRing>,
}

/// Arms a multishot receive on `sock`; `None` when this thread has no
/// provided ring, or its kernel takes no multishot receives: then receive
/// one at a time.
pub fn recv_stream<'a>(sock: impl Into<Sock<'a>>) -> Option<RecvStream> {
    if !MULTISHOT_OK.get() || !RECV_FLAGS_OK.get() {
        return None;
    }
    let ring = PROVIDED.with(|p| p.borrow().clone())?;
    // Length 0: each completion fills at most one whole buffer.
    let sqe = sock.into().sqe(|fd| {
        opcode::Recv::new(fd, std::ptr::null_mut(), 0)
            .buf_group(BUF_GROUP)
            .build()
            .flags(squeue::Flags::BUFFER_SELECT)
    });
    let sqe = with_ioprio(sqe, RECV_MULTISHOT | RECVSEND_POLL_FIRST);
    // The ring moves into the driver with the operation: its memory outlives
    // the receive even if this stream is dropped.
    Some(RecvStream {
        op: UnsubmittedMultishot::new(StreamRing(ring), sqe).submit(),
    })
}

impl RecvStream {
    /// The next completion, in the order the kernel posted them; `None`
    /// when the stream ended without news (cancelled, or refused by a
    /// kernel without multishot receives): receive again.
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Received>>> {
        let Some((res, flags)) = ready!(self.op.poll_next(cx)) else {
            return Poll::Ready(None);
        };
        let res = res.map(|n| n as usize);
        Poll::Ready(
            match received(res, cqueue::buffer_select(flags), &self.op.data().0) {
                // Only [`RecvStream::cancel`] cancels it.
                Err(err) if err.raw_os_error() == Some(libc::ECANCELED) => None,
                // A kernel without multishot receives: this thread stops
                // asking for them.
                Err(err) if err.raw_os_error() == Some(libc::EINVAL) => {
                    MULTISHOT_OK.set(false);
                    None
                }
                res => Some(res),
            },
        )
    }

    /// Whether its last completion was handed out: only then may another
    /// receive on the socket start, or bytes could be read out of order.
    pub fn is_done(&self) -> bool {
        self.op.is_done()
    }

    /// Ready once `n` completions arrived that were not taken yet (each
    /// holds a buffer of the ring); until then, each new one wakes the task.
    pub fn poll_backlog(&mut self, cx: &mut Context<'_>, n: usize) -> Poll<()> {
        self.op.poll_backlog(cx, n)
    }

    /// Asks the kernel to stop the receive (IORING_OP_ASYNC_CANCEL); the
    /// completions before its last still come out. Once is enough: the
    /// caller keeps track.
    pub fn cancel(&self) {
        if let Some(user_data) = self.op.user_data() {
            let sqe = opcode::AsyncCancel::new(user_data).build();
            // Nothing to wait for: the receive's own last completion says
            // when it stopped.
            drop(UnsubmittedOneshot::new((), CancelDone, sqe).submit());
        }
    }
}

/// Turns a provided-buffer receive's completion into its count and the id
/// of the buffer the kernel filled, if it took one.
struct ProvidedDone;

impl OneshotOutputTransform for ProvidedDone {
    type Output = (io::Result<usize>, Option<u16>, Rc<BufRing>);
    type StoredData = Rc<BufRing>;

    fn transform_oneshot_output(self, ring: Rc<BufRing>, cqe: cqueue::Entry) -> Self::Output {
        (completion(&cqe), cqueue::buffer_select(cqe.flags()), ring)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::pair;
    use std::io::Write;

    #[test]
    fn connect_connects_or_names_the_refusing_address() {
        tokio_uring::start(async {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let stream = connect(addr, Duration::from_secs(30)).await.unwrap();
            let (accepted, _) = listener.accept().unwrap();
            assert_eq!(local_addr(&stream).unwrap(), accepted.peer_addr().unwrap());
            // Bound but not listening: the port stays ours and refuses.
            let closed = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
            closed
                .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
                .unwrap();
            let closed_addr = closed.local_addr().unwrap().as_socket().unwrap();
            match connect(closed_addr, Duration::from_secs(30)).await {
                Err(ConnectError::Io { addr, source }) => {
                    assert_eq!(addr, closed_addr);
                    assert_eq!(source.kind(), io::ErrorKind::ConnectionRefused);
                }
                other => panic!("expected a refusal, got {:?}", other.map(drop)),
            }
        });
    }

    #[test]
    fn recv_with_and_without_poll_first_delivers_bytes_and_eof() {
        tokio_uring::start(async {
            let (mut peer, ours) = pair();
            // Nothing to read yet: the poll-first receive waits for the write.
            let writer = std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(50));
                peer.write_all(b"hello").unwrap();
                peer
            });
            let (res, buf) = recv(&ours, Vec::with_capacity(64), true).await;
            assert_eq!(res.unwrap(), 5);
            assert_eq!(buf, b"hello");
            let mut peer = writer.join().unwrap();
            // Bytes already waiting, no poll first; the buffer's old contents
            // are overwritten from the start.
            peer.write_all(b"abc").unwrap();
            let (res, buf) = recv(&ours, buf, false).await;
            assert_eq!(res.unwrap(), 3);
            assert_eq!(buf, b"abc");
            // A read limited by capacity leaves the rest queued.
            peer.write_all(b"0123456789").unwrap();
            let (res, small) = recv(&ours, Vec::with_capacity(4), false).await;
            assert_eq!((res.unwrap(), &small[..]), (4, &b"0123"[..]));
            drop(peer);
            let (res, buf) = recv(&ours, buf, true).await;
            assert_eq!((res.unwrap(), &buf[..]), (6, &b"456789"[..]));
            let (res, _) = recv(&ours, buf, true).await;
            assert_eq!(res.unwrap(), 0, "EOF");
        });
    }

    #[test]
    fn send_all_delivers_more_than_a_socket_buffer_holds() {
        tokio_uring::start(async {
            let (mut peer, ours) = pair();
            let data: Vec<u8> = (0..8u32 << 20).map(|i| (i % 251) as u8).collect();
            let expected = data.clone();
            // 8 MiB is more than the socket buffers hold, so the kernel
            // takes it in parts as the reader drains them.
            let reader = std::thread::spawn(move || {
                let mut got = Vec::new();
                std::io::Read::read_to_end(&mut peer, &mut got).unwrap();
                got
            });
            let (res, buf) = send_all(&ours, data).await;
            res.unwrap();
            assert_eq!(buf.len(), 8 << 20, "the buffer comes back whole");
            ours.shutdown(std::net::Shutdown::Write).unwrap();
            assert!(reader.join().unwrap() == expected);
        });
    }

    #[test]
    fn refused_receive_flags_are_dropped_for_the_thread() {
        // An unknown receive flag is refused with EINVAL, which shows the
        // bits land in the field the kernel takes the flags from.
        tokio_uring::start(async {
            let (mut peer, ours) = pair();
            peer.write_all(b"x").unwrap();
            let (res, buf) = recv_once((&ours).into(), Vec::with_capacity(8), 0x8000).await;
            assert_eq!(res.unwrap_err().raw_os_error(), Some(libc::EINVAL));
            // recv_with falls back to no flags (as on a kernel without
            // POLL_FIRST) and this thread stops passing them.
            assert!(RECV_FLAGS_OK.get());
            let (res, buf) = recv_with((&ours).into(), buf, 0x8000).await;
            assert_eq!((res.unwrap(), &buf[..]), (1, &b"x"[..]));
            assert!(!RECV_FLAGS_OK.get());
            peer.write_all(b"y").unwrap();
            let (res, buf) = recv(&ours, buf, true).await;
            assert_eq!((res.unwrap(), &buf[..]), (1, &b"y"[..]));
            drop(peer);
        });
    }

    #[test]
    fn fixed_pairs_carry_bytes_and_free_their_slots_once_removed() {
        tokio_uring::start(async {
            let (mut pa, a) = pair();
            let (mut pb, b) = pair();
            assert!(FixedPair::register(&a, &b).is_none(), "no table yet");
            register_file_table(4).unwrap();
            let first = FixedPair::register(&a, &b).expect("a free pair");
            let (sa, sb) = first.socks();
            assert_eq!((sa.slot, sb.slot), (0, 1));
            // Operations by slot reach the right sockets.
            let (res, _) = send_all(sa, b"to a".to_vec()).await;
            res.unwrap();
            let mut got = [0u8; 4];
            std::io::Read::read_exact(&mut pa, &mut got).unwrap();
            assert_eq!(&got, b"to a");
            pb.write_all(b"from b").unwrap();
            let (res, buf) = recv(sb, Vec::with_capacity(16), false).await;
            assert_eq!((res.unwrap(), &buf[..]), (6, &b"from b"[..]));
            // Two pairs fill four slots.
            let (_pc, c) = pair();
            let (_pd, d) = pair();
            let second = FixedPair::register(&c, &d).expect("a second pair");
            assert_eq!(second.socks().0.slot, 2);
            assert!(FixedPair::register(&c, &d).is_none(), "the table is full");
            // The first pair's slots come back once the kernel removed them,
            // and not before: its removal is still unsubmitted here.
            drop(first);
            assert!(FixedPair::register(&c, &d).is_none(), "removal in flight");
            let again = loop {
                tokio::time::sleep(Duration::from_millis(1)).await;
                if let Some(again) = FixedPair::register(&c, &d) {
                    break again;
                }
            };
            assert_eq!(again.socks().0.slot, 0);
            // The table no longer holds `a`: closing it closes the socket.
            drop(a);
            pa.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            assert_eq!(std::io::Read::read(&mut pa, &mut got).unwrap(), 0, "EOF");
            drop((again, second));
            release_file_table();
        });
    }

    /// The next completion of `stream`.
    async fn next(stream: &mut RecvStream) -> Option<io::Result<Received>> {
        std::future::poll_fn(|cx| stream.poll_next(cx)).await
    }

    /// Waits until `stream` holds `n` completions not taken yet.
    async fn backlog_reaches(stream: &mut RecvStream, n: usize) {
        std::future::poll_fn(|cx| stream.poll_backlog(cx, n)).await
    }

    #[test]
    fn a_receive_stream_brings_every_arrival_in_order_and_ends_at_eof() {
        tokio_uring::start(async {
            provide_buffers(8, 8, 16).unwrap();
            let (mut peer, ours) = pair();
            let mut stream = recv_stream(&ours).expect("a ring");
            for msg in [&b"one"[..], b"two", b"three"] {
                peer.write_all(msg).unwrap();
                match next(&mut stream).await {
                    Some(Ok(Received::Bytes(got))) => assert_eq!(got.bytes(), msg),
                    other => panic!("expected bytes, got {other:?}"),
                }
                assert!(!stream.is_done(), "one receive for every arrival");
            }
            // More than a buffer holds, and arrivals that wait: several
            // completions, in order.
            let data: Vec<u8> = (0..100u8).collect();
            peer.write_all(&data).unwrap();
            backlog_reaches(&mut stream, 2).await;
            let mut got = Vec::new();
            while got.len() < data.len() {
                match next(&mut stream).await {
                    Some(Ok(Received::Bytes(part))) => {
                        assert!(part.len() <= 16);
                        got.extend_from_slice(part.bytes());
                    }
                    other => panic!("expected bytes, got {other:?}"),
                }
            }
            assert_eq!(got, data);
            drop(peer);
            assert!(matches!(next(&mut stream).await, Some(Ok(Received::Eof))));
            assert!(stream.is_done());
            release_buffers();
        });
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
                match recv_provided(&ours, false).await {
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
                recv_provided(&ours, false).await,
                Some(Ok(Received::Bytes(_)))
            ));
            release_buffers();
        });
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
            let mut held = Vec::new();
            let mut peers = Vec::new();
            for _ in 0..6 {
                let (mut peer, ours) = pair();
                peer.write_all(b"x").unwrap();
                if let Some(Ok(Received::Bytes(got))) = recv_provided(&ours, false).await {
                    held.push(got);
                }
                peers.push((peer, ours));
            }
            assert_eq!(held.len(), 2, "grown to two buffers for one connection");
            drop(held);
            release_buffers();
            release_file_table();
        });
    }

    #[test]
    fn a_cancelled_stream_stops_and_a_dropped_one_gives_its_buffers_back() {
        tokio_uring::start(async {
            provide_buffers(4, 4, 16).unwrap();
            let (_peer, ours) = pair();
            let mut stream = recv_stream(&ours).expect("a ring");
            stream.cancel();
            assert!(next(&mut stream).await.is_none(), "stopped");
            assert!(stream.is_done());
            // Four arrivals fill the ring's four buffers; nobody takes them.
            let (mut peer, ours) = pair();
            let mut stream = recv_stream(&ours).expect("a ring");
            for n in 1..=4 {
                peer.write_all(&[1; 16]).unwrap();
                backlog_reaches(&mut stream, n).await;
            }
            // Dropped: the driver hands the four back to the ring, so a
            // receive on another socket finds one.
            drop(stream);
            let (mut other_peer, other) = pair();
            other_peer.write_all(b"x").unwrap();
            match recv_provided(&other, false).await {
                Some(Ok(Received::Bytes(got))) => assert_eq!(got.bytes(), b"x"),
                other => panic!("expected a ring buffer, got {other:?}"),
            }
            release_buffers();
        });
    }
}
