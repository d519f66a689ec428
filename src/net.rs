//! Socket setup done once at start-up, before any worker runs: the
//! SO_REUSEPORT listeners (one per worker, all on the same address), TCP or
//! UDP, and the file-descriptor limit. Binding here, on the main thread, is what lets a
//! taken address fail start-up with one clear line instead of a worker dying.
//! An IPv6 wildcard listener (`[::]`) takes IPv4 clients too (IPV6_V6ONLY
//! off), and becomes `0.0.0.0` on a host without IPv6.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};
use tracing::warn;

/// Pending connections the kernel may hold per listener; generous because
/// churn benchmarks open connections faster than one accept at a time.
const LISTEN_BACKLOG: i32 = 4096;

/// A failed start-up socket call; one variant per syscall, each naming the address.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// socket(2) failed.
    #[error("cannot create a socket for {addr}: {source}")]
    Socket {
        /// The listen address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// setsockopt(2) failed.
    #[error("cannot set {option} on the socket for {addr}: {source}")]
    SetOption {
        /// The listen address.
        addr: SocketAddr,
        /// Which option.
        option: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// bind(2) failed, typically because another program holds the address.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The listen address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// listen(2) failed.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The listen address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
}

/// Binds `count` listeners to `addr` with SO_REUSEPORT, so the kernel spreads
/// new connections across them. If `addr` has port 0, the first bind picks the
/// port and the others join it. `[::]` listens dual-stack; where the host has
/// no IPv6 it falls back to `0.0.0.0` on the same port.
pub fn bind_listeners(addr: SocketAddr, count: usize) -> Result<Vec<Socket>, BindError> {
    bind_group(addr, count, bind_one)
}

/// Binds `count` UDP sockets to `addr` with SO_REUSEPORT, as
/// [`bind_listeners`] binds TCP listeners: the kernel hashes each client's
/// address to one of them, so a client's datagrams all reach one worker.
/// A wildcard address also asks for each datagram's destination address
/// (IP_PKTINFO, IPV6_RECVPKTINFO), so a reply goes out from the address
/// the client sent to.
pub fn bind_datagrams(addr: SocketAddr, count: usize) -> Result<Vec<Socket>, BindError> {
    bind_group(addr, count, bind_datagram)
}

/// Whether sockets bound to `addr` report each datagram's destination.
pub fn wants_pktinfo(addr: SocketAddr) -> bool {
    addr.ip().is_unspecified()
}

fn bind_group(
    addr: SocketAddr,
    count: usize,
    bind_one: fn(SocketAddr) -> Result<Socket, BindError>,
) -> Result<Vec<Socket>, BindError> {
    let mut listeners: Vec<Socket> = Vec::with_capacity(count);
    let mut addr = addr;
    for _ in 0..count {
        let socket = match bind_one(addr) {
            Err(err) if listeners.is_empty() && is_ipv6_missing(addr, &err) => {
                let v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), addr.port());
                warn!(listen = %addr, %err, fallback = %v4, "no IPv6: listening on IPv4 only");
                addr = v4;
                bind_one(addr)?
            }
            res => res?,
        };
        if addr.port() == 0 {
            addr = socket
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .unwrap_or(addr);
        }
        listeners.push(socket);
    }
    Ok(listeners)
}

/// Whether binding the IPv6 wildcard failed because the host has no IPv6
/// (no such address family, or no IPv6 address to bind), not for a reason
/// that 0.0.0.0 would share, such as the port being taken.
fn is_ipv6_missing(addr: SocketAddr, err: &BindError) -> bool {
    let errno = match err {
        BindError::Socket { source, .. } | BindError::Bind { source, .. } => source.raw_os_error(),
        _ => None,
    };
    addr.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        && matches!(errno, Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL))
}

/// A socket of type `ty` for `addr` with what every frontend socket sets:
/// SO_REUSEADDR, SO_REUSEPORT (a socket per worker), and for IPv6 a
/// dual-stack `[::]` whatever net.ipv6.bindv6only says.
fn reuseport_socket(addr: SocketAddr, ty: Type, protocol: Protocol) -> Result<Socket, BindError> {
    let socket = Socket::new(Domain::for_address(addr), ty, Some(protocol))
        .map_err(|source| BindError::Socket { addr, source })?;
    set_option(addr, "SO_REUSEADDR", socket.set_reuse_address(true))?;
    set_option(addr, "SO_REUSEPORT", socket.set_reuse_port(true))?;
    if addr.is_ipv6() {
        set_option(addr, "IPV6_V6ONLY", socket.set_only_v6(false))?;
    }
    Ok(socket)
}

/// A socket option's result, as the bind error naming it.
fn set_option(
    addr: SocketAddr,
    option: &'static str,
    res: io::Result<()>,
) -> Result<(), BindError> {
    res.map_err(|source| BindError::SetOption {
        addr,
        option,
        source,
    })
}

fn bind_one(addr: SocketAddr) -> Result<Socket, BindError> {
    let socket = reuseport_socket(addr, Type::STREAM, Protocol::TCP)?;
    let opt = |option, res| set_option(addr, option, res);
    // Accepted sockets inherit TCP_NODELAY from the listener on Linux.
    opt("TCP_NODELAY", socket.set_nodelay(true))?;
    socket
        .bind(&addr.into())
        .map_err(|source| BindError::Bind { addr, source })?;
    socket
        .listen(LISTEN_BACKLOG)
        .map_err(|source| BindError::Listen { addr, source })?;
    Ok(socket)
}

fn bind_datagram(addr: SocketAddr) -> Result<Socket, BindError> {
    let socket = reuseport_socket(addr, Type::DGRAM, Protocol::UDP)?;
    let opt = |option, res| set_option(addr, option, res);
    if wants_pktinfo(addr) {
        let nix = |e: nix::Error| io::Error::from_raw_os_error(e as i32);
        use nix::sys::socket::{setsockopt, sockopt};
        // An IPv4 client of a dual-stack socket comes with IP_PKTINFO.
        opt(
            "IP_PKTINFO",
            setsockopt(&socket, sockopt::Ipv4PacketInfo, &true).map_err(nix),
        )
        .or_else(|err| if addr.is_ipv6() { Ok(()) } else { Err(err) })?;
        if addr.is_ipv6() {
            opt(
                "IPV6_RECVPKTINFO",
                setsockopt(&socket, sockopt::Ipv6RecvPacketInfo, &true).map_err(nix),
            )?;
        }
    }
    // Room for a burst while the worker is busy; the kernel caps it at
    // net.core.rmem_max, and a smaller buffer only drops sooner.
    let _ = socket.set_recv_buffer_size(DATAGRAM_RECV_BUFFER);
    socket
        .bind(&addr.into())
        .map_err(|source| BindError::Bind { addr, source })?;
    Ok(socket)
}

/// The receive buffer asked for each UDP frontend socket.
const DATAGRAM_RECV_BUFFER: usize = 4 << 20;

/// Raises the soft open-file limit to the hard limit, since each proxied
/// connection costs two descriptors. Returns the limit now in force.
pub fn raise_nofile_limit() -> io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}
