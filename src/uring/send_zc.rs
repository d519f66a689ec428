//! The zero-copy send (IORING_OP_SEND_ZC, Linux 6.0): the kernel sends from
//! the buffer's own pages instead of copying them into the socket. It
//! completes twice: once when the socket has taken the bytes (flagged
//! IORING_CQE_F_MORE), and again, with a notification (IORING_CQE_F_NOTIF),
//! once the kernel let go of the pages, which for TCP is when the peer has
//! acknowledged them. Until then the buffer must neither be reused nor freed,
//! so it is the data of a multishot operation (vendored tokio-uring patch 2),
//! which the driver keeps until the last completion, even if the send is
//! dropped. A [`SendZc`] whose bytes were all taken does not wait the round
//! trip for the notification: it leaves the buffer to the driver, which
//! gives it back to its [`ZcOwner`] then, and the relay reads on into
//! another. A partial send or an error waits for the notification and hands
//! the buffer back itself. Sends below
//! [`SEND_ZC_MIN`], and every send on a thread whose kernel refused one, are
//! plain sends. Each notification says whether the kernel copied after all
//! (IORING_SEND_ZC_REPORT_USAGE, Linux 6.2), as it always does on loopback.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use io_uring::opcode;
use tokio_uring::{InFlightMultishot, MultishotData, UnsubmittedMultishot};

use super::files::Sock;
use super::recv_send::{send_rest, SendAll};

/// The smallest send made zero-copy. Below about 10 KB pinning the pages,
/// building the fragments and the second completion cost more than the copy
/// they save (the kernel's `Documentation/networking/msg_zerocopy.rst`); 16
/// KiB is four pages, past that point, and leaves the relay's small buffers
/// (512 bytes) and request/response traffic on plain sends.
pub const SEND_ZC_MIN: usize = 16 * 1024;

/// `IORING_SEND_ZC_REPORT_USAGE` (linux/io_uring.h, Linux 6.2), in the SQE's
/// `ioprio`: the notification says whether the bytes were copied after all.
const SEND_ZC_REPORT_USAGE: u16 = 1 << 3;

/// `IORING_NOTIF_USAGE_ZC_COPIED`: in a notification's result, the kernel
/// copied the bytes (as it does when the receiver is a local socket).
const NOTIF_USAGE_ZC_COPIED: u32 = 1 << 31;

/// `IORING_CQE_F_NOTIF`: the completion is a notification.
const CQE_F_NOTIF: u32 = 1 << 3;

thread_local! {
    /// Whether this thread's ring takes zero-copy sends; cleared by the
    /// first one a kernel refuses (EINVAL before 6.2, which lacks the opcode
    /// or REPORT_USAGE; EOPNOTSUPP for a socket without zero-copy).
    static SEND_ZC_OK: Cell<bool> = const { Cell::new(true) };
}

/// Whom zero-copy sends report to; called on the worker's thread, from
/// the driver for a send that was dropped or left its buffer to it.
pub trait ZcOwner {
    /// A notification said the kernel copied the bytes after all.
    fn copied(&self);
    /// The buffer of a send that left it to the driver, free again.
    fn give_back(&self, buf: Vec<u8>);
}

/// A [`ZcOwner`] shared by every send it hears from.
pub type ZcSink = Rc<dyn ZcOwner>;

/// What a zero-copy send keeps in the driver until its notification.
struct Held {
    /// The buffer the kernel sends from; taken back only after the last
    /// completion.
    buf: Cell<Option<Vec<u8>>>,
    /// Told of a notification that reports a copy, and given the buffer
    /// back when the send was dropped before its last completion.
    owner: ZcSink,
}

impl Held {
    /// Tells the owner if `result` is a notification's that reports a copy.
    fn notified(&self, result: &io::Result<u32>, flags: u32) {
        if flags & CQE_F_NOTIF != 0
            && matches!(result, Ok(bits) if bits & NOTIF_USAGE_ZC_COPIED != 0)
        {
            self.owner.copied();
        }
    }
}

impl MultishotData for Held {
    fn discard(&mut self, _flags: u32) {}

    fn discard_result(&mut self, result: &io::Result<u32>, flags: u32) {
        self.notified(result, flags);
        // The last completion: the kernel is done with the buffer.
        if !io_uring::cqueue::more(flags) {
            if let Some(buf) = self.buf.take() {
                self.owner.give_back(buf);
            }
        }
    }
}

