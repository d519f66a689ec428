//! The admin endpoint: an HTTP/1 server (hyper) on its own listener
//! (`--admin ADDR`) and its own thread running a current-thread tokio
//! runtime, never on a worker. `GET /metrics` is the Prometheus text format,
//! `GET /healthz` says whether every frontend has a backend up, `GET
//! /backends` lists the pools as JSON, `GET /` is the stats page and `GET
//! /stats.json` its snapshot ([`stats`]); each reads the
//! current config generation. `PATCH /frontends/{frontend}/backends/{addr}`
//! with `{"state": "ready"|"drain"|"maint"}` and/or `{"weight": N}` changes a
//! backend at once, in every pool of that frontend that has the address (see
//! [`Pool`] for what the workers make of it).
//!
//! Who may do what: with a token (`admin-token-file`), every request but
//! `GET /metrics` and `GET /healthz` (which Prometheus and load balancers
//! probe without credentials) must carry `Authorization: Bearer TOKEN`,
//! compared in constant time, else 401. Without one, changes are refused
//! (403) unless the endpoint listens on a loopback address, where only local
//! users reach it, and the request names it (`Host`) by an IP address or
//! `localhost`, which a DNS-rebinding page in a local browser cannot.
//!
//! Whatever its clients do, it must not take resources from the proxy, so
//! everything it holds is bounded: at most [`MAX_CONNECTIONS`] connections
//! (past that it stops accepting and new ones wait in the listen backlog,
//! except that the connection idle longest is closed to make room), request
//! heads up to [`MAX_HEAD_BYTES`] (431 past it), [`HEAD_TIMEOUT`] to send a
//! request head, counted from when the server starts waiting for one (so it
//! is also the keep-alive idle timeout), and a body only on `PATCH`, up to
//! [`MAX_BODY_BYTES`] (413) within [`BODY_TIMEOUT`] (408). Whatever the head
//! alone refuses (auth, method, a body on a `GET`: 400) is refused before a
//! byte of body is read. A failing accept (EMFILE...) backs off and retries;
//! the accept loop never ends.

