//! One worker's open connections, so a drain can wait for them to close and,
//! once it runs out of time, shut them down. A connection registers itself
//! when it starts and its [`Registration`] removes it however it ends.
//!
//! It also enforces the idle timeout and lifetime: the worker sweeps it a
//! few times a second and shuts down the connections past their limits.
//!
//! Per worker and single-threaded (`Rc`, `RefCell`): registering is a slab
//! insert, no lock and no allocation once the slab has grown.

use std::cell::{Cell, RefCell};
use std::net::Shutdown;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use slab::Slab;
use tokio::sync::Notify;
use tokio_uring::net::TcpStream;

use crate::ceiling::Ceiling;

/// The open connections of one worker.
pub struct Registry {
    /// Open connections' sockets, so a drain that runs out of time can shut them down.
    conns: RefCell<Slab<Conn>>,
    /// Set once the drain timeout passed or a second signal came.
    aborting: Cell<bool>,
    /// Woken when the last connection closes, for the drain.
    idle: Notify,
    /// The process-wide connection ceiling every accept takes a slot under.
    ceiling: Arc<Ceiling>,
    /// The most connections open at once since [`Registry::take_peak`].
    peak: Cell<usize>,
}

/// The sockets of one open connection.
struct Conn {
    /// The accepted socket.
    client: Rc<TcpStream>,
    /// The backend socket, once connected.
    backend: Option<Rc<TcpStream>>,
    /// Its idle timeout and lifetime, once relaying.
    timer: Option<Rc<Timer>>,
}

/// One connection's idle timeout and lifetime, checked by the worker's sweep
/// ([`Registry::sweep`]) rather than by a timer per connection, so an idle
/// connection costs a few bytes here, not a task and a timer entry.
#[derive(Debug)]
pub struct Timer {
    /// When a byte last came in either way; the relay stamps it.
    pub activity: Cell<Instant>,
    /// Close after this long with no byte.
    idle: Option<Duration>,
    /// Close at this time regardless.
    deadline: Option<Instant>,
    /// Set when the sweep cut the connection, and why.
    expired: Cell<Option<Expiry>>,
}

/// Which limit cut a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// No byte either way for the idle timeout.
    Idle,
    /// The maximum lifetime passed.
    Lifetime,
}

impl Timer {
    /// A timer for a connection active at `now`, or `None` without limits.
    pub fn new(
        now: Instant,
        idle: Option<Duration>,
        deadline: Option<Instant>,
    ) -> Option<Rc<Timer>> {
        (idle.is_some() || deadline.is_some()).then(|| {
            Rc::new(Timer {
                activity: Cell::new(now),
                idle,
                deadline,
                expired: Cell::new(None),
            })
        })
    }

    /// Which limit cut the connection, if one did.
    pub fn expired(&self) -> Option<Expiry> {
        self.expired.get()
    }

    /// The limit passed at `now`, if any.
    fn due(&self, now: Instant) -> Option<Expiry> {
        if self.deadline.is_some_and(|d| now >= d) {
            Some(Expiry::Lifetime)
        } else if self.idle.is_some_and(|d| now >= self.activity.get() + d) {
            Some(Expiry::Idle)
        } else {
            None
        }
    }
}

impl Registry {
    /// An empty registry.
    pub fn new(ceiling: Arc<Ceiling>) -> Rc<Self> {
        Rc::new(Registry {
            conns: RefCell::default(),
            aborting: Cell::default(),
            idle: Notify::new(),
            ceiling,
            peak: Cell::new(0),
        })
    }

    /// The process-wide connection ceiling.
    pub fn ceiling(&self) -> &Arc<Ceiling> {
        &self.ceiling
    }

    /// Registers a connection by its client socket, until the returned
    /// registration drops.
    pub fn register(self: &Rc<Self>, client: Rc<TcpStream>) -> Registration {
        let mut conns = self.conns.borrow_mut();
        let key = conns.insert(Conn {
            client,
            backend: None,
            timer: None,
        });
        self.peak.set(self.peak.get().max(conns.len()));
        Registration {
            registry: self.clone(),
            key,
        }
    }

    /// The most connections open at once since the last call, and from now
    /// on the count open now.
    pub fn take_peak(&self) -> usize {
        self.peak.replace(self.len())
    }

    /// How many connections are open.
    pub fn len(&self) -> usize {
        self.conns.borrow().len()
    }

    /// Whether no connection is open.
    pub fn is_empty(&self) -> bool {
        self.conns.borrow().is_empty()
    }

    /// Whether the drain gave up waiting and is closing connections.
    pub fn aborting(&self) -> bool {
        self.aborting.get()
    }

    /// Cuts every connection whose idle timeout or lifetime passed at `now`:
    /// shuts both sockets down, so its relay ends on its own and finds why
    /// in its [`Timer`].
    pub fn sweep(&self, now: Instant) {
        for (_, conn) in self.conns.borrow().iter() {
            let Some(timer) = &conn.timer else { continue };
            if timer.expired.get().is_some() {
                continue;
            }
            if let Some(expiry) = timer.due(now) {
                timer.expired.set(Some(expiry));
                let _ = conn.client.shutdown(Shutdown::Both);
                if let Some(backend) = &conn.backend {
                    let _ = backend.shutdown(Shutdown::Both);
                }
            }
        }
    }

    /// Shuts every open connection down; their relays then end on their own.
    pub fn abort_all(&self) {
        self.aborting.set(true);
        for (_, conn) in self.conns.borrow().iter() {
            let _ = conn.client.shutdown(Shutdown::Both);
            if let Some(backend) = &conn.backend {
                let _ = backend.shutdown(Shutdown::Both);
            }
        }
    }

    /// Resolves once no connection is open.
    pub async fn wait_idle(&self) {
        while !self.is_empty() {
            self.idle.notified().await;
        }
    }
}

/// One connection's place in the registry; dropping it removes the
/// connection, however its task ends.
pub struct Registration {
    /// The registry that holds it.
    registry: Rc<Registry>,
    /// Its key there.
    key: usize,
}

impl Registration {
    /// Records the connection's backend socket, for [`Registry::abort_all`].
    pub fn set_backend(&self, backend: Rc<TcpStream>) {
        self.registry.conns.borrow_mut()[self.key].backend = Some(backend);
    }

    /// Puts the connection under its idle timeout and lifetime.
    pub fn set_timer(&self, timer: Rc<Timer>) {
        self.registry.conns.borrow_mut()[self.key].timer = Some(timer);
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut conns = self.registry.conns.borrow_mut();
        conns.remove(self.key);
        if conns.is_empty() {
            self.registry.idle.notify_one();
        }
    }
}
