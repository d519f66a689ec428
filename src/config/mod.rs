//! Turns what the user typed into a validated [`Config`]: addresses resolved,
//! backend options parsed, defaults filled in. Every error names the value
//! that was wrong, so `main` can print it as one line and exit 2.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use crate::balance::Algorithm;
use crate::proxy_protocol::Version as ProxyVersion;
use cli::Cli;

pub mod cli;
pub mod file;

/// The whole process's settings, validated. Shared read-only by all workers.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Number of worker threads, each with its own ring and listeners.
    pub workers: usize,
    /// How long open connections may run on after a stop signal.
    pub drain_timeout: Duration,
    /// One log line per closed connection.
    pub access_log: bool,
    /// Where the admin HTTP endpoint listens.
    pub admin: Option<SocketAddr>,
    /// Pin each worker thread to one CPU.
    pub pin: bool,
    /// Use a kernel submission-polling thread per ring.
    pub sqpoll: bool,
    /// The frontends, each a listen address with its own pool; names are unique.
    pub frontends: Vec<FrontendConfig>,
}

/// One frontend: a listen address and everything about its backend pool.
#[derive(Debug, Clone, PartialEq)]
pub struct FrontendConfig {
    /// Unique name, for logs, metric labels and reloads.
    pub name: String,
    /// Where clients connect; port 0 means "any free port", fixed by the first bind.
    pub listen: SocketAddr,
    /// The backend pool, in the order given; indexes into it identify a backend.
    pub backends: Vec<BackendConfig>,
    /// How workers choose a backend.
    pub balance: Algorithm,
    /// Active health checks; `None` when turned off.
    pub health: Option<HealthConfig>,
    /// Bytes per large relay buffer.
    pub buffer_size: usize,
    /// Upper bound on one backend connect attempt.
    pub connect_timeout: Duration,
    /// Close connections idle this long.
    pub idle_timeout: Option<Duration>,
    /// Close connections this old.
    pub max_lifetime: Option<Duration>,
    /// Most open client connections, across workers.
    pub max_conns: Option<usize>,
    /// Send a PROXY protocol header of this version to backends.
    pub send_proxy: Option<ProxyVersion>,
    /// Expect a PROXY protocol header (v1 or v2) from every client.
    pub accept_proxy: bool,
    /// How long a client may take to send its PROXY header.
    pub proxy_header_timeout: Duration,
}

/// One backend of the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// Resolved address we connect to.
    pub addr: SocketAddr,
    /// Relative share of new connections (>= 1).
    pub weight: u32,
    /// Most connections open to it at once, across workers; `None` is unlimited.
    pub max_conns: Option<u32>,
}

/// Active health check settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthConfig {
    /// Time between checks of one backend.
    pub interval: Duration,
    /// Limit for one check's connect.
    pub timeout: Duration,
    /// Passed checks in a row that bring a backend up.
    pub rise: u32,
    /// Failed checks in a row that take a backend down.
    pub fall: u32,
}

/// A bad value on the command line; each variant names the value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not of the form host:port.
    #[error("invalid address '{0}': expected host:port, e.g. 127.0.0.1:8080 or [::1]:8080")]
    BadAddress(String),
    /// The host part did not resolve.
    #[error("cannot resolve '{value}': {source}")]
    Unresolvable {
        /// What the user gave.
        value: String,
        /// What the resolver said.
        source: io::Error,
    },
    /// A backend address with port 0, which nothing can connect to.
    #[error("invalid backend '{0}': port 0 cannot be connected to")]
    BackendPortZero(String),
    /// Neither --listen nor the rsp form was given.
    #[error("no listen address: use --listen ADDR (or the rsp form LISTEN_PORT BACKEND_HOST BACKEND_PORT)")]
    NoListen,
    /// A config with no frontend.
    #[error(
        "no frontend: give --listen and --backend, or a config file with [[frontend]] sections"
    )]
    NoFrontend,
    /// Two frontends with one name.
    #[error("two frontends are named '{0}': names must be unique")]
    DuplicateName(String),
    /// Two frontends on one address.
    #[error("frontends '{first}' and '{second}' both listen on {addr}")]
    DuplicateListen {
        /// The address.
        addr: SocketAddr,
        /// The first frontend's name.
        first: String,
        /// The second frontend's name.
        second: String,
    },
    /// An empty pool.
    #[error("no backend: use --backend ADDR, once per backend")]
    NoBackend,
    /// A zero duration where time must pass.
    #[error("invalid --{flag} '{}': must be more than zero", humantime::format_duration(*.value))]
    ZeroDuration {
        /// The flag.
        flag: &'static str,
        /// Its value.
        value: Duration,
    },
    /// An unknown or malformed `,key=value` after a backend address.
    #[error("invalid backend option '{option}' in '{value}': {reason}")]
    BadBackendOption {
        /// The whole --backend value.
        value: String,
        /// The offending `key=value`.
        option: String,
        /// Why it was rejected.
        reason: &'static str,
    },
}