use std::convert::Infallible;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body, Incoming};
use hyper::header::{HeaderMap, AUTHORIZATION, CONNECTION, CONTENT_TYPE, HOST, WWW_AUTHENTICATE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use slab::Slab;
use socket2::{Domain, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, Semaphore};
use tracing::{debug, info, warn};

use crate::backend::pool::{AdminState, Pool};
use crate::config::MAX_WEIGHT;
use crate::counters::Metrics;
use crate::frontend::{Frontend, Generation, Generations};
use crate::logging::Throttle;
use crate::metrics;
use crate::stats::{self, effective_weight};

/// Admin connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Largest request line plus headers; a larger head is answered 431.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Largest request body; a larger one is answered 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Time a client has to send a whole request head, from when the server
/// starts waiting for it: after connecting and between keep-alive requests.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// At the connection cap, how long a connection must have been idle before
/// it is closed to make room: one just accepted may not have sent its
/// request yet, and closing it would reset the request on its way. Short,
/// so a flood of idle connections still turns over quickly (64 per 50 ms).
const IDLE_GRACE: Duration = Duration::from_millis(50);
/// Time a client has to send a `PATCH` body, from when its head is parsed;
/// 408 past it. No other request may carry a body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(5);
/// Sources per frontend `GET /sources` lists unless `top=N` says.
pub const DEFAULT_TOP_SOURCES: usize = 10;
/// Most sources per frontend `GET /sources` lists.
pub const MAX_TOP_SOURCES: usize = 10_000;
/// Pending connections the kernel holds while the server is at its cap.
const LISTEN_BACKLOG: i32 = 1024;
/// First and longest pause after a failed accept.
const ACCEPT_BACKOFF: (Duration, Duration) =
    (Duration::from_millis(10), Duration::from_millis(100));
/// Read buffer bound per connection: room for a full head and a body chunk.
const MAX_BUF_BYTES: usize = MAX_HEAD_BYTES + 16 * 1024;

/// The admin listener could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the admin endpoint on {addr}: {reason}")]
pub struct AdminError {
    /// The --admin address.
    pub addr: SocketAddr,
    /// What went wrong.
    pub reason: String,
}

/// Binds `addr` (or serves `inherited`, the listener a hot upgrade handed
/// over) on a thread of its own until `stop` turns true (the process was
/// taken over) or the process exits. Returns the bound address (useful with
/// port 0) and a second handle on the listener, for a later takeover. The
/// token, if the config names a token file, is read here, once.
pub fn spawn(
    addr: SocketAddr,
    inherited: Option<std::net::TcpListener>,
    generations: Generations,
    mut stop: watch::Receiver<bool>,
) -> Result<(SocketAddr, std::net::TcpListener), AdminError> {
    let err = |reason: String| AdminError { addr, reason };
    let token_file = generations.borrow().config.admin_token_file.clone();
    let token = token_file
        .as_deref()
        .map(read_token)
        .transpose()
        .map_err(err)?;
    let listener = match inherited {
        Some(listener) => listener
            .set_nonblocking(true)
            .map(|()| listener)
            .map_err(|e| err(e.to_string()))?,
        None => bind(addr).map_err(|e| err(e.to_string()))?,
    };
    let bound = listener.local_addr().map_err(|e| err(e.to_string()))?;
    let handle = listener.try_clone().map_err(|e| err(e.to_string()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| err(e.to_string()))?;
    let may_change = token.is_some() || bound.ip().to_canonical().is_loopback();
    let state = Arc::new(State::new(generations, token, may_change));
    thread::Builder::new()
        .name("ringlb-admin".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match TcpListener::from_std(listener) {
                    Ok(listener) => listener,
                    Err(err) => {
                        warn!(%err, "admin endpoint cannot register its listener");
                        return;
                    }
                };
                // Accepting through epoll: dropping the accept is clean.
                tokio::select! {
                    () = accept_loop(listener, state) => {}
                    _ = stop.wait_for(|s| *s) => info!("admin endpoint handed over"),
                }
            })
        })
        .map_err(|e| err(e.to_string()))?;
    info!(admin = %bound, "admin endpoint listening");
    Ok((bound, handle))
}

/// The token in `path`, without surrounding whitespace; an empty one is an
/// error, since it would let anyone in.
fn read_token(path: &Path) -> Result<Vec<u8>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the admin token file {}: {e}", path.display()))?;
    match text.trim() {
        "" => Err(format!("the admin token file {} is empty", path.display())),
        token => Ok(token.as_bytes().to_vec()),
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// What every request reads.
struct State {
    /// The current config generation.
    generations: Generations,
    /// The `/metrics` registry, reading the current generation at each scrape.
    registry: Registry,
    /// When the endpoint started: `/stats.json` sample times count from it.
    started: Instant,
    /// The bearer token every request but /metrics and /healthz must carry.
    token: Option<Vec<u8>>,
    /// Whether changes are allowed: with a token, or on a loopback address.
    may_change: bool,
}

impl State {
    fn new(generations: Generations, token: Option<Vec<u8>>, may_change: bool) -> State {
        let current = generations.clone();
        let names = generations.clone();
        let registry = metrics::registry(
            move || {
                let generation = current.borrow().clone();
                generation
                    .frontends
                    .iter()
                    .map(|f| {
                        let pools = f.pools().into_iter();
                        let pools = pools.map(|(route, pool, first)| {
                            (route.map(str::to_string), pool.clone(), first)
                        });
                        (f.metrics.clone(), pools.collect())
                    })
                    .collect()
            },
            move || {
                let generation = names.borrow().clone();
                let samples = generation.dns.lock().map(|s| s.clone());
                samples.unwrap_or_default()
            },
        );
        State {
            generations,
            registry,
            started: Instant::now(),
            token,
            may_change,
        }
    }
}

/// Accepts while under the cap, one task per connection, until the process ends.
async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let conns = Arc::new(Conns::default());
    let throttle = Throttle::new(Duration::from_secs(1));
    let mut backoff = ACCEPT_BACKOFF.0;
    loop {
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => loop {
                // At the cap: make room by closing the connection idle
                // longest, once it has been idle for IDLE_GRACE; until then
                // a freed slot may come first.
                let wait = conns.close_longest_idle(IDLE_GRACE);
                tokio::select! {
                    permit = permits.clone().acquire_owned() => {
                        break permit.expect("the admin semaphore is never closed");
                    }
                    () = tokio::time::sleep(wait.unwrap_or_default()), if wait.is_some() => {}
                }
            },
        };
        match listener.accept().await {
            Ok((stream, _)) => {
                backoff = ACCEPT_BACKOFF.0;
                let (key, conn) = conns.insert();
                let (conns, state) = (conns.clone(), state.clone());
                tokio::spawn(async move {
                    serve(stream, &conn, &state).await;
                    conns.remove(key);
                    drop(permit);
                });
                // Let the new connection read its request before the next
                // accept, so it is not taken for idle and closed.
                tokio::task::yield_now().await;
            }
            Err(err) => {
                if let Some(suppressed) = throttle.allow(Instant::now()) {
                    warn!(%err, suppressed, "admin accept failed; retrying");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF.1);
            }
        }
    }
}

