//! One UDP session: a client address of one frontend, and the connected
//! socket to the backend chosen at its first datagram. [`forward`] takes a
//! client's datagram to its session (opening one under the frontend's
//! max-sessions, the process's ceiling and the source rules, else dropping
//! and counting it); the session's own task ([`replies`]) waits for the
//! backend's datagrams holding no buffer (a poll), and sends each back to
//! the client from the frontend socket, from the address the client sent
//! to. A session ends after session-timeout without a datagram either way
//! ([`Sessions::sweep`]), once it had `responses` replies per client
//! datagram, when the backend is unreachable (ICMP port unreachable comes
//! back as ECONNREFUSED, a passive health failure), or when the drain cuts
//! it; ending it shuts its socket down, which completes the pending poll,
//! and its task then counts and logs it.
//!
//! An open session costs its struct, its table entry, a descriptor (a slot
//! of the process-wide ceiling) and the poll in flight; no buffer. Buffers
//! are borrowed from the worker's small pool for one receive and send.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};

use socket2::{Domain, Protocol, Socket, Type};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OwnedSemaphorePermit};
use tracing::warn;

use crate::access;
use crate::backend::pool::OwnedLease;
use crate::backend::upstream::Upstream;
use crate::ceiling::{Ceiling, Slot};
use crate::counters::{BackendMetrics, WorkerMetrics};
use crate::frontend::Frontend;
use crate::logging::{Throttle, ACCESS_TARGET};
use crate::protocol::proxy;
use crate::uring::{self, Datagram};

/// A session of a draining worker ends once it had no datagram for this
/// long: long enough for the answer to a query in flight.
const DRAIN_IDLE: Duration = Duration::from_secs(1);
/// Free datagram buffers a worker keeps for reuse.
const SPARE_BUFFERS: usize = 32;

/// One UDP frontend as one worker serves it in one generation. A session
/// holds the one it opened under, so a reload leaves it untouched.
pub struct FrontendState {
    /// The generation's frontend: config, pool, counters, limit.
    pub frontend: Arc<Frontend>,
    /// The worker serving it, to find its counters.
    worker: usize,
    /// The backend choice of new sessions.
    upstream: Upstream,
    /// Write an access log line per session at info (else debug).
    access_log: bool,
    /// Keeps warnings about failed sends to one line a second.
    warning: Throttle,
}

impl FrontendState {
    /// `frontend` as worker `worker` serves it.
    pub fn new(worker: usize, frontend: Arc<Frontend>, access_log: bool) -> Self {
        let c = &frontend.config;
        let upstream = Upstream::new(
            frontend.pool.clone(),
            0,
            c.balance,
            c.connect_timeout,
            (c.connect_timeout, c.max_queue),
            worker as u64,
        );
        FrontendState {
            upstream,
            access_log,
            warning: Throttle::new(Duration::from_secs(1)),
            worker,
            frontend,
        }
    }

    /// The frontend's name.
    pub fn name(&self) -> &str {
        &self.frontend.config.name
    }

    /// This worker's counters for this frontend.
    pub fn metrics(&self) -> &WorkerMetrics {
        &self.frontend.metrics.workers[self.worker]
    }

    fn backend_metrics(&self, i: usize) -> Option<&BackendMetrics> {
        self.upstream.counters(self.metrics(), i)
    }
}

/// Which frontend socket group and client a session is for: a client
/// talking to two frontends has two sessions.
type Key = (u64, SocketAddr);

/// Every session of one worker, and what they share.
pub struct Sessions {
    /// The open sessions by frontend and client address (as the socket
    /// reported it); an ended session leaves at once, so the client's next
    /// datagram opens a new one.
    by_client: RefCell<HashMap<Key, Rc<Session>>>,
    /// Sessions whose task has not finished (ended ones included).
    open: Cell<usize>,
    /// Woken when `open` falls to zero.
    idle: Notify,
    /// The process-wide ceiling each session's descriptor counts against.
    ceiling: Arc<Ceiling>,
    /// Free datagram buffers, boxed as the operations take them (the
    /// kernel is pointed into the box, which must not move).
    #[allow(clippy::vec_box)]
    spare: RefCell<Vec<Box<Datagram>>>,
    /// Set by the drain: sessions end once briefly idle.
    draining: Cell<bool>,
}

