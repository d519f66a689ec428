//! The admin endpoint: an HTTP/1 server (hyper) on its own listener
//! (`--admin ADDR`) and its own thread running a current-thread tokio
//! runtime, never on a worker. `GET /metrics` is the Prometheus text format,
//! `GET /healthz` says whether every frontend has a backend up, `GET
//! /backends` lists the pools as JSON, `GET /` is the stats page and `GET
//! /stats.json` its snapshot ([`stats`]); each reads the
//! current config generation.
//!
//! Whatever its clients do, it must not take resources from the proxy, so
//! everything it holds is bounded: at most [`MAX_CONNECTIONS`] connections
//! (past that it stops accepting and new ones wait in the listen backlog,
//! except that the connection idle longest is closed to make room), request
//! heads up to [`MAX_HEAD_BYTES`] (431 past it), bodies up to
//! [`MAX_BODY_BYTES`] (413), and [`HEAD_TIMEOUT`] to send a request head,
//! counted from when the server starts waiting for one (so it is also the
//! keep-alive idle timeout). A failing accept (EMFILE...) backs off and
//! retries; the accept loop never ends.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body, Incoming};
use hyper::header::{CONNECTION, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use slab::Slab;
use socket2::{Domain, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tracing::{debug, info, warn};

use crate::frontend::{Generation, Generations};
use crate::logging::Throttle;
use crate::metrics;
use crate::stats;

/// Admin connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Largest request line plus headers; a larger head is answered 431.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Largest request body; a larger one is answered 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Time a client has to send a whole request head, from when the server
/// starts waiting for it: after connecting and between keep-alive requests.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
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

/// Binds `addr` and serves on a thread of its own for the life of the process.
/// Returns the bound address (useful with port 0).
pub fn spawn(addr: SocketAddr, generations: Generations) -> Result<SocketAddr, AdminError> {
    let err = |reason: String| AdminError { addr, reason };
    let listener = bind(addr).map_err(|e| err(e.to_string()))?;
    let bound = listener.local_addr().map_err(|e| err(e.to_string()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| err(e.to_string()))?;
    let state = Arc::new(State::new(generations));
    thread::Builder::new()
        .name("ringlb-admin".into())
        .spawn(move || {
            runtime.block_on(async move {
                match TcpListener::from_std(listener) {
                    Ok(listener) => accept_loop(listener, state).await,
                    Err(err) => warn!(%err, "admin endpoint cannot register its listener"),
                }
            })
        })
        .map_err(|e| err(e.to_string()))?;
    info!(admin = %bound, "admin endpoint listening");
    Ok(bound)
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
}

impl State {
    fn new(generations: Generations) -> State {
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
            Err(_) => {
                conns.close_longest_idle();
                permits
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("the admin semaphore is never closed")
            }
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

    /// Tells the connection idle longest, if any, to close.
    fn close_longest_idle(&self) {
        let conns = self.0.lock().unwrap();
        let longest = conns
            .iter()
            .filter_map(|(_, c)| Some(((*c.idle_since.lock().unwrap())?, c)))
            .min_by_key(|(since, _)| *since);
        if let Some((_, conn)) = longest {
            *conn.idle_since.lock().unwrap() = None;
            conn.close.notify_one();
        }
    }
}

/// Answers one request whose head hyper has parsed within the limits.
async fn answer(request: Request<Incoming>, state: &State) -> Response<Full<Bytes>> {
    let (head, body) = request.into_parts();
    if body.size_hint().lower() > MAX_BODY_BYTES as u64 {
        return too_large();
    }
    if let Err(err) = Limited::new(body, MAX_BODY_BYTES).collect().await {
        if err.is::<LengthLimitError>() {
            return too_large();
        }
        debug!(%err, "admin request body unreadable");
        return reply(StatusCode::BAD_REQUEST, "text/plain", "bad body\n".into());
    }
    let generation = state.generations.borrow().clone();
    let path = head.uri.path();
    let (status, content_type, body) = route(&head.method, path, &generation, state);
    reply(status, content_type, body)
}

fn too_large() -> Response<Full<Bytes>> {
    let mut response = reply(
        StatusCode::PAYLOAD_TOO_LARGE,
        "text/plain",
        format!("request body over {MAX_BODY_BYTES} bytes\n"),
    );
    // The rest of the body is unread: the connection cannot carry another request.
    response
        .headers_mut()
        .insert(CONNECTION, "close".parse().unwrap());
    response
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, content_type.parse().unwrap());
    response
}

/// Answers one request: status, content type, body.
fn route(
    method: &Method,
    path: &str,
    generation: &Generation,
    state: &State,
) -> (StatusCode, &'static str, String) {
    if method != Method::GET {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET is supported\n".into(),
        );
    }
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
            let mut body = stats::snapshot(generation, state.started).to_string();
            body.push('\n');
            (StatusCode::OK, "application/json", body)
        }
        "/backends" => (
            StatusCode::OK,
            "application/json",
            backends_json(generation),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /, /stats.json, /metrics, /healthz or /backends\n".into(),
        ),
    }
}

fn backends_json(generation: &Generation) -> String {
    let backends: Vec<serde_json::Value> = generation
        .frontends
        .iter()
        .flat_map(|f| {
            f.pools().into_iter().flat_map(move |(route, pool, first)| {
                (0..pool.len()).map(move |i| (&*f.metrics, route, pool.clone(), i, first + i))
            })
        })
        .map(|(metrics, route, pool, i, counter)| {
            let config = pool.config(i);
            let mut entry = serde_json::json!({
                "frontend": metrics.frontend,
                "address": config.addr.to_string(),
                "name": config.name.as_ref().map(|n| n.to_string()),
                "weight": config.weight,
                "max_conns": config.max_conns,
                "backup": config.backup,
                "up": pool.is_up(i),
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
        })
        .collect();
    let mut body = serde_json::Value::Array(backends).to_string();
    body.push('\n');
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_cap_the_connection_idle_longest_is_closed_once() {
        let conns = Conns::default();
        let (_, busy) = conns.insert();
        let (_, older) = conns.insert();
        let (newer_key, newer) = conns.insert();
        busy.set_idle(false);
        let idle = |c: &Conn| c.idle_since.lock().unwrap().is_some();

        conns.close_longest_idle();
        assert!(!idle(&older), "the older idle one is told to close");
        assert!(idle(&newer));
        conns.close_longest_idle();
        assert!(!idle(&newer));
        conns.remove(newer_key);
        // Only a busy connection left: nothing to close.
        conns.close_longest_idle();
        assert!(!idle(&busy));
        assert_eq!(conns.0.lock().unwrap().len(), 2);
    }
}
