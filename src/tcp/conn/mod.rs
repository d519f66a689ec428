//! One client connection, from accept to close: read a PROXY header and a
//! TLS ClientHello when the frontend wants them, pick a route (see
//! [`route`]) and connect one of its backends, relay, enforce the idle
//! timeout and lifetime limit, then count it and log its access line. Timeouts close by shutting both sockets down, which
//! completes the relay's pending operations; nothing is dropped in flight.
//!
//! The types a connection lives with are here too: the [`FrontendState`] it
//! was accepted under and the worker's [`Registry`] of open connections.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::OwnedSemaphorePermit;
use tokio_uring::net::TcpStream;

use crate::access::{self, Refusal};
use crate::backend::pool::{Lease, Pool};
use crate::backend::upstream::{NoBackend, Upstream};
use crate::ceiling::Slot;
use crate::config::{ProxyTlvs, RouteBy};
use crate::counters::WorkerMetrics;
use crate::frontend::Frontend;
use crate::logging::{Throttle, ACCESS_TARGET};
use crate::protocol::proxy::{self, Parsed, Version as ProxyVersion};
use crate::protocol::tls::{self, ClientHello};
use crate::sources::{Refused, Ticket};
use crate::tcp::buffer::BufPool;
use crate::tcp::relay::{self, relay, Outcome, Side};
use crate::uring;

mod registry;
mod route;

pub use registry::Registry;
use registry::{Expiry, Registration, Timer};

/// One frontend as one worker serves it in one generation. Connections hold
/// the one they were accepted under, so a reload leaves them untouched.
pub struct FrontendState {
    /// The generation's frontend: config, pool, counters, limit.
    pub frontend: Arc<Frontend>,
    /// The worker serving it, to find its counters.
    worker: usize,
    /// Backend choice and connects: the frontend's own pool (with SNI
    /// routing, the default route's, which may be empty).
    pub upstream: Upstream,
    /// The same for each SNI route, in config order.
    routes: Vec<Route>,
    /// Large relay buffers for reuse.
    pub buffers: Rc<BufPool>,
    /// With `send-zc`, whom zero-copy sends report to.
    send_zc: Option<uring::ZcSink>,
    /// Per-connection time limits and logging.
    pub limits: Limits,
    /// Keeps the warning about refused clients to one line a second.
    refused_warning: Throttle,
    /// The same for clients closed by SNI routing.
    sni_warning: Throttle,
}