impl Sessions {
    /// A worker's empty session table under `ceiling`.
    pub fn new(ceiling: Arc<Ceiling>) -> Rc<Sessions> {
        Rc::new(Sessions {
            by_client: RefCell::new(HashMap::new()),
            open: Cell::new(0),
            idle: Notify::new(),
            ceiling,
            spare: RefCell::new(Vec::new()),
            draining: Cell::new(false),
        })
    }

    /// Sessions open (ended ones whose task is finishing included).
    pub fn len(&self) -> usize {
        self.open.get()
    }

    /// Resolves once no session is open.
    pub async fn wait_idle(&self) {
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.open.get() == 0 {
                return;
            }
            idle.await;
        }
    }

    /// From now on sessions end once idle for [`DRAIN_IDLE`].
    pub fn drain(&self) {
        self.draining.set(true);
    }

    /// Ends every session now.
    pub fn abort_all(&self) {
        let all: Vec<Rc<Session>> = self.by_client.borrow().values().cloned().collect();
        for s in all {
            s.end(self, Ended::Drain);
        }
    }

    /// Ends the sessions idle past their timeout (or, draining, past
    /// [`DRAIN_IDLE`]) at `now`.
    pub fn sweep(&self, now: Instant) {
        let draining = self.draining.get();
        let expired: Vec<Rc<Session>> = self
            .by_client
            .borrow()
            .values()
            .filter(|s| {
                let mut limit = s.state.frontend.config.udp.session_timeout;
                if draining {
                    limit = limit.min(DRAIN_IDLE);
                }
                now.saturating_duration_since(s.last.get()) >= limit
            })
            .cloned()
            .collect();
        for s in expired {
            s.end(self, Ended::Timeout);
        }
    }

    /// Frees spare buffers: after a burst, the worker keeps none.
    pub fn trim(&self) {
        self.spare.borrow_mut().clear();
    }

    fn take_buffer(&self) -> Box<Datagram> {
        self.spare.borrow_mut().pop().unwrap_or_else(Datagram::new)
    }

    fn put_buffer(&self, buf: Box<Datagram>) {
        let mut spare = self.spare.borrow_mut();
        if spare.len() < SPARE_BUFFERS {
            spare.push(buf);
        }
    }
}

/// Why a session ended, as the access log says it.
#[derive(Debug, Clone, Copy)]
enum Ended {
    /// No datagram either way for the session timeout.
    Timeout,
    /// The backend sent its `responses` replies per client datagram.
    Responses,
    /// The backend's port was unreachable (ECONNREFUSED).
    Unreachable,
    /// A receive or send on the backend socket failed otherwise.
    Error(io::ErrorKind),
    /// The drain timed out or was cut short.
    Drain,
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Timeout => f.write_str("session timeout"),
            Ended::Responses => f.write_str("responses"),
            Ended::Unreachable => f.write_str("backend unreachable"),
            Ended::Error(kind) => write!(f, "backend error: {kind}"),
            Ended::Drain => f.write_str("drain"),
        }
    }
}

/// One client address's session. Its operations on the backend socket
/// name the session itself (it is the socket, [`AsRawFd`]), so the socket
/// needs no allocation of its own and lives while any is in flight.
pub struct Session {
    /// Its frontend socket group (the first half of its table key).
    group: u64,
    /// The client's address as the frontend socket reports it (replies go
    /// there; the second half of its table key).
    peer: SocketAddr,
    /// The address the client sent to, when the socket reports it (a
    /// wildcard listen): replies leave from it.
    local: Option<IpAddr>,
    /// The frontend socket the client's datagrams came in on.
    front: Rc<Socket>,
    /// Connected to the backend.
    back: Socket,
    /// The generation it opened under.
    state: Rc<FrontendState>,
    /// The backend's slot (its index and pool); held while open.
    lease: OwnedLease,
    /// Its place under max-sessions; held while open.
    _permit: Option<OwnedSemaphorePermit>,
    /// Its descriptor's place under the process-wide ceiling.
    _slot: Slot,
    /// When it opened.
    started: Instant,
    /// The last datagram either way.
    last: Cell<Instant>,
    /// Datagrams from the client, relayed.
    requests: Cell<u64>,
    /// Datagrams from the backend, relayed.
    replies: Cell<u64>,
    /// Bytes from the client, relayed.
    bytes_in: Cell<u64>,
    /// Bytes from the backend, relayed.
    bytes_out: Cell<u64>,
    /// Why it ended, once it did.
    ended: Cell<Option<Ended>>,
}

