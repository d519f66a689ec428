//! Frontends as the workers run them, one config generation at a time. A
//! [`Generation`] holds, per frontend, its validated config, its listening
//! sockets (one per worker), its backend pools (its own and one per SNI
//! route), its counters and its connection limit. A reload builds a new
//! generation: listeners are carried over for every frontend whose name and
//! listen address are unchanged, so no client is refused during a reload; so
//! are its pools (health state, active counts) and counters while its
//! backends, its routes' backends and names and its health settings are
//! unchanged, and its connection limit while max-conns is. A changed pool
//! takes over the health of the backends it kept, a route's from the old
//! route of the same name, and their runtime state (drain or maint, a
//! weight set on the admin endpoint, where a slow start ramps from); the
//! pool slot's one prober moves on to it while the slot's health settings
//! stay, so a generation starts no thread. Everything else is new, and
//! connections opened before keep what they started with.
//!
//! The [`Publisher`] is the one place a generation is built and published:
//! a reload hands it the new config, a DNS change the running templates with
//! their new addresses, and it builds the two one at a time, so neither undoes
//! the other's.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{watch, Semaphore};
use tracing::warn;

use crate::backend::discovery;
use crate::backend::pool::{Passive, Pool};
use crate::backend::probe::{Check, Prober};
use crate::config::{BackendConfig, Config, FrontendConfig, HealthConfig, Protocol};
use crate::counters::Metrics;
use crate::net::{self, BindError};
use crate::sources::SourceTable;

/// Config generations as the server publishes them to the workers and the
/// admin endpoint: the current one, and a wake-up when a reload replaces it.
pub type Generations = watch::Receiver<Arc<Generation>>;

/// Builds and publishes generations, one at a time, for every source of
/// change (a reload, a DNS answer): sources hand it a config, it hands the
/// workers and the admin endpoint a generation.
#[derive(Debug)]
pub struct Publisher {
    /// The watch every worker and the admin endpoint follow.
    sender: watch::Sender<Arc<Generation>>,
    /// Held from reading the running generation to publishing the next, so
    /// two sources never build on the same one and the later undo the earlier.
    building: Mutex<()>,
}

/// What [`Publisher::publish`] replaced, and with what.
#[derive(Debug)]
pub struct Published {
    /// The generation that ran until now.
    pub previous: Arc<Generation>,
    /// The one published.
    pub current: Arc<Generation>,
}

impl Publisher {
    /// A publisher whose first generation is `first`, and the watch on it.
    pub fn new(first: Arc<Generation>) -> (Publisher, Generations) {
        let (sender, generations) = watch::channel(first);
        let publisher = Publisher {
            sender,
            building: Mutex::new(()),
        };
        (publisher, generations)
    }

    /// Builds the generation after the running one from the config `next`
    /// returns (it is given the running generation, and runs under the
    /// publisher's lock), and publishes it. On an error from `next` or from
    /// the build, nothing is published and the running generation stays.
    pub fn publish<E: From<BindError>>(
        &self,
        next: impl FnOnce(&Generation) -> Result<Config, E>,
    ) -> Result<Published, E> {
        let _building = self.building.lock().unwrap_or_else(PoisonError::into_inner);
        let previous = self.sender.borrow().clone();
        let config = next(&previous)?;
        let generation =
            Generation::build(previous.id + 1, config, Some(&previous), &mut Vec::new())?;
        let current = Arc::new(generation);
        self.sender.send_replace(current.clone());
        Ok(Published { previous, current })
    }
}

/// A frontend's listening sockets, one per worker, all on one address.
#[derive(Debug)]
pub struct Listeners {
    /// The bound address (the real port when the config said 0).
    pub addr: SocketAddr,
    /// Socket `i` belongs to worker `i % workers`: one per worker, or more
    /// when a hot upgrade handed over more sockets than there are workers.
    pub sockets: Vec<socket2::Socket>,
}

