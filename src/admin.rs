//! The admin endpoint: a small HTTP server on its own thread and its own
//! listener (`--admin ADDR`), never on a worker. `GET /metrics` is the
//! Prometheus text format, `GET /healthz` says whether any backend is up,
//! `GET /backends` lists the pool as JSON.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread;

use tiny_http::{Header, Method, Response, Server};
use tracing::{info, warn};

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
pub fn spawn(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    pool: Arc<Pool>,
) -> Result<SocketAddr, AdminError> {
    let err = |reason: String| AdminError { addr, reason };
    let server = Server::http(addr).map_err(|e| err(e.to_string()))?;
    let bound = server.server_addr().to_ip().unwrap_or(addr);
    thread::Builder::new()
        .name("ringlb-admin".into())
        .spawn(move || {
            for request in server.incoming_requests() {
                let (status, content_type, body) =
                    route(request.method(), request.url(), &metrics, &pool);
                let header = Header::from_bytes("Content-Type", content_type)
                    .expect("static header is valid");
                let response = Response::from_string(body)
                    .with_status_code(status)
                    .with_header(header);
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
fn route(
    method: &Method,
    url: &str,
    metrics: &Metrics,
    pool: &Pool,
) -> (u16, &'static str, String) {
    let path = url.split('?').next().unwrap_or(url);
    if *method != Method::Get {
        return (405, "text/plain", "only GET is supported\n".into());
    }
    match path {
        "/metrics" => (
            200,
            "text/plain; version=0.0.4",
            metrics::render(metrics, pool),
        ),
        "/healthz" if pool.any_up() => (200, "text/plain", "ok\n".into()),
        "/healthz" => (503, "text/plain", "no backend is up\n".into()),
        "/backends" => (200, "application/json", backends_json(metrics, pool)),
        _ => (
            404,
            "text/plain",
            "not found: try /metrics, /healthz or /backends\n".into(),
        ),
    }
}

fn backends_json(metrics: &Metrics, pool: &Pool) -> String {
    let backends: Vec<serde_json::Value> = (0..pool.len())
        .map(|i| {
            let config = pool.config(i);
            let sum = |f: fn(&metrics::BackendMetrics) -> &metrics::Counter| -> u64 {
                metrics
                    .workers
                    .iter()
                    .filter_map(|w| w.backends.get(i))
                    .map(|b| f(b).get())
                    .sum()
            };
            serde_json::json!({
                "frontend": metrics.frontend,
                "address": config.addr.to_string(),
                "weight": config.weight,
                "max_conns": config.max_conns,
                "up": pool.is_up(i),
                "active": pool.active(i),
                "connections_total": sum(|b| &b.connections),
                "connect_failures": sum(|b| &b.connect_failures),
                "bytes_in": sum(|b| &b.bytes_in),
                "bytes_out": sum(|b| &b.bytes_out),
            })
        })
        .collect();
    let mut body = serde_json::Value::Array(backends).to_string();
    body.push('\n');
    body
}
