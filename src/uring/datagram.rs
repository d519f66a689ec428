//! Datagram operations for the UDP service: a receive that reports the
//! sender, the address the datagram was sent to (IP_PKTINFO /
//! IPV6_PKTINFO) and whether it was cut (MSG_TRUNC) ([`recv_msg`],
//! IORING_OP_RECVMSG); a send to an address from a chosen source address
//! ([`send_msg`], IORING_OP_SENDMSG); and a wait until a socket is readable
//! that holds no buffer ([`poll_readable`], IORING_OP_POLL_ADD), which is
//! what an idle session waits on.
//!
//! Every pointer the kernel is given (the message header, its iovec, the
//! address and the control buffer) is into one boxed [`Datagram`], which
//! moves into the driver with the operation together with a reference to
//! the socket: both outlive the operation even if its future is dropped.

use std::future::Future;
use std::io;
use std::marker::PhantomData;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::rc::Rc;

use io_uring::{cqueue, opcode, types};
use tokio_uring::{OneshotOutputTransform, UnsubmittedOneshot};

use super::recv_send::completion;

/// The largest UDP payload over IPv4 (65,535 less the IP and UDP headers),
/// and the size of every datagram buffer: a larger one (only IPv6 carries
/// it) comes in cut, with MSG_TRUNC, and is dropped.
pub const MAX_DATAGRAM: usize = 65_507;

/// Room for one IPV6_PKTINFO or IP_PKTINFO control message, in `u64`s so
/// it is aligned as a `cmsghdr` must be.
const CONTROL_WORDS: usize = 8;

/// One datagram's bytes and everything a receive or send points the kernel
/// at. Boxed, so the pointers stay good wherever the box moves.
pub struct Datagram {
    /// The payload: up to [`MAX_DATAGRAM`] bytes.
    data: Vec<u8>,
    /// The peer's address.
    name: libc::sockaddr_storage,
    /// The control messages (the destination address).
    control: [u64; CONTROL_WORDS],
    /// The one iovec, over `data`.
    iov: libc::iovec,
    /// The header the kernel reads (and, for a receive, writes).
    hdr: libc::msghdr,
}

impl Datagram {
    /// An empty datagram buffer of [`MAX_DATAGRAM`] bytes.
    pub fn new() -> Box<Datagram> {
        Box::new(Datagram {
            data: Vec::with_capacity(MAX_DATAGRAM),
            // SAFETY: all-zero is a valid value of these plain C structs.
            name: unsafe { mem::zeroed() },
            control: [0; CONTROL_WORDS],
            iov: libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            },
            // SAFETY: as above.
            hdr: unsafe { mem::zeroed() },
        })
    }

    /// The bytes received, or to send.
    pub fn bytes(&self) -> &[u8] {
        &self.data
    }

    /// Puts `head` in front of the bytes (a PROXY header); false, with the
    /// bytes left as they were, when both together exceed [`MAX_DATAGRAM`].
    pub fn prepend(&mut self, head: &[u8]) -> bool {
        if self.data.len() + head.len() > MAX_DATAGRAM {
            return false;
        }
        self.data.splice(0..0, head.iter().copied());
        true
    }

    /// Sets the bytes to send (at most [`MAX_DATAGRAM`] are kept).
    #[cfg(test)]
    pub fn set_bytes(&mut self, bytes: &[u8]) {
        self.data.clear();
        self.data
            .extend_from_slice(&bytes[..bytes.len().min(MAX_DATAGRAM)]);
    }
}

/// What a receive found.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    /// MSG_TRUNC: the datagram was larger than the buffer and came in cut.
    pub truncated: bool,
    /// Who sent it (for a connected socket, its peer).
    pub from: Option<SocketAddr>,
    /// The address it was sent to, from IP_PKTINFO / IPV6_PKTINFO (when
    /// the socket asked for them).
    pub to: Option<IpAddr>,
}

