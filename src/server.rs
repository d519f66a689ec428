//! The process: build the first config generation (binding every listener),
//! start one worker per CPU, and turn signals into actions: SIGINT/SIGTERM
//! into the drain, SIGHUP into a config reload. Once listening, and after
//! every reload, it writes the `--ready-file` and tells systemd (`READY=1`,
//! `RELOADING=1`, `STOPPING=1` through `$NOTIFY_SOCKET`, for `Type=notify`). Returns when every worker has
//! finished.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use sd_notify::NotifyState;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::access;
use crate::admin::{self, AdminError};
use crate::backend::discovery::{Discovery, DiscoveryError};
use crate::ceiling::{self, Ceiling};
use crate::config::Config;
use crate::frontend::{Generation, Published, Publisher};
use crate::net::{self, BindError};
use crate::shutdown::{self, Accepting, Phase};
use crate::upgrade::{self, AdminListener, ControlSocket, Serve, UpgradeError};
use crate::worker;

impl ServerError {
    /// Whether the configuration asked for something impossible (exit 2,
    /// like any other bad setting), rather than the system failing us.
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            ServerError::AboveCeiling { .. } | ServerError::Discovery(_)
        )
    }
}

/// Raises the open-file limit and derives the connection ceiling from it;
/// an explicit max-conns above the ceiling is an error.
fn connection_ceiling(config: &Config) -> Result<Limits, ServerError> {
    let fd_limit = match net::raise_nofile_limit() {
        Ok(limit) => limit,
        Err(err) => {
            warn!(%err, "cannot raise the open file limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
        }
    };
    let backends = config
        .frontends
        .iter()
        .map(|f| f.backends.len() + f.routes.iter().map(|r| r.backends.len()).sum::<usize>())
        .sum();
    let admin = if config.admin.is_some() {
        admin::MAX_CONNECTIONS
    } else {
        0
    };
    let reserve = ceiling::reserve(config.workers, config.frontends.len(), backends, admin);
    let max = ceiling::from_fd_limit(fd_limit, reserve);
    if let Some(fe) = config
        .frontends
        .iter()
        .find(|f| f.max_conns.is_some_and(|n| n > max))
    {
        return Err(ServerError::AboveCeiling {
            frontend: fe.name.clone(),
            max_conns: fe.max_conns.unwrap_or_default(),
            ceiling: max,
            fd_limit,
            reserve,
        });
    }
    Ok(Limits {
        ceiling: Ceiling::new(max),
        max,
        fd_limit,
        reserve,
    })
}

/// The connection ceiling and the numbers it came from, for the start-up log.
struct Limits {
    ceiling: Arc<Ceiling>,
    max: usize,
    fd_limit: u64,
    reserve: u64,
}

/// Re-reads the configuration for a reload; its error is one line.
pub type Reloader = Box<dyn Fn() -> Result<Config, String> + Send>;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A listener could not be set up.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The admin endpoint could not be opened.
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// A backend name did not resolve at start.
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    /// The ready file could not be written.
    #[error("cannot write the ready file {}: {source}", .path.display())]
    ReadyFile {
        /// The --ready-file path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A frontend's max-conns is more than the fd limit can carry.
    #[error("frontend '{frontend}': max-conns {max_conns} is above the connection ceiling {ceiling} that the open-file limit {fd_limit} allows (two descriptors per connection, {reserve} kept in reserve); raise the limit (ulimit -n, LimitNOFILE=) or lower max-conns")]
    AboveCeiling {
        /// The frontend.
        frontend: String,
        /// Its max-conns.
        max_conns: usize,
        /// The ceiling.
        ceiling: usize,
        /// The open-file limit in force.
        fd_limit: u64,
        /// Descriptors kept for everything else.
        reserve: u64,
    },
    /// The hot upgrade failed.
    #[error(transparent)]
    Upgrade(#[from] UpgradeError),
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
/// `reload`, when given, is called on SIGHUP for the new configuration.
/// With `takeover`, the listeners come from the ringlb serving that control
/// socket, which is told to drain once this process accepts.
pub fn run(
    config: Config,
    reload: Option<Reloader>,
    takeover: Option<PathBuf>,
) -> Result<(), ServerError> {
    // Backend names resolve first: the ceiling counts their addresses.
    let (discovery, config) = Discovery::start(config)?;
    let limits = connection_ceiling(&config)?;
    let ceiling = limits.ceiling.clone();
    let control_path = config.control_socket.clone();
    let mut takeover = match &takeover {
        Some(path) => upgrade::take_over(path, control_path.as_deref())?,
        None => None,
    };
    // Without a takeover the control socket opens first, so a path already
    // served fails start-up before anything listens.
    let mut control = match (&control_path, &takeover) {
        (Some(path), None) => Some(ControlSocket::bind(path)?),
        _ => None,
    };
    let mut handed = takeover
        .as_mut()
        .map(|t| std::mem::take(&mut t.handed))
        .unwrap_or_default();
    let mut generation = Generation::build(0, config, None, &mut handed)?;
    generation.dns = discovery.status();
    let generation = Arc::new(generation);
    let workers = generation.config.workers;
    let admin = generation.config.admin;
    let (publisher, generations) = Publisher::new(generation.clone());
    let publisher = Arc::new(publisher);
    let (trigger, phase) = shutdown::channel();
    let trigger = Arc::new(trigger);
    let accepting = Arc::new(Accepting::new(workers));
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP]).map_err(ServerError::Signals)?;
    let on_dns_change = {
        let (publisher, discovery) = (publisher.clone(), discovery.clone());
        move || match publisher.publish(|_| Ok::<_, BindError>(discovery.config())) {
            Ok(published) => info!(
                generation = published.current.id,
                "backends changed by DNS: new generation"
            ),
            Err(err) => {
                warn!(%err, "DNS changed the backends, but the new generation failed; keeping the running one")
            }
        }
    };
    if let Err(err) = discovery.spawn(on_dns_change) {
        warn!(%err, "cannot start DNS discovery: backend names are not resolved again");
    }

    let (admin_stop, admin_stopped) = watch::channel(false);
    let admin = match admin {
        Some(listen) => {
            let inherited = takeover
                .as_mut()
                .and_then(|t| t.admin.take())
                .filter(|(old, socket)| {
                    *old == listen || socket.local_addr().is_ok_and(|a| a == listen)
                })
                .map(|(_, socket)| socket);
            let (addr, socket) =
                admin::spawn(listen, inherited, generations.clone(), admin_stopped)?;
            Some(AdminListener {
                listen,
                addr,
                socket,
                stop: admin_stop,
            })
        }
        None => None,
    };
    let mut handles = Vec::with_capacity(workers);
    for id in 0..workers {
        let handle = worker::spawn(
            id,
            generations.clone(),
            phase.clone(),
            ceiling.clone(),
            accepting.clone(),
        )
        .map_err(|source| ServerError::Worker { id, source })?;
        handles.push(handle);
    }
    let Limits {
        max,
        fd_limit,
        reserve,
        ..
    } = limits;
    info!(
        ceiling = max,
        fd_limit, reserve, "connection ceiling: {max} client connections at once (open-file limit {fd_limit}, two descriptors each, {reserve} in reserve); past it clients wait in the listen backlog"
    );
    log_frontends(&generation, None);

    // Every worker accepts now (worker::spawn waited for it): the old
    // process may stop. The listeners no frontend claimed close only once it
    // has, so nothing queued on them while it still accepted is dropped.
    if let Some(takeover) = takeover {
        let pid = takeover.pid;
        match takeover.finish() {
            Ok(pid) => info!(
                pid,
                "hot upgrade: the old process stopped accepting and drains"
            ),
            Err(err) => {
                warn!(pid, %err, "hot upgrade: the old process did not confirm it stopped accepting")
            }
        }
        // A client queued while the old process cancelled its accepts may
        // have had its wake-up taken by one of them.
        accepting.rearm();
        systemd(&[NotifyState::MainPid(std::process::id())]);
        if let Some(path) = &control_path {
            // Serving already: a control socket that cannot open costs the
            // next upgrade, not this process.
            match ControlSocket::bind(path) {
                Ok(socket) => control = Some(socket),
                Err(err) => error!("{err}; the next hot upgrade must restart instead"),
            }
        }
    }
    drop(handed);

    let ready = generation.config.ready_file.clone().map(|path| ReadyFile {
        path,
        admin: admin.as_ref().map(|a| a.addr),
    });
    if let Some(ready) = &ready {
        ready
            .write(&generation)
            .map_err(|source| ServerError::ReadyFile {
                path: ready.path.clone(),
                source,
            })?;
    }
    let control = control.map(Arc::new);
    let mut conversation = None;
    if let Some(socket) = &control {
        let served = upgrade::serve(Serve {
            socket: socket.clone(),
            generations: generations.clone(),
            phase: phase.clone(),
            trigger: trigger.clone(),
            accepting,
            admin,
            on_drain: Box::new(|| systemd(&[NotifyState::Stopping])),
        })
        .map_err(ServerError::Signals)?;
        conversation = Some(served);
    }
    info!(
        listen = %generation.frontends[0].listeners.addr,
        workers,
        frontends = generation.frontends.len(),
        "ringlb started"
    );
    systemd(&[NotifyState::Ready]);
    drop(generation);

    std::thread::Builder::new()
        .name("ringlb-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if signal == SIGHUP {
                    match &reload {
                        Some(reload) => {
                            apply_reload(reload, &publisher, ready.as_ref(), &discovery)
                        }
                        None => info!("SIGHUP: no config file to reload (started from flags)"),
                    }
                    continue;
                }
                // Told before the workers are: with nothing to drain they
                // stop at once, and the process can exit before the next
                // line here runs (STOPPING=1 was lost so, 14 times in 300).
                match trigger.next() {
                    Phase::Draining => {
                        systemd(&[NotifyState::Stopping]);
                        info!(signal, "stopping: no new connections, draining open ones")
                    }
                    _ => info!(signal, "stopping now: closing open connections"),
                }
                trigger.escalate();
            }
        })
        .map_err(ServerError::Signals)?;

    for handle in handles {
        let _ = handle.join();
    }
    if let Some(conversation) = conversation {
        conversation.finish();
    }
    if let Some(control) = control {
        control.remove();
    }
    info!("ringlb stopped");
    Ok(())
}