impl FrontendState {
    /// `frontend` as worker `worker` serves it.
    pub fn new(worker: usize, frontend: Arc<Frontend>, access_log: bool) -> Self {
        let c = &frontend.config;
        let upstream = |pool: &Arc<Pool>, first, balance| {
            Upstream::new(
                pool.clone(),
                first,
                balance,
                c.connect_timeout,
                (c.queue_timeout.unwrap_or(c.connect_timeout), c.max_queue),
                worker as u64,
            )
        };
        // The frontend's own pool comes first in `pools`, at counter 0.
        let routes = (frontend.pools().into_iter().skip(1).zip(&c.routes))
            .map(|((_, pool, first), route)| Route {
                upstream: upstream(pool, first, route.balance),
                send_proxy: route.send_proxy,
            })
            .collect();
        let upstream = upstream(&frontend.pool, 0, c.balance);
        let buffers = Rc::new(BufPool::new(c.buffer_size));
        let send_zc = c.send_zc.then(|| {
            Rc::new(ZcReturns {
                buffers: buffers.clone(),
                frontend: frontend.clone(),
                worker,
            }) as uring::ZcSink
        });
        FrontendState {
            send_zc,
            upstream,
            routes,
            buffers,
            limits: Limits {
                idle_timeout: c.idle_timeout,
                max_lifetime: c.max_lifetime,
                access_log,
            },
            refused_warning: Throttle::new(Duration::from_secs(1)),
            sni_warning: Throttle::new(Duration::from_secs(1)),
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
}

/// What a frontend's zero-copy sends on one worker report to: the buffers
/// the kernel held past their send go back to the pool, and the copies it
/// made anyway are counted.
struct ZcReturns {
    /// Where buffers go back.
    buffers: Rc<BufPool>,
    /// Whose counters.
    frontend: Arc<Frontend>,
    /// Which worker's.
    worker: usize,
}

impl uring::ZcOwner for ZcReturns {
    fn copied(&self) {
        self.frontend.metrics.workers[self.worker]
            .send_zc_copied
            .inc();
    }

    fn give_back(&self, buf: Vec<u8>) {
        self.buffers.put(buf);
    }
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

/// Why a connection closed, as the access log says it.
#[derive(Debug)]
enum Ended {
    /// Both directions ended; `side` sent EOF first.
    Eof(Side),
    /// A read or write failed.
    Error(relay::RelayError),
    /// No byte either way for the idle timeout.
    IdleTimeout,
    /// The connection reached its maximum lifetime.
    Lifetime,
    /// Shutdown's drain timeout cut it off.
    Drain,
    /// No backend could take it.
    NoBackend(NoBackend),
    /// The client's PROXY protocol header was bad, late or missing.
    ProxyHeader(HeaderError),
    /// The client's TLS ClientHello was bad, late, too large or missing.
    ClientHello(HelloError),
    /// The ClientHello matched no route and there is no default.
    NoRoute(Option<String>),
    /// A per-source limit refused the source its PROXY header gave.
    Refused(Refusal),
}

impl fmt::Display for Ended {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ended::Eof(side) => write!(f, "{side} EOF"),
            Ended::Error(err) => err.fmt(f),
            Ended::IdleTimeout => f.write_str("idle timeout"),
            Ended::Lifetime => f.write_str("max lifetime"),
            Ended::Drain => f.write_str("drain"),
            Ended::NoBackend(why) => why.fmt(f),
            Ended::ProxyHeader(err) => write!(f, "PROXY header: {err}"),
            Ended::ClientHello(err) => write!(f, "ClientHello: {err}"),
            Ended::NoRoute(Some(name)) => write!(f, "no route for server name {name:?}"),
            Ended::NoRoute(None) => f.write_str("no route for a ClientHello without server name"),
            Ended::Refused(refusal) => write!(f, "refused: {}", refusal.label()),
        }
    }
}

/// Runs one client connection to its end, registered in `registry` while it
/// is open. `permits` are its slot under the process's connection ceiling
/// and its place under the frontend's max-conns, returned when this returns.
/// Its one exit after the source check logs how it closed.
///
/// This state is most of what an idle connection costs, so its shape is
/// chosen for size:
/// - An `async` block rather than an `async fn`: an `async fn` keeps its
///   arguments twice in its state (as captured and as moved into its body).
///   The block uses what it captured in place.
/// - The steps before the relay are one inner future, [`open`], awaited in
///   place: a local held across two awaits takes room in every state of its
///   future, the relay's included, while what `open` holds (the PROXY
///   addresses and TLVs, the bytes read early, the route) is gone when the
///   relay starts, and its state shares room with the relay's.
/// - `peer` becomes the PROXY header's source once one is read, rather than
///   a second address living next to it.
pub fn handle(
    registry: Rc<Registry>,
    fe: Rc<FrontendState>,
    client: TcpStream,
    peer: SocketAddr,
    permits: (Slot, Option<OwnedSemaphorePermit>),
) -> impl Future<Output = ()> {
    // An IPv4 client of a dual-stack `[::]` listener arrives as
    // `::ffff:a.b.c.d`; logs, PROXY headers and hashing see it as IPv4.
    let mut peer = canonical(peer);
    let client = Rc::new(client);
    async move {
        // Held, not moved: returned when the connection ends.
        let _permits = &permits;
        // Before a byte is read (the PROXY header included) or a backend chosen.
        if let Err(refusal) = access::check(&fe.frontend.config, peer.ip()) {
            refuse(&fe, peer, refusal);
            return;
        }
        let start = Instant::now();
        let mut kept = Kept {
            endpoint: None,
            ticket: None,
        };
        // The per-source limits, here unless a PROXY header is to say who the
        // client is (then `open` checks them once it is read); the ticket is
        // held until the close.
        if !fe.frontend.config.accept_proxy {
            match admit_source(&fe, peer, start) {
                Ok(admitted) => kept.ticket = admitted,
                Err(refusal) => {
                    refuse(&fe, peer, refusal);
                    return;
                }
            }
        }
        let _open = Open::new(fe.metrics());
        let registration = registry.register(client.clone());
        // A labelled block rather than a `match` around the relay: a
        // scrutinee lives to the end of its `match`, and `open`'s result would
        // sit in the state next to the relay's.
        let closed = 'closed: {
            let opened = open(
                &registry,
                &registration,
                &fe,
                &client,
                &mut peer,
                start,
                &mut kept,
            );
            let opened = match opened.await {
                Ok(opened) => opened,
                Err(closed) => break 'closed closed,
            };
            let track = (opened.timer.as_ref())
                .filter(|_| fe.limits.idle_timeout.is_some())
                .map(|t| &t.activity);
            let splice = fe.frontend.config.splice;
            let send_zc = fe.send_zc.as_ref();
            let relayed = relay(
                &client,
                &opened.backend,
                &fe.buffers,
                track,
                splice,
                send_zc,
            );
            let outcome = relayed.await;
            opened.close(&fe, &registry, peer, outcome)
        };
        log_close(&fe, &closed, kept.endpoint.as_deref(), start);
    }
}