impl AsRawFd for Session {
    fn as_raw_fd(&self) -> RawFd {
        self.back.as_raw_fd()
    }
}

impl Session {
    /// Its table key.
    fn key(&self) -> Key {
        (self.group, self.peer)
    }

    /// The client's address, canonical (IPv4 as IPv4), for logs.
    fn client(&self) -> SocketAddr {
        SocketAddr::new(self.peer.ip().to_canonical(), self.peer.port())
    }

    /// The PROXY v2 header (datagram form) that goes in front of each of
    /// its datagrams with send-proxy: from the client to the address it
    /// sent to.
    fn proxy_header(&self) -> Vec<u8> {
        let listen = self.state.frontend.listeners.addr;
        let to = SocketAddr::new(
            self.local.map_or(listen.ip(), |ip| ip.to_canonical()),
            listen.port(),
        );
        let mut head = Vec::with_capacity(64);
        proxy::encode_datagram(self.client(), to, &mut head);
        head
    }

    /// Ends the session (the first reason stays): it leaves the table, and
    /// shutting its socket down completes the poll its task waits on.
    fn end(&self, sessions: &Sessions, why: Ended) {
        if self.ended.get().is_some() {
            return;
        }
        self.ended.set(Some(why));
        let mut table = sessions.by_client.borrow_mut();
        if table
            .get(&self.key())
            .is_some_and(|s| std::ptr::eq(Rc::as_ptr(s), self))
        {
            table.remove(&self.key());
        }
        drop(table);
        let _ = self.back.shutdown(Shutdown::Both);
    }

    /// The backend refused (ICMP port unreachable): a passive health
    /// failure (with layer-4 observation), a datagram lost, the session ends.
    fn unreachable(&self, sessions: &Sessions) {
        let fe = &*self.state;
        let i = self.lease.index();
        fe.metrics().udp_drops_unreachable.inc();
        if let Some(c) = fe.backend_metrics(i) {
            c.connect_failures.inc();
        }
        if fe.frontend.config.observe_l4 {
            fe.upstream.failed(i, &"port unreachable (ECONNREFUSED)");
        }
        self.end(sessions, Ended::Unreachable);
    }
}

/// Why a datagram of a new client was dropped.
enum Dropped {
    /// The source rules refuse the client.
    Refused,
    /// max-sessions, or the process's descriptor ceiling, is reached.
    Limit,
    /// No backend can take it.
    NoBackend,
}

/// Relays `buf` (`arrival` says what it holds), which came in on the
/// frontend socket `front` of frontend group `group`, to its client's
/// session, opening one if needed; hands the buffer back.
pub async fn forward(
    group: u64,
    front: &Rc<Socket>,
    fe: &Rc<FrontendState>,
    sessions: &Rc<Sessions>,
    arrival: uring::Arrival,
    buf: Box<Datagram>,
) -> Box<Datagram> {
    let metrics = fe.metrics();
    if arrival.truncated {
        metrics.udp_drops_truncated.inc();
        return buf;
    }
    let Some(peer) = arrival.from else {
        return buf;
    };
    let existing = sessions.by_client.borrow().get(&(group, peer)).cloned();
    let session = match existing {
        Some(s) => s,
        None => match open(group, front, fe, sessions, peer, arrival.to) {
            Ok(s) => s,
            Err(dropped) => {
                match dropped {
                    Dropped::Refused => metrics.refused_source.inc(),
                    Dropped::Limit => metrics.udp_drops_session_limit.inc(),
                    Dropped::NoBackend => metrics.udp_drops_no_backend.inc(),
                }
                return buf;
            }
        },
    };
    let len = buf.bytes().len() as u64;
    let state = &*session.state;
    let mut buf = buf;
    if state.frontend.config.send_proxy.is_some() && !buf.prepend(&session.proxy_header()) {
        // No room for the header: the datagram cannot go whole.
        state.metrics().udp_drops_truncated.inc();
        return buf;
    }
    session.requests.set(session.requests.get() + 1);
    session.last.set(Instant::now());
    let (res, buf) = uring::send_msg(&session, buf, None, None).await;
    match res {
        Ok(_) => {
            let m = state.metrics();
            m.udp_datagrams_in.inc();
            m.bytes_in.add(len);
            session.bytes_in.set(session.bytes_in.get() + len);
            if let Some(c) = state.backend_metrics(session.lease.index()) {
                c.bytes_in.add(len);
            }
        }
        Err(err) if err.raw_os_error() == Some(libc::ECONNREFUSED) => {
            session.unreachable(sessions);
        }
        Err(err) => {
            if let Some(suppressed) = state.warning.allow(Instant::now()) {
                warn!(%err, suppressed, frontend = state.name(), "cannot send a datagram to the backend");
            }
            session.end(sessions, Ended::Error(err.kind()));
        }
    }
    buf
}

