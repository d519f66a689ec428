//! The two pumps that carry a connection's bytes: client -> backend and
//! backend -> client, both driven by one task.
//!
//! Each pump reads into an owned buffer and writes that same buffer out, so
//! there is no copy in user space and at most one buffer per direction is in
//! flight (the backpressure bound: a slow reader stalls the writer's pump,
//! never grows memory). EOF on one side becomes `shutdown(Write)` on the other
//! while the opposite pump keeps going (half-close). An error on either side
//! shuts both sockets down, which completes the other pump's pending
//! operations in the kernel: in tokio-uring a dropped operation is not
//! cancelled, so we never tear down by dropping futures.

use std::cell::Cell;
use std::fmt;
use std::io;
use std::net::Shutdown;
use std::time::Instant;

use tokio_uring::net::TcpStream;

use crate::buffer::{self, BufPool};
use crate::uring::{self, Received};

/// Which peer of the proxied connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The peer that connected to us.
    Client,
    /// The peer we connected to.
    Backend,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Client => "client",
            Side::Backend => "backend",
        })
    }
}

/// A failed read or write, naming the side it failed on.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Reading from `side` failed.
    #[error("{side} read failed: {source}")]
    Read {
        /// Where.
        side: Side,
        /// The OS error.
        source: io::Error,
    },
    /// Writing to `side` failed.
    #[error("{side} write failed: {source}")]
    Write {
        /// Where.
        side: Side,
        /// The OS error.
        source: io::Error,
    },
}

/// How a relayed connection ended.
#[derive(Debug)]
pub struct Outcome {
    /// Bytes carried from client to backend.
    pub to_backend: u64,
    /// Bytes carried from backend to client.
    pub to_client: u64,
    /// The first side to send EOF, when both directions ended cleanly.
    pub first_eof: Option<Side>,
    /// The first error, if any; its pump tore the connection down.
    pub error: Option<RelayError>,
}

impl RelayError {
    /// The side whose socket failed.
    pub fn side(&self) -> Side {
        match self {
            RelayError::Read { side, .. } | RelayError::Write { side, .. } => *side,
        }
    }
}

/// Relays between `client` and `backend` until both directions have ended or
/// one fails. Leaves both sockets open; the caller drops them.
/// When `activity` is given, every read that brings bytes stamps it with the
/// time, for the idle timeout.
pub async fn relay(
    client: &TcpStream,
    backend: &TcpStream,
    pool: &BufPool,
    activity: Option<&Cell<Instant>>,
) -> Outcome {
    let first_eof = Cell::new(None);
    let up = pump(client, backend, Side::Client, pool, &first_eof, activity);
    let down = pump(backend, client, Side::Backend, pool, &first_eof, activity);
    let ((to_backend, up_err), (to_client, down_err)) = tokio::join!(up, down);
    Outcome {
        to_backend,
        to_client,
        first_eof: first_eof.get(),
        error: up_err.or(down_err),
    }
}

/// Copies `src` to `dst` until EOF, then half-closes `dst`. Returns the byte
/// count and the error that stopped it, if any.
async fn pump(
    src: &TcpStream,
    dst: &TcpStream,
    from: Side,
    pool: &BufPool,
    first_eof: &Cell<Option<Side>>,
    activity: Option<&Cell<Instant>>,
) -> (u64, Option<RelayError>) {
    let to = match from {
        Side::Client => Side::Backend,
        Side::Backend => Side::Client,
    };
    // The pump's own buffer, when it has one: none while it waits on the
    // provided ring.
    let mut own = Some(pool.small());
    let mut total = 0u64;
    // Whether the next read should wait for readiness before trying: yes when
    // the last read drained the socket (it came back short of the buffer),
    // as every read does in request-response traffic, where the peer says
    // nothing until its answer comes. A backend rarely speaks before the
    // client's first bytes; the client usually has, by the time we get here.
    let mut poll_first = from == Side::Backend;
    let error = loop {
        // A read that will most likely wait takes its buffer from the
        // worker's provided ring when data arrives, so a connection waiting
        // on an idle peer holds no buffer of its own; the bytes are sent
        // from that same buffer, which goes back to the ring once sent.
        if poll_first {
            if let Some(b) = own.take() {
                pool.put(b);
            }
            match uring::recv_provided(src, true).await {
                Some(Ok(Received::Eof)) => break None,
                Some(Ok(Received::Bytes(received))) => {
                    let n = received.len();
                    if let Some(activity) = activity {
                        activity.set(Instant::now());
                    }
                    let (res, received) = uring::send_all(dst, received).await;
                    let full = n == received.capacity();
                    drop(received);
                    if let Err(source) = res {
                        break Some(RelayError::Write { side: to, source });
                    }
                    total += n as u64;
                    // A full buffer: more is likely waiting, so read on at
                    // once, into a large buffer of our own.
                    poll_first = !full;
                    if full {
                        own = Some(pool.resize(pool.small(), buffer::SMALL));
                    }
                    continue;
                }
                // Every buffer of the ring is out, and bytes are waiting: a
                // buffer of our own, read at once.
                Some(Ok(Received::RingEmpty)) => poll_first = false,
                Some(Err(source)) => break Some(RelayError::Read { side: from, source }),
                // No ring on this worker: a buffer of our own.
                None => {}
            }
        }
        let buf = own.take().unwrap_or_else(|| pool.small());
        let (res, buf) = uring::recv(src, buf, poll_first).await;
        let n = match res {
            Ok(0) => {
                own = Some(buf);
                break None;
            }
            Ok(n) => n,
            Err(source) => {
                own = Some(buf);
                break Some(RelayError::Read { side: from, source });
            }
        };
        if let Some(activity) = activity {
            activity.set(Instant::now());
        }
        let (res, buf) = uring::send_all(dst, buf).await;
        if let Err(source) = res {
            own = Some(buf);
            break Some(RelayError::Write { side: to, source });
        }
        total += n as u64;
        poll_first = n < buf.capacity();
        own = Some(pool.resize(buf, n));
    };
    if let Some(buf) = own {
        pool.put(buf);
    }
    if error.is_some() {
        teardown(src, dst);
        return (total, error);
    }
    if first_eof.get().is_none() {
        first_eof.set(Some(from));
        let _ = dst.shutdown(Shutdown::Write);
    }
    // Otherwise the other direction has ended too: both sockets are about to
    // be closed, and close() sends the FIN (both receive queues are drained,
    // so it is a FIN, not a reset), which saves a shutdown call per connection.
    (total, None)
}

/// Shuts both sockets down so every pending operation on them completes.
pub fn teardown(a: &TcpStream, b: &TcpStream) {
    let _ = a.shutdown(Shutdown::Both);
    let _ = b.shutdown(Shutdown::Both);
}