/// Receives one datagram on `sock` into `buf` (IORING_OP_RECVMSG). With
/// `dont_wait`, a socket with nothing queued completes at once with EAGAIN.
/// Submitted at the call; the future holds only the operation in flight
/// (an idle session's task waits on one of these three).
pub fn recv_msg<S: AsRawFd + 'static>(
    sock: &Rc<S>,
    mut buf: Box<Datagram>,
    dont_wait: bool,
) -> impl Future<Output = (io::Result<Arrival>, Box<Datagram>)> {
    let d = &mut *buf;
    d.data.clear();
    d.iov = libc::iovec {
        iov_base: d.data.as_mut_ptr().cast(),
        iov_len: d.data.capacity(),
    };
    d.hdr.msg_name = (&mut d.name as *mut libc::sockaddr_storage).cast();
    d.hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    d.hdr.msg_iov = &mut d.iov;
    d.hdr.msg_iovlen = 1;
    d.hdr.msg_control = d.control.as_mut_ptr().cast();
    d.hdr.msg_controllen = mem::size_of_val(&d.control) as _;
    d.hdr.msg_flags = 0;
    let flags = if dont_wait { libc::MSG_DONTWAIT } else { 0 } as u32;
    let hdr: *mut libc::msghdr = &mut d.hdr;
    let sqe = opcode::RecvMsg::new(types::Fd(sock.as_raw_fd()), hdr)
        .flags(flags)
        .build();
    // The socket (so its descriptor stays open) and the box move into the
    // driver until the kernel completes the receive.
    let op = UnsubmittedOneshot::new((sock.clone(), buf), RecvMsgDone(PhantomData), sqe).submit();
    async move {
        let (res, (_, buf)) = op.await;
        (res, buf)
    }
}

/// Sends `buf`'s bytes on `sock` as one datagram (IORING_OP_SENDMSG): to
/// `to`, or the socket's peer when `None`; from the local address `from`
/// when given (IP_PKTINFO / IPV6_PKTINFO), else the socket's own.
/// Submitted at the call.
pub fn send_msg<S: AsRawFd + 'static>(
    sock: &Rc<S>,
    mut buf: Box<Datagram>,
    to: Option<SocketAddr>,
    from: Option<IpAddr>,
) -> impl Future<Output = (io::Result<usize>, Box<Datagram>)> {
    let d = &mut *buf;
    d.iov = libc::iovec {
        iov_base: d.data.as_mut_ptr().cast(),
        iov_len: d.data.len(),
    };
    d.hdr.msg_iov = &mut d.iov;
    d.hdr.msg_iovlen = 1;
    d.hdr.msg_flags = 0;
    match to {
        Some(to) => {
            let len = write_sockaddr(&mut d.name, to);
            d.hdr.msg_name = (&mut d.name as *mut libc::sockaddr_storage).cast();
            d.hdr.msg_namelen = len;
        }
        None => {
            d.hdr.msg_name = std::ptr::null_mut();
            d.hdr.msg_namelen = 0;
        }
    }
    let control_len = match from {
        Some(from) => write_pktinfo(&mut d.control, from, to),
        None => 0,
    };
    d.hdr.msg_control = if control_len == 0 {
        std::ptr::null_mut()
    } else {
        d.control.as_mut_ptr().cast()
    };
    d.hdr.msg_controllen = control_len as _;
    let hdr: *const libc::msghdr = &d.hdr;
    let sqe = opcode::SendMsg::new(types::Fd(sock.as_raw_fd()), hdr)
        .flags(libc::MSG_NOSIGNAL as u32)
        .build();
    let op = UnsubmittedOneshot::new((sock.clone(), buf), SendMsgDone(PhantomData), sqe).submit();
    async move {
        let (res, (_, buf)) = op.await;
        (res, buf)
    }
}

/// Waits until `sock` is readable or has an error pending (a connected UDP
/// socket's ICMP unreachable), holding no buffer (IORING_OP_POLL_ADD).
/// Resolves to the poll mask. Submitted at the call.
pub fn poll_readable<S: AsRawFd + 'static>(sock: &Rc<S>) -> impl Future<Output = io::Result<u32>> {
    let mask = (libc::POLLIN | libc::POLLERR | libc::POLLHUP) as u32;
    let sqe = opcode::PollAdd::new(types::Fd(sock.as_raw_fd()), mask).build();
    UnsubmittedOneshot::new(sock.clone(), PollDone(PhantomData), sqe).submit()
}

/// Writes `addr` as a `sockaddr_in` or `sockaddr_in6`; returns its length.
fn write_sockaddr(out: &mut libc::sockaddr_storage, addr: SocketAddr) -> libc::socklen_t {
    let sockaddr = socket2::SockAddr::from(addr);
    let len = sockaddr.len();
    // SAFETY: `SockAddr` holds a `sockaddr_storage` of which `len` bytes
    // are the address; `out` is a `sockaddr_storage` too, so `len` bytes fit.
    unsafe {
        std::ptr::copy_nonoverlapping(
            sockaddr.as_ptr().cast::<u8>(),
            (out as *mut libc::sockaddr_storage).cast::<u8>(),
            len as usize,
        );
    }
    len
}

