//! The UDP service: what a worker runs for its UDP frontends. Per frontend
//! it keeps [`RECVS_IN_FLIGHT`] receives (IORING_OP_RECVMSG, one-shot)
//! pending on its own SO_REUSEPORT socket, each a loop that takes one
//! datagram, hands it to the client's [`session`] and receives again once
//! the datagram is on its way to the backend. The kernel's reuseport hash
//! keeps a client's datagrams on one socket, so one worker holds each
//! client's session. A sweep ends idle sessions; a reload keeps the sockets
//! of frontends that stay (new sessions get the new settings, open ones
//! keep theirs); on a drain the receives are cancelled and sessions end
//! once briefly idle, so a query in flight is still answered.
//!
//! One-shot receives are the first step: a multishot receive into a
//! provided-buffer ring would spare a submission per datagram (see
//! docs/performance.md for what this one measures).
//!
//! All state here is per worker (`Rc`, `Cell`, `RefCell`): tasks never cross
//! threads, so nothing on the data path takes a lock or shares a cache line.

pub mod session;

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::warn;

use crate::ceiling::Ceiling;
use crate::config::Protocol;
use crate::frontend::{Generation, Listeners};
use crate::logging::Throttle;
use crate::service::{self, LocalFuture};
use crate::uring::{self, Datagram};
use session::{FrontendState, Sessions};

/// Receives each worker keeps pending per frontend socket.
const RECVS_IN_FLIGHT: usize = 8;
/// How often a worker looks for sessions past their timeout: the timeout's
/// precision.
const SWEEP_INTERVAL: Duration = Duration::from_millis(250);
/// A pause after a failed receive, so a lasting error does not spin.
const ERROR_PAUSE: Duration = Duration::from_millis(10);

/// The UDP frontends of one worker and their sessions.
pub struct UdpService {
    /// The worker's id: which of each frontend's sockets are its own.
    id: usize,
    /// Every session of this worker, under the process's ceiling.
    sessions: Rc<Sessions>,
    /// Keeps receive-failure warnings to one a second.
    throttle: Rc<Throttle>,
    /// Numbers the frontend socket groups, so sessions of two frontends
    /// never share a table key.
    next_group: u64,
    /// The frontends this worker receives for, by name.
    running: Vec<(String, Running)>,
}

impl UdpService {
    /// Worker `id`'s UDP service, opening sessions under `ceiling`; starts
    /// its sweep of idle sessions, which runs through the drain too.
    pub fn new(id: usize, ceiling: Arc<Ceiling>) -> UdpService {
        let sessions = Sessions::new(ceiling);
        tokio_uring::spawn(sweep(sessions.clone()));
        UdpService {
            id,
            sessions,
            throttle: Rc::new(Throttle::new(Duration::from_secs(1))),
            next_group: 0,
            running: Vec::new(),
        }
    }
}

impl service::Service for UdpService {
    fn apply(&mut self, generation: &Generation) -> io::Result<()> {
        let access_log = generation.config.access_log;
        let frontends = || {
            generation
                .frontends
                .iter()
                .filter(|f| f.config.protocol == Protocol::Udp)
        };
        self.running.retain(|(name, r)| {
            let stays = frontends()
                .find(|f| f.config.name == *name)
                .is_some_and(|f| Arc::ptr_eq(&f.listeners, &r.listeners));
            if !stays {
                r.stop();
            }
            stays
        });
        for frontend in frontends() {
            let state = Rc::new(FrontendState::new(self.id, frontend.clone(), access_log));
            if let Some((_, r)) = self
                .running
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
                .skip(self.id)
                .step_by(generation.config.workers.max(1))
                .map(|socket| Ok(Rc::new(socket.try_clone()?)))
                .collect::<io::Result<Vec<_>>>()?;
            if sockets.is_empty() {
                return Err(io::Error::other("no UDP socket for this worker"));
            }
            self.next_group += 1;
            let group = self.next_group;
            let state = Rc::new(RefCell::new(state));
            let stopping = Rc::new(Cell::new(false));
            let loops = sockets
                .iter()
                .flat_map(|socket| std::iter::repeat_n(socket, RECVS_IN_FLIGHT))
                .map(|socket| {
                    tokio_uring::spawn(receive(
                        group,
                        socket.clone(),
                        state.clone(),
                        self.sessions.clone(),
                        stopping.clone(),
                        self.throttle.clone(),
                    ))
                })
                .collect();
            self.running.push((
                frontend.config.name.clone(),
                Running {
                    listeners: frontend.listeners.clone(),
                    state,
                    sockets,
                    stopping,
                    loops,
                },
            ));
        }
        Ok(())
    }