/// A listener handed over by the process a hot upgrade replaces, until a
/// frontend of the first generation claims it.
#[derive(Debug)]
pub struct Handed {
    /// The frontend it served there.
    pub name: String,
    /// That frontend's configured listen address (port 0 stays 0).
    pub listen: SocketAddr,
    /// Its sockets and bound address.
    pub listeners: Listeners,
}

impl Handed {
    /// Whether a frontend `name` listening on `listen` takes this listener
    /// over: its address was configured the same (under the same name, for
    /// a port 0 that the kernel chose), or is the one this listener is bound to.
    fn fits(&self, name: &str, listen: SocketAddr, protocol: Protocol) -> bool {
        let same = (listen == self.listen && (listen.port() != 0 || name == self.name))
            || listen == self.listeners.addr;
        same && self.protocol() == protocol
    }

    /// The transport of its sockets (a TCP and a UDP frontend may share an address).
    fn protocol(&self) -> Protocol {
        let kind = self.listeners.sockets.first().and_then(|s| s.r#type().ok());
        match kind {
            Some(socket2::Type::DGRAM) => Protocol::Udp,
            _ => Protocol::Tcp,
        }
    }
}

/// One frontend of one generation.
#[derive(Debug)]
pub struct Frontend {
    /// As configured.
    pub config: FrontendConfig,
    /// Its sockets; the same `Arc` across generations while name and address stay.
    pub listeners: Arc<Listeners>,
    /// Backends, health and active counts; with SNI routing, the default
    /// route's (possibly empty).
    pub pool: Arc<Pool>,
    /// Each SNI route's pool, in `config.routes` order.
    pub routes: Vec<Arc<Pool>>,
    /// Each pool's prober (with health checks), the frontend's own first,
    /// then each route's: one per slot, shared by the generations that keep
    /// the slot's health settings.
    pub probers: Vec<Option<Arc<Prober>>>,
    /// Every worker's counters for this frontend.
    pub metrics: Arc<Metrics>,
    /// Its max-conns (max-sessions for UDP), if set, shared by every worker.
    /// An acceptor takes a permit before it asks the kernel for the next
    /// client, so at the limit no accept is pending and new clients wait in
    /// the kernel's backlog instead of being accepted and closed; the permit
    /// moves into the connection and is returned when it closes. A UDP
    /// session takes one when it opens, and past the limit the datagram is
    /// dropped.
    pub limit: Option<Arc<Semaphore>>,
    /// With per-source limits, its table of sources, shared by every
    /// worker; a reload keeps it (and the counts in it) while the prefixes
    /// and the table's size stay, so the limits go on holding across it.
    pub sources: Option<Arc<SourceTable>>,
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
    /// The backend names DNS discovery follows, for /metrics; the same
    /// across generations.
    pub dns: Arc<discovery::Status>,
}

impl Generation {
    /// Builds generation `id` from `config`, taking listeners over from
    /// `previous` where a frontend kept its name and listen address, or
    /// from `handed` (a hot upgrade's, removed from it when claimed), and
    /// binding the rest. Health probers start here, one per pool slot, or
    /// move on from `previous`'s to the new pools once the build succeeded.
    pub fn build(
        id: u64,
        config: Config,
        previous: Option<&Generation>,
        handed: &mut Vec<Handed>,
    ) -> Result<Generation, BindError> {
        let mut frontends = Vec::with_capacity(config.frontends.len());
        // Applied once every frontend is built, so a failed build leaves
        // the running generation's probers as they were.
        let mut probes = Probes::default();
        for fe in &config.frontends {
            let kept = previous.and_then(|p| {
                p.frontends
                    .iter()
                    .find(|old| {
                        old.config.name == fe.name
                            && old.config.listen == fe.listen
                            && old.config.protocol == fe.protocol
                    })
                    .map(|old| old.listeners.clone())
            });
            let claimed = match kept {
                Some(_) => None,
                None => handed
                    .iter()
                    .position(|h| h.fits(&fe.name, fe.listen, fe.protocol))
                    .map(|i| handed.swap_remove(i).listeners),
            };
            let listeners = match (kept, claimed) {
                (Some(listeners), _) => listeners,
                (None, Some(mut listeners)) => {
                    // Fewer sockets than workers: the others join the same
                    // SO_REUSEPORT group, at the port it is bound to.
                    let missing = config.workers.saturating_sub(listeners.sockets.len());
                    if missing > 0 {
                        let more = bind(fe.protocol, listeners.addr, missing)?;
                        listeners.sockets.extend(more);
                    }
                    Arc::new(listeners)
                }
                (None, None) => {
                    let sockets = bind(fe.protocol, fe.listen, config.workers)?;
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
                    && o.config.protocol == fe.protocol
                    && o.config.udp.health_send == fe.udp.health_send
                    && o.config.udp.health_expect == fe.udp.health_expect
                    && o.config.routes.len() == fe.routes.len()
                    && o.config.routes.iter().zip(&fe.routes).all(|(a, b)| {
                        a.backends == b.backends && a.label() == b.label() && a.health == b.health
                    })
            });
            let (pool, routes, probers, metrics) = match same_pool {
                Some(o) => (
                    o.pool.clone(),
                    o.routes.clone(),
                    o.probers.clone(),
                    o.metrics.clone(),
                ),
                None => {
                    let old_pool =
                        old.map(|o| (&o.pool, o.probers.first().and_then(Option::as_ref)));
                    let (pool, prober) =
                        new_pool(fe, None, &fe.health, &fe.backends, old_pool, &mut probes);
                    let mut probers = vec![prober];
                    let routes: Vec<Arc<Pool>> = fe
                        .routes
                        .iter()
                        .map(|r| {
                            let carried = old.and_then(|o| o.route_slot(r.label()));
                            let (pool, prober) = new_pool(
                                fe,
                                Some(r.label()),
                                &r.health,
                                &r.backends,
                                carried,
                                &mut probes,
                            );
                            probers.push(prober);
                            pool
                        })
                        .collect();
                    let backends = pool.len() + routes.iter().map(|r| r.len()).sum::<usize>();
                    let metrics = Arc::new(Metrics::new(&fe.name, config.workers, backends));
                    (pool, routes, probers, metrics)
                }
            };
            let limit = match old {
                Some(o) if o.config.max_clients() == fe.max_clients() => o.limit.clone(),
                _ => fe
                    .max_clients()
                    .map(|max| Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS)))),
            };
            let sources = fe.sources.enabled().then(|| {
                old.and_then(|o| o.sources.clone())
                    .filter(|table| table.fits(&fe.sources))
                    .unwrap_or_else(|| Arc::new(SourceTable::new(&fe.sources)))
            });
            frontends.push(Arc::new(Frontend {
                metrics,
                limit,
                sources,
                config: fe.clone(),
                listeners,
                pool,
                routes,
                probers,
            }));
        }
        probes.apply(previous, &frontends);
        Ok(Generation {
            id,
            config,
            frontends,
            dns: previous.map_or_else(Arc::default, |p| p.dns.clone()),
        })
    }

    /// The frontend named `name`.
    pub fn frontend(&self, name: &str) -> Option<&Arc<Frontend>> {
        self.frontends.iter().find(|f| f.config.name == name)
    }
}