/// How a [`SendZc`] ended.
#[derive(Debug)]
pub struct ZcSent {
    /// Bytes sent: the buffer's length, unless it failed.
    pub len: usize,
    /// The buffer's capacity.
    pub capacity: usize,
    /// The buffer, when it is free again; `None` while the kernel still
    /// holds its pages (the driver gives it to the owner at the
    /// notification).
    pub buf: Option<Vec<u8>>,
    /// Zero-copy sends that took bytes (one, more after partial sends).
    pub zero_copy: u32,
}

/// Sends all of `buf` (its length), zero-copy when it is at least
/// [`SEND_ZC_MIN`] bytes and this thread's kernel takes zero-copy sends, as
/// plain sends otherwise; `owner` hears of copies the kernel made anyway,
/// and gets the buffer back if the send leaves it to the driver.
pub fn send_zc<'a>(sock: impl Into<Sock<'a>>, buf: Vec<u8>, owner: &ZcSink) -> SendZc<'a> {
    let sock = sock.into();
    let owner = owner.clone();
    SendZc {
        sock,
        len: buf.len(),
        capacity: buf.capacity(),
        sent: 0,
        zero_copy: 0,
        state: next_send(sock, buf, 0, &owner),
        owner,
    }
}

/// The sends [`send_zc`] started.
pub struct SendZc<'a> {
    /// The socket, for the rest of a partly sent buffer.
    sock: Sock<'a>,
    /// The buffer's length and capacity, for when the driver keeps it.
    len: usize,
    /// See `len`.
    capacity: usize,
    /// Bytes the kernel has taken so far.
    sent: usize,
    /// Zero-copy sends that took bytes.
    zero_copy: u32,
    /// The send in flight.
    state: ZcState<'a>,
    /// Given to each zero-copy send.
    owner: ZcSink,
}

/// Where a [`SendZc`] is.
enum ZcState<'a> {
    /// A zero-copy send, with its result once that came (then waiting for
    /// the notification).
    ZeroCopy(InFlightMultishot<Held>, Option<io::Result<usize>>),
    /// Plain sends.
    Plain(SendAll<'a, Vec<u8>>),
    /// Ended, the buffer left to the driver.
    Done,
}

/// The send of what follows the first `sent` bytes of `buf`: zero-copy if
/// it is large enough and the kernel takes it.
fn next_send<'a>(sock: Sock<'a>, buf: Vec<u8>, sent: usize, owner: &ZcSink) -> ZcState<'a> {
    let rest = buf.len().saturating_sub(sent);
    if rest < SEND_ZC_MIN || !SEND_ZC_OK.get() {
        return ZcState::Plain(send_rest(sock, buf, sent));
    }
    let len = u32::try_from(rest).unwrap_or(u32::MAX);
    let sqe = sock.sqe(|fd| {
        opcode::SendZc::new(fd, buf[sent..].as_ptr(), len)
            // WAITALL: the kernel sends it all before it completes, so a
            // partial send, which waits for its notification, is rare.
            .flags(libc::MSG_NOSIGNAL | libc::MSG_WAITALL)
            .zc_flags(SEND_ZC_REPORT_USAGE)
            .build()
    });
    let held = Held {
        buf: Cell::new(Some(buf)),
        owner: owner.clone(),
    };
    // The buffer moves into the driver with the operation (its bytes do not
    // move with the `Vec`) and stays there until the notification, even if
    // this send is dropped.
    ZcState::ZeroCopy(UnsubmittedMultishot::new(held, sqe).submit(), None)
}

impl SendZc<'_> {
    /// The send's end: `buf` if it is free again.
    fn ended(&self, buf: Option<Vec<u8>>) -> ZcSent {
        ZcSent {
            len: self.len,
            capacity: self.capacity,
            buf,
            zero_copy: self.zero_copy,
        }
    }
}