impl Config {
    /// Validates the command line into a config with one frontend.
    pub fn from_cli(cli: &Cli) -> Result<Config, ConfigError> {
        let (listen, backends) = match (&cli.listen_port, &cli.backend_host, &cli.backend_port) {
            (Some(lport), Some(host), Some(bport)) => {
                let listen = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), *lport);
                let backend = parse_backend(&format_host_port(host, *bport))?;
                (listen, vec![backend])
            }
            _ => {
                let listen = cli.listen.as_deref().ok_or(ConfigError::NoListen)?;
                let listen = resolve(listen)?;
                let backends = cli
                    .backends
                    .iter()
                    .map(|b| parse_backend(b))
                    .collect::<Result<Vec<_>, _>>()?;
                (listen, backends)
            }
        };
        let health = (!cli.no_health_checks).then_some(HealthConfig {
            interval: cli.health_interval,
            timeout: cli.health_timeout,
            rise: cli.rise,
            fall: cli.fall,
        });
        let frontend = FrontendConfig {
            name: cli.name.clone(),
            listen,
            backends,
            balance: cli.balance,
            health,
            buffer_size: cli.buffer_size,
            connect_timeout: cli.connect_timeout,
            idle_timeout: cli.idle_timeout,
            max_lifetime: cli.max_lifetime,
            max_conns: cli.max_conns.map(|n| n as usize),
            send_proxy: cli.send_proxy,
            accept_proxy: cli.accept_proxy,
            proxy_header_timeout: cli.proxy_header_timeout,
        };
        let config = Config {
            workers: cli.workers.map_or_else(default_workers, |n| n as usize),
            drain_timeout: cli.drain_timeout.unwrap_or(DEFAULT_DRAIN_TIMEOUT),
            access_log: cli.access_log,
            admin: cli.admin.as_deref().map(resolve).transpose()?,
            pin: cli.pin,
            sqpoll: cli.sqpoll,
            frontends: vec![frontend],
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks what no single field can: durations above zero, a pool per
    /// frontend, unique names and listen addresses.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.frontends.is_empty() {
            return Err(ConfigError::NoFrontend);
        }
        for (i, fe) in self.frontends.iter().enumerate() {
            if fe.backends.is_empty() {
                return Err(ConfigError::NoBackend);
            }
            let health = fe.health.as_ref();
            for (flag, value) in [
                ("connect-timeout", Some(fe.connect_timeout)),
                ("health-interval", health.map(|h| h.interval)),
                ("health-timeout", health.map(|h| h.timeout)),
                ("idle-timeout", fe.idle_timeout),
                ("max-lifetime", fe.max_lifetime),
                ("proxy-header-timeout", Some(fe.proxy_header_timeout)),
            ] {
                if value.is_some_and(|v| v.is_zero()) {
                    return Err(ConfigError::ZeroDuration {
                        flag,
                        value: Duration::ZERO,
                    });
                }
            }
            for other in &self.frontends[..i] {
                if other.name == fe.name {
                    return Err(ConfigError::DuplicateName(fe.name.clone()));
                }
                if other.listen == fe.listen && fe.listen.port() != 0 {
                    return Err(ConfigError::DuplicateListen {
                        addr: fe.listen,
                        first: other.name.clone(),
                        second: fe.name.clone(),
                    });
                }
            }
        }
        Ok(())
    }
}