/// One connection: HTTP/1 with keep-alive until the client leaves, a limit
/// is hit, or it is closed to make room.
async fn serve(stream: TcpStream, conn: &Arc<Conn>, state: &Arc<State>) {
    let service = service_fn(|request| {
        let (state, conn) = (state.clone(), conn.clone());
        async move {
            conn.set_idle(false);
            let response = answer(request, &state).await;
            conn.set_idle(true);
            Ok::<_, Infallible>(response)
        }
    });
    let http = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_header_size(MAX_HEAD_BYTES)
        .max_buf_size(MAX_BUF_BYTES)
        .serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        result = http => {
            if let Err(err) = result {
                debug!(%err, "admin connection ended");
            }
        }
        () = conn.close.notified() => debug!("admin connection closed to make room"),
    }
}

/// The connections being served, so that at the cap the one idle longest can
/// be closed to make room for a new one.
#[derive(Default)]
struct Conns(Mutex<Slab<Arc<Conn>>>);

/// One served connection as [`Conns`] sees it.
struct Conn {
    /// Since when it has been waiting for a request; `None` while it
    /// answers one or once it has been told to close.
    idle_since: Mutex<Option<Instant>>,
    /// Tells its task to close it.
    close: Notify,
}

impl Conn {
    fn set_idle(&self, idle: bool) {
        *self.idle_since.lock().unwrap() = idle.then(Instant::now);
    }
}

impl Conns {
    fn insert(&self) -> (usize, Arc<Conn>) {
        let conn = Arc::new(Conn {
            idle_since: Mutex::new(Some(Instant::now())),
            close: Notify::new(),
        });
        (self.0.lock().unwrap().insert(conn.clone()), conn)
    }

    fn remove(&self, key: usize) {
        self.0.lock().unwrap().remove(key);
    }

    /// Tells the connection idle longest to close, if it has been idle for
    /// `grace`; if it has not yet, returns how long until it will have been
    /// (`None`: one was closed, or none is idle).
    fn close_longest_idle(&self, grace: Duration) -> Option<Duration> {
        let conns = self.0.lock().unwrap();
        let longest = conns
            .iter()
            .filter_map(|(_, c)| Some(((*c.idle_since.lock().unwrap())?, c)))
            .min_by_key(|(since, _)| *since);
        let (since, conn) = longest?;
        let idle = since.elapsed();
        if idle < grace {
            return Some(grace - idle);
        }
        *conn.idle_since.lock().unwrap() = None;
        conn.close.notify_one();
        None
    }
}

