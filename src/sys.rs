//! The one socket query tokio-uring's `TcpStream` does not offer: its local
//! address (getsockname), needed to tell a backend, in a PROXY protocol
//! header, which address the client connected to.

#![allow(unsafe_code)]

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd};

use socket2::SockRef;
use tokio_uring::net::TcpStream;

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