/// Reads a `sockaddr_in` or `sockaddr_in6` the kernel wrote.
fn read_sockaddr(name: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    match i32::from(name.ss_family) {
        libc::AF_INET if len as usize >= mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a `sockaddr_in`,
            // which fits in it and needs no stricter alignment.
            let sin =
                unsafe { &*(name as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len as usize >= mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for a `sockaddr_in6`.
            let sin6 =
                unsafe { &*(name as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Writes the control message that sends from `from`; returns its length.
/// An IPv4 source, or an IPv4 client of a dual-stack socket, takes
/// IP_PKTINFO; an IPv6 one IPV6_PKTINFO.
fn write_pktinfo(
    control: &mut [u64; CONTROL_WORDS],
    from: IpAddr,
    to: Option<SocketAddr>,
) -> usize {
    let v4_client = to.is_some_and(|t| t.ip().to_canonical().is_ipv4());
    let from = from.to_canonical();
    *control = [0; CONTROL_WORDS];
    let base = control.as_mut_ptr().cast::<u8>();
    match from {
        IpAddr::V4(v4) => {
            let info = libc::in_pktinfo {
                ipi_ifindex: 0,
                ipi_spec_dst: libc::in_addr {
                    s_addr: u32::from(v4).to_be(),
                },
                ipi_addr: libc::in_addr { s_addr: 0 },
            };
            put_cmsg(base, libc::SOL_IP, libc::IP_PKTINFO, &info)
        }
        IpAddr::V6(_) if v4_client => 0,
        IpAddr::V6(v6) => {
            let info = libc::in6_pktinfo {
                ipi6_addr: libc::in6_addr {
                    s6_addr: v6.octets(),
                },
                ipi6_ifindex: 0,
            };
            put_cmsg(base, libc::SOL_IPV6, libc::IPV6_PKTINFO, &info)
        }
    }
}

/// Writes one control message holding `value` at `base`; returns the space
/// it takes.
fn put_cmsg<T: Copy>(base: *mut u8, level: i32, kind: i32, value: &T) -> usize {
    let data_len = mem::size_of::<T>() as u32;
    // SAFETY: CMSG_SPACE is pure arithmetic.
    let space = unsafe { libc::CMSG_SPACE(data_len) } as usize;
    assert!(space <= CONTROL_WORDS * 8, "control buffer too small");
    // SAFETY: `base` is the 8-aligned control buffer of CONTROL_WORDS
    // words, which the assert shows holds the header and the value; the
    // header is written first, so CMSG_DATA points inside the buffer.
    unsafe {
        let hdr = base.cast::<libc::cmsghdr>();
        (*hdr).cmsg_level = level;
        (*hdr).cmsg_type = kind;
        (*hdr).cmsg_len = libc::CMSG_LEN(data_len) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(hdr).cast::<T>(), *value);
    }
    space
}

/// The destination address in a received message's control messages.
fn read_pktinfo(hdr: &libc::msghdr) -> Option<IpAddr> {
    if hdr.msg_control.is_null() || hdr.msg_controllen < mem::size_of::<libc::cmsghdr>() {
        return None;
    }
    // SAFETY: the kernel wrote `msg_controllen` bytes of control messages
    // into the buffer `msg_control` points at (the `Datagram`'s, alive
    // here); the CMSG_* macros walk them within that length, and each
    // value is read unaligned from inside its message.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(hdr);
        while !cmsg.is_null() {
            let c = &*cmsg;
            let data = libc::CMSG_DATA(cmsg);
            if c.cmsg_level == libc::SOL_IP && c.cmsg_type == libc::IP_PKTINFO {
                let info = std::ptr::read_unaligned(data.cast::<libc::in_pktinfo>());
                return Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                    info.ipi_addr.s_addr,
                ))));
            }
            if c.cmsg_level == libc::SOL_IPV6 && c.cmsg_type == libc::IPV6_PKTINFO {
                let info = std::ptr::read_unaligned(data.cast::<libc::in6_pktinfo>());
                return Some(IpAddr::V6(Ipv6Addr::from(info.ipi6_addr.s6_addr)).to_canonical());
            }
            cmsg = libc::CMSG_NXTHDR(hdr, cmsg);
        }
    }
    None
}

/// Turns a receive's completion into what it found.
struct RecvMsgDone<S>(PhantomData<fn() -> S>);