/// Opens a session for `peer` (which sent to `local`): under the source
/// rules, max-sessions and the ceiling, with a backend from the balancer
/// and a socket connected to it; starts its task.
fn open(
    group: u64,
    front: &Rc<Socket>,
    fe: &Rc<FrontendState>,
    sessions: &Rc<Sessions>,
    peer: SocketAddr,
    local: Option<IpAddr>,
) -> Result<Rc<Session>, Dropped> {
    let client = SocketAddr::new(peer.ip().to_canonical(), peer.port());
    // A draining worker still opens one: its receive loops have stopped, and
    // a datagram a receive took before its cancel (the last one of a loop)
    // must be relayed, not dropped (a hot upgrade lost such queries, about 2
    // in 100 runs of tests/udp.rs's upgrade test under load). The session
    // ends once idle for `DRAIN_IDLE`, like every session of a drain.
    if access::check(&fe.frontend.config, client.ip()).is_err() {
        return Err(Dropped::Refused);
    }
    let permit = match &fe.frontend.limit {
        Some(limit) => Some(
            limit
                .clone()
                .try_acquire_owned()
                .map_err(|_| Dropped::Limit)?,
        ),
        None => None,
    };
    let slot = sessions.ceiling.try_acquire().ok_or(Dropped::Limit)?;
    let lease = fe
        .upstream
        .lease_now(client.ip())
        .map_err(|_| Dropped::NoBackend)?;
    let i = lease.index();
    let addr = lease.pool().addr(i);
    let back = match connect(addr) {
        Ok(back) => back,
        Err(err) => {
            if let Some(suppressed) = fe.warning.allow(Instant::now()) {
                warn!(%err, suppressed, backend = %addr, "cannot open a UDP socket to the backend");
            }
            return Err(Dropped::NoBackend);
        }
    };
    let now = Instant::now();
    let session = Rc::new(Session {
        group,
        peer,
        local,
        front: front.clone(),
        back,
        state: fe.clone(),
        lease,
        _permit: permit,
        _slot: slot,
        started: now,
        last: Cell::new(now),
        requests: Cell::new(0),
        replies: Cell::new(0),
        bytes_in: Cell::new(0),
        bytes_out: Cell::new(0),
        ended: Cell::new(None),
    });
    sessions
        .by_client
        .borrow_mut()
        .insert(session.key(), session.clone());
    sessions.open.set(sessions.open.get() + 1);
    let m = fe.metrics();
    m.udp_sessions_total.inc();
    m.udp_sessions_active.inc();
    if let Some(c) = fe.backend_metrics(i) {
        c.connections.inc();
    }
    tokio_uring::spawn(replies(session.clone(), sessions.clone()));
    Ok(session)
}

/// A UDP socket connected to `addr`, from an ephemeral port.
fn connect(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.connect(&addr.into())?;
    Ok(socket)
}

