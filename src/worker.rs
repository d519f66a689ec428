//! One worker: an OS thread running its own tokio-uring runtime around its own
//! SO_REUSEPORT listener. It accepts clients, connects each to a backend, runs
//! the relay, and on shutdown stops accepting and drains.
//!
//! All state here is per worker (`Rc`, `Cell`, `RefCell`): tasks never cross
//! threads, so nothing on the data path takes a lock or shares a cache line.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::Shutdown;
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use slab::Slab;
use tokio::sync::Notify;
use tokio_uring::net::{TcpListener, TcpStream};
use tracing::{info, warn};

use crate::buffer::BufPool;
use crate::config::Config;
use crate::conn;
use crate::limit::ConnLimit;
use crate::logging::Throttle;
use crate::metrics::{Metrics, WorkerMetrics};
use crate::pool::Pool;
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

/// What all workers share: the pool, the counters, the connection limit.
#[derive(Clone)]
pub struct Shared {
    /// Backends, health and active counts.
    pub pool: Arc<Pool>,
    /// Every worker's counters.
    pub metrics: Arc<Metrics>,
    /// The frontend's max-conns, if set.
    pub limit: Option<Arc<ConnLimit>>,
}

/// Starts worker `id` on its own thread. Returns once its runtime is built, or
/// the error that kept it from being built.
pub fn spawn(
    id: usize,
    config: Arc<Config>,
    shared: Shared,
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
            rt.block_on(serve(id, config, shared, listener, stopper, watch));
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
pub struct Worker {
    /// Which worker, to find its counters.
    id: usize,
    /// The frontend's name, for logs and metric labels.
    pub frontend: String,
    /// Backend choice and connects.
    pub upstream: Upstream,
    /// Large relay buffers for reuse.
    pub buffers: BufPool,
    /// Per-connection time limits and logging.
    pub limits: Limits,
    /// Every worker's counters; this one writes only its own.
    metrics: Arc<Metrics>,
    /// Open connections' sockets, so a drain that runs out of time can shut them down.
    pub conns: RefCell<Slab<Conn>>,
    /// Set once the drain timeout passed or a second signal came.
    pub aborting: Cell<bool>,
    /// Woken when the last connection closes, for the drain.
    idle: Notify,
}

/// Per-connection limits and logging, from the config.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Close after this long with no byte either way.
    pub idle_timeout: Option<Duration>,
    /// Close after this long regardless.
    pub max_lifetime: Option<Duration>,
    /// Write an access log line per connection.
    pub access_log: bool,
}

/// The sockets of one open connection.
pub struct Conn {
    /// The accepted socket.
    pub client: Rc<TcpStream>,
    /// The backend socket, once connected.
    pub backend: Option<Rc<TcpStream>>,
}

impl Worker {
    /// This worker's own counters.
    pub fn metrics(&self) -> &WorkerMetrics {
        &self.metrics.workers[self.id]
    }

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
pub struct Registration {
    /// The worker whose registry holds it.
    pub worker: Rc<Worker>,
    /// Its key there.
    pub key: usize,
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
    shared: Shared,
    listener: socket2::Socket,
    stopper: socket2::Socket,
    mut watch: shutdown::Watch,
) {
    let listener = TcpListener::from_std(listener.into());
    let worker = Rc::new(Worker {
        id,
        frontend: config.name.clone(),
        upstream: Upstream::new(
            shared.pool,
            config.balance,
            config.connect_timeout,
            id as u64,
        ),
        buffers: BufPool::new(config.buffer_size),
        limits: Limits {
            idle_timeout: config.idle_timeout,
            max_lifetime: config.max_lifetime,
            access_log: config.access_log,
        },
        metrics: shared.metrics,
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
                shared.limit.clone(),
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
    limit: Option<Arc<ConnLimit>>,
    mut watch: shutdown::Watch,
    throttle: Rc<Throttle>,
) {
    loop {
        // At max-conns, wait for a slot before accepting: the kernel's backlog
        // holds new clients meanwhile.
        let slot = match &limit {
            Some(limit) => tokio::select! {
                slot = limit.acquire() => Some(slot),
                _ = shutdown::reached(&mut watch, Phase::Draining) => break,
            },
            None => None,
        };
        match listener.accept().await {
            Ok((stream, peer)) => {
                tokio_uring::spawn(conn::handle(worker.clone(), stream, peer, slot));
            }
            Err(_) if *watch.borrow() >= Phase::Draining => break,
            Err(err) => {
                worker.metrics().accept_errors.inc();
                if let Some(suppressed) = throttle.allow(Instant::now()) {
                    warn!(worker = id, %err, suppressed, "accept failed; backing off");
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}