/// Answers one request whose head hyper has parsed within the limits.
/// Everything the head alone can refuse (auth, method, a body where none
/// belongs, the `Host` of a change) is refused before a byte of body is
/// read, so a client announcing a body it never sends holds nothing; the
/// only body read, a `PATCH`'s, has [`BODY_TIMEOUT`] to arrive.
async fn answer(request: Request<Incoming>, state: &State) -> Response<Full<Bytes>> {
    let (head, body) = request.into_parts();
    let has_body = !body.is_end_stream();
    let mut response = match refusal(&head, has_body, state) {
        Some(refusal) => refusal,
        None => {
            let generation = state.generations.borrow().clone();
            let path = head.uri.path();
            let (status, content_type, body) = if head.method == Method::PATCH {
                match read_body(body).await {
                    Ok(body) => patch(path, &body, &generation),
                    Err((status, reason)) => (status, "text/plain", reason),
                }
            } else {
                get(path, head.uri.query(), &generation, state)
            };
            reply(status, content_type, body)
        }
    };
    if has_body && !response.status().is_success() {
        // The body may be unread, or read only in part: the connection
        // cannot carry another request.
        response
            .headers_mut()
            .insert(CONNECTION, "close".parse().unwrap());
    }
    response
}

/// The answer refusing the request, judged from its head alone; `None` if
/// it may go on to be served.
fn refusal(
    head: &hyper::http::request::Parts,
    has_body: bool,
    state: &State,
) -> Option<Response<Full<Bytes>>> {
    let refuse = |status, text: String| Some(reply(status, "text/plain", text));
    let open = head.method == Method::GET && matches!(head.uri.path(), "/metrics" | "/healthz");
    if let Some(token) = &state.token {
        if !open && !bearer_matches(&head.headers, token) {
            let mut response = reply(
                StatusCode::UNAUTHORIZED,
                "text/plain",
                "unauthorized: send Authorization: Bearer TOKEN (the admin token file's)\n".into(),
            );
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, "Bearer".parse().unwrap());
            return Some(response);
        }
    }
    if !head.uri.path().starts_with("/frontends/") {
        if head.method != Method::GET {
            return refuse(
                StatusCode::METHOD_NOT_ALLOWED,
                "only GET is supported\n".into(),
            );
        }
        if has_body {
            return refuse(
                StatusCode::BAD_REQUEST,
                "bad request: a GET takes no body\n".into(),
            );
        }
        return None;
    }
    if head.method != Method::PATCH {
        return refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            "only PATCH is supported here\n".into(),
        );
    }
    if !state.may_change {
        return refuse(
            StatusCode::FORBIDDEN,
            "forbidden: changes need an admin token (admin-token-file) when the admin endpoint listens on a non-loopback address\n".into(),
        );
    }
    if state.token.is_none() {
        if let Err(host) = names_this_machine(head) {
            return refuse(
                StatusCode::FORBIDDEN,
                format!("forbidden: without an admin token, a change must name this endpoint by IP address or localhost, not by {host} (a guard against DNS rebinding)\n"),
            );
        }
    }
    None
}

/// Whether the request names its server (its `Host`, and the authority of
/// an absolute URI if it has one) by an IP literal or `localhost`, each
/// with an optional port: a name a DNS-rebinding page cannot make a
/// browser send to us. What it gives otherwise, for the refusal.
fn names_this_machine(head: &hyper::http::request::Parts) -> Result<(), String> {
    let Some(host) = head.headers.get(HOST) else {
        return Err("no Host header".into());
    };
    let host = String::from_utf8_lossy(host.as_bytes());
    if !is_ip_or_localhost(&host) {
        return Err(format!("Host {host:?}"));
    }
    match head.uri.authority() {
        Some(authority) if !is_ip_or_localhost(authority.as_str()) => {
            Err(format!("the URI's authority {:?}", authority.as_str()))
        }
        _ => Ok(()),
    }
}

/// `127.0.0.1`, `[::1]`, `localhost` (any case), each with an optional `:PORT`.
fn is_ip_or_localhost(host: &str) -> bool {
    let (name_ok, port) = match host.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((v6, port)) => (v6.parse::<Ipv6Addr>().is_ok(), port),
            None => return false,
        },
        None => {
            let (name, port) = host.find(':').map_or((host, ""), |i| host.split_at(i));
            let ok = name.parse::<Ipv4Addr>().is_ok() || name.eq_ignore_ascii_case("localhost");
            (ok, port)
        }
    };
    let port_ok = port.is_empty()
        || port.strip_prefix(':').is_some_and(|p| {
            !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok()
        });
    name_ok && port_ok
}