/// What the connection keeps from [`open`] to its close.
struct Kept<'f> {
    /// The private endpoint named in the client's PROXY header, for the
    /// access line.
    endpoint: Option<String>,
    /// The connection's place under the per-source limits, given back when
    /// it is dropped.
    ticket: Option<Ticket<'f>>,
}

/// How a connection ended, as its access line tells it.
struct Closed {
    /// The client: the PROXY header's source when there was one.
    client: SocketAddr,
    /// The backend, once one was connected.
    backend: Option<SocketAddr>,
    /// Bytes carried from client to backend.
    bytes_in: u64,
    /// Bytes carried from backend to client.
    bytes_out: u64,
    /// Why it closed.
    ended: Ended,
}

impl Closed {
    /// A connection that ended before a byte was relayed.
    fn early(client: SocketAddr, backend: Option<SocketAddr>, ended: Ended) -> Closed {
        Closed {
            client,
            backend,
            bytes_in: 0,
            bytes_out: 0,
            ended,
        }
    }
}

/// A connection [`open`] made ready to relay: all the relay and its close
/// need besides what [`handle`] holds.
struct Opened<'f> {
    /// Whose backend it is: the frontend's or an SNI route's.
    upstream: &'f Upstream,
    /// The backend's place in its pool, given back at the close.
    lease: Lease<'f>,
    /// The backend connection.
    backend: Rc<TcpStream>,
    /// The idle timeout and lifetime, when there are any.
    timer: Option<Rc<Timer>>,
    /// When the backend was connected, for the layer-4 observation.
    connected_at: Instant,
}

impl Opened<'_> {
    /// Counts a relay that ended with `outcome`, tells the backend's health
    /// what it saw, and says how the connection closed; `client` is who it
    /// was.
    fn close(
        self,
        fe: &FrontendState,
        registry: &Registry,
        client: SocketAddr,
        outcome: Outcome,
    ) -> Closed {
        let index = self.lease.index();
        let timed_out = expired(&self.timer);
        count(
            fe.metrics(),
            self.upstream,
            index,
            &outcome,
            timed_out.is_some(),
        );
        if timed_out.is_none() && !registry.aborting() {
            observe_l4(fe, self.upstream, index, &outcome, self.connected_at);
        }
        let ended = if registry.aborting() {
            Ended::Drain
        } else if let Some(ended) = timed_out {
            ended
        } else if let Some(err) = outcome.error {
            Ended::Error(err)
        } else {
            Ended::Eof(outcome.first_eof.unwrap_or(Side::Client))
        };
        Closed {
            client,
            backend: Some(self.upstream.pool().addr(index)),
            bytes_in: outcome.to_backend,
            bytes_out: outcome.to_client,
            ended,
        }
    }
}