impl Future for SendZc<'_> {
    type Output = (io::Result<()>, ZcSent);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            let (op, res) = match &mut this.state {
                ZcState::ZeroCopy(op, res) => (op, res),
                ZcState::Plain(op) => {
                    let (res, buf) = std::task::ready!(Pin::new(op).poll(cx));
                    return Poll::Ready((res, this.ended(Some(buf))));
                }
                ZcState::Done => panic!("polled after completion"),
            };
            let next = match op.poll_next(cx) {
                Poll::Ready(next) => next,
                // Every byte is taken and only the notification is to come:
                // the buffer stays with the driver, which gives it back to
                // the owner then.
                Poll::Pending if matches!(res, Some(Ok(_))) && this.sent >= this.len => {
                    this.state = ZcState::Done;
                    return Poll::Ready((Ok(()), this.ended(None)));
                }
                Poll::Pending => return Poll::Pending,
            };
            match next {
                Some((result, flags)) if flags & CQE_F_NOTIF != 0 => {
                    op.data().notified(&result, flags);
                }
                Some((result, _)) => {
                    let result = result.map(|n| n as usize);
                    if let Ok(n) = result {
                        this.sent += n;
                        this.zero_copy += u32::from(n > 0);
                    }
                    *res = Some(result);
                }
                // The last completion came: the kernel is done with the
                // buffer.
                None => {
                    let buf = op.data().buf.take().expect("a send's buffer");
                    match res.take().unwrap_or(Ok(0)) {
                        // A kernel or socket without zero-copy sends: this
                        // thread stops asking, and sends plainly.
                        Err(err)
                            if this.zero_copy == 0
                                && matches!(
                                    err.raw_os_error(),
                                    Some(libc::EINVAL | libc::EOPNOTSUPP)
                                ) =>
                        {
                            SEND_ZC_OK.set(false);
                            this.state = ZcState::Plain(send_rest(this.sock, buf, this.sent));
                        }
                        Err(err) => return Poll::Ready((Err(err), this.ended(Some(buf)))),
                        Ok(0) => {
                            let err = io::ErrorKind::WriteZero.into();
                            return Poll::Ready((Err(err), this.ended(Some(buf))));
                        }
                        Ok(_) if this.sent >= this.len => {
                            return Poll::Ready((Ok(()), this.ended(Some(buf))));
                        }
                        // Partly sent: the rest.
                        Ok(_) => {
                            this.state = next_send(this.sock, buf, this.sent, &this.owner);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::pair;
    use std::io::Read;

    /// An owner that counts the copies it hears of and keeps the buffers
    /// it gets back.
    #[derive(Default)]
    struct Owner {
        copies: Cell<u32>,
        back: std::cell::RefCell<Vec<Vec<u8>>>,
    }

    impl ZcOwner for Owner {
        fn copied(&self) {
            self.copies.set(self.copies.get() + 1);
        }

        fn give_back(&self, buf: Vec<u8>) {
            self.back.borrow_mut().push(buf);
        }
    }

    /// A new [`Owner`], and it as the sends take it.
    fn counter() -> (Rc<Owner>, ZcSink) {
        let owner = Rc::new(Owner::default());
        (owner.clone(), owner)
    }

    /// `len` bytes that tell their offsets apart.
    fn pattern(len: usize, seed: u32) -> Vec<u8> {
        (0..len as u32)
            .map(|i| (i.wrapping_mul(31).wrapping_add(seed) % 251) as u8)
            .collect()
    }

    /// Reads `peer` to EOF on a thread of its own.
    fn read_all(mut peer: std::net::TcpStream) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut got = Vec::new();
            peer.read_to_end(&mut got).unwrap();
            got
        })
    }

    /// Waits until the driver has had `n` notifications reporting a copy.
    async fn copies_reach(owner: &Owner, n: u32) {
        let copies = &owner.copies;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while copies.get() < n {
            assert!(
                std::time::Instant::now() < deadline,
                "{} copies",
                copies.get()
            );
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    #[test]
    fn a_large_send_is_zero_copy_and_every_byte_arrives() {
        tokio_uring::start(async {
            let (peer, ours) = pair();
            let reader = read_all(peer);
            let (owner, hook) = counter();
            let data = pattern(8 << 20, 1);
            let (res, sent) = send_zc(&ours, data.clone(), &hook).await;
            res.unwrap();
            assert_eq!((sent.len, sent.capacity), (8 << 20, 8 << 20));
            assert!(sent.zero_copy >= 1, "{sent:?}");
            ours.shutdown(std::net::Shutdown::Write).unwrap();
            assert!(reader.join().unwrap() == data, "the bytes arrive intact");
            // On loopback the receiving socket gets a copy: every
            // notification says so, including those of a send that left its
            // buffer to the driver.
            copies_reach(&owner, sent.zero_copy).await;
            // A buffer left to the driver comes back to its owner.
            let back = owner.back.borrow().len();
            assert_eq!(back, usize::from(sent.buf.is_none()));
        });
    }

    #[test]
    fn a_small_send_is_a_plain_one() {
        tokio_uring::start(async {
            let (peer, ours) = pair();
            let reader = read_all(peer);
            let (owner, hook) = counter();
            let (res, sent) = send_zc(&ours, b"hello".to_vec(), &hook).await;
            res.unwrap();
            assert_eq!(sent.zero_copy, 0);
            assert_eq!(sent.buf.as_deref(), Some(&b"hello"[..]), "handed back");
            ours.shutdown(std::net::Shutdown::Write).unwrap();
            assert_eq!(reader.join().unwrap(), b"hello");
            assert_eq!(owner.copies.get(), 0);
        });
    }

    #[test]
    fn a_dropped_send_keeps_its_buffer_until_the_kernel_lets_go() {
        tokio_uring::start(async {
            // More than the socket buffers hold, and a peer that reads
            // nothing yet: the send is in flight when it is dropped.
            let (peer, ours) = pair();
            let (owner, hook) = counter();
            let data = pattern(16 << 20, 2);
            let mut send = Box::pin(send_zc(&ours, data.clone(), &hook));
            assert!(poll_once(send.as_mut()).await.is_pending());
            drop(send);
            // Memory freed now would be reused by these, and the kernel
            // would send their bytes instead.
            let decoys: Vec<Vec<u8>> = (0..32).map(|i| pattern(1 << 20, 100 + i)).collect();
            let reader = read_all(peer);
            // The kernel sends it all: the notification comes after the
            // peer acknowledged the last byte.
            copies_reach(&owner, 1).await;
            ours.shutdown(std::net::Shutdown::Write).unwrap();
            let got = reader.join().unwrap();
            assert!(
                got.len() == data.len() && got == data,
                "{} bytes",
                got.len()
            );
            drop(decoys);
            // Then the driver gave the buffer back, untouched.
            let back = owner.back.borrow_mut().pop();
            assert!(back.is_some_and(|b| b == data), "the buffer came back");
        });
    }

    #[test]
    fn the_send_buffer_bounds_what_a_zero_copy_send_holds() {
        use std::os::fd::AsRawFd;
        tokio_uring::start(async {
            // A peer that reads nothing: the kernel takes what the socket
            // buffers hold, pinning those pages, and no more (the relay's
            // buffers held past their send are bounded by this).
            let (peer, ours) = pair();
            let (_owner, hook) = counter();
            let mut send = Box::pin(send_zc(&ours, vec![7; 64 << 20], &hook));
            assert!(poll_once(send.as_mut()).await.is_pending());
            let queued = || {
                let mut queued: libc::c_int = 0;
                // SAFETY: TIOCOUTQ writes the bytes in the socket's send
                // queue to the int it is given; the descriptor is open.
                let rc = unsafe { libc::ioctl(ours.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
                assert_eq!(rc, 0);
                queued as usize
            };
            let mut last = usize::MAX;
            while queued() != last {
                last = queued();
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            // SAFETY: the descriptor is open for the borrow's life.
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(ours.as_raw_fd()) };
            let sndbuf = socket2::SockRef::from(&fd).send_buffer_size().unwrap();
            println!("{last} bytes queued, send buffer {sndbuf}");
            assert!(
                last > 0 && last <= sndbuf,
                "{last} queued, send buffer {sndbuf}"
            );
            drop(peer);
            assert!(send.await.0.is_err(), "the peer went away");
        });
    }

    #[test]
    fn a_socket_without_zero_copy_gets_plain_sends() {
        use std::os::fd::{FromRawFd, IntoRawFd};
        tokio_uring::start(async {
            // A Unix socket takes no zero-copy sends (EOPNOTSUPP).
            let (peer, ours) = std::os::unix::net::UnixStream::pair().unwrap();
            // SAFETY: the descriptor is a connected stream socket, owned by
            // nothing else from here on; only send and shutdown touch it.
            let ours = tokio_uring::net::TcpStream::from_std(unsafe {
                std::net::TcpStream::from_raw_fd(ours.into_raw_fd())
            });
            let reader = std::thread::spawn(move || {
                let mut got = Vec::new();
                (&peer).read_to_end(&mut got).unwrap();
                got
            });
            let (_owner, hook) = counter();
            let data = pattern(1 << 20, 3);
            assert!(SEND_ZC_OK.get());
            let (res, sent) = send_zc(&ours, data.clone(), &hook).await;
            res.unwrap();
            assert_eq!(sent.zero_copy, 0);
            assert!(!SEND_ZC_OK.get(), "this thread stops asking");
            assert!(sent.buf.is_some());
            ours.shutdown(std::net::Shutdown::Write).unwrap();
            assert!(reader.join().unwrap() == data);
        });
    }

    /// Polls `fut` once.
    async fn poll_once<F: Future + ?Sized>(fut: Pin<&mut F>) -> Poll<F::Output> {
        let mut fut = Some(fut);
        std::future::poll_fn(|cx| Poll::Ready(fut.take().unwrap().poll(cx))).await
    }
}
