//! Zero-copy forwarding: a kernel pipe ([`Pipe`]) between two sockets, filled
//! from one with `splice(2)` ([`splice_in`]) and emptied into the other
//! ([`splice_out`]), so a relayed byte never enters user space; and the
//! io_uring readiness poll ([`poll_ready`], IORING_OP_POLL_ADD) that says
//! when to try again after a splice found nothing to read or no room to
//! write.
//!
//! The splices are nonblocking system calls on the worker's thread, not
//! IORING_OP_SPLICE: the kernel runs that operation in its io-wq threads
//! (it forces it async), which costs a thread hand-off per splice and,
//! without a poll first, parks a kernel thread per idle socket; measured in
//! docs/performance.md. So no io_uring operation ever names a pipe: a pipe
//! can be reused or closed the moment its owner is done with it. The only
//! operation here, the poll, names a socket, as every receive does.

use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use io_uring::{cqueue, opcode};
use tokio_uring::{InFlightOneshot, OneshotOutputTransform, UnsubmittedOneshot};

use super::files::Sock;
use super::recv_send::completion;

/// A kernel pipe, both ends nonblocking and close-on-exec, sized with
/// `F_SETPIPE_SZ`. Empty when made; whoever fills it must empty it before
/// anyone else may use it.
#[derive(Debug)]
pub struct Pipe {
    /// The read end.
    read: OwnedFd,
    /// The write end.
    write: OwnedFd,
}

impl Pipe {
    /// A new pipe of `size` bytes (rounded up by the kernel to a power of
    /// two of pages). Fails when the process is out of descriptors
    /// (`EMFILE`), or when the kernel refuses the size: above
    /// /proc/sys/fs/pipe-max-size, or past the user's soft limit on pipe
    /// pages (`EPERM` for an unprivileged user), where it would hand out
    /// pipes of two pages, too small to be worth a splice.
    pub fn new(size: usize) -> io::Result<Pipe> {
        let mut fds = [-1 as RawFd; 2];
        // SAFETY: pipe2 writes two descriptors into the array, which is
        // exactly two ints long and alive for the call.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 just made both descriptors and nothing else in the
        // process knows them: each gets exactly one owner here.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let size = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
        // SAFETY: F_SETPIPE_SZ takes an int and touches no memory of ours;
        // the descriptor is open (owned above).
        if unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, size) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Pipe { read, write })
    }
}

/// Moves up to `len` bytes waiting on `src` into `pipe`, without waiting:
/// `Ok(0)` at EOF, `WouldBlock` when `src` has nothing (or the pipe no
/// room). `src` must be nonblocking ([`set_nonblocking`]): a TCP socket's
/// splice waits on the socket's own flag, not on `SPLICE_F_NONBLOCK`.
pub fn splice_in(src: Sock<'_>, pipe: &Pipe, len: usize) -> io::Result<usize> {
    splice(src.fd(), pipe.write.as_raw_fd(), len)
}

/// Moves up to `len` bytes out of `pipe` into `dst`, without waiting:
/// `WouldBlock` when `dst` has no room. `dst` must be nonblocking.
pub fn splice_out(pipe: &Pipe, dst: Sock<'_>, len: usize) -> io::Result<usize> {
    splice(pipe.read.as_raw_fd(), dst.fd(), len)
}

/// One nonblocking splice(2) from `from` to `to`.
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    let flags = libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK;
    // SAFETY: splice takes no memory of ours (null offsets: both ends are a
    // pipe or a socket); the descriptors belong to a borrowed stream or to
    // a pipe borrowed for the call, so they are open.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            flags,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Makes `sock` nonblocking (`O_NONBLOCK`), as the splices need. io_uring's
/// receives and sends on it are unchanged: they never wait in the call.
pub fn set_nonblocking(sock: Sock<'_>) -> io::Result<()> {
    // SAFETY: the descriptor belongs to a stream `sock` borrows, so it is
    // open for the call.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(sock.fd()) };
    socket2::SockRef::from(&fd).set_nonblocking(true)
}

/// Readiness a [`poll_ready`] waits for: bytes (or EOF, or an error) to read.
pub const READABLE: u32 = libc::POLLIN as u32;
/// Readiness a [`poll_ready`] waits for: room to write (or an error).
pub const WRITABLE: u32 = libc::POLLOUT as u32;

