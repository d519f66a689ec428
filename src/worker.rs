//! One worker: an OS thread running its own tokio-uring runtime around its own
//! SO_REUSEPORT listener for each frontend. It accepts clients and hands each
//! to [`conn::handle`], which tracks it in the worker's [`conn::Registry`];
//! it follows config reloads (new generations) without dropping a listener
//! that stays; on shutdown it stops accepting and drains the registry.
//!
//! All state here is per worker (`Rc`, `Cell`, `RefCell`): tasks never cross
//! threads, so nothing on the data path takes a lock or shares a cache line.

use std::cell::RefCell;
use std::io;
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_uring::net::TcpListener;
use tracing::{debug, info, warn};

use crate::ceiling::Ceiling;
use crate::conn::{self, FrontendState, Registry};
use crate::frontend::{Generation, Generations, Listeners};
use crate::logging::Throttle;
use crate::shutdown::{self, Accepting, Phase};
use crate::uring;

/// Accept operations each worker keeps pending per frontend.
const ACCEPTS_IN_FLIGHT: usize = 8;
/// How often a worker looks for connections past their idle timeout or
/// lifetime: the precision of both.
const SWEEP_INTERVAL: Duration = Duration::from_millis(250);
/// How often a worker looks whether a burst ended and memory can go back.
const TRIM_INTERVAL: Duration = Duration::from_secs(2);
/// Pooled buffer bytes freed that make trimming the heap worth it.
const TRIM_MIN_BYTES: usize = 1 << 20;
/// A fall from the peak in open connections that makes it worth it.
const TRIM_MIN_CONNS: usize = 256;
/// Pause after a failed accept (EMFILE and the like), so we neither spin nor stall long.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// Starts worker `id` on its own thread. Returns once its runtime is built, or
/// the error that kept it from being built.
pub fn spawn(
    id: usize,
    generations: Generations,
    phase: shutdown::Watch,
    ceiling: Arc<Ceiling>,
    accepting: Arc<Accepting>,
) -> io::Result<thread::JoinHandle<()>> {
    let (pin, sqpoll) = {
        let first = generations.borrow();
        (first.config.pin, first.config.sqpoll)
    };
    let pin_to = if pin {
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        (!cores.is_empty()).then(|| cores[id % cores.len()])
    } else {
        None
    };
    let (ready_tx, ready_rx) = mpsc::channel();
    let handle = thread::Builder::new()
        .name(format!("ringlb-w{id}"))
        .spawn(move || {
            if let Some(core) = pin_to {
                if !core_affinity::set_for_current(core) {
                    warn!(worker = id, core = core.id, "cannot pin worker to its CPU");
                }
            }
            let rt = match uring::build_runtime(sqpoll) {
                Ok(rt) => rt,
                Err(err) => {
                    let _ = ready_tx.send(Err(err));
                    return;
                }
            };
            rt.block_on(serve(id, generations, phase, ready_tx, ceiling, accepting));
        })?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(err)) => Err(err),
        Err(_) => Err(io::Error::other("worker thread died while starting")),
    }
}

/// A frontend this worker is accepting for.
struct Running {
    /// Its sockets' identity: a new `Arc` means a new listener.
    listeners: Arc<Listeners>,
    /// What new connections are handed; swapped on reload.
    state: Rc<RefCell<Rc<FrontendState>>>,
    /// Set to true to stop the acceptors: those waiting for a slot return at
    /// once, those in an accept once it is cancelled.
    stop: watch::Sender<bool>,
    /// This worker's sockets of the frontend (usually one), each with a
    /// second handle for the fallback below.
    sockets: Vec<(Rc<TcpListener>, Rc<socket2::Socket>)>,
    /// The accept loops.
    acceptors: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops accepting. Shutting a listener down ends the accepts in flight
    /// (dropping their futures would not) and makes the kernel refuse new
    /// clients at once, so they go elsewhere: what a drain or a removed
    /// frontend wants. With `keep_open` (a hot upgrade: the sockets are the
    /// new process's too) the sockets are left alone and every accept in
    /// flight is cancelled in the ring instead, so the clients queued on
    /// them stay there for the new process. Either way an accept that had
    /// already taken a client still hands it over. On a kernel without
    /// cancellation by descriptor (before 5.19) the socket is shut down.
    fn stop(&self, keep_open: bool) {
        self.stop.send_replace(true);
        for (listener, stopper) in &self.sockets {
            if !keep_open {
                let _ = stopper.shutdown(Shutdown::Both);
                continue;
            }
            let (listener, stopper) = (listener.clone(), stopper.clone());
            tokio_uring::spawn(async move {
                if let Err(err) = uring::cancel_all_on(listener.as_raw_fd()).await {
                    warn!(%err, "cannot cancel accepts for the hot upgrade; shutting the listener down");
                    let _ = stopper.shutdown(Shutdown::Both);
                }
                drop(listener);
            });
        }
    }
}