/// A `PATCH` body, up to [`MAX_BODY_BYTES`] within [`BODY_TIMEOUT`]; the
/// refusal's status and one-line reason otherwise.
async fn read_body(body: Incoming) -> Result<Bytes, (StatusCode, String)> {
    let too_large = || {
        let reason = format!("request body over {MAX_BODY_BYTES} bytes\n");
        (StatusCode::PAYLOAD_TOO_LARGE, reason)
    };
    if body.size_hint().lower() > MAX_BODY_BYTES as u64 {
        return Err(too_large());
    }
    // Reading through epoll: dropping the read at the deadline is clean.
    let read = Limited::new(body, MAX_BODY_BYTES).collect();
    match tokio::time::timeout(BODY_TIMEOUT, read).await {
        Ok(Ok(body)) => Ok(body.to_bytes()),
        Ok(Err(err)) if err.is::<LengthLimitError>() => Err(too_large()),
        Ok(Err(err)) => {
            debug!(%err, "admin request body unreadable");
            Err((StatusCode::BAD_REQUEST, "bad body\n".into()))
        }
        Err(_) => {
            let secs = BODY_TIMEOUT.as_secs();
            let reason = format!("request body not received within {secs} s\n");
            Err((StatusCode::REQUEST_TIMEOUT, reason))
        }
    }
}

/// Whether `headers` carry `Authorization: Bearer TOKEN` with this token,
/// compared in constant time (for a token of a given length).
fn bearer_matches(headers: &HeaderMap, token: &[u8]) -> bool {
    let Some(value) = headers.get(AUTHORIZATION) else {
        return false;
    };
    let value = value.as_bytes();
    let Some((scheme, given)) = value.split_at_checked(7) else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case(b"bearer ") || given.len() != token.len() {
        return false;
    }
    let diff = given
        .iter()
        .zip(token)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    std::hint::black_box(diff) == 0
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, content_type.parse().unwrap());
    response
}

/// Answers a `GET` that [`refusal`] let through: status, content type, body.
fn get(
    path: &str,
    query: Option<&str>,
    generation: &Generation,
    state: &State,
) -> (StatusCode, &'static str, String) {
    match path {
        "/metrics" => (
            StatusCode::OK,
            metrics::CONTENT_TYPE,
            metrics::render(&state.registry),
        ),
        "/healthz" => {
            let down: Vec<&str> = generation
                .frontends
                .iter()
                .filter(|f| !f.any_up())
                .map(|f| f.config.name.as_str())
                .collect();
            if down.is_empty() {
                (StatusCode::OK, "text/plain", "ok\n".into())
            } else {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("no backend is up in: {}\n", down.join(", ")),
                )
            }
        }
        "/" => (
            StatusCode::OK,
            "text/html; charset=utf-8",
            stats::PAGE.into(),
        ),
        "/stats.json" => {
            let mut snapshot = stats::snapshot(generation, state.started);
            // Whether the page may offer its drain/ready buttons.
            snapshot["may_change"] = state.may_change.into();
            let mut body = snapshot.to_string();
            body.push('\n');
            (StatusCode::OK, "application/json", body)
        }
        "/backends" => (
            StatusCode::OK,
            "application/json",
            backends_json(generation),
        ),
        "/sources" => match top_of(query) {
            Ok(top) => (
                StatusCode::OK,
                "application/json",
                sources_json(generation, top),
            ),
            Err(reason) => (StatusCode::BAD_REQUEST, "text/plain", reason),
        },
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /, /stats.json, /metrics, /healthz, /backends, /sources?top=N or PATCH /frontends/NAME/backends/ADDR\n".into(),
        ),
    }
}

