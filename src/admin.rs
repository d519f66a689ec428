//! The admin endpoint: a small HTTP server on its own thread and its own
//! listener (`--admin ADDR`), never on a worker. `GET /metrics` is the
//! Prometheus text format, `GET /healthz` says whether every frontend has a
//! backend up, `GET /backends` lists the pools as JSON. It always reads the
//! current config generation.

use std::net::SocketAddr;
use std::thread;

use tiny_http::{Header, Method, Response, Server};
use tracing::{info, warn};

use crate::frontend::{Generation, Generations};
use crate::metrics::{self, Metrics};
use crate::pool::Pool;

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
    let server = Server::http(addr).map_err(|e| err(e.to_string()))?;
    let bound = server.server_addr().to_ip().unwrap_or(addr);
    thread::Builder::new()
        .name("ringlb-admin".into())
        .spawn(move || {
            for request in server.incoming_requests() {
                let generation = generations.borrow().clone();
                let (status, content_type, body) =
                    route(request.method(), request.url(), &generation);
                let response = Response::from_string(body).with_status_code(status);
                let response = match Header::from_bytes("Content-Type", content_type) {
                    Ok(header) => response.with_header(header),
                    Err(()) => response,
                };
                if let Err(err) = request.respond(response) {
                    warn!(%err, "admin response failed");
                }
            }
        })
        .map_err(|e| err(e.to_string()))?;
    info!(admin = %bound, "admin endpoint listening");
    Ok(bound)
}

/// Answers one request: status, content type, body.
fn route(method: &Method, url: &str, generation: &Generation) -> (u16, &'static str, String) {
    let path = url.split('?').next().unwrap_or(url);
    if *method != Method::Get {
        return (405, "text/plain", "only GET is supported\n".into());
    }
    match path {
        "/metrics" => {
            let pairs: Vec<(&Metrics, &Pool)> = generation
                .frontends
                .iter()
                .map(|f| (&*f.metrics, &*f.pool))
                .collect();
            (200, "text/plain; version=0.0.4", metrics::render(&pairs))
        }
        "/healthz" => {
            let down: Vec<&str> = generation
                .frontends
                .iter()
                .filter(|f| !f.pool.any_up())
                .map(|f| f.config.name.as_str())
                .collect();
            if down.is_empty() {
                (200, "text/plain", "ok\n".into())
            } else {
                (
                    503,
                    "text/plain",
                    format!("no backend is up in: {}\n", down.join(", ")),
                )
            }
        }
        "/backends" => (200, "application/json", backends_json(generation)),
        _ => (
            404,
            "text/plain",
            "not found: try /metrics, /healthz or /backends\n".into(),
        ),
    }
}

fn backends_json(generation: &Generation) -> String {
    let backends: Vec<serde_json::Value> = generation
        .frontends
        .iter()
        .flat_map(|f| (0..f.pool.len()).map(move |i| (&*f.metrics, &*f.pool, i)))
        .map(|(metrics, pool, i)| {
            let config = pool.config(i);
            serde_json::json!({
                "frontend": metrics.frontend,
                "address": config.addr.to_string(),
                "weight": config.weight,
                "max_conns": config.max_conns,
                "up": pool.is_up(i),
                "active": pool.active(i),
                "connections_total": metrics.sum_backend(i, |b| &b.connections),
                "connect_failures": metrics.sum_backend(i, |b| &b.connect_failures),
                "bytes_in": metrics.sum_backend(i, |b| &b.bytes_in),
                "bytes_out": metrics.sum_backend(i, |b| &b.bytes_out),
            })
        })
        .collect();
    let mut body = serde_json::Value::Array(backends).to_string();
    body.push('\n');
    body
}
