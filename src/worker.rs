//! One worker: an OS thread running its own tokio-uring runtime around its own
//! SO_REUSEPORT listener. It accepts clients, connects each to a backend, runs
//! the relay, and on shutdown stops accepting and drains.
//!
//! All state here is per worker (`Rc`, `Cell`, `RefCell`): tasks never cross
//! threads, so nothing on the data path takes a lock or shares a cache line.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use slab::Slab;
use tokio::sync::Notify;
use tokio_uring::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use crate::buffer::BufPool;
use crate::config::Config;
use crate::logging::Throttle;
use crate::pool::Pool;
use crate::relay::{self, relay};
use crate::shutdown::{self, Phase};
use crate::upstream::Upstream;

/// Submission queue entries per ring.
const RING_ENTRIES: u32 = 1024;
/// How long the SQPOLL kernel thread spins without work before it sleeps.
const SQPOLL_IDLE_MS: u32 = 1000;
/// Accept operations each worker keeps pending.
const ACCEPTS_IN_FLIGHT: usize = 8;
/// Pause after a failed accept (EMFILE and the like), so we neither spin nor stall long.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// Starts worker `id` on its own thread. Returns once its runtime is built, or
/// the error that kept it from being built.
pub fn spawn(
    id: usize,
    config: Arc<Config>,
    pool: Arc<Pool>,
    listener: socket2::Socket,
    watch: shutdown::Watch,
) -> io::Result<thread::JoinHandle<()>> {
    // A second handle on the listening socket: shutting it down completes the
    // pending accept, which dropping the accept future would not.
    let stopper = listener.try_clone()?;
    let pin_to = config.pin.then(|| {
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        (!cores.is_empty()).then(|| cores[id % cores.len()])
    });
    let pin_to = pin_to.flatten();
    let (ready_tx, ready_rx) = mpsc::channel();
    let handle = thread::Builder::new()
        .name(format!("ringlb-w{id}"))
        .spawn(move || {
            if let Some(core) = pin_to {
                if !core_affinity::set_for_current(core) {
                    warn!(worker = id, core = core.id, "cannot pin worker to its CPU");
                }
            }
            let rt = match build_runtime(config.sqpoll) {
                Ok(rt) => {
                    let _ = ready_tx.send(Ok(()));
                    rt
                }
                Err(err) => {
                    let _ = ready_tx.send(Err(err));
                    return;
                }
            };
            rt.block_on(serve(id, config, pool, listener, stopper, watch));
        })?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(err)) => Err(err),
        Err(_) => Err(io::Error::other("worker thread died while starting")),
    }
}

/// A ring with COOP_TASKRUN (fewer interrupts; kernel 5.19+), falling back to
/// a plain one. With `sqpoll`, a kernel thread polls the submission queue
/// (no fallback: the user asked for it).
fn build_runtime(sqpoll: bool) -> io::Result<tokio_uring::Runtime> {
    let mut uring = tokio_uring::uring_builder();
    if sqpoll {
        // COOP_TASKRUN is not allowed with SQPOLL.
        uring.setup_sqpoll(SQPOLL_IDLE_MS);
        return tokio_uring::Runtime::new(
            tokio_uring::builder()
                .entries(RING_ENTRIES)
                .uring_builder(&uring),
        )
        .map_err(|err| {
            io::Error::new(
                err.kind(),
                format!("cannot set up io_uring with SQPOLL: {err}"),
            )
        });
    }
    uring.setup_coop_taskrun();
    tokio_uring::Runtime::new(
        tokio_uring::builder()
            .entries(RING_ENTRIES)
            .uring_builder(&uring),
    )
    .or_else(|_| tokio_uring::Runtime::new(tokio_uring::builder().entries(RING_ENTRIES)))
    .map_err(|err| io::Error::new(err.kind(), format!("cannot set up io_uring: {err}")))
}

/// The per-worker state every connection task shares.
struct Worker {
    /// Backend choice and connects.
    upstream: Upstream,
    /// Large relay buffers for reuse.
    buffers: BufPool,
    /// Open connections' sockets, so a drain that runs out of time can shut them down.
    conns: RefCell<Slab<Conn>>,
    /// Set once the drain timeout passed or a second signal came.
    aborting: Cell<bool>,
    /// Woken when the last connection closes, for the drain.
    idle: Notify,
}

/// The sockets of one open connection.
struct Conn {
    client: Rc<TcpStream>,
    backend: Option<Rc<TcpStream>>,
}