/// The `top=N` of a `/sources` query: how many sources per frontend
/// (default [`DEFAULT_TOP_SOURCES`], at most [`MAX_TOP_SOURCES`]); other
/// parameters are refused, so a typo is not taken for the default.
fn top_of(query: Option<&str>) -> Result<usize, String> {
    let mut top = DEFAULT_TOP_SOURCES;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let value = pair.strip_prefix("top=").ok_or_else(|| {
            format!("bad query: only top=N (1 to {MAX_TOP_SOURCES}) is known, got {pair:?}\n")
        })?;
        top = value
            .parse()
            .ok()
            .filter(|n| (1..=MAX_TOP_SOURCES).contains(n))
            .ok_or_else(|| {
                format!(
                    "bad top: must be a whole number from 1 to {MAX_TOP_SOURCES}, got {value:?}\n"
                )
            })?;
    }
    Ok(top)
}

/// `GET /sources`: per frontend with per-source limits, its limits, how
/// full its table is, and its `top` busiest sources (most connections open,
/// then the highest rate of new connections, refused ones included).
fn sources_json(generation: &Generation, top: usize) -> String {
    let now = Instant::now();
    let frontends: Vec<serde_json::Value> = generation
        .frontends
        .iter()
        .filter_map(|f| {
            let table = f.sources.as_ref()?;
            let limits = &f.config.sources;
            let sources: Vec<serde_json::Value> = table
                .top(top, now)
                .into_iter()
                .map(|s| {
                    serde_json::json!({
                        "source": s.source.to_string(),
                        "connections": s.connections,
                        "rate": (s.rate * 100.0).round() / 100.0,
                    })
                })
                .collect();
            Some(serde_json::json!({
                "frontend": f.config.name,
                "max_conns_per_source": limits.max_conns,
                "rate_per_source": limits.rate.map(|r| r.to_string()),
                "rate_burst": limits.rate.map(|_| limits.burst()),
                "table_size": table.capacity(),
                "tracked": table.len(),
                "sources": sources,
            }))
        })
        .collect();
    let mut body = serde_json::Value::Array(frontends).to_string();
    body.push('\n');
    body
}

fn backends_json(generation: &Generation) -> String {
    let backends: Vec<serde_json::Value> = generation
        .frontends
        .iter()
        .flat_map(|f| {
            f.pools().into_iter().flat_map(move |(route, pool, first)| {
                (0..pool.len()).map(move |i| backend_json(&f.metrics, route, pool, i, first + i))
            })
        })
        .collect();
    let mut body = serde_json::Value::Array(backends).to_string();
    body.push('\n');
    body
}

/// Backend `i` of `pool` (of route `route`, if any), whose counters are
/// `counter` in `metrics`, as /backends lists it.
fn backend_json(
    metrics: &Metrics,
    route: Option<&str>,
    pool: &Pool,
    i: usize,
    counter: usize,
) -> serde_json::Value {
    let config = pool.config(i);
    let up = pool.is_up(i);
    let mut entry = serde_json::json!({
        "frontend": metrics.frontend,
        "address": config.addr.to_string(),
        "name": config.name.as_ref().map(|n| n.to_string()),
        "weight": pool.weight(i),
        "configured_weight": config.weight,
        "effective_weight": effective_weight(pool, i),
        "slow_start_ms": config.slow_start.map(|d| d.as_millis() as u64),
        "state": pool.state(i).name(),
        "health": if up { "up" } else { "down" },
        "last_error": pool.last_error(i),
        "agent": pool.agent(i).map(|a| serde_json::json!({
            "health": if a.up { "up" } else { "down" },
            "state": a.state.name(),
            "weight_percent": a.percent,
        })),
        "max_conns": config.max_conns,
        "backup": config.backup,
        "up": up,
        "active": pool.active(i),
        "connections_total": metrics.sum_backend(counter, |b| &b.connections),
        "connect_failures": metrics.sum_backend(counter, |b| &b.connect_failures),
        "bytes_in": metrics.sum_backend(counter, |b| &b.bytes_in),
        "bytes_out": metrics.sum_backend(counter, |b| &b.bytes_out),
    });
    if let Some(route) = route {
        entry["route"] = route.into();
    }
    entry
}

/// A PATCH body: what to change.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Change {
    state: Option<AdminState>,
    weight: Option<u64>,
}