/// Why `timer` cut the connection, if it did.
fn expired(timer: &Option<Rc<Timer>>) -> Option<Ended> {
    timer
        .as_ref()
        .and_then(|t| t.expired())
        .map(|expiry| match expiry {
            Expiry::Idle => Ended::IdleTimeout,
            Expiry::Lifetime => Ended::Lifetime,
        })
}

/// The connection's steps after the source check and before the relay:
/// PROXY header, ClientHello and route, backend, preamble. Returns the
/// connection ready to relay, or how it closed. `start` is when it was
/// accepted, where its lifetime counts from. `peer` becomes the source the
/// client's PROXY header names. What must live until the close goes to
/// `kept`: the private endpoint named in that header, and behind
/// accept-proxy the ticket of the per-source limits.
///
/// Its state is smaller than the relay's, with which it shares room in
/// [`handle`]'s (a unit test checks the total); its rare, larger steps are
/// boxed so that they stay so.
async fn open<'f>(
    registry: &Registry,
    registration: &Registration,
    fe: &'f FrontendState,
    client: &Rc<TcpStream>,
    peer: &mut SocketAddr,
    start: Instant,
    kept: &mut Kept<'f>,
) -> Result<Opened<'f>, Closed> {
    let metrics = fe.metrics();
    // Behind another load balancer the real client comes in a PROXY header;
    // bytes read past it are the client's first payload.
    let mut early = Vec::new();
    let mut addresses = None;
    let mut tlvs = Vec::new();
    if fe.frontend.config.accept_proxy {
        // Boxed, like the other rare steps below, so that `open` stays smaller
        // than the relay: an idle connection's memory is mostly its task.
        let header = Box::pin(read_proxy_header(
            client,
            fe.frontend.config.proxy_header_timeout,
            fe.frontend.config.proxy_tlvs == ProxyTlvs::Forward,
        ));
        match header.await {
            Ok(header) => {
                addresses = header.addresses;
                tlvs = header.tlvs;
                kept.endpoint = header.endpoint;
                early = header.rest;
            }
            Err(err) => {
                metrics.proxy_header_errors.inc();
                return Err(Closed::early(*peer, None, Ended::ProxyHeader(err)));
            }
        }
        if let Some((source, _)) = addresses {
            *peer = canonical(source);
        }
        match admit_source(fe, *peer, Instant::now()) {
            Ok(admitted) => kept.ticket = admitted,
            Err(refusal) => {
                refuse(fe, *peer, refusal);
                return Err(Closed::early(*peer, None, Ended::Refused(refusal)));
            }
        }
    }
    let source = *peer;

    // With SNI routing the ClientHello picks the pool; it goes to the
    // backend with everything else read so far.
    let mut upstream = &fe.upstream;
    let mut send_proxy = fe.frontend.config.send_proxy;
    if fe.frontend.config.route_by == RouteBy::Sni {
        let timeout = fe.frontend.config.sni_timeout;
        let hello = Box::pin(read_client_hello(
            client,
            timeout,
            std::mem::take(&mut early),
        ));
        let routed = match hello.await {
            Ok((hello, read)) => {
                early = read;
                match fe.route(&hello) {
                    Routed::Nowhere => Err(Ended::NoRoute(hello.sni)),
                    routed => Ok(routed),
                }
            }
            Err(err) => Err(Ended::ClientHello(err)),
        };
        match routed {
            Ok(Routed::Route(route)) => {
                upstream = &route.upstream;
                send_proxy = route.send_proxy;
            }
            Ok(Routed::Default | Routed::Nowhere) => {}
            Err(ended) => {
                reject_sni(fe, source, &ended);
                return Err(Closed::early(source, None, ended));
            }
        }
    }

    let connected = if registry.aborting() {
        Err(NoBackend::Failed)
    } else {
        // Boxed: connecting (with its timer) takes more room than relaying,
        // and only for a moment, so it should not size every idle task.
        Box::pin(upstream.connect(source.ip(), metrics)).await
    };
    let (lease, backend) = match connected {
        Ok(connected) => connected,
        Err(why) => {
            metrics.no_backend.inc();
            return Err(Closed::early(source, None, Ended::NoBackend(why)));
        }
    };
    let connected_at = Instant::now();
    let backend = Rc::new(backend);
    registration.set_backend(backend.clone());
    if registry.aborting() {
        relay::teardown(&**client, &*backend);
    }
    // The idle timeout and the lifetime run from here: a backend that takes
    // no byte of the preamble (a zero window) is cut like an idle relay.
    let limits = &fe.limits;
    let timer = Timer::new(
        Instant::now(),
        limits.idle_timeout,
        limits.max_lifetime.map(|d| start + d),
    );
    if let Some(timer) = &timer {
        registration.set_timer(timer.clone());
    }
    if send_proxy.is_some() || !early.is_empty() {
        let preamble = Box::pin(send_preamble(
            send_proxy, client, &backend, source, addresses, tlvs, early,
        ));
        if let Err(err) = preamble.await {
            let addr = upstream.pool().addr(lease.index());
            let ended = match expired(&timer) {
                Some(ended) => {
                    metrics.timeouts.inc();
                    ended
                }
                None => {
                    metrics.backend_errors.inc();
                    Ended::Error(err)
                }
            };
            return Err(Closed::early(source, Some(addr), ended));
        }
    }
    Ok(Opened {
        upstream,
        lease,
        backend,
        timer,
        connected_at,
    })
}

