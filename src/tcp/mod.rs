//! The TCP service: what a worker runs for its TCP frontends. Per frontend it
//! keeps several accepts in flight on its SO_REUSEPORT socket ([`accept`]),
//! hands each client to [`conn::handle`], which tracks it in the worker's
//! [`conn::Registry`] and carries its bytes with the [`relay`] pumps and
//! their [`buffer`]s (or, spliced, through the worker's [`pipes`]); it follows reloads without dropping a listener that
//! stays, sweeps idle timeouts and lifetimes, and on a drain stops accepting
//! and lets the registry empty.
//!
//! All state here is per worker (`Rc`, `Cell`, `RefCell`): tasks never cross
//! threads, so nothing on the data path takes a lock or shares a cache line.

mod accept;
pub mod buffer;
pub mod conn;
mod pipes;
pub mod relay;

use std::cell::RefCell;
use std::io;
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_uring::net::TcpListener;
use tracing::{debug, warn};

use crate::ceiling::Ceiling;
use crate::config::Protocol;
use crate::frontend::{Generation, Listeners};
use crate::logging::Throttle;
use crate::service::{self, LocalFuture};
use crate::shutdown;
use crate::uring;
use conn::{FrontendState, Registry};

/// Accept operations each worker keeps pending per socket, at most (fewer
/// when the connection ceiling is small).
const ACCEPTS_IN_FLIGHT: usize = 8;
/// How often a worker looks for connections past their idle timeout or
/// lifetime: the precision of both.
const SWEEP_INTERVAL: Duration = Duration::from_millis(250);
/// Pooled buffer bytes freed that make trimming the heap worth it.
const TRIM_MIN_BYTES: usize = 1 << 20;
/// A fall from the peak in open connections that makes it worth it.
const TRIM_MIN_CONNS: usize = 256;

/// The TCP frontends of one worker and their open connections.
pub struct TcpService {
    /// The worker's id: which of each frontend's sockets are its own.
    id: usize,
    /// Every open connection of this worker, under the process's ceiling.
    registry: Rc<Registry>,
    /// The process's stop phase, which ends the accept loops.
    phase: shutdown::Watch,
    /// Keeps accept-failure warnings to one a second.
    throttle: Rc<Throttle>,
    /// The frontends this worker accepts for, by name.
    running: Vec<(String, Running)>,
}

impl TcpService {
    /// Worker `id`'s TCP service, accepting under `ceiling` until `phase`
    /// says drain; starts its sweep of idle timeouts and lifetimes, which
    /// runs through the drain too.
    pub fn new(id: usize, ceiling: Arc<Ceiling>, phase: shutdown::Watch) -> TcpService {
        pipes::init(ceiling.clone());
        let registry = Registry::new(ceiling);
        tokio_uring::spawn(sweep(registry.clone()));
        TcpService {
            id,
            registry,
            phase,
            throttle: Rc::new(Throttle::new(Duration::from_secs(1))),
            running: Vec::new(),
        }
    }
}

impl service::Service for TcpService {
    fn apply(&mut self, generation: &Generation) -> io::Result<()> {
        apply(
            self.id,
            &self.registry,
            &mut self.running,
            generation,
            &self.phase,
            &self.throttle,
        )
    }

    fn trim(&self) {
        give_back_memory(&self.registry, &self.running);
    }

    fn stop(&mut self, keep_open: bool) -> LocalFuture<'_> {
        for (_, r) in &self.running {
            r.stop(keep_open);
        }
        let running = std::mem::take(&mut self.running);
        Box::pin(async move {
            for (_, r) in running {
                for acceptor in r.acceptors {
                    let _ = acceptor.await;
                }
            }
        })
    }

    fn rearm(&self) {
        for (_, r) in &self.running {
            r.rearm();
        }
    }

    fn open(&self) -> usize {
        self.registry.len()
    }

    fn idle(&self) -> LocalFuture<'static> {
        let registry = self.registry.clone();
        Box::pin(async move { registry.wait_idle().await })
    }

    fn abort(&self) {
        self.registry.abort_all();
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
    /// Cancels the accept in flight on each socket; its loop submits a new
    /// one at once, which takes any client already queued.
    fn rearm(&self) {
        for (listener, _) in &self.sockets {
            let listener = listener.clone();
            tokio_uring::spawn(async move {
                if let Err(err) = uring::cancel_all_on(listener.as_raw_fd()).await {
                    debug!(%err, "cannot re-submit the accepts after a hot upgrade");
                }
                drop(listener);
            });
        }
    }

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
    pipes::trim_unused();
    let peak = registry.take_peak();
    let open = registry.len();
    if released >= TRIM_MIN_BYTES || peak >= open + TRIM_MIN_CONNS {
        uring::trim_heap();
    }
}

/// Brings this worker's TCP frontends in line with `generation`: keeps the
/// listeners that stay (new connections get the new settings), starts new
/// ones, stops the ones that went. Frontends of other protocols are other
/// services'.
fn apply(
    id: usize,
    registry: &Rc<Registry>,
    running: &mut Vec<(String, Running)>,
    generation: &Generation,
    phase: &shutdown::Watch,
    throttle: &Rc<Throttle>,
) -> io::Result<()> {
    let access_log = generation.config.access_log;
    pipes::set_max(generation.config.max_pipes);
    let frontends = || {
        generation
            .frontends
            .iter()
            .filter(|f| f.config.protocol == Protocol::Tcp)
    };
    running.retain(|(name, r)| {
        let stays = frontends()
            .find(|f| f.config.name == *name)
            .is_some_and(|f| Arc::ptr_eq(&f.listeners, &r.listeners));
        if !stays {
            r.stop(false);
        }
        stays
    });
    // Each accept in flight holds a slot of the connection ceiling, so
    // across the process they take at most half of it: with a small
    // ceiling, one worker's idle accepts could otherwise hold every slot
    // while clients wait on another worker's socket, never accepted.
    let all_sockets: usize = frontends().map(|f| f.listeners.sockets.len()).sum();
    let per_socket =
        (registry.ceiling().max() / (2 * all_sockets.max(1))).clamp(1, ACCEPTS_IN_FLIGHT);
    for frontend in frontends() {
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
            .flat_map(|(listener, _)| std::iter::repeat_n(listener, per_socket))
            .map(|listener| {
                tokio_uring::spawn(accept::accept_loop(
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