async fn serve(
    id: usize,
    mut generations: Generations,
    mut phase: shutdown::Watch,
    ready: mpsc::Sender<io::Result<()>>,
    ceiling: Arc<Ceiling>,
    accepting: Arc<Accepting>,
) {
    // Receives that wait on an idle peer take their buffer from this ring
    // when data arrives, so an idle connection holds none of its own.
    if let Err(err) = uring::provide_buffers(
        uring::PROVIDED_BUFFERS,
        uring::FIRST_PROVIDED_BUFFERS,
        uring::PROVIDED_BUFFER_SIZE,
    ) {
        debug!(worker = id, %err, "no provided-buffer ring: every receive brings its own buffer");
    }
    // The relay's sockets are named by their slot in this table, which
    // spares the kernel a descriptor lookup on every operation.
    let slots = (2 * ceiling.max()).min(uring::FIXED_FILES) as u32;
    if let Err(err) = uring::register_file_table(slots) {
        debug!(worker = id, %err, "no registered file table: sockets are named by descriptor");
    }
    let registry = Registry::new(ceiling);
    let throttle = Rc::new(Throttle::new(Duration::from_secs(1)));
    let mut running: Vec<(String, Running)> = Vec::new();
    let first = generations.borrow_and_update().clone();
    if let Err(err) = apply(id, &registry, &mut running, &first, &phase, &throttle) {
        let _ = ready.send(Err(err));
        return;
    }
    let _ = ready.send(Ok(()));
    // Idle timeouts and lifetimes, through the drain too.
    tokio_uring::spawn(sweep(registry.clone()));
    let drain_timeout = first.config.drain_timeout;
    drop(first);

    let mut trim = tokio::time::interval(TRIM_INTERVAL);
    trim.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = trim.tick() => give_back_memory(&registry, &running),
            changed = generations.changed() => {
                if changed.is_err() {
                    break;
                }
                let generation = generations.borrow_and_update().clone();
                if let Err(err) = apply(id, &registry, &mut running, &generation, &phase, &throttle) {
                    warn!(worker = id, %err, "cannot take up the new config's listener");
                }
            }
            _ = shutdown::reached(&mut phase, Phase::Draining) => break,
        }
    }

    let keep_open = accepting.handed_over();
    for (_, r) in &running {
        r.stop(keep_open);
    }
    for (_, r) in running {
        for acceptor in r.acceptors {
            let _ = acceptor.await;
        }
    }
    // A client accepted just before the stop is handed to a task that has
    // not run yet, so it is not in the registry: let those tasks run (they
    // register before their first await), or the drain below would find the
    // registry empty and end the worker without them.
    tokio::task::yield_now().await;
    accepting.stopped();

    let open = registry.len();
    if open > 0 {
        info!(worker = id, open, "draining connections");
    }
    let cut = tokio::select! {
        _ = registry.wait_idle() => false,
        _ = tokio::time::sleep(drain_timeout) => {
            let cut = registry.len();
            warn!(worker = id, cut, "drain timeout after {drain_timeout:?}: cutting {cut} open connection(s)");
            true
        }
        _ = shutdown::reached(&mut phase, Phase::Abort) => true,
    };
    if cut {
        registry.abort_all();
        registry.wait_idle().await;
    }
    uring::release_buffers();
    uring::release_file_table();
}

/// Cuts the connections past their idle timeout or lifetime, every
/// [`SWEEP_INTERVAL`], for as long as the worker runs.
async fn sweep(registry: Rc<Registry>) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        registry.sweep(Instant::now());
    }
}

/// After a burst, gives memory back: the relay buffers that sat unused in the
/// pools for a whole interval, then the heap's free pages, so RSS returns
/// towards its baseline instead of staying at the burst's peak.
fn give_back_memory(registry: &Registry, running: &[(String, Running)]) {
    let released: usize = running
        .iter()
        .map(|(_, r)| r.state.borrow().buffers.trim_unused())
        .sum();
    let peak = registry.take_peak();
    let open = registry.len();
    if released >= TRIM_MIN_BYTES || peak >= open + TRIM_MIN_CONNS {
        uring::trim_heap();
    }
}