/// Counts and logs a client refused by the source rules; dropping its socket
/// closes it without a byte sent.
fn refuse(fe: &FrontendState, peer: SocketAddr, refusal: Refusal) {
    let metrics = fe.metrics();
    let what = match refusal {
        Refusal::Source => &metrics.refused_source,
        Refusal::ProxySource => &metrics.refused_proxy_source,
        Refusal::SourceConns => &metrics.refused_source_conns,
        Refusal::SourceRate => &metrics.refused_source_rate,
    };
    what.inc();
    let reason = refusal.label();
    tracing::debug!(client = %peer, frontend = fe.name(), reason, "client refused");
    if let Some(suppressed) = fe.refused_warning.allow(Instant::now()) {
        let by = match refusal {
            Refusal::Source | Refusal::ProxySource => "the source rules",
            Refusal::SourceConns | Refusal::SourceRate => "a per-source limit",
        };
        tracing::warn!(client = %peer, frontend = fe.name(), reason, suppressed, "client refused by {by}");
    }
}

/// Admits a client from `source` under the frontend's per-source limits at
/// `now`: its ticket (none without limits), or the refusal. A client the
/// full table cannot track is served and counted.
fn admit_source(
    fe: &FrontendState,
    source: SocketAddr,
    now: Instant,
) -> Result<Option<Ticket<'_>>, Refusal> {
    let Some(table) = &fe.frontend.sources else {
        return Ok(None);
    };
    match table.admit(source.ip(), &fe.frontend.config.sources, now) {
        Ok(ticket) => {
            if ticket.is_none() {
                fe.metrics().source_untracked.inc();
            }
            Ok(ticket)
        }
        Err(Refused::Conns) => Err(Refusal::SourceConns),
        Err(Refused::Rate) => Err(Refusal::SourceRate),
    }
}

/// One SNI route as one worker serves it.
struct Route {
    /// Backend choice and connects over the route's pool.
    upstream: Upstream,
    /// The PROXY header its backends get.
    send_proxy: Option<ProxyVersion>,
}

