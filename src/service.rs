//! What a worker runs: a [`Service`] per transport (TCP today), each with
//! its own listeners and open clients on the worker's ring. The worker owns
//! the life cycle (start, reloads, memory trimming, the drain) and calls
//! every service the same way, so a second transport is a second
//! implementation beside the first, not a change to it. Calls here are the
//! control path, never per byte: they may allocate and box.

use std::future::Future;
use std::io;
use std::pin::Pin;

use crate::frontend::Generation;

/// A future run on the worker's own thread.
pub type LocalFuture<'a> = Pin<Box<dyn Future<Output = ()> + 'a>>;

/// One transport as one worker runs it.
pub trait Service {
    /// Brings the service in line with `generation`: keeps the listeners
    /// that stay (new clients get the new settings), starts new ones, stops
    /// the ones that went. An error leaves the rest of the generation taken up.
    fn apply(&mut self, generation: &Generation) -> io::Result<()>;

    /// Gives memory back after a burst; called every few seconds.
    fn trim(&self);

    /// Stops taking new clients, and resolves once nothing is accepted any
    /// more. With `keep_open` (a hot upgrade: the listeners are the new
    /// process's too) clients waiting in the kernel stay there for it.
    fn stop(&mut self, keep_open: bool) -> LocalFuture<'_>;

    /// Submits every accept in flight afresh (see
    /// [`crate::shutdown::Accepting::rearm`]); nothing for a transport
    /// without accepts.
    fn rearm(&self) {}

    /// Clients (connections, sessions) open now.
    fn open(&self) -> usize;

    /// Resolves once no client is open.
    fn idle(&self) -> LocalFuture<'static>;

    /// Ends every open client now: the drain timed out or was cut short.
    fn abort(&self);
}