impl Frontend {
    /// Every pool with the name of its route (`None` for the frontend's
    /// own) and the index of its first backend in the per-backend counters,
    /// which hold the pools one after the other in this order.
    pub fn pools(&self) -> Vec<(Option<&str>, &Arc<Pool>, usize)> {
        let mut first = 0;
        let mut out = Vec::with_capacity(1 + self.routes.len());
        let labels = self.config.routes.iter().map(|r| Some(r.label()));
        for (label, pool) in std::iter::once(None)
            .chain(labels)
            .zip(std::iter::once(&self.pool).chain(&self.routes))
        {
            out.push((label, pool, first));
            first += pool.len();
        }
        out
    }

    /// Whether any pool has a backend up (empty pools aside).
    pub fn any_up(&self) -> bool {
        std::iter::once(&self.pool)
            .chain(&self.routes)
            .any(|p| p.any_up())
    }

    /// The pool of the route named `label`, and its prober.
    fn route_slot(&self, label: &str) -> Option<(&Arc<Pool>, Option<&Arc<Prober>>)> {
        let i = self.config.routes.iter().position(|r| r.label() == label)?;
        let prober = self.probers.get(1 + i).and_then(Option::as_ref);
        Some((self.routes.get(i)?, prober))
    }
}

/// Binds `count` sockets of `protocol` to `addr`, one per worker.
fn bind(
    protocol: Protocol,
    addr: SocketAddr,
    count: usize,
) -> Result<Vec<socket2::Socket>, BindError> {
    match protocol {
        Protocol::Tcp => net::bind_listeners(addr, count),
        Protocol::Udp => net::bind_datagrams(addr, count),
    }
}