/// Where a ClientHello goes.
enum Routed<'a> {
    /// To the route it matched.
    Route(&'a Route),
    /// To the frontend's own pool: no match, and the frontend has backends.
    Default,
    /// Nowhere: no match and no default.
    Nowhere,
}

impl FrontendState {
    /// Where `hello` goes: a matching route, else the default route.
    fn route(&self, hello: &ClientHello) -> Routed<'_> {
        match route::pick(&self.frontend.config.routes, hello) {
            Some(i) => self.routes.get(i).map_or(Routed::Nowhere, Routed::Route),
            None if self.upstream.pool().len() > 0 => Routed::Default,
            None => Routed::Nowhere,
        }
    }
}

/// Counts and logs a client closed by SNI routing, before any backend.
fn reject_sni(fe: &FrontendState, client: SocketAddr, ended: &Ended) {
    let m = fe.metrics();
    let (counter, reason) = match ended {
        Ended::NoRoute(_) => (&m.sni_no_route, "no_route"),
        Ended::ClientHello(ReadError::Timeout(_)) => (&m.sni_timeout, "timeout"),
        Ended::ClientHello(ReadError::Truncated) => (&m.sni_truncated, "truncated"),
        Ended::ClientHello(ReadError::Invalid(err)) => match err {
            tls::ParseError::NotTls => (&m.sni_not_tls, err.label()),
            tls::ParseError::Malformed(_) => (&m.sni_malformed, err.label()),
            tls::ParseError::TooLarge => (&m.sni_oversized, err.label()),
        },
        _ => return,
    };
    counter.inc();
    tracing::debug!(%client, frontend = fe.name(), reason, detail = %ended, "client closed by SNI routing");
    if let Some(suppressed) = fe.sni_warning.allow(Instant::now()) {
        tracing::warn!(%client, frontend = fe.name(), reason, detail = %ended, suppressed, "client closed by SNI routing");
    }
}

/// Counts a connection as open for as long as it lives.
struct Open<'a>(&'a WorkerMetrics);

impl<'a> Open<'a> {
    fn new(metrics: &'a WorkerMetrics) -> Self {
        metrics.connections_total.inc();
        metrics.connections_active.inc();
        Open(metrics)
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.connections_active.dec();
    }
}

/// Why the bytes a client must send first (a PROXY header, a ClientHello)
/// were refused; `E` is the parser's error.
#[derive(Debug, thiserror::Error)]
enum ReadError<E> {
    /// Not valid.
    #[error("{0}")]
    Invalid(E),
    /// The client closed or failed before they were complete.
    #[error("connection ended before it was complete")]
    Truncated,
    /// They did not arrive in time.
    #[error("not complete within {0:?}")]
    Timeout(Duration),
}

/// Most bytes one read asks for while a PROXY header or ClientHello is
/// awaited: the buffer waits in the kernel for as long as the client is
/// silent, so it stays small; real ClientHellos fit (about 1.8 KiB with a
/// post-quantum key share), larger ones take a few reads.
const READ_CHUNK: usize = 4096;

/// Why a client's PROXY header was refused.
type HeaderError = ReadError<proxy::ParseError>;

/// Why a client's ClientHello was refused.
type HelloError = ReadError<tls::ParseError>;

