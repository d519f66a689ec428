//! Choosing a backend and connecting to it. A connect that is refused or times
//! out moves on to the next backend until each has been tried once.
//!
//! Connects go through tokio's reactor under a timeout and only then become
//! tokio-uring streams: a dropped io_uring connect would keep its socket until
//! the kernel gave up (minutes), while dropping tokio's closes it at once.

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio_uring::net::TcpStream;
use tracing::warn;

use crate::config::BackendConfig;
use crate::logging::Throttle;

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

/// One worker's view of the backend pool.
pub struct Upstream {
    /// The pool, as configured.
    backends: Vec<BackendConfig>,
    /// Round-robin position; per worker, so no sharing.
    next: Cell<usize>,
    /// Limit per connect attempt.
    timeout: Duration,
    /// Keeps connect-failure warnings to one a second.
    warn_throttle: Throttle,
}

impl Upstream {
    /// A pool starting its rotation at `start`, so workers do not all begin on backend 0.
    pub fn new(backends: Vec<BackendConfig>, timeout: Duration, start: usize) -> Self {
        let next = Cell::new(start % backends.len().max(1));
        Upstream {
            backends,
            next,
            timeout,
            warn_throttle: Throttle::new(Duration::from_secs(1)),
        }
    }

    /// Connects to the next backend that answers, trying each at most once.
    /// Returns its index and the stream, or `None` when none answered.
    pub async fn connect(&self) -> Option<(usize, TcpStream)> {
        let n = self.backends.len();
        for _ in 0..n {
            let i = self.next.get();
            self.next.set((i + 1) % n);
            match connect(self.backends[i].addr, self.timeout).await {
                Ok(stream) => return Some((i, stream)),
                Err(err) => {
                    if let Some(suppressed) = self.warn_throttle.allow(Instant::now()) {
                        warn!(%err, suppressed, "backend connect failed");
                    }
                }
            }
        }
        None
    }

    /// The address of backend `i`.
    pub fn addr(&self, i: usize) -> SocketAddr {
        self.backends[i].addr
    }
}

/// Connects to `addr` within `timeout`; on timeout the socket is closed at once.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ConnectError> {
    let io_err = |source| ConnectError::Io { addr, source };
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .map_err(io_err)?;
    socket.set_nodelay(true).map_err(io_err)?;
    let stream = tokio::time::timeout(timeout, socket.connect(addr))
        .await
        .map_err(|_| ConnectError::Timeout { addr, timeout })?
        .map_err(io_err)?;
    let std = stream.into_std().map_err(io_err)?;
    Ok(TcpStream::from_std(std))
}