    fn trim(&self) {
        self.sessions.trim();
    }

    fn stop(&mut self, _keep_open: bool) -> LocalFuture<'_> {
        self.sessions.drain();
        for (_, r) in &self.running {
            r.stop();
        }
        let running = std::mem::take(&mut self.running);
        Box::pin(async move {
            for (_, r) in running {
                for receiver in r.loops {
                    let _ = receiver.await;
                }
            }
        })
    }

    fn open(&self) -> usize {
        self.sessions.len()
    }

    fn idle(&self) -> LocalFuture<'static> {
        let sessions = self.sessions.clone();
        Box::pin(async move { sessions.wait_idle().await })
    }

    fn abort(&self) {
        self.sessions.abort_all();
    }
}

/// A frontend this worker receives for.
struct Running {
    /// Its sockets' identity: a new `Arc` means a new socket group.
    listeners: Arc<Listeners>,
    /// What new sessions are opened under; swapped on reload.
    state: Rc<RefCell<Rc<FrontendState>>>,
    /// This worker's sockets of the frontend (usually one).
    sockets: Vec<Rc<socket2::Socket>>,
    /// Set to stop the receive loops.
    stopping: Rc<Cell<bool>>,
    /// The receive loops.
    loops: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops receiving: the receives in flight are cancelled in the ring
    /// (a datagram one already took is still relayed). The socket itself is
    /// left alone: open sessions still send their replies from it, and on
    /// a hot upgrade it is the new process's too.
    fn stop(&self) {
        self.stopping.set(true);
        for socket in &self.sockets {
            let socket = socket.clone();
            tokio_uring::spawn(async move {
                if let Err(err) = uring::cancel_all_on(socket.as_raw_fd()).await {
                    warn!(%err, "cannot cancel the receives of a UDP frontend");
                }
                drop(socket);
            });
        }
    }
}

/// One receive loop on a frontend socket: a datagram at a time, each handed
/// to its session before the next receive.
async fn receive(
    group: u64,
    socket: Rc<socket2::Socket>,
    state: Rc<RefCell<Rc<FrontendState>>>,
    sessions: Rc<Sessions>,
    stopping: Rc<Cell<bool>>,
    throttle: Rc<Throttle>,
) {
    let mut buf = Datagram::new();
    while !stopping.get() {
        let (res, b) = uring::recv_msg(&socket, buf, false).await;
        buf = b;
        let arrival = match res {
            Ok(arrival) => arrival,
            Err(_) if stopping.get() => break,
            Err(err) => {
                let fe = state.borrow().clone();
                fe.metrics().accept_errors.inc();
                if let Some(suppressed) = throttle.allow(Instant::now()) {
                    warn!(%err, suppressed, frontend = fe.name(), "UDP receive failed");
                }
                tokio::time::sleep(ERROR_PAUSE).await;
                continue;
            }
        };
        let fe = state.borrow().clone();
        buf = session::forward(group, &socket, &fe, &sessions, arrival, buf).await;
    }
}

/// Ends sessions past their timeout, every [`SWEEP_INTERVAL`], for as long
/// as the worker runs.
async fn sweep(sessions: Rc<Sessions>) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        sessions.sweep(Instant::now());
    }
}