impl<S> OneshotOutputTransform for RecvMsgDone<S> {
    type Output = (io::Result<Arrival>, (Rc<S>, Box<Datagram>));
    type StoredData = (Rc<S>, Box<Datagram>);

    fn transform_oneshot_output(
        self,
        (sock, mut buf): Self::StoredData,
        cqe: cqueue::Entry,
    ) -> Self::Output {
        let res = completion(&cqe).map(|n| {
            let d = &mut *buf;
            let copied = n.min(d.data.capacity());
            // SAFETY: the kernel wrote `n` bytes of the datagram (all of
            // it, or with MSG_TRUNC the first `capacity` bytes) at the
            // start of the buffer.
            unsafe { d.data.set_len(copied) };
            Arrival {
                truncated: d.hdr.msg_flags & libc::MSG_TRUNC != 0,
                from: read_sockaddr(&d.name, d.hdr.msg_namelen),
                to: read_pktinfo(&d.hdr),
            }
        });
        (res, (sock, buf))
    }
}

/// Turns a send's completion into its byte count.
struct SendMsgDone<S>(PhantomData<fn() -> S>);

impl<S> OneshotOutputTransform for SendMsgDone<S> {
    type Output = (io::Result<usize>, (Rc<S>, Box<Datagram>));
    type StoredData = (Rc<S>, Box<Datagram>);

    fn transform_oneshot_output(self, data: Self::StoredData, cqe: cqueue::Entry) -> Self::Output {
        (completion(&cqe), data)
    }
}

/// Turns a poll's completion into its mask.
struct PollDone<S>(PhantomData<fn() -> S>);

impl<S> OneshotOutputTransform for PollDone<S> {
    type Output = io::Result<u32>;
    type StoredData = Rc<S>;

    fn transform_oneshot_output(self, _sock: Rc<S>, cqe: cqueue::Entry) -> Self::Output {
        completion(&cqe).map(|mask| mask as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    #[test]
    fn datagrams_whole_cut_and_from_a_chosen_address() {
        tokio_uring::start(async {
            let ours = Rc::new(UdpSocket::bind("[::]:0").unwrap());
            nix::sys::socket::setsockopt(
                &*ours,
                nix::sys::socket::sockopt::Ipv6RecvPacketInfo,
                &true,
            )
            .unwrap();
            nix::sys::socket::setsockopt(&*ours, nix::sys::socket::sockopt::Ipv4PacketInfo, &true)
                .unwrap();
            let port = ours.local_addr().unwrap().port();
            let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
            let whole: Vec<u8> = (0..MAX_DATAGRAM).map(|i| (i % 251) as u8).collect();
            peer.send_to(&whole, ("127.0.0.1", port)).unwrap();
            let (res, buf) = recv_msg(&ours, Datagram::new(), false).await;
            let got = res.unwrap();
            assert!(!got.truncated);
            assert!(buf.bytes() == &whole[..]);
            assert_eq!(
                got.from.map(|a| a.ip().to_canonical()),
                Some(peer.local_addr().unwrap().ip())
            );
            assert_eq!(got.to, Some("127.0.0.1".parse().unwrap()));
            // The reply leaves from the address the peer sent to.
            let mut buf = buf;
            buf.set_bytes(b"reply");
            let (res, buf) = send_msg(&ours, buf, got.from, got.to).await;
            assert_eq!(res.unwrap(), 5);
            let mut back = [0u8; 16];
            let (n, from) = peer.recv_from(&mut back).unwrap();
            assert_eq!(
                (&back[..n], from),
                (&b"reply"[..], SocketAddr::from(([127, 0, 0, 1], port)))
            );
            // Over IPv6 a datagram can be larger than any buffer here: cut.
            let v6 = UdpSocket::bind("[::1]:0").unwrap();
            let big = vec![7u8; MAX_DATAGRAM + 20];
            v6.send_to(&big, ("::1", port)).unwrap();
            let (res, buf) = recv_msg(&ours, buf, false).await;
            let got = res.unwrap();
            assert!(got.truncated, "{got:?}");
            assert_eq!(got.to, Some("::1".parse().unwrap()));
            // Nothing queued: at once EAGAIN without waiting.
            let (res, _) = recv_msg(&ours, buf, true).await;
            assert_eq!(res.unwrap_err().raw_os_error(), Some(libc::EAGAIN));
            peer.send_to(b"x", ("127.0.0.1", port)).unwrap();
            let mask = poll_readable(&ours).await.unwrap();
            assert!(mask & libc::POLLIN as u32 != 0);
        });
    }
}
