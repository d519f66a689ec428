//! Active health checks: one prober thread per pool slot (a frontend's own
//! pool, or one SNI route's), shared by all workers and by every generation
//! of that slot. It connects to each backend every interval, has the
//! check's conversation with it ([`check`](mod@check): a preset or
//! `send`/`expect` steps, if any), all within the check's timeout, feeds
//! the results into each backend's [`HealthState`], and publishes flips to
//! the [`Pool`] that workers read without locks. With `agent-port`, the
//! same thread also asks each backend's agent every `agent-interval`
//! ([`agent`]) and records its answer in the pool. For a UDP pool
//! ([`Check::Datagram`]) a check is a datagram that must be answered.
//! Failures on real traffic take a
//! backend down in the pool itself; the prober then needs `rise` passed
//! checks to bring it back. A backend in `maint` is not checked at all; its
//! health stays as it was until it leaves maint.
//!
//! A generation's build points the slot's [`Prober`] at the new pool
//! ([`Prober::follow`]); the prober carries each kept address's health
//! state over, so a DNS change or a reload costs no thread. An older pool
//! still serves the connections that started on it but is no longer
//! checked. The thread holds its prober and pool weakly: it ends once no
//! generation has the slot any more, or the slot's health settings changed
//! and a new prober took over ([`Prober::retire`]).

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::thread;

use tracing::{info, warn};

use crate::backend::agent;
use crate::backend::check;
use crate::backend::health::HealthState;
use crate::backend::pool::Pool;
use crate::config::{AgentConfig, HealthConfig};

/// What one check of a backend does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// A TCP connect.
    Connect,
    /// A UDP datagram with this payload, which must be answered (by a reply
    /// starting with `expect`, when given) within the check's timeout.
    Datagram {
        /// What is sent (health-send).
        send: Vec<u8>,
        /// What the reply must start with (health-expect).
        expect: Option<Vec<u8>>,
    },
}

/// The health checks of one pool slot, across generations.
#[derive(Debug)]
pub struct Prober {
    /// The pool checked: the newest generation's for this slot.
    pool: Mutex<Weak<Pool>>,
    /// The slot as logs name it (the frontend, and the route if any).
    name: String,
    /// How it checks; a slot whose settings change gets a new prober.
    health: HealthConfig,
    /// What each check does.
    check: Check,
}

impl Prober {
    /// A prober of `pool` under `health`, checking with `check`; its thread
    /// starts with [`Prober::start`].
    pub fn new(pool: &Arc<Pool>, name: String, health: HealthConfig, check: Check) -> Arc<Prober> {
        Arc::new(Prober {
            pool: Mutex::new(Arc::downgrade(pool)),
            name,
            health,
            check,
        })
    }

    /// What each check does.
    pub fn check(&self) -> &Check {
        &self.check
    }

    /// Starts the thread; it runs while the prober and its pool live.
    pub fn start(self: &Arc<Prober>) -> io::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let weak = Arc::downgrade(self);
        thread::Builder::new()
            .name("ringlb-health".into())
            .spawn(move || rt.block_on(run(weak)))?;
        Ok(())
    }

    /// How it checks.
    pub fn health(&self) -> &HealthConfig {
        &self.health
    }

    /// Checks `pool` from the next round on, instead of the one before.
    pub fn follow(&self, pool: &Arc<Pool>) {
        *self.pool.lock().unwrap_or_else(PoisonError::into_inner) = Arc::downgrade(pool);
    }

    /// Stops checking: the thread ends at its next round.
    pub fn retire(&self) {
        *self.pool.lock().unwrap_or_else(PoisonError::into_inner) = Weak::new();
    }

    /// Whether it checks `pool` now.
    #[cfg(test)]
    pub fn checks(&self, pool: &Arc<Pool>) -> bool {
        self.pool().is_some_and(|p| Arc::ptr_eq(&p, pool))
    }

    /// The pool to check now, if any.
    fn pool(&self) -> Option<Arc<Pool>> {
        self.pool
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .upgrade()
    }
}

/// Each backend's health state, for the pool they were made for.
struct States {
    pool: Weak<Pool>,
    states: Vec<(SocketAddr, HealthState)>,
}

impl States {
    /// The states for `pool`: a kept address keeps its state (and a flip
    /// the pool's build missed is published), a new one starts as the pool
    /// has it (up, or as the build carried it over).
    fn follow(&mut self, pool: &Arc<Pool>, config: &HealthConfig) {
        if self.pool.ptr_eq(&Arc::downgrade(pool)) {
            return;
        }
        let old = std::mem::take(&mut self.states);
        self.pool = Arc::downgrade(pool);
        self.states = (0..pool.len())
            .map(|i| {
                let addr = pool.addr(i);
                let kept = old.iter().find(|(a, _)| *a == addr).map(|(_, s)| *s);
                let state = match kept {
                    Some(state) => {
                        if !state.is_up() && pool.checks_pass(i) {
                            pool.set_up(i, false);
                        }
                        state
                    }
                    None => HealthState::starting(pool.checks_pass(i), config.rise, config.fall),
                };
                (addr, state)
            })
            .collect();
    }
}

async fn run(weak: Weak<Prober>) {
    let Some((config, kind)) = weak
        .upgrade()
        .map(|p| (Arc::new(p.health.clone()), p.check.clone()))
    else {
        return;
    };
    match config.agent() {
        Some(agent) => tokio::join!(checks(weak.clone(), config, kind), agents(weak, agent)).0,
        None => checks(weak, config, kind).await,
    }
}

