//! Frontends as the workers run them, one config generation at a time. A
//! [`Generation`] holds, per frontend, its validated config, its listening
//! sockets (one per worker), its backend pool, its counters and its
//! connection limit. A reload builds a new generation: listeners are carried
//! over for every frontend whose name and listen address are unchanged, so no
//! client is refused during a reload; so are its pool (health state, active
//! counts), prober and counters while its backends and health settings are
//! unchanged, and its connection limit while max-conns is. Everything else is
//! new, and connections opened before keep what they started with.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::{watch, Semaphore};
use tracing::warn;

use crate::config::{Config, FrontendConfig};
use crate::metrics::Metrics;
use crate::net::{self, BindError};
use crate::pool::{Passive, Pool};
use crate::probe;

/// Config generations as the server publishes them to the workers and the
/// admin endpoint: the current one, and a wake-up when a reload replaces it.
pub type Generations = watch::Receiver<Arc<Generation>>;

/// A frontend's listening sockets, one per worker, all on one address.
#[derive(Debug)]
pub struct Listeners {
    /// The bound address (the real port when the config said 0).
    pub addr: SocketAddr,
    /// Socket `i` belongs to worker `i`.
    pub sockets: Vec<socket2::Socket>,
}

/// One frontend of one generation.
#[derive(Debug)]
pub struct Frontend {
    /// As configured.
    pub config: FrontendConfig,
    /// Its sockets; the same `Arc` across generations while name and address stay.
    pub listeners: Arc<Listeners>,
    /// Backends, health and active counts.
    pub pool: Arc<Pool>,
    /// Every worker's counters for this frontend.
    pub metrics: Arc<Metrics>,
    /// Its max-conns, if set, shared by every worker. An acceptor takes a
    /// permit before it asks the kernel for the next client, so at the limit
    /// no accept is pending and new clients wait in the kernel's backlog
    /// instead of being accepted and closed; the permit moves into the
    /// connection and is returned when it closes.
    pub limit: Option<Arc<Semaphore>>,
}

/// Everything the workers run at one time.
#[derive(Debug)]
pub struct Generation {
    /// 0 at start, +1 per reload.
    pub id: u64,
    /// The process-wide settings.
    pub config: Config,
    /// In config order.
    pub frontends: Vec<Arc<Frontend>>,
}

impl Generation {
    /// Builds generation `id` from `config`, taking listeners over from
    /// `previous` where a frontend kept its name and listen address, binding
    /// the rest. Health probers start here, one per pool.
    pub fn build(
        id: u64,
        config: Config,
        previous: Option<&Generation>,
    ) -> Result<Generation, BindError> {
        let mut frontends = Vec::with_capacity(config.frontends.len());
        for fe in &config.frontends {
            let kept = previous.and_then(|p| {
                p.frontends
                    .iter()
                    .find(|old| old.config.name == fe.name && old.config.listen == fe.listen)
                    .map(|old| old.listeners.clone())
            });
            let listeners = match kept {
                Some(listeners) => listeners,
                None => {
                    let sockets = net::bind_listeners(fe.listen, config.workers)?;
                    let addr = sockets
                        .first()
                        .and_then(|s| s.local_addr().ok())
                        .and_then(|a| a.as_socket())
                        .unwrap_or(fe.listen);
                    Arc::new(Listeners { addr, sockets })
                }
            };
            // A frontend whose pool is unchanged keeps its pool (health, active
            // counts, prober) and its counters; one whose limit is unchanged
            // keeps its semaphore, so old and new connections share its permits. A
            // changed pool under health checks takes over the health of the
            // backends it kept (without checks, nothing would bring a carried
            // down backend back, so it starts all up).
            let old = previous.and_then(|p| p.frontend(&fe.name));
            let same_pool = old.filter(|o| {
                o.config.backends == fe.backends
                    && o.config.health == fe.health
                    && o.config.fail_timeout == fe.fail_timeout
                    && o.config.observe_l4 == fe.observe_l4
            });
            let (pool, metrics) = match same_pool {
                Some(o) => (o.pool.clone(), o.metrics.clone()),
                None => {
                    let pool = Arc::new(Pool::new(&fe.backends, passive(fe)));
                    if fe.health.checks {
                        let health = fe.health;
                        if let Some(o) = old {
                            pool.carry_health_from(&o.pool);
                        }
                        if let Err(err) =
                            probe::spawn(Arc::downgrade(&pool), fe.name.clone(), health)
                        {
                            warn!(frontend = %fe.name, %err, "cannot start health checks");
                        }
                    }
                    let metrics = Arc::new(Metrics::new(&fe.name, config.workers, pool.len()));
                    (pool, metrics)
                }
            };
            let limit = match old {
                Some(o) if o.config.max_conns == fe.max_conns => o.limit.clone(),
                _ => fe
                    .max_conns
                    .map(|max| Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS)))),
            };
            frontends.push(Arc::new(Frontend {
                metrics,
                limit,
                config: fe.clone(),
                listeners,
                pool,
            }));
        }
        Ok(Generation {
            id,
            config,
            frontends,
        })
    }

    /// The frontend named `name`.
    pub fn frontend(&self, name: &str) -> Option<&Arc<Frontend>> {
        self.frontends.iter().find(|f| f.config.name == name)
    }
}

/// How failures on real traffic take `fe`'s backends down.
fn passive(fe: &FrontendConfig) -> Passive {
    Passive {
        fall: fe.health.fall,
        fail_timeout: fe.fail_timeout,
        active_checks: fe.health.checks,
        observe_l4: fe.observe_l4,
    }
}