/// Most backends a "frontend ready" line names.
const LOGGED_BACKENDS: usize = 16;

/// One line per frontend that opened a listener (all of them at start), so
/// the bound address is known even for port 0; and one per frontend removed.
fn log_frontends(generation: &Generation, previous: Option<&Generation>) {
    for fe in &generation.frontends {
        for (key, net) in access::unmatched_v4_rules(&fe.config) {
            warn!(
                frontend = %fe.config.name,
                "{key} rule {net} never matches IPv4 clients of the dual-stack listener {}: they are matched as IPv4 addresses (add the IPv4 network, e.g. 0.0.0.0/0, to the rule)",
                fe.config.listen
            );
        }
        let kept = previous
            .and_then(|p| p.frontend(&fe.config.name))
            .is_some_and(|old| Arc::ptr_eq(&old.listeners, &fe.listeners));
        // A name can bring up to max-addresses backends: the line names the
        // first few and counts the rest.
        let all = &fe.config.backends;
        let mut backends: Vec<String> = all
            .iter()
            .take(LOGGED_BACKENDS)
            .map(|b| b.addr.to_string())
            .collect();
        if all.len() > LOGGED_BACKENDS {
            backends.push(format!("... {} in all", all.len()));
        }
        info!(
            frontend = %fe.config.name,
            listen = %fe.listeners.addr,
            protocol = %fe.config.protocol,
            backends = %backends.join(","),
            routes = fe.config.routes.len(),
            balance = %fe.config.balance,
            kept,
            "frontend ready"
        );
    }
    for old in previous.map(|p| p.frontends.as_slice()).unwrap_or_default() {
        if generation.frontend(&old.config.name).is_none() {
            info!(frontend = %old.config.name, listen = %old.listeners.addr, "frontend removed");
        }
    }
}