/// Reads from `client`, after the bytes already in `got`, until `judge`
/// decides on them, buffering at most `max` bytes (`judge` must decide by
/// then), within `timeout`. Returns the verdict and every byte read. On
/// timeout the socket is shut down so the pending read completes in the
/// kernel.
async fn read_prefix<T, E>(
    client: &TcpStream,
    timeout: Duration,
    mut got: Vec<u8>,
    max: usize,
    mut judge: impl FnMut(&[u8]) -> Result<Option<T>, E>,
) -> Result<(T, Vec<u8>), ReadError<E>> {
    let read = async {
        loop {
            if !got.is_empty() {
                if let Some(done) = judge(&got).map_err(ReadError::Invalid)? {
                    return Ok((done, got));
                }
            }
            let want = (max - got.len().min(max - 1)).min(READ_CHUNK);
            let (res, buf) = uring::recv(client, Vec::with_capacity(want), false).await;
            match res {
                Ok(0) | Err(_) => return Err(ReadError::Truncated),
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::pin!(read);
    tokio::select! {
        res = &mut read => res,
        _ = tokio::time::sleep(timeout) => {
            let _ = client.shutdown(std::net::Shutdown::Both);
            let _ = read.await;
            Err(ReadError::Timeout(timeout))
        }
    }
}

/// Reads a TLS ClientHello from `client` within `timeout`, after the bytes
/// in `early`. Returns it and every byte read, for the backend.
async fn read_client_hello(
    client: &TcpStream,
    timeout: Duration,
    early: Vec<u8>,
) -> Result<(ClientHello, Vec<u8>), HelloError> {
    // Judged as it grows: each record is looked at once, however many
    // reads it took.
    let mut reading = tls::Reading::default();
    read_prefix(client, timeout, early, tls::MAX_BUFFER, |got| {
        reading.judge(got).map(|parsed| match parsed {
            tls::Parsed::Incomplete => None,
            tls::Parsed::Complete(hello) => Some(hello),
        })
    })
    .await
}

/// A client's PROXY header, as the connection keeps it.
struct ProxyHeader {
    /// `(source, dest)`; `None` for LOCAL/UNKNOWN.
    addresses: Option<(SocketAddr, SocketAddr)>,
    /// Its TLVs that go on to the backend, with `proxy-tlvs = "forward"`.
    tlvs: Vec<u8>,
    /// The private endpoint its TLVs name, for the access log.
    endpoint: Option<String>,
    /// Payload bytes read past it.
    rest: Vec<u8>,
}

/// Reads a PROXY protocol header (v1 or v2) from `client` within `timeout`,
/// keeping its forwardable TLVs when `keep_tlvs` (the endpoint ID always). On timeout the socket is
/// shut down so the pending read completes in the kernel.
async fn read_proxy_header(
    client: &TcpStream,
    timeout: Duration,
    keep_tlvs: bool,
) -> Result<ProxyHeader, HeaderError> {
    let got = Vec::with_capacity(proxy::MAX_HEADER);
    let max = proxy::MAX_HEADER;
    let judged = read_prefix(client, timeout, got, max, |got| {
        proxy::parse(got).map(|parsed| match parsed {
            Parsed::Incomplete => None,
            Parsed::Complete { len, addresses } => Some((len, addresses)),
        })
    });
    let ((len, addresses), mut got) = judged.await?;
    let rest = got.split_off(len);
    let mut tlvs = proxy::forwardable_tlvs(&got);
    let endpoint = proxy::endpoint_id(&tlvs);
    if !keep_tlvs {
        tlvs = Vec::new();
    }
    Ok(ProxyHeader {
        addresses,
        tlvs,
        endpoint,
        rest,
    })
}

/// Writes what the backend must see before the relay starts: our PROXY
/// header of version `send_proxy`, if any (a v2 one with the client's forwarded
/// `tlvs`), then the client bytes read
/// already (past the client's own header: its ClientHello and whatever came
/// with it).
async fn send_preamble(
    send_proxy: Option<ProxyVersion>,
    client: &TcpStream,
    backend: &TcpStream,
    peer: SocketAddr,
    addresses: Option<(SocketAddr, SocketAddr)>,
    tlvs: Vec<u8>,
    early: Vec<u8>,
) -> Result<(), relay::RelayError> {
    let mut preamble = Vec::new();
    if let Some(version) = send_proxy {
        let (source, dest) = match addresses {
            Some(pair) => pair,
            None => {
                let local =
                    uring::local_addr(client).map_err(|source| relay::RelayError::Read {
                        side: Side::Client,
                        source,
                    })?;
                (peer, canonical(local))
            }
        };
        proxy::encode_with_tlvs(version, source, dest, &tlvs, &mut preamble);
    }
    preamble.extend_from_slice(&early);
    let (res, _) = uring::send_all(backend, preamble).await;
    res.map_err(|source| relay::RelayError::Write {
        side: Side::Backend,
        source,
    })
}

/// `addr` with an IPv4-mapped IPv6 address turned back into IPv4.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// Adds a finished connection to this worker's counters.
fn count(m: &WorkerMetrics, up: &Upstream, backend: usize, outcome: &Outcome, timed_out: bool) {
    m.bytes_in.add(outcome.to_backend);
    m.bytes_out.add(outcome.to_client);
    m.spliced.add(outcome.spliced);
    m.send_zc.add(outcome.zc_sends);
    if let Some(b) = up.counters(m, backend) {
        b.bytes_in.add(outcome.to_backend);
        b.bytes_out.add(outcome.to_client);
    }
    if timed_out {
        m.timeouts.inc();
    } else if let Some(err) = &outcome.error {
        match err.side() {
            Side::Client => m.client_errors.inc(),
            Side::Backend => m.backend_errors.inc(),
        }
    }
}

/// Layer-4 observation (HAProxy's `observe layer4`): a backend that resets or
/// closes a connection before sending a byte, within connect-timeout of the
/// connect, failed it; a byte from it is a success.
fn observe_l4(
    fe: &FrontendState,
    upstream: &Upstream,
    index: usize,
    outcome: &Outcome,
    connected_at: Instant,
) {
    let pool = upstream.pool();
    if !pool.passive().observe_l4 {
        return;
    }
    if outcome.to_client > 0 {
        upstream.succeeded(index);
        return;
    }
    let backend_ended_first = match &outcome.error {
        Some(err) => err.side() == Side::Backend,
        None => outcome.first_eof == Some(Side::Backend),
    };
    if backend_ended_first && connected_at.elapsed() <= fe.frontend.config.connect_timeout {
        fe.metrics().l4_failures.inc();
        let why = match &outcome.error {
            Some(err) => format!("layer 4: {err} before the backend's first byte"),
            None => "layer 4: closed by the backend before its first byte".to_string(),
        };
        upstream.failed(index, &why);
    }
}

/// An address, or `-` when there is none; formatted only if the line is written.
struct MaybeAddr(Option<SocketAddr>);

impl fmt::Display for MaybeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(addr) => addr.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// The per-connection line: at info on the access log target when
/// `--access-log` is on, else at debug.
fn log_close(fe: &FrontendState, closed: &Closed, endpoint: Option<&str>, start: Instant) {
    let Closed {
        client,
        backend,
        bytes_in,
        bytes_out,
        ended: reason,
    } = closed;
    let backend = MaybeAddr(*backend);
    let duration_ms = start.elapsed().as_secs_f64() * 1000.0;
    // One line, two levels: tracing needs the level and target at the call site.
    macro_rules! line {
        ($($level_and_target:tt)*) => {
            tracing::event!(
                $($level_and_target)*
                client = %client,
                frontend = fe.name(),
                backend = %backend,
                endpoint = endpoint.unwrap_or("-"),
                bytes_in,
                bytes_out,
                duration_ms,
                reason = %reason,
                "connection closed"
            )
        };
    }
    if fe.limits.access_log {
        line!(target: ACCESS_TARGET, tracing::Level::INFO,);
    } else {
        line!(tracing::Level::DEBUG,);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the value `f` returns, without calling it.
    fn returned_size<A, B, C, D, E, R>(_: impl FnOnce(A, B, C, D, E) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    /// Tokio allocates each connection's task as one cell: the future plus
    /// 104 bytes (header, scheduler, id, stage tag, trailer; tokio 1.x),
    /// aligned to 128. An idle connection's memory is mostly that cell, so
    /// the future must stay within the 896-byte cell it fits today (it took
    /// 1,152 before `open` was split out of the relay's state).
    #[test]
    fn connection_task_fits_896_bytes() {
        let size = returned_size(handle);
        assert!(size <= 896 - 104, "the connection future is {size} bytes");
    }
}
