//! The connect to a backend, and the socket's local address. The connect is
//! an io_uring connect that can be cut off: the socket is ours, so a timeout
//! shuts it down, which completes the pending connect at once (a merely
//! dropped io_uring connect would keep its socket until the kernel gave up on
//! the SYN, minutes). The local address (getsockname) tells a backend, in a
//! PROXY protocol header, which address the client connected to.

use std::io;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

use io_uring::{cqueue, opcode, types};
use socket2::{Domain, Protocol, SockAddr, SockRef, Socket, Type};
use tokio_uring::net::TcpStream;
use tokio_uring::{OneshotOutputTransform, UnsubmittedOneshot};

use super::recv_send::completion;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
