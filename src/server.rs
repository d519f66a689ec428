//! The process: bind the listeners, start one worker per listener, turn
//! SIGINT/SIGTERM into the drain, and return when every worker has finished.

use std::sync::Arc;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing::{info, warn};

use crate::admin::{self, AdminError};
use crate::config::Config;
use crate::limit::ConnLimit;
use crate::metrics::Metrics;
use crate::net::{self, BindError};
use crate::pool::Pool;
use crate::probe;
use crate::shutdown::{self, Phase};
use crate::worker;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A listener could not be set up.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    /// The admin endpoint could not be opened.
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// The health prober could not be started.
    #[error("cannot start the health prober: {0}")]
    Prober(std::io::Error),
    /// A worker's thread or ring could not be started.
    #[error("cannot start worker {id}: {source}")]
    Worker {
        /// Which worker.
        id: usize,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Runs until a stop signal has been handled and every connection drained.
pub fn run(config: Config) -> Result<(), ServerError> {
    match net::raise_nofile_limit() {
        Ok(limit) => tracing::debug!(limit, "open file limit"),
        Err(err) => warn!(%err, "cannot raise the open file limit"),
    }
    let listeners = net::bind_listeners(config.listen, config.workers)?;
    let listen = listeners
        .first()
        .and_then(|l| l.local_addr().ok())
        .and_then(|a| a.as_socket())
        .unwrap_or(config.listen);

    let (trigger, watch) = shutdown::channel();
    let mut signals = Signals::new([SIGINT, SIGTERM]).map_err(ServerError::Signals)?;

    let config = Arc::new(config);
    let pool = Arc::new(Pool::new(&config.backends));
    if let Some(health) = config.health {
        probe::spawn(pool.clone(), health).map_err(ServerError::Prober)?;
    }
    let metrics = Arc::new(Metrics::new(&config.name, config.workers, pool.len()));
    if let Some(addr) = config.admin {
        admin::spawn(addr, metrics.clone(), pool.clone())?;
    }
    let shared = worker::Shared {
        pool,
        metrics,
        limit: config.max_conns.map(ConnLimit::new),
    };
    let mut handles = Vec::with_capacity(listeners.len());
    for (id, listener) in listeners.into_iter().enumerate() {
        let handle = worker::spawn(id, config.clone(), shared.clone(), listener, watch.clone())
            .map_err(|source| ServerError::Worker { id, source })?;
        handles.push(handle);
    }
    let backends: Vec<String> = config.backends.iter().map(|b| b.addr.to_string()).collect();
    info!(
        %listen,
        workers = config.workers,
        backends = %backends.join(","),
        balance = %config.balance,
        "ringlb started"
    );

    std::thread::Builder::new()
        .name("ringlb-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                match trigger.escalate() {
                    Phase::Draining => {
                        info!(signal, "stopping: no new connections, draining open ones")
                    }
                    _ => info!(signal, "stopping now: closing open connections"),
                }
            }
        })
        .map_err(ServerError::Signals)?;

    for handle in handles {
        let _ = handle.join();
    }
    info!("ringlb stopped");
    Ok(())
}