/// The health checks, every interval, until the prober or its pool goes.
async fn checks(weak: Weak<Prober>, config: Arc<HealthConfig>, kind: Check) {
    let mut states = States {
        pool: Weak::new(),
        states: Vec::new(),
    };
    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut all_down = false;
    loop {
        ticker.tick().await;
        let Some((pool, name)) = weak
            .upgrade()
            .and_then(|p| Some((p.pool()?, p.name.clone())))
        else {
            return;
        };
        states.follow(&pool, &config);
        // Concurrent, so one silent backend does not delay the others' checks.
        let checks: Vec<_> = (0..pool.len())
            .map(|i| {
                pool.checked(i)
                    .then(|| tokio::spawn(check(pool.clone(), i, config.clone(), kind.clone())))
            })
            .collect();
        for (i, handle) in checks.into_iter().enumerate() {
            let Some(handle) = handle else {
                continue;
            };
            let result = handle
                .await
                .unwrap_or_else(|err| Err(format!("check task failed: {err}")));
            let state = &mut states.states[i].1;
            // A worker may have taken it down on failures it saw: it then
            // needs `rise` passed checks like any down backend.
            if state.is_up() && !pool.checks_pass(i) {
                *state = HealthState::starting(false, config.rise, config.fall);
            }
            if let Err(err) = &result {
                pool.set_last_error(i, format!("check: {err}"));
            }
            if let Some(up) = state.observe(result.is_ok()) {
                pool.set_up(i, up);
                let addr = pool.addr(i);
                match &result {
                    Ok(()) => {
                        info!(backend = %addr, "backend {addr} up after {} passed checks", config.rise)
                    }
                    Err(err) => {
                        warn!(backend = %addr, "backend {addr} down after {} failed checks: {err}", config.fall)
                    }
                }
            }
        }
        // An empty pool (a name without addresses) says nothing new.
        let none_up = !pool.any_up();
        if pool.len() > 0 && none_up != all_down {
            all_down = none_up;
            if none_up {
                warn!(frontend = %name, "every backend is down: new clients are closed until one recovers");
            } else {
                info!(frontend = %name, "a backend is up again: serving clients");
            }
        }
    }
}

/// One check of backend `i`: the connect and the conversation, within the
/// check's timeout. The stream is tokio's (epoll): dropped at the deadline,
/// it is closed at once.
async fn check(
    pool: Arc<Pool>,
    i: usize,
    config: Arc<HealthConfig>,
    kind: Check,
) -> Result<(), String> {
    let addr = pool.addr(i);
    let timeout = config.timeout;
    if let Check::Datagram { send, expect } = kind {
        return tokio::time::timeout(timeout, exchange(addr, &send, expect.as_deref()))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")));
    }
    let conversation = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|err| err.to_string())?;
        check::converse(&mut stream, &config.check, addr).await
    };
    match tokio::time::timeout(timeout, conversation).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

/// Sends `send` to `addr` from a fresh UDP socket and waits for a reply
/// that starts with `expect` (any reply without it). A closed port answers
/// with ICMP port unreachable, which the connected socket reports as
/// ECONNREFUSED.
async fn exchange(addr: SocketAddr, send: &[u8], expect: Option<&[u8]>) -> Result<(), String> {
    let any: SocketAddr = match addr {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = tokio::net::UdpSocket::bind(any)
        .await
        .map_err(|e| e.to_string())?;
    socket.connect(addr).await.map_err(|e| e.to_string())?;
    socket.send(send).await.map_err(|e| e.to_string())?;
    let mut reply = vec![0u8; 65_536];
    let n = socket.recv(&mut reply).await.map_err(|e| e.to_string())?;
    match expect {
        Some(expect) if !reply[..n].starts_with(expect) => {
            Err("the reply does not start with health-expect".into())
        }
        _ => Ok(()),
    }
}

/// The agent checks, every agent interval, until the prober or its pool goes.
async fn agents(weak: Weak<Prober>, agent: AgentConfig) {
    let Some(timeout) = weak.upgrade().map(|p| p.health.timeout) else {
        return;
    };
    let mut ticker = tokio::time::interval(agent.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let send: Option<Arc<[u8]>> = agent.send.as_deref().map(Arc::from);
    loop {
        ticker.tick().await;
        let Some(pool) = weak.upgrade().and_then(|p| p.pool()) else {
            return;
        };
        let asks: Vec<_> = (0..pool.len())
            .map(|i| {
                let addr = SocketAddr::new(pool.addr(i).ip(), agent.port);
                let send = send.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(timeout, agent::ask(addr, send.as_deref())).await {
                        Ok(answer) => answer,
                        Err(_) => Err(format!("agent {addr}: no answer within {timeout:?}")),
                    }
                })
            })
            .collect();
        for (i, ask) in asks.into_iter().enumerate() {
            let answer = ask
                .await
                .unwrap_or_else(|err| Err(format!("agent check task failed: {err}")));
            let addr = pool.addr(i);
            match answer {
                // Not reaching the agent changes nothing: the health
                // checks test reachability (HAProxy does the same).
                Err(err) => pool.set_last_error(i, err),
                Ok(answer) => {
                    let why = answer.description.as_ref().map(|d| format!(": {d}"));
                    let why = why.unwrap_or_default();
                    // The reason first, so no reader sees the backend down without it.
                    if answer.up == Some(false) {
                        pool.set_last_error(i, format!("agent: down{why}"));
                    }
                    let Some(view) = pool.set_agent(i, answer.up, answer.state, answer.percent)
                    else {
                        continue;
                    };
                    let health = if view.up { "up" } else { "down" };
                    info!(backend = %addr, "backend {addr}: its agent says {health}, {}, {}%{why}", view.state, view.percent);
                }
            }
        }
    }
}