impl Worker {
    /// Shuts every open connection down; their relays then end on their own.
    fn abort_all(&self) {
        self.aborting.set(true);
        for (_, conn) in self.conns.borrow().iter() {
            let _ = conn.client.shutdown(Shutdown::Both);
            if let Some(backend) = &conn.backend {
                let _ = backend.shutdown(Shutdown::Both);
            }
        }
    }

    async fn wait_idle(&self) {
        while !self.conns.borrow().is_empty() {
            self.idle.notified().await;
        }
    }
}

/// Removes a connection from the registry when its task ends, however it ends.
struct Registration {
    worker: Rc<Worker>,
    key: usize,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut conns = self.worker.conns.borrow_mut();
        conns.remove(self.key);
        if conns.is_empty() {
            self.worker.idle.notify_one();
        }
    }
}

async fn serve(
    id: usize,
    config: Arc<Config>,
    pool: Arc<Pool>,
    listener: socket2::Socket,
    stopper: socket2::Socket,
    mut watch: shutdown::Watch,
) {
    let listener = TcpListener::from_std(listener.into());
    let worker = Rc::new(Worker {
        upstream: Upstream::new(pool, config.balance, config.connect_timeout, id as u64),
        buffers: BufPool::new(config.buffer_size),
        conns: RefCell::new(Slab::new()),
        aborting: Cell::new(false),
        idle: Notify::new(),
    });

    let mut stop_watch = watch.clone();
    tokio_uring::spawn(async move {
        shutdown::reached(&mut stop_watch, Phase::Draining).await;
        let _ = stopper.shutdown(Shutdown::Both);
    });

    // Several accepts in flight, so a burst of new clients is taken in one
    // turn of the ring rather than one client per turn.
    let listener = Rc::new(listener);
    let accept_throttle = Rc::new(Throttle::new(Duration::from_secs(1)));
    let acceptors: Vec<_> = (0..ACCEPTS_IN_FLIGHT)
        .map(|_| {
            tokio_uring::spawn(accept_loop(
                id,
                listener.clone(),
                worker.clone(),
                watch.clone(),
                accept_throttle.clone(),
            ))
        })
        .collect();
    for acceptor in acceptors {
        let _ = acceptor.await;
    }
    drop(listener);

    let open = worker.conns.borrow().len();
    if open > 0 {
        info!(worker = id, open, "draining connections");
    }
    tokio::select! {
        _ = worker.wait_idle() => return,
        _ = tokio::time::sleep(config.drain_timeout) => {
            info!(worker = id, open = worker.conns.borrow().len(), "drain timeout; closing connections");
        }
        _ = shutdown::reached(&mut watch, Phase::Abort) => {}
    }
    worker.abort_all();
    worker.wait_idle().await;
}

/// Accepts clients until the listener is shut down for the drain.
async fn accept_loop(
    id: usize,
    listener: Rc<TcpListener>,
    worker: Rc<Worker>,
    watch: shutdown::Watch,
    throttle: Rc<Throttle>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                tokio_uring::spawn(handle(worker.clone(), stream, peer));
            }
            Err(_) if *watch.borrow() >= Phase::Draining => break,
            Err(err) => {
                if let Some(suppressed) = throttle.allow(Instant::now()) {
                    warn!(worker = id, %err, suppressed, "accept failed; backing off");
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// One client connection, from accept to close.
async fn handle(worker: Rc<Worker>, client: TcpStream, peer: SocketAddr) {
    let start = Instant::now();
    let client = Rc::new(client);
    let key = worker.conns.borrow_mut().insert(Conn {
        client: client.clone(),
        backend: None,
    });
    let _registration = Registration {
        worker: worker.clone(),
        key,
    };
    if worker.aborting.get() {
        return;
    }

    let (lease, backend) = match worker.upstream.connect(peer.ip()).await {
        Ok(connected) => connected,
        Err(reason) => {
            debug!(client = %peer, %reason, "connection closed");
            return;
        }
    };
    let backend = Rc::new(backend);
    worker.conns.borrow_mut()[key].backend = Some(backend.clone());
    if worker.aborting.get() {
        relay::teardown(&client, &backend);
    }

    let outcome = relay(&client, &backend, &worker.buffers).await;
    debug!(
        client = %peer,
        backend = %worker.upstream.pool().addr(lease.index()),
        to_backend = outcome.to_backend,
        to_client = outcome.to_client,
        duration = ?start.elapsed(),
        reason = %outcome.reason(worker.aborting.get()),
        "connection closed"
    );
}
