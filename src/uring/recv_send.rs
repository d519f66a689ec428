//! The relay's one-shot socket operations: a receive (IORING_OP_RECV) that
//! can wait for readiness before it tries, used when the last read drained
//! the socket so the kernel skips a receive that would only fail with
//! EAGAIN; and a send (IORING_OP_SEND); both reach the socket more directly
//! than the generic read and write tokio-uring uses. They are futures written
//! by hand ([`Recv`], [`SendAll`]), so a task waiting on one holds only the
//! operation in flight. Also the cancellation of every operation on one
//! socket ([`cancel_all_on`]), and what the other families share: the
//! receive flags in the SQE's `ioprio` and a completion's result.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use io_uring::{cqueue, opcode, squeue, types};
use tokio_uring::{InFlightOneshot, OneshotOutputTransform, UnsubmittedOneshot};

use super::files::Sock;

/// `IORING_RECVSEND_POLL_FIRST` (linux/io_uring.h, kernel 5.19+), a flag in
/// the SQE's `ioprio` field: arm the readiness poll at once instead of first
/// trying a receive that is expected to find nothing.
pub(super) const RECVSEND_POLL_FIRST: u16 = 1;

thread_local! {
    /// Whether this thread's ring takes receive flags; cleared by the first
    /// receive a kernel older than 5.19 refuses for its flags (EINVAL).
    pub(super) static RECV_FLAGS_OK: Cell<bool> = const { Cell::new(true) };
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
    /// Bytes to send, in all.
    fn send_len(&self) -> usize;

    /// A send to `fd` of what follows the first `sent` bytes; what it
    /// points to stays put as long as `self` does.
    fn send_sqe(&mut self, fd: types::Fd, sent: usize) -> squeue::Entry;
}

impl SendBuf for Vec<u8> {
    fn send_len(&self) -> usize {
        self.len()
    }

    fn send_sqe(&mut self, fd: types::Fd, sent: usize) -> squeue::Entry {
        send_sqe(fd, &self[sent.min(self.len())..])
    }
}

/// One IORING_OP_SEND of `bytes` to `fd`.
pub(super) fn send_sqe(fd: types::Fd, bytes: &[u8]) -> squeue::Entry {
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    opcode::Send::new(fd, bytes.as_ptr(), len)
        .flags(libc::MSG_NOSIGNAL)
        .build()
}

/// Sends all of `buf` (its length, not its capacity) as IORING_OP_SEND, one
/// send after another until the kernel has taken every byte; hands the
/// buffer back either way.
pub fn send_all<'a, B: SendBuf>(sock: impl Into<Sock<'a>>, buf: B) -> SendAll<'a, B> {
    send_rest(sock.into(), buf, 0)
}

/// [`send_all`] of what follows the first `sent` bytes of `buf`.
pub(super) fn send_rest<B: SendBuf>(sock: Sock<'_>, buf: B, sent: usize) -> SendAll<'_, B> {
    let state = if buf.send_len() <= sent {
        Sending::Nothing(Some(buf))
    } else {
        Sending::InFlight(send_from(sock, buf, sent))
    };
    SendAll { sock, sent, state }
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
                    if this.sent >= buf.send_len() {
                        return Poll::Ready((Ok(()), buf));
                    }
                    this.state = Sending::InFlight(send_from(this.sock, buf, this.sent));
                }
                Err(err) => return Poll::Ready((Err(err), buf)),
            }
        }
    }
}

/// One send of `buf`'s bytes from `sent` on, submitted.
fn send_from<B: SendBuf>(
    sock: Sock<'_>,
    mut buf: B,
    sent: usize,
) -> InFlightOneshot<B, SendDone<B>> {
    let sqe = sock.sqe(|fd| buf.send_sqe(fd, sent));
    // The buffer lives in the driver with the operation; its bytes do not
    // move with it.
    UnsubmittedOneshot::new(buf, SendDone::new(), sqe).submit()
}