/// What a generation's build does to probers once it succeeded.
#[derive(Default)]
struct Probes {
    /// New slots, or slots whose health settings changed: threads to start.
    start: Vec<Arc<Prober>>,
    /// Kept probers and the pools they check from now on.
    follow: Vec<(Arc<Prober>, Arc<Pool>)>,
}

impl Probes {
    /// Starts and moves probers; retires those of `previous` that no frontend
    /// of `frontends` has any more.
    fn apply(self, previous: Option<&Generation>, frontends: &[Arc<Frontend>]) {
        for (prober, pool) in &self.follow {
            prober.follow(pool);
        }
        for prober in &self.start {
            if let Err(err) = prober.start() {
                warn!(%err, "cannot start health checks");
            }
        }
        let kept = |p: &Arc<Prober>| {
            frontends
                .iter()
                .flat_map(|f| f.probers.iter().flatten())
                .any(|k| Arc::ptr_eq(k, p))
        };
        for old in previous.into_iter().flat_map(|g| &g.frontends) {
            for prober in old.probers.iter().flatten() {
                if !kept(prober) {
                    prober.retire();
                }
            }
        }
    }
}

/// A new pool of `backends` (of route `route`, if any) under `health` and
/// `fe`'s passive settings, taking over the runtime state of the old slot's
/// backends at the same addresses, and their health under health checks
/// (without them nothing would bring a carried down backend back, so it
/// starts all up); and its prober: the old slot's, moved on to it, while
/// the health settings are the same, else a new one (none for no backends).
fn new_pool(
    fe: &FrontendConfig,
    route: Option<&str>,
    health: &HealthConfig,
    backends: &[BackendConfig],
    old: Option<(&Arc<Pool>, Option<&Arc<Prober>>)>,
    probes: &mut Probes,
) -> (Arc<Pool>, Option<Arc<Prober>>) {
    // A UDP pool is checked only with a payload to send.
    let health = &HealthConfig {
        checks: health.checks && (fe.protocol == Protocol::Tcp || fe.udp.health_send.is_some()),
        ..health.clone()
    };
    let pool = Arc::new(Pool::new(backends, passive(fe, health)));
    if let Some((o, _)) = old {
        pool.carry_runtime_from(o);
    }
    if !health.checks {
        return (pool, None);
    }
    if let Some((o, _)) = old {
        pool.carry_health_from(o);
    }
    let check = match (&fe.protocol, &fe.udp.health_send) {
        (Protocol::Udp, Some(send)) => Check::Datagram {
            send: send.clone(),
            expect: fe.udp.health_expect.clone(),
        },
        _ => Check::Connect,
    };
    let kept = old
        .and_then(|(_, prober)| prober)
        .filter(|p| *p.health() == *health && *p.check() == check);
    let prober = match kept {
        // Nothing to check: no thread, unless one follows the slot already
        // (a name without addresses for now).
        None if backends.is_empty() => return (pool, None),
        Some(prober) => {
            probes.follow.push((prober.clone(), pool.clone()));
            prober.clone()
        }
        None => {
            let name = match route {
                Some(route) => format!("{} route {route}", fe.name),
                None => fe.name.clone(),
            };
            let prober = Prober::new(&pool, name, health.clone(), check);
            probes.start.push(prober.clone());
            prober
        }
    };
    (pool, Some(prober))
}

