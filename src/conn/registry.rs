//! One worker's open connections, so a drain can wait for them to close and,
//! once it runs out of time, shut them down. A connection registers itself
//! when it starts and its [`Registration`] removes it however it ends.
//!
//! Per worker and single-threaded (`Rc`, `RefCell`): registering is a slab
//! insert, no lock and no allocation once the slab has grown.

use std::cell::{Cell, RefCell};
use std::net::Shutdown;
use std::rc::Rc;
use std::sync::Arc;

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
}

/// The sockets of one open connection.
struct Conn {
    /// The accepted socket.
    client: Rc<TcpStream>,
    /// The backend socket, once connected.
    backend: Option<Rc<TcpStream>>,
}

impl Registry {
    /// An empty registry.
    pub fn new(ceiling: Arc<Ceiling>) -> Rc<Self> {
        Rc::new(Registry {
            conns: RefCell::default(),
            aborting: Cell::default(),
            idle: Notify::new(),
            ceiling,
        })
    }

    /// The process-wide connection ceiling.
    pub fn ceiling(&self) -> &Arc<Ceiling> {
        &self.ceiling
    }

    /// Registers a connection by its client socket, until the returned
    /// registration drops.
    pub fn register(self: &Rc<Self>, client: Rc<TcpStream>) -> Registration {
        let key = self.conns.borrow_mut().insert(Conn {
            client,
            backend: None,
        });
        Registration {
            registry: self.clone(),
            key,
        }
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