/// Waits (IORING_OP_POLL_ADD, one-shot) until `sock` is ready for `events`,
/// or has hung up or failed, which also ends the wait: resolves to the
/// events the kernel reported. Shutting the socket down completes it, as it
/// does a receive.
pub fn poll_ready<'a>(sock: impl Into<Sock<'a>>, events: u32) -> PollReady {
    let sqe = sock
        .into()
        .sqe(|fd| opcode::PollAdd::new(fd, events).build());
    PollReady {
        op: UnsubmittedOneshot::new((), PollDone, sqe).submit(),
    }
}

/// The poll [`poll_ready`] started.
pub struct PollReady {
    /// The poll in flight.
    op: InFlightOneshot<(), PollDone>,
}

impl Future for PollReady {
    type Output = io::Result<u32>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let res = ready!(Pin::new(&mut self.get_mut().op).poll(cx));
        Poll::Ready(res.map(|events| events as u32))
    }
}

/// Turns a poll's completion into the events it reported.
struct PollDone;

impl OneshotOutputTransform for PollDone {
    type Output = io::Result<usize>;
    type StoredData = ();

    fn transform_oneshot_output(self, (): (), cqe: cqueue::Entry) -> Self::Output {
        completion(&cqe)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::pair;
    use std::io::{Read, Write};

    #[test]
    fn bytes_go_socket_to_pipe_to_socket_in_order() {
        tokio_uring::start(async {
            let (mut a_peer, a) = pair();
            let (mut b_peer, b) = pair();
            set_nonblocking((&a).into()).unwrap();
            set_nonblocking((&b).into()).unwrap();
            let pipe = Pipe::new(64 * 1024).unwrap();
            // Nothing yet: no wait in the call.
            let err = splice_in((&a).into(), &pipe, 1 << 16).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
            a_peer.write_all(b"hello, pipe").unwrap();
            let events = poll_ready(&a, READABLE).await.unwrap();
            assert!(events & READABLE != 0, "{events:#x}");
            let n = splice_in((&a).into(), &pipe, 1 << 16).unwrap();
            assert_eq!(n, 11);
            assert_eq!(splice_out(&pipe, (&b).into(), n).unwrap(), 11);
            let mut got = [0u8; 11];
            b_peer.read_exact(&mut got).unwrap();
            assert_eq!(&got, b"hello, pipe");
            drop(a_peer);
            assert_eq!(splice_in((&a).into(), &pipe, 1 << 16).unwrap(), 0, "EOF");
        });
    }

    /// CPU seconds this thread (`libc::RUSAGE_THREAD`) or this process
    /// (`RUSAGE_SELF`: every thread, the kernel's io-wq workers included)
    /// has used.
    fn cpu_seconds(who: libc::c_int) -> f64 {
        // SAFETY: rusage is plain data; getrusage fills the one we pass.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: a valid `who` and a pointer to a live rusage.
        assert_eq!(unsafe { libc::getrusage(who, &mut usage) }, 0);
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        secs(usage.ru_utime) + secs(usage.ru_stime)
    }

    /// One IORING_OP_SPLICE of up to `len` bytes from `from` to `to`
    /// (blocking, in the kernel's io-wq thread), keeping `pipe` alive in the
    /// driver until it completes.
    async fn splice_op(
        from: RawFd,
        to: RawFd,
        len: usize,
        pipe: std::rc::Rc<Pipe>,
    ) -> io::Result<usize> {
        use io_uring::types::Fd;
        let sqe = opcode::Splice::new(Fd(from), -1, Fd(to), -1, len as u32)
            .flags(libc::SPLICE_F_MOVE)
            .build();
        struct Done;
        impl OneshotOutputTransform for Done {
            type Output = io::Result<usize>;
            type StoredData = std::rc::Rc<Pipe>;
            fn transform_oneshot_output(
                self,
                _: Self::StoredData,
                cqe: cqueue::Entry,
            ) -> Self::Output {
                completion(&cqe)
            }
        }
        UnsubmittedOneshot::new(pipe, Done, sqe).submit().await
    }

    /// Moves `total` bytes from a writer thread through a relay on this
    /// thread's ring to a reader thread, with the two splice mechanisms,
    /// and prints each one's CPU per GB (the process's CPU, io-wq threads
    /// included, less the writer's and the reader's own).
    #[test]
    #[ignore = "a measurement: cargo test --release --lib -- --ignored --nocapture splice_mechanisms"]
    fn splice_mechanisms_cpu_per_gb() {
        const TOTAL: usize = 4 << 30;
        let cases = [
            ("poll + splice(2)", 64 << 10),
            ("poll + splice(2)", 256 << 10),
            ("poll + splice(2)", 1 << 20),
            ("IORING_OP_SPLICE", 256 << 10),
            ("copy (RECV/SEND)", 256 << 10),
        ];
        for (mechanism, size) in cases.repeat(2) {
            let uring_op = mechanism == "IORING_OP_SPLICE";
            let copy = mechanism.starts_with("copy");
            let (relay_cpu, secs) = tokio_uring::start(async move {
                let (mut src_peer, src) = pair();
                let (mut dst_peer, dst) = pair();
                // IORING_OP_SPLICE at its cheapest: blocking sockets, so
                // io-wq waits for them, without a poll first.
                if !uring_op {
                    set_nonblocking((&src).into()).unwrap();
                    set_nonblocking((&dst).into()).unwrap();
                }
                let writer = std::thread::spawn(move || {
                    let chunk = vec![7u8; 1 << 20];
                    for _ in 0..TOTAL / chunk.len() {
                        std::io::Write::write_all(&mut src_peer, &chunk).unwrap();
                    }
                    drop(src_peer);
                    cpu_seconds(libc::RUSAGE_THREAD)
                });
                let reader = std::thread::spawn(move || {
                    let mut buf = vec![0u8; 1 << 20];
                    let mut got = 0;
                    loop {
                        match std::io::Read::read(&mut dst_peer, &mut buf).unwrap() {
                            0 => break,
                            n => got += n,
                        }
                    }
                    assert_eq!(got, TOTAL);
                    cpu_seconds(libc::RUSAGE_THREAD)
                });
                let pipe = std::rc::Rc::new(Pipe::new(size).unwrap());
                let (start, cpu0) = (std::time::Instant::now(), cpu_seconds(libc::RUSAGE_SELF));
                let (src_fd, dst_fd) = (src.as_raw_fd(), dst.as_raw_fd());
                let (pipe_r, pipe_w) = (pipe.read.as_raw_fd(), pipe.write.as_raw_fd());
                let mut buf = Vec::with_capacity(size);
                loop {
                    if !copy {
                        break;
                    }
                    let (res, got) = super::super::recv(&src, buf, false).await;
                    if res.unwrap() == 0 {
                        break;
                    }
                    let (res, sent) = super::super::send_all(&dst, got).await;
                    res.unwrap();
                    buf = sent;
                }
                loop {
                    if copy {
                        break;
                    }
                    let res = if uring_op {
                        splice_op(src_fd, pipe_w, size, pipe.clone()).await
                    } else {
                        splice_in((&src).into(), &pipe, size)
                    };
                    let n = match res {
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            poll_ready(&src, READABLE).await.unwrap();
                            continue;
                        }
                        res => res.unwrap(),
                    };
                    if n == 0 {
                        break;
                    }
                    let mut left = n;
                    while left > 0 {
                        let res = if uring_op {
                            splice_op(pipe_r, dst_fd, left, pipe.clone()).await
                        } else {
                            splice_out(&pipe, (&dst).into(), left)
                        };
                        match res {
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                poll_ready(&dst, WRITABLE).await.unwrap();
                            }
                            res => left -= res.unwrap(),
                        }
                    }
                }
                drop(dst);
                let (writer, reader) = (writer.join().unwrap(), reader.join().unwrap());
                let cpu = cpu_seconds(libc::RUSAGE_SELF) - cpu0 - writer - reader;
                (cpu, start.elapsed().as_secs_f64())
            });
            let gb = TOTAL as f64 / 1e9;
            println!(
                "{mechanism}, {} KiB: {:.3} CPU s per GB, {:.1} Gbit/s",
                size >> 10,
                relay_cpu / gb,
                gb * 8.0 / secs
            );
        }
    }

    #[test]
    fn a_pipe_larger_than_the_system_allows_is_refused() {
        let max: usize = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(Pipe::new(1 << 20).is_ok());
        // Root may go past the maximum; anyone else is refused.
        // SAFETY: geteuid takes nothing and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            assert!(Pipe::new(max * 2).is_err());
        }
    }
}