impl Change {
    /// Reads a body; the error is one line saying what is wrong.
    fn parse(body: &[u8]) -> Result<Change, String> {
        let change: Change = serde_json::from_slice(body).map_err(|e| {
            let e = e.to_string().replace(['\n', '\r'], " ");
            format!("bad body: {e}")
        })?;
        if change.state.is_none() && change.weight.is_none() {
            return Err(format!(
                "bad body: nothing to change: give \"state\" (ready, drain or maint) and/or \"weight\" (0 to {MAX_WEIGHT})"
            ));
        }
        if let Some(weight) = change.weight.filter(|&w| w > u64::from(MAX_WEIGHT)) {
            return Err(format!(
                "bad weight: must be between 0 and {MAX_WEIGHT}, got {weight}"
            ));
        }
        Ok(change)
    }
}

/// `PATCH /frontends/{frontend}/backends/{addr}`: applies the body to every
/// pool of the frontend holding the address; answers with the first one's
/// backend as /backends shows it.
fn patch(path: &str, body: &[u8], generation: &Generation) -> (StatusCode, &'static str, String) {
    let not_found = |what: String| (StatusCode::NOT_FOUND, "text/plain", format!("{what}\n"));
    let Some((name, addr)) = path
        .strip_prefix("/frontends/")
        .and_then(|rest| rest.rsplit_once("/backends/"))
        .and_then(|(name, addr)| Some((percent_decode(name)?, percent_decode(addr)?)))
    else {
        return not_found("not found: expected /frontends/NAME/backends/ADDR".into());
    };
    let Some(frontend) = generation.frontend(&name) else {
        return not_found(format!("no frontend named {name:?}"));
    };
    let held = holding(frontend, &addr);
    if held.is_empty() {
        return not_found(format!("frontend {name:?} has no backend {addr:?}"));
    }
    let change = match Change::parse(body) {
        Ok(change) => change,
        Err(reason) => return (StatusCode::BAD_REQUEST, "text/plain", format!("{reason}\n")),
    };
    for &(_, pool, _, i) in &held {
        if let Some(weight) = change.weight {
            pool.set_weight(i, weight as u32);
        }
        if let Some(state) = change.state {
            pool.set_state(i, state);
        }
        info!(frontend = %name, backend = %pool.addr(i), state = %pool.state(i), weight = pool.weight(i), "backend changed on the admin endpoint");
    }
    let (route, pool, first, i) = held[0];
    let mut body = backend_json(&frontend.metrics, route, pool, i, first + i).to_string();
    body.push('\n');
    (StatusCode::OK, "application/json", body)
}