/// The session's task: relays the backend's datagrams to the client until
/// the session ends, then counts and logs it.
async fn replies(session: Rc<Session>, sessions: Rc<Sessions>) {
    let fe = session.state.clone();
    let responses = fe.frontend.config.udp.responses.map(u64::from);
    let mut answered = false;
    'session: while session.ended.get().is_none() {
        let polled = uring::poll_readable(&session).await;
        if session.ended.get().is_some() {
            break;
        }
        if let Err(err) = polled {
            session.end(&sessions, Ended::Error(err.kind()));
            break;
        }
        // Everything queued, then wait again.
        loop {
            let (res, buf) = uring::recv_msg(&session, sessions.take_buffer(), true).await;
            let arrival = match res {
                Ok(arrival) => arrival,
                Err(err) => {
                    sessions.put_buffer(buf);
                    match err.raw_os_error() {
                        Some(libc::EAGAIN) => continue 'session,
                        Some(libc::ECONNREFUSED) => session.unreachable(&sessions),
                        _ => session.end(&sessions, Ended::Error(err.kind())),
                    }
                    break 'session;
                }
            };
            if arrival.truncated {
                fe.metrics().udp_drops_truncated.inc();
                sessions.put_buffer(buf);
                continue;
            }
            if !answered {
                answered = true;
                fe.upstream.succeeded(session.lease.index());
            }
            let len = buf.bytes().len() as u64;
            let (res, buf) =
                uring::send_msg(&session.front, buf, Some(session.peer), session.local).await;
            sessions.put_buffer(buf);
            session.last.set(Instant::now());
            match res {
                Ok(_) => {
                    let m = fe.metrics();
                    m.udp_datagrams_out.inc();
                    m.bytes_out.add(len);
                    session.bytes_out.set(session.bytes_out.get() + len);
                    if let Some(c) = fe.backend_metrics(session.lease.index()) {
                        c.bytes_out.add(len);
                    }
                }
                Err(err) => {
                    fe.metrics().client_errors.inc();
                    if let Some(suppressed) = fe.warning.allow(Instant::now()) {
                        warn!(%err, suppressed, frontend = fe.name(), client = %session.client(), "cannot send a reply to the client");
                    }
                }
            }
            let replies = session.replies.get() + 1;
            session.replies.set(replies);
            if responses.is_some_and(|n| replies >= n.saturating_mul(session.requests.get())) {
                session.end(&sessions, Ended::Responses);
                break 'session;
            }
            if session.ended.get().is_some() {
                break 'session;
            }
        }
    }
    fe.metrics().udp_sessions_active.dec();
    log_close(&session);
    let open = sessions.open.get() - 1;
    sessions.open.set(open);
    if open == 0 {
        sessions.idle.notify_waiters();
    }
}

/// The per-session line: at info on the access log target when
/// `--access-log` is on, else at debug.
fn log_close(session: &Session) {
    let fe = &*session.state;
    let backend = session.lease.pool().addr(session.lease.index());
    let reason = session.ended.get().unwrap_or(Ended::Timeout);
    let duration_ms = session.started.elapsed().as_secs_f64() * 1000.0;
    let (datagrams_in, datagrams_out) = (session.requests.get(), session.replies.get());
    let (bytes_in, bytes_out) = (session.bytes_in.get(), session.bytes_out.get());
    macro_rules! line {
        ($($level_and_target:tt)*) => {
            tracing::event!(
                $($level_and_target)*
                client = %session.client(),
                frontend = fe.name(),
                backend = %backend,
                datagrams_in,
                datagrams_out,
                bytes_in,
                bytes_out,
                duration_ms,
                reason = %reason,
                "session closed"
            )
        };
    }
    if fe.access_log {
        line!(target: ACCESS_TARGET, tracing::Level::INFO,);
    } else {
        line!(tracing::Level::DEBUG,);
    }
}

#[cfg(test)]
mod tests {
    fn future_size<A, B, F: std::future::Future>(_f: fn(A, B) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// An idle session costs its struct, its task (the `replies` future
    /// waiting on a poll) and its table entry: these two bound most of it
    /// (docs/operations.md gives the measured total per session).
    #[test]
    fn an_idle_session_stays_small() {
        let (session, task) = (
            std::mem::size_of::<super::Session>(),
            future_size(super::replies),
        );
        assert!(
            session <= 192 && task <= 256,
            "session {session} B, task {task} B"
        );
    }
}