/// Reads the new config, builds its generation and publishes it; on any
/// error logs it and keeps the running one.
fn apply_reload(
    reload: &Reloader,
    publisher: &Publisher,
    ready: Option<&ReadyFile>,
    discovery: &Discovery,
) {
    // systemd's Type=notify-reload wants the time the reload began.
    let mut reloading = vec![NotifyState::Reloading];
    if let Ok(now) = NotifyState::monotonic_usec_now() {
        reloading.push(now);
    }
    systemd(&reloading);
    reload_config(reload, publisher, ready, discovery);
    systemd(&[NotifyState::Ready]);
}

/// Tells systemd (a `Type=notify` unit, through `$NOTIFY_SOCKET`) where the
/// process is: ready, reloading, stopping. Without the variable it does
/// nothing; a failed send is logged and otherwise ignored.
fn systemd(state: &[NotifyState]) {
    if let Err(err) = sd_notify::notify(state) {
        warn!(%err, "cannot notify systemd");
    }
}

/// Why a reload kept the running config.
#[derive(Debug, thiserror::Error)]
enum ReloadError {
    /// The new config did not read or validate.
    #[error("{0}")]
    Config(String),
    /// A backend name it adds did not resolve.
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
    /// A listener it adds could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
}

/// The body of a reload, between the notifications.
fn reload_config(
    reload: &Reloader,
    publisher: &Publisher,
    ready: Option<&ReadyFile>,
    discovery: &Discovery,
) {
    let published = publisher.publish(|current| -> Result<Config, ReloadError> {
        let mut config = reload().map_err(ReloadError::Config)?;
        for what in config.keep_restart_only(&current.config) {
            warn!("reload: a change of {what} takes a restart; keeping the running value");
        }
        Ok(discovery.reload(config)?)
    });
    let Published { previous, current } = match published {
        Ok(published) => published,
        Err(err) => {
            error!("reload rejected, keeping the running config: {err}");
            return;
        }
    };
    log_frontends(&current, Some(&previous));
    let names: Vec<&str> = current
        .frontends
        .iter()
        .map(|f| f.config.name.as_str())
        .collect();
    info!(generation = current.id, frontends = %names.join(","), "config reloaded");
    // New listeners are already listening: clients queue in their
    // backlog until the workers, told just now, accept them.
    if let Some(ready) = ready {
        if let Err(err) = ready.write(&current) {
            error!(path = %ready.path.display(), %err, "cannot rewrite the ready file");
        }
    }
}

/// `--ready-file`: where the bound addresses are published for scripts and
/// tests, and the admin address that goes with them.
struct ReadyFile {
    /// The file to (re)write.
    path: PathBuf,
    /// The admin endpoint's bound address; fixed at start.
    admin: Option<SocketAddr>,
}

impl ReadyFile {
    /// Writes one `NAME ADDR` line per frontend in config order, then
    /// `admin ADDR`; through `PATH.tmp` and a rename, so a reader never
    /// sees half a file.
    fn write(&self, generation: &Generation) -> std::io::Result<()> {
        let mut text = String::new();
        for fe in &generation.frontends {
            let _ = writeln!(text, "{} {}", fe.config.name, fe.listeners.addr);
        }
        if let Some(admin) = self.admin {
            let _ = writeln!(text, "admin {admin}");
        }
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &self.path)
    }
}