/// Sets the `ioprio` field of `sqe`, which io-uring 0.6's `Recv` builder does
/// not expose (its `RecvMsg` does, but costs a msghdr copy per receive).
pub(super) fn with_ioprio(sqe: squeue::Entry, ioprio: u16) -> squeue::Entry {
    // SAFETY: `squeue::Entry` is `#[repr(C)]` around the kernel's 64-byte
    // `io_uring_sqe` (transmute checks the size), which starts with
    // `opcode: u8, flags: u8, ioprio: u16` and has no padding; io-uring's
    // opcode builders start from a zeroed SQE, so all 64 bytes are
    // initialized and reading them as bytes is sound.
    let mut raw: [u8; 64] = unsafe { std::mem::transmute(sqe) };
    raw[2..4].copy_from_slice(&ioprio.to_ne_bytes());
    // SAFETY: the bytes came from a `squeue::Entry` (same size, checked by
    // transmute) and only `ioprio` changed; the SQE's fields are integers
    // and unions of integers, for which any bit pattern is valid to Rust,
    // and the kernel validates the flags (a test below checks it reads ours).
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

/// Asks the kernel to stop the operation `user_data` names, without
/// waiting: the operation's own last completion says when it stopped. The
/// caller makes sure the operation has not ended (its user data could name
/// another one by now).
pub(super) fn cancel_op(user_data: u64) {
    let sqe = opcode::AsyncCancel::new(user_data).build();
    drop(UnsubmittedOneshot::new((), CancelDone, sqe).submit());
}

/// Turns a cancellation's completion into the number of operations it hit.
pub(super) struct CancelDone;

impl OneshotOutputTransform for CancelDone {
    type Output = io::Result<usize>;
    type StoredData = ();

    fn transform_oneshot_output(self, (): (), cqe: cqueue::Entry) -> Self::Output {
        completion(&cqe)
    }
}

/// A completion's result: a count, or the error the kernel returned as a
/// negative errno.
pub(super) fn completion(cqe: &cqueue::Entry) -> io::Result<usize> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::pair;
    use std::io::Write;

    /// The descriptor of this process's one io_uring.
    fn only_ring_fd() -> std::os::fd::RawFd {
        let rings: Vec<_> = std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| {
                let e = e.ok()?;
                let target = std::fs::read_link(e.path()).ok()?;
                (target.to_str()? == "anon_inode:[io_uring]")
                    .then(|| e.file_name().to_str()?.parse().ok())
                    .flatten()
            })
            .collect();
        assert_eq!(rings.len(), 1, "one io_uring in this process: {rings:?}");
        rings[0]
    }

    #[test]
    #[ignore = "run in a process of its own by a_failed_submission_fails_its_operation_not_the_process"]
    fn failed_submission_in_a_process_of_its_own() {
        let rt = tokio_uring::Runtime::new(tokio_uring::builder().entries(8)).unwrap();
        let last = rt.block_on(async {
            let (_peer, ours) = pair();
            // From here every io_uring_enter fails: the ring's descriptor
            // names /dev/null.
            let null = std::fs::File::open("/dev/null").unwrap();
            // SAFETY: both descriptors are open; the ring's mappings stay,
            // so operations still go into its submission queue, and only
            // entering the kernel fails, which is what this test wants.
            let dup = unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), only_ring_fd()) };
            assert!(dup >= 0);
            // Eight fill the queue; the ninth's push finds it full, and
            // the flush that would make room fails.
            let mut pending: Vec<Recv<'_>> =
                (0..12).map(|_| recv(&ours, vec![0; 1], false)).collect();
            let (res, _) = pending.pop().unwrap().await;
            drop(pending);
            res
        });
        assert!(last.is_err(), "the operation failed: {last:?}");
        // Its ring is gone: nothing to tear down.
        std::mem::forget(rt);
        println!("the operation failed and the process lives: {last:?}");
    }

    #[test]
    fn a_failed_submission_fails_its_operation_not_the_process() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "uring::recv_send::tests::failed_submission_in_a_process_of_its_own",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("the process lives"),
            "{}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
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
}