/// Every backend of `frontend` at `addr` (as /backends shows it, or any
/// spelling that parses to the same address): route, pool, its first
/// counter, index.
fn holding<'f>(
    frontend: &'f Frontend,
    addr: &str,
) -> Vec<(Option<&'f str>, &'f Pool, usize, usize)> {
    let parsed = addr.parse::<SocketAddr>().ok();
    frontend
        .pools()
        .into_iter()
        .flat_map(|(route, pool, first)| {
            (0..pool.len())
                .filter(|&i| {
                    let a = pool.addr(i);
                    Some(a) == parsed || a.to_string() == addr
                })
                .map(move |i| (route, &**pool, first, i))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Decodes `%XX` escapes (so `%5B::1%5D:80` names `[::1]:80`); `None` for a
/// bad escape or bytes that are not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_cap_the_connection_idle_longest_is_closed_once_past_the_grace() {
        let conns = Conns::default();
        let (_, busy) = conns.insert();
        let (_, older) = conns.insert();
        let (newer_key, newer) = conns.insert();
        busy.set_idle(false);
        let idle = |c: &Conn| c.idle_since.lock().unwrap().is_some();

        // Idle for less than the grace: not yet, and how long until then.
        let wait = conns.close_longest_idle(Duration::from_secs(60));
        assert!(
            wait.is_some_and(|w| w > Duration::from_secs(59)),
            "{wait:?}"
        );
        assert!(idle(&older) && idle(&newer));
        assert_eq!(conns.close_longest_idle(Duration::ZERO), None);
        assert!(!idle(&older), "the older idle one is told to close");
        assert!(idle(&newer));
        assert_eq!(conns.close_longest_idle(Duration::ZERO), None);
        assert!(!idle(&newer));
        conns.remove(newer_key);
        // Only a busy connection left: nothing to close, nothing to wait for.
        assert_eq!(conns.close_longest_idle(Duration::ZERO), None);
        assert!(!idle(&busy));
        assert_eq!(conns.0.lock().unwrap().len(), 2);
    }

    #[test]
    fn bad_bodies_get_one_line_reasons() {
        let err = |body: &str| Change::parse(body.as_bytes()).err().unwrap();
        for (body, says) in [
            ("", "bad body"),
            ("{", "bad body"),
            ("{\"state\": \"sleep\"}", "unknown variant"),
            ("{\"weight\": 1001}", "between 0 and 1000, got 1001"),
            ("{\"weight\": -1}", "bad body"),
            ("{\"colour\": 1}", "unknown field"),
            ("{}", "nothing to change"),
            ("{\n\"state\":\n3}", "bad body"),
        ] {
            let reason = err(body);
            assert!(reason.contains(says), "{body:?}: {reason}");
            assert!(!reason.contains('\n'), "{body:?}: {reason}");
        }
        let change = Change::parse(br#"{"state":"drain","weight":0}"#).unwrap();
        assert_eq!(
            (change.state, change.weight),
            (Some(AdminState::Drain), Some(0))
        );
    }

    #[test]
    fn sources_queries() {
        assert_eq!(top_of(None), Ok(DEFAULT_TOP_SOURCES));
        assert_eq!(top_of(Some("top=3")), Ok(3));
        assert_eq!(top_of(Some("top=10000")), Ok(10_000));
        for bad in ["top=0", "top=10001", "top=x", "top=", "tops=3", "top=3&x=1"] {
            let err = top_of(Some(bad)).unwrap_err();
            assert!(err.starts_with("bad "), "{bad}: {err}");
            assert_eq!(err.matches('\n').count(), 1, "{bad}: {err}");
        }
    }

    #[test]
    fn addresses_in_paths_may_be_escaped() {
        assert_eq!(percent_decode("%5B::1%5D:80").as_deref(), Some("[::1]:80"));
        assert_eq!(percent_decode("a%2fb").as_deref(), Some("a/b"));
        assert_eq!(percent_decode("plain").as_deref(), Some("plain"));
        assert_eq!(percent_decode("bad%4"), None);
        assert_eq!(percent_decode("bad%zz"), None);
    }

    #[test]
    fn only_ip_literals_and_localhost_name_this_machine() {
        for host in [
            "127.0.0.1",
            "127.0.0.1:9900",
            "10.1.2.3:80",
            "[::1]",
            "[::1]:9900",
            "[2001:db8::7]:1",
            "localhost",
            "LOCALHOST:9900",
            "localhost:65535",
        ] {
            assert!(is_ip_or_localhost(host), "{host}");
        }
        for host in [
            "",
            "evil.example",
            "evil.example:1234",
            "localhost.evil.example",
            "127.0.0.1.evil.example",
            "127.1",
            "::1",
            "[::1",
            "[evil.example]:80",
            "[::1]x",
            "localhost:",
            "localhost:+80",
            "localhost:65536",
            "localhost:80:80",
            "localhost.",
        ] {
            assert!(!is_ip_or_localhost(host), "{host}");
        }
    }

    #[test]
    fn only_the_right_bearer_token_passes() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(AUTHORIZATION, value.parse().unwrap());
            bearer_matches(&headers, b"s3cret")
        };
        assert!(with("Bearer s3cret"));
        assert!(with("bearer s3cret"));
        assert!(!with("Bearer s3cre"));
        assert!(!with("Bearer s3cret2"));
        assert!(!with("Bearer S3cret"));
        assert!(!with("Basic s3cret"));
        assert!(!with("Bearer"));
        assert!(!bearer_matches(&HeaderMap::new(), b"s3cret"));
    }
}