/// Brings this worker's frontends in line with `generation`: keeps the
/// listeners that stay (new connections get the new settings), starts new
/// ones, stops the ones that went.
fn apply(
    id: usize,
    registry: &Rc<Registry>,
    running: &mut Vec<(String, Running)>,
    generation: &Generation,
    phase: &shutdown::Watch,
    throttle: &Rc<Throttle>,
) -> io::Result<()> {
    let access_log = generation.config.access_log;
    running.retain(|(name, r)| {
        let stays = generation
            .frontend(name)
            .is_some_and(|f| Arc::ptr_eq(&f.listeners, &r.listeners));
        if !stays {
            r.stop(false);
        }
        stays
    });
    for frontend in &generation.frontends {
        let state = Rc::new(FrontendState::new(id, frontend.clone(), access_log));
        if let Some((_, r)) = running
            .iter()
            .find(|(name, _)| *name == frontend.config.name)
        {
            *r.state.borrow_mut() = state;
            continue;
        }
        // Worker `id` takes sockets id, id + workers, ...: one, unless a
        // hot upgrade handed over more sockets than this process has workers.
        let sockets = frontend
            .listeners
            .sockets
            .iter()
            .skip(id)
            .step_by(generation.config.workers.max(1))
            .map(|socket| {
                let stopper = Rc::new(socket.try_clone()?);
                let listener = Rc::new(TcpListener::from_std(socket.try_clone()?.into()));
                Ok((listener, stopper))
            })
            .collect::<io::Result<Vec<_>>>()?;
        if sockets.is_empty() {
            return Err(io::Error::other("no listening socket for this worker"));
        }
        let state = Rc::new(RefCell::new(state));
        let (stop, stopped) = watch::channel(false);
        // Several accepts in flight per socket, so a burst of new clients is
        // taken in one turn of the ring rather than one client per turn.
        let acceptors = sockets
            .iter()
            .flat_map(|(listener, _)| std::iter::repeat_n(listener, ACCEPTS_IN_FLIGHT))
            .map(|listener| {
                tokio_uring::spawn(accept_loop(
                    id,
                    registry.clone(),
                    listener.clone(),
                    state.clone(),
                    stopped.clone(),
                    phase.clone(),
                    throttle.clone(),
                ))
            })
            .collect();
        running.push((
            frontend.config.name.clone(),
            Running {
                listeners: frontend.listeners.clone(),
                state,
                stop,
                sockets,
                acceptors,
            },
        ));
    }
    Ok(())
}

/// Accepts clients for one frontend until its listener is shut down.
async fn accept_loop(
    id: usize,
    registry: Rc<Registry>,
    listener: Rc<TcpListener>,
    state: Rc<RefCell<Rc<FrontendState>>>,
    mut stopped: watch::Receiver<bool>,
    mut phase: shutdown::Watch,
    throttle: Rc<Throttle>,
) {
    loop {
        if *stopped.borrow() {
            break;
        }
        // At the process's connection ceiling or the frontend's max-conns,
        // wait for a slot before accepting: the kernel's backlog holds new
        // clients meanwhile.
        let slot = tokio::select! {
            slot = registry.ceiling().acquire() => slot,
            _ = shutdown::reached(&mut phase, Phase::Draining) => break,
            _ = stopped.wait_for(|s| *s) => break,
        };
        let limit = state.borrow().frontend.limit.clone();
        let permit = match limit {
            Some(limit) => tokio::select! {
                permit = limit.acquire_owned() => match permit {
                    Ok(permit) => Some(permit),
                    // Closed, which nothing does.
                    Err(_) => break,
                },
                _ = shutdown::reached(&mut phase, Phase::Draining) => break,
                _ = stopped.wait_for(|s| *s) => break,
            },
            None => None,
        };
        // Nothing runs between this check and the accept's submission (one
        // thread), so no accept starts after `Running::stop` cancelled them.
        if *stopped.borrow() {
            break;
        }
        match listener.accept().await {
            Ok((stream, peer)) => {
                let state = state.borrow().clone();
                tokio_uring::spawn(conn::handle(
                    registry.clone(),
                    state,
                    stream,
                    peer,
                    (slot, permit),
                ));
            }
            Err(_) if *stopped.borrow() || *phase.borrow() >= Phase::Draining => break,
            Err(err) => {
                let state = state.borrow().clone();
                state.metrics().accept_errors.inc();
                if let Some(suppressed) = throttle.allow(Instant::now()) {
                    warn!(worker = id, frontend = state.name(), %err, suppressed, "accept failed; backing off");
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}