/// How long connections may finish after a stop signal, unless configured.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

impl Config {
    /// Applies the process-wide flags given on the command line over a
    /// config read from a file: a flag that was given wins.
    pub fn with_cli_overrides(mut self, cli: &Cli) -> Result<Config, ConfigError> {
        if let Some(n) = cli.workers {
            self.workers = n as usize;
        }
        if let Some(d) = cli.drain_timeout {
            self.drain_timeout = d;
        }
        if let Some(admin) = cli.admin.as_deref() {
            self.admin = Some(resolve(admin)?);
        }
        self.access_log |= cli.access_log;
        self.pin |= cli.pin;
        self.sqpoll |= cli.sqpoll;
        Ok(self)
    }
}

/// One worker per CPU the process may use.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Joins host and port, bracketing bare IPv6 literals.
fn format_host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Parses `host:port[,weight=N][,max-conns=N]`.
pub fn parse_backend(value: &str) -> Result<BackendConfig, ConfigError> {
    let mut parts = value.split(',');
    let addr = resolve(parts.next().unwrap_or_default())?;
    if addr.port() == 0 {
        return Err(ConfigError::BackendPortZero(value.to_string()));
    }
    let mut backend = BackendConfig {
        addr,
        weight: 1,
        max_conns: None,
    };
    for option in parts {
        let bad = |reason| ConfigError::BadBackendOption {
            value: value.to_string(),
            option: option.to_string(),
            reason,
        };
        let (key, val) = option
            .split_once('=')
            .ok_or_else(|| bad("expected key=value"))?;
        let n: u32 = val.parse().map_err(|_| bad("expected a whole number"))?;
        match key {
            "weight" if (1..=1000).contains(&n) => backend.weight = n,
            "weight" => return Err(bad("weight must be between 1 and 1000")),
            "max-conns" if n >= 1 => backend.max_conns = Some(n),
            "max-conns" => return Err(bad("max-conns must be at least 1")),
            _ => return Err(bad("known options are weight and max-conns")),
        }
    }
    Ok(backend)
}

/// Resolves `host:port` to its first address.
pub fn resolve(value: &str) -> Result<SocketAddr, ConfigError> {
    if let Ok(addr) = value.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let bad = || ConfigError::BadAddress(value.to_string());
    let (host, port) = value.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || port.parse::<u16>().is_err() || host.contains(':') {
        return Err(bad());
    }
    let mut addrs = value
        .to_socket_addrs()
        .map_err(|source| ConfigError::Unresolvable {
            value: value.to_string(),
            source,
        })?;
    addrs.next().ok_or_else(|| ConfigError::Unresolvable {
        value: value.to_string(),
        source: io::Error::new(io::ErrorKind::NotFound, "no addresses"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(resolve("127.0.0.1:80").unwrap().port(), 80);
        assert_eq!(resolve("[::1]:81").unwrap().port(), 81);
        assert!(resolve("localhost:82").unwrap().ip().is_loopback());
        for bad in [
            "",
            "80",
            "127.0.0.1",
            "127.0.0.1:",
            ":80",
            "1.2.3.4:99999",
            "::1:80",
        ] {
            assert!(
                matches!(resolve(bad), Err(ConfigError::BadAddress(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn backend_options() {
        let b = parse_backend("127.0.0.1:9000,weight=3,max-conns=10").unwrap();
        assert_eq!((b.weight, b.max_conns), (3, Some(10)));
        let b = parse_backend("127.0.0.1:9000").unwrap();
        assert_eq!((b.weight, b.max_conns), (1, None));
        for bad in [
            "127.0.0.1:9000,weight=0",
            "127.0.0.1:9000,weight=x",
            "127.0.0.1:9000,colour=red",
            "127.0.0.1:9000,weight",
            "127.0.0.1:0",
        ] {
            let err = parse_backend(bad).unwrap_err().to_string();
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn host_port_joining() {
        assert_eq!(format_host_port("::1", 80), "[::1]:80");
        assert_eq!(format_host_port("example", 80), "example:80");
    }
}