/// How failures on real traffic take a pool of `fe` with `health` down.
fn passive(fe: &FrontendConfig, health: &HealthConfig) -> Passive {
    Passive {
        fall: health.fall,
        fail_timeout: fe.fail_timeout,
        active_checks: health.checks,
        observe_l4: fe.observe_l4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handed(name: &str, listen: &str, addr: &str) -> Handed {
        Handed {
            name: name.into(),
            listen: listen.parse().unwrap(),
            listeners: Listeners {
                addr: addr.parse().unwrap(),
                sockets: Vec::new(),
            },
        }
    }

    fn config(args: &[&str]) -> Config {
        use clap::Parser;
        let base = ["ringlb", "--listen", "127.0.0.1:0", "--workers", "1"];
        let all: Vec<&str> = base.iter().chain(args).copied().collect();
        Config::from_cli(&crate::config::cli::Cli::try_parse_from(all).unwrap()).unwrap()
    }

    #[test]
    fn a_changed_pool_keeps_its_slots_prober_while_the_health_settings_stay() {
        let one = ["--backend", "127.0.0.1:9"];
        let two = ["--backend", "127.0.0.1:9", "--backend", "127.0.0.2:9"];
        let g0 = Generation::build(0, config(&one), None, &mut Vec::new()).unwrap();
        let g1 = Generation::build(1, config(&two), Some(&g0), &mut Vec::new()).unwrap();
        let prober = |g: &Generation| g.frontends[0].probers[0].clone().unwrap();
        assert!(!Arc::ptr_eq(&g0.frontends[0].pool, &g1.frontends[0].pool));
        assert!(Arc::ptr_eq(&prober(&g0), &prober(&g1)), "one prober");
        assert!(prober(&g1).checks(&g1.frontends[0].pool));
        // Other health settings: a new prober, and the old one stops.
        let slower = [&two[..], &["--health-interval", "5s"]].concat();
        let g2 = Generation::build(2, config(&slower), Some(&g1), &mut Vec::new()).unwrap();
        assert!(!Arc::ptr_eq(&prober(&g1), &prober(&g2)));
        assert!(!prober(&g1).checks(&g1.frontends[0].pool), "retired");
        assert!(prober(&g2).checks(&g2.frontends[0].pool));
    }

    #[test]
    fn a_handed_listener_fits_the_same_address_or_name_and_port_0() {
        let fixed = handed("web", "0.0.0.0:80", "0.0.0.0:80");
        assert!(fixed.fits("web", "0.0.0.0:80".parse().unwrap(), Protocol::Tcp));
        assert!(fixed.fits("renamed", "0.0.0.0:80".parse().unwrap(), Protocol::Tcp));
        assert!(!fixed.fits("web", "0.0.0.0:81".parse().unwrap(), Protocol::Tcp));

        let any = handed("web", "127.0.0.1:0", "127.0.0.1:41234");
        assert!(any.fits("web", "127.0.0.1:0".parse().unwrap(), Protocol::Tcp));
        assert!(!any.fits("api", "127.0.0.1:0".parse().unwrap(), Protocol::Tcp));
        assert!(any.fits("api", "127.0.0.1:41234".parse().unwrap(), Protocol::Tcp));

        // [::] that fell back to IPv4: the configured address still fits.
        let v4 = handed("web", "[::]:80", "0.0.0.0:80");
        assert!(v4.fits("web", "[::]:80".parse().unwrap(), Protocol::Tcp));
        // A UDP frontend on the same address takes only a UDP socket.
        assert!(!fixed.fits("web", "0.0.0.0:80".parse().unwrap(), Protocol::Udp));
    }
}
