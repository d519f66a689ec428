//! The settings: the validated model ([`Config`] and its parts), the one
//! table of defaults and limits (`DEFAULT_*`, `MAX_*`) that the command line
//! ([`cli`]) and the config file ([`file`](mod@file)) both fill in from, the value
//! parsers they share, and [`Config::validate`]. Validation errors say where
//! they happened ([`ConfigError::location`]), so the file layer can point at
//! the line without searching. Nothing here binds a socket or reads a file.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net};

use crate::backend::balance::Algorithm;
use crate::protocol::proxy::Version as ProxyVersion;

pub mod cli;
pub mod file;
pub mod manual;

/// A frontend's name when none is given.
pub const DEFAULT_NAME: &str = "default";
/// How workers choose a backend, unless configured.
pub const DEFAULT_BALANCE: Algorithm = Algorithm::RoundRobin;
/// Time between two health checks of one backend.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(2);
/// How long one health check's connect may take.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
/// Passed checks in a row that bring a backend up.
pub const DEFAULT_RISE: u32 = 2;
/// Failed checks in a row that take a backend down.
pub const DEFAULT_FALL: u32 = 3;
/// Default size of the large relay buffer, in bytes. Measured with
/// scripts/bench.sh's bulk workload: 16 KiB matched HAProxy, 64 KiB gave about
/// 1.4x, 256 KiB about 1.7x; larger gained little more for the memory.
pub const DEFAULT_BUFFER_SIZE: usize = 256 * 1024;
/// Upper bound on one backend connect attempt.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a client may take to send its PROXY header.
pub const DEFAULT_PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client may take to send its TLS ClientHello when routing by SNI.
pub const DEFAULT_SNI_TIMEOUT: Duration = Duration::from_secs(5);
/// How connections are routed to pools unless configured: all to the one pool.
pub const DEFAULT_ROUTE_BY: RouteBy = RouteBy::None;
/// How long connections may finish after a stop signal.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Close a connection with no byte either way for this long (nginx stream's
/// `proxy_timeout`), unless turned off with `never`.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// How long passive failure detection keeps a failing backend out when
/// active health checks are off (nginx `fail_timeout`).
pub const DEFAULT_FAIL_TIMEOUT: Duration = Duration::from_secs(10);
/// Whether a backend that resets or closes a fresh connection without a byte
/// counts as a failure (HAProxy `observe layer4`).
pub const DEFAULT_OBSERVE_L4: bool = true;
/// A backend's share of new connections when no weight is given.
pub const DEFAULT_WEIGHT: u32 = 1;
/// How long a backend's weight ramps up after it comes up, unless the
/// backend or its frontend sets `slow-start`: no ramp.
pub const DEFAULT_SLOW_START: Option<Duration> = None;
/// How often a backend written as a name is resolved again (sooner when
/// its records' TTL is shorter, but never more than once a second).
pub const DEFAULT_RESOLVE_INTERVAL: Duration = Duration::from_secs(5);
/// How long a name that resolved before keeps its last addresses once DNS
/// says it does not exist (NXDOMAIN) or has no records, before its backends go.
pub const DEFAULT_RESOLVE_HOLD: Duration = Duration::from_secs(30);
/// Whether a backend name that does not resolve at start is an error.
pub const DEFAULT_RESOLVE_AT_START: bool = true;
/// The port `--resolver ADDR` uses when ADDR has none.
pub const DNS_PORT: u16 = 53;
/// Health checks as they run when a frontend says nothing about them.
pub const DEFAULT_HEALTH: HealthConfig = HealthConfig {
    checks: true,
    interval: DEFAULT_HEALTH_INTERVAL,
    timeout: DEFAULT_HEALTH_TIMEOUT,
    rise: DEFAULT_RISE,
    fall: DEFAULT_FALL,
};

/// One worker per CPU the process may use: the default for `workers`.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Most worker threads.
pub const MAX_WORKERS: u32 = 4096;
/// Most checks in a row `rise` and `fall` may ask for.
pub const MAX_RISE_FALL: u32 = 1000;
/// Largest backend weight.
pub const MAX_WEIGHT: u32 = 1000;
/// Buffers below this cannot hold even a small request, above it they waste memory.
pub const BUFFER_SIZE_RANGE: RangeInclusive<usize> = 512..=(16 << 20);

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
    /// The file holding the admin endpoint's bearer token; read when the
    /// endpoint starts, not here.
    pub admin_token_file: Option<PathBuf>,
    /// Pin each worker thread to one CPU.
    pub pin: bool,
    /// Use a kernel submission-polling thread per ring.
    pub sqpoll: bool,
    /// Where to write the bound addresses once listening (a flag only, not in the file).
    pub ready_file: Option<PathBuf>,
    /// Where to serve the hot-upgrade control socket (a flag only).
    pub control_socket: Option<PathBuf>,
    /// The frontends, each a listen address with its own pool; names are unique.
    pub frontends: Vec<FrontendConfig>,
    /// DNS servers for backends written as names; empty uses /etc/resolv.conf.
    pub resolvers: Vec<SocketAddr>,
    /// Whether a backend name that does not resolve at start (or when a
    /// reload adds it) is an error; if not, its backends start empty.
    pub resolve_at_start: bool,
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
    /// Health: active checks (on or off) and the thresholds that real
    /// traffic's failures use too.
    pub health: HealthConfig,
    /// Bytes per large relay buffer.
    pub buffer_size: usize,
    /// Upper bound on one backend connect attempt.
    pub connect_timeout: Duration,
    /// Close connections idle this long; `None` is never.
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
    /// Sources served; empty serves every source not denied.
    pub allow: Vec<IpNet>,
    /// Sources refused, whatever `allow` says.
    pub deny: Vec<IpNet>,
    /// Sources whose PROXY header is believed (needs `accept_proxy`); empty
    /// believes anyone's.
    pub accept_proxy_from: Vec<IpNet>,
    /// With health checks off, how long a backend that failed `fall` times
    /// in a row is left out before real traffic tries it again.
    pub fail_timeout: Duration,
    /// Count a backend connection the backend resets or closes before its
    /// first byte, within the connect timeout, as a failed connect.
    pub observe_l4: bool,
    /// What picks the pool of a connection: nothing (the frontend's
    /// `backends`) or the TLS ClientHello's server name.
    pub route_by: RouteBy,
    /// How long a client may take to send its ClientHello (with `route_by = Sni`).
    pub sni_timeout: Duration,
    /// The SNI routes, tried in order; the frontend's own `backends`, when
    /// not empty, is the default for no SNI or no match.
    pub routes: Vec<RouteConfig>,
    /// How often its backends written as names are resolved again.
    pub resolve_interval: Duration,
    /// How long a name answered with NXDOMAIN or no records keeps its last
    /// addresses.
    pub resolve_hold: Duration,
}

/// What picks the pool a connection goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteBy {
    /// Every connection goes to the frontend's pool.
    None,
    /// The server name (and ALPN) of the TLS ClientHello picks a route.
    Sni,
}

impl fmt::Display for RouteBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RouteBy::None => "none",
            RouteBy::Sni => "sni",
        })
    }
}

impl std::str::FromStr for RouteBy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(RouteBy::None),
            "sni" => Ok(RouteBy::Sni),
            _ => Err(format!(
                "invalid route-by '{s}': expected \"none\" or \"sni\""
            )),
        }
    }
}

/// One SNI route: the names (and ALPN protocols) it takes and its own pool.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    /// Server names, lowercase without a trailing dot: exact, or `*.` and a
    /// suffix to match one more label.
    pub sni: Vec<String>,
    /// ALPN protocols; when not empty the client must offer one of them.
    pub alpn: Vec<String>,
    /// The route's pool, in the order given.
    pub backends: Vec<BackendConfig>,
    /// How workers choose a backend of this route.
    pub balance: Algorithm,
    /// Send a PROXY protocol header of this version to the route's
    /// backends (the frontend's `send_proxy` unless the route sets one).
    pub send_proxy: Option<ProxyVersion>,
    /// The route's health checks (the frontend's, key by key, unless the
    /// route sets them).
    pub health: HealthConfig,
}

impl RouteConfig {
    /// The route's name in logs, metric labels and /backends: its first
    /// server name.
    pub fn label(&self) -> &str {
        self.sni.first().map_or("", String::as_str)
    }
}

/// Parses a route's server name: a host name, or `*.` followed by one, as
/// the parser of ClientHellos normalises names (lowercase, no trailing dot).
pub fn parse_sni_pattern(s: &str) -> Result<String, String> {
    let lower = s.to_ascii_lowercase();
    let name = lower.strip_suffix('.').unwrap_or(&lower);
    let host = name.strip_prefix("*.").unwrap_or(name);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    };
    if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
        return Err(format!(
            "invalid server name '{s}': expected a host name such as \"www.example.com\" or \"*.example.com\""
        ));
    }
    Ok(name.to_string())
}

/// One backend of the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// Resolved address we connect to. For a backend written as a name, as
    /// parsed, this is only a template (`0.0.0.0` and the port) that
    /// discovery replaces by one backend per address the name has.
    pub addr: SocketAddr,
    /// The name it was written as, for a backend that follows DNS; `None`
    /// for an address.
    pub name: Option<BackendName>,
    /// Relative share of new connections (>= 1).
    pub weight: u32,
    /// Most connections open to it at once, across workers; `None` is unlimited.
    pub max_conns: Option<u32>,
    /// A backup: it gets connections only while no primary backend of its
    /// pool is up (HAProxy's `backup`).
    pub backup: bool,
    /// How long its effective weight ramps up after it comes up (the
    /// backend's own `slow-start`, else its frontend's); `None` or zero is
    /// no ramp.
    pub slow_start: Option<Duration>,
}

/// A backend written as a name, which discovery resolves and keeps
/// resolving: each address (or SRV target) it yields becomes a backend.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BackendName {
    /// `host:port`: the host's A and AAAA records, all on that port.
    Host {
        /// The host name, as written.
        host: String,
        /// The port of every address.
        port: u16,
    },
    /// `srv:_service._proto.name`: the name's SRV records, each target
    /// (resolved to its addresses) on its port.
    Srv {
        /// The SRV name, as written after `srv:`.
        name: String,
        /// Whether the config set a weight, which then wins over the SRV
        /// records' weights.
        weight_given: bool,
    },
}

impl fmt::Display for BackendName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendName::Host { host, port } => write!(f, "{host}:{port}"),
            BackendName::Srv { name, .. } => write!(f, "srv:{name}"),
        }
    }
}

/// Active health check settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthConfig {
    /// Whether active checks run; `fall` applies to real traffic either way.
    pub checks: bool,
    /// Time between checks of one backend.
    pub interval: Duration,
    /// Limit for one check's connect.
    pub timeout: Duration,
    /// Passed checks in a row that bring a backend up.
    pub rise: u32,
    /// Failed checks (or failures on real traffic) in a row that take a backend down.
    pub fall: u32,
}

/// A setting that validation can find wrong, named once for both layers: as
/// a flag (or `--backend` option) and as a key path in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// The frontend's name.
    Name,
    /// The frontend's listen address.
    Listen,
    /// The frontend's backend list.
    Backends,
    /// `connect-timeout`.
    ConnectTimeout,
    /// `idle-timeout`.
    IdleTimeout,
    /// `max-lifetime`.
    MaxLifetime,
    /// `proxy-header-timeout`.
    ProxyHeaderTimeout,
    /// `fail-timeout`.
    FailTimeout,
    /// `accept-proxy-from`.
    AcceptProxyFrom,
    /// The health check interval.
    HealthInterval,
    /// The health check timeout.
    HealthTimeout,
    /// A backend's weight.
    Weight,
    /// A backend's max-conns.
    MaxConns,
    /// `route-by`.
    RouteBy,
    /// `sni-timeout`.
    SniTimeout,
    /// A route's server names.
    Sni,
    /// `resolve-interval`.
    ResolveInterval,
    /// `resolve-hold`.
    ResolveHold,
}

impl Key {
    /// As the command line spells it: the flag without dashes, or the
    /// `--backend` option for backend keys.
    pub fn flag(self) -> &'static str {
        match self {
            Key::Name => "name",
            Key::Listen => "listen",
            Key::Backends => "backend",
            Key::ConnectTimeout => "connect-timeout",
            Key::IdleTimeout => "idle-timeout",
            Key::MaxLifetime => "max-lifetime",
            Key::ProxyHeaderTimeout => "proxy-header-timeout",
            Key::FailTimeout => "fail-timeout",
            Key::AcceptProxyFrom => "accept-proxy-from",
            Key::HealthInterval => "health-interval",
            Key::HealthTimeout => "health-timeout",
            Key::Weight => "weight",
            Key::MaxConns => "max-conns",
            Key::RouteBy => "route-by",
            Key::SniTimeout => "sni-timeout",
            Key::Sni => "route",
            Key::ResolveInterval => "resolve-interval",
            Key::ResolveHold => "resolve-hold",
        }
    }

    /// As the file spells it: the key path below its `[[frontend]]` table,
    /// or below its backend for backend keys.
    pub fn file_path(self) -> &'static [&'static str] {
        match self {
            Key::Name => &["name"],
            Key::Listen => &["listen"],
            Key::Backends => &["backends"],
            Key::ConnectTimeout => &["connect-timeout"],
            Key::IdleTimeout => &["idle-timeout"],
            Key::MaxLifetime => &["max-lifetime"],
            Key::ProxyHeaderTimeout => &["proxy-header-timeout"],
            Key::FailTimeout => &["fail-timeout"],
            Key::AcceptProxyFrom => &["accept-proxy-from"],
            Key::HealthInterval => &["health", "interval"],
            Key::HealthTimeout => &["health", "timeout"],
            Key::Weight => &["weight"],
            Key::MaxConns => &["max-conns"],
            Key::RouteBy => &["route-by"],
            Key::SniTimeout => &["sni-timeout"],
            Key::Sni => &["sni"],
            Key::ResolveInterval => &["resolve-interval"],
            Key::ResolveHold => &["resolve-hold"],
        }
    }
}

/// Where in a [`Config`] a validation error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// Index into [`Config::frontends`].
    pub frontend: usize,
    /// Index into that frontend's routes, for a route's key.
    pub route: Option<usize>,
    /// Index into that frontend's (or route's) backends, for a backend's key.
    pub backend: Option<usize>,
    /// The offending setting.
    pub key: Key,
}

/// A bad value; each variant names the value, and those found by
/// [`Config::validate`] also where it is ([`ConfigError::location`]).
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
    /// Neither --listen nor the rsp form was given.
    #[error("no listen address: use --listen ADDR (or the rsp form LISTEN_PORT BACKEND_HOST BACKEND_PORT)")]
    NoListen,
    /// A config with no frontend.
    #[error(
        "no frontend: give --listen and --backend, or a config file with [[frontend]] sections"
    )]
    NoFrontend,
    /// Two frontends with one name.
    #[error("two frontends are named '{name}': names must be unique")]
    DuplicateName {
        /// The second frontend of that name.
        frontend: usize,
        /// The name.
        name: String,
    },
    /// Two frontends on one address.
    #[error("frontends '{first}' and '{second}' both listen on {addr}")]
    DuplicateListen {
        /// The second frontend on that address.
        frontend: usize,
        /// The address.
        addr: SocketAddr,
        /// The first frontend's name.
        first: String,
        /// The second frontend's name.
        second: String,
    },
    /// Two frontends whose listen addresses share a port on some address:
    /// a wildcard and an address it covers.
    #[error("frontends '{first}' on {first_addr} and '{second}' on {addr} overlap: a wildcard address takes its port on every address of its family ([::] on IPv4 too)")]
    OverlappingListen {
        /// The second frontend.
        frontend: usize,
        /// The second frontend's address.
        addr: SocketAddr,
        /// The first frontend's name.
        first: String,
        /// The first frontend's address.
        first_addr: SocketAddr,
        /// The second frontend's name.
        second: String,
    },
    /// accept-proxy-from on a frontend that does not read PROXY headers.
    #[error("--accept-proxy-from needs --accept-proxy")]
    ProxyFromWithoutProxy {
        /// The frontend.
        frontend: usize,
    },
    /// An empty pool.
    #[error("no backend: use --backend ADDR, once per backend")]
    NoBackend {
        /// The frontend without backends.
        frontend: usize,
    },
    /// A zero duration where time must pass.
    #[error("invalid --{} '0s': must be more than zero", .key.flag())]
    ZeroDuration {
        /// The frontend.
        frontend: usize,
        /// The route, for a route's health settings.
        route: Option<usize>,
        /// Which duration.
        key: Key,
    },
    /// `route-by = "sni"` with neither a route nor a default pool.
    #[error("route-by sni needs a route (--route NAME=ADDR) or default backends")]
    NoRoute {
        /// The frontend.
        frontend: usize,
    },
    /// Routes on a frontend that does not route by SNI.
    #[error("routes need --route-by sni")]
    RoutesWithoutRouteBy {
        /// The frontend.
        frontend: usize,
    },
    /// A route without server names or without backends.
    #[error("route '{label}' has no {}", if *.key == Key::Sni { "server name" } else { "backend" })]
    EmptyRoute {
        /// The frontend.
        frontend: usize,
        /// The route's index.
        route: usize,
        /// Its first server name, if any.
        label: String,
        /// [`Key::Sni`] or [`Key::Backends`].
        key: Key,
    },
    /// One server name in two routes (or twice in one).
    #[error("server name '{name}' is in two routes: each name routes to one place")]
    DuplicateSni {
        /// The frontend.
        frontend: usize,
        /// The second route with that name.
        route: usize,
        /// The name.
        name: String,
    },
    /// A backend's weight or max-conns out of its range.
    #[error("invalid backend option '{}={value}' for {addr}: {}", .key.flag(), self.reason())]
    BackendOutOfRange {
        /// The frontend.
        frontend: usize,
        /// The route whose pool it is in; `None` for the frontend's own.
        route: Option<usize>,
        /// The backend's index in its pool.
        backend: usize,
        /// The backend's address, or its name as written.
        addr: String,
        /// [`Key::Weight`] or [`Key::MaxConns`].
        key: Key,
        /// The value given.
        value: u32,
    },
}

impl ConfigError {
    /// Where the error is, for those [`Config::validate`] finds.
    pub fn location(&self) -> Option<Location> {
        let (frontend, route, backend, key) = match *self {
            ConfigError::DuplicateName { frontend, .. } => (frontend, None, None, Key::Name),
            ConfigError::DuplicateListen { frontend, .. }
            | ConfigError::OverlappingListen { frontend, .. } => {
                (frontend, None, None, Key::Listen)
            }
            ConfigError::ProxyFromWithoutProxy { frontend } => {
                (frontend, None, None, Key::AcceptProxyFrom)
            }
            ConfigError::NoBackend { frontend } => (frontend, None, None, Key::Backends),
            ConfigError::NoRoute { frontend } | ConfigError::RoutesWithoutRouteBy { frontend } => {
                (frontend, None, None, Key::RouteBy)
            }
            ConfigError::EmptyRoute {
                frontend,
                route,
                key,
                ..
            } => (frontend, Some(route), None, key),
            ConfigError::DuplicateSni {
                frontend, route, ..
            } => (frontend, Some(route), None, Key::Sni),
            ConfigError::ZeroDuration {
                frontend,
                route,
                key,
            } => (frontend, route, None, key),
            ConfigError::BackendOutOfRange {
                frontend,
                route,
                backend,
                key,
                ..
            } => (frontend, route, Some(backend), key),
            _ => return None,
        };
        Some(Location {
            frontend,
            route,
            backend,
            key,
        })
    }

    /// What is wrong, without naming the setting: what follows a
    /// location such as `frontend[0].connect-timeout: `.
    pub fn reason(&self) -> String {
        match self {
            ConfigError::ZeroDuration { .. } => "must be more than zero".into(),
            ConfigError::NoBackend { .. } => "no backend: list at least one".into(),
            ConfigError::NoRoute { .. } => {
                "\"sni\" needs a [[frontend.route]] or the frontend's own backends".into()
            }
            ConfigError::RoutesWithoutRouteBy { .. } => {
                "must be \"sni\" for [[frontend.route]] tables".into()
            }
            ConfigError::EmptyRoute { key: Key::Sni, .. } => {
                "no server name: list at least one".into()
            }
            ConfigError::EmptyRoute { .. } => "no backend: list at least one".into(),
            ConfigError::ProxyFromWithoutProxy { .. } => "needs accept-proxy = true".into(),
            ConfigError::BackendOutOfRange { key, value, .. } => {
                let range = match key {
                    Key::Weight => 1..=MAX_WEIGHT,
                    _ => 1..=u32::MAX,
                };
                range_message(range, *value)
            }
            e => e.to_string(),
        }
    }
}

/// `must be between MIN and MAX, got N`, or `must be at least MIN, got N`
/// when MAX is too large to be a meaningful bound.
pub(crate) fn range_message<T: Into<i128>>(
    range: RangeInclusive<T>,
    got: impl std::fmt::Display,
) -> String {
    let (min, max) = range.into_inner();
    let (min, max) = (min.into(), max.into());
    if max >= i128::from(u32::MAX) {
        format!("must be at least {min}, got {got}")
    } else {
        format!("must be between {min} and {max}, got {got}")
    }
}

impl Config {
    /// Checks what parsing one value cannot: durations above zero, a pool
    /// per frontend, backend weights and limits in range, unique names and
    /// listen addresses. The error says where (frontend, backend, key).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.frontends.is_empty() {
            return Err(ConfigError::NoFrontend);
        }
        for (i, fe) in self.frontends.iter().enumerate() {
            match fe.route_by {
                RouteBy::None if !fe.routes.is_empty() => {
                    return Err(ConfigError::RoutesWithoutRouteBy { frontend: i })
                }
                RouteBy::None if fe.backends.is_empty() => {
                    return Err(ConfigError::NoBackend { frontend: i })
                }
                RouteBy::Sni if fe.routes.is_empty() && fe.backends.is_empty() => {
                    return Err(ConfigError::NoRoute { frontend: i })
                }
                _ => {}
            }
            check_backends(i, None, &fe.backends)?;
            for (r, route) in fe.routes.iter().enumerate() {
                let empty = |key| ConfigError::EmptyRoute {
                    frontend: i,
                    route: r,
                    label: route.label().to_string(),
                    key,
                };
                if route.sni.is_empty() {
                    return Err(empty(Key::Sni));
                }
                if route.backends.is_empty() {
                    return Err(empty(Key::Backends));
                }
                check_backends(i, Some(r), &route.backends)?;
                if route.health.checks {
                    for (key, value) in [
                        (Key::HealthInterval, route.health.interval),
                        (Key::HealthTimeout, route.health.timeout),
                    ] {
                        if value.is_zero() {
                            return Err(ConfigError::ZeroDuration {
                                frontend: i,
                                route: Some(r),
                                key,
                            });
                        }
                    }
                }
                let earlier = fe.routes[..r].iter().flat_map(|r| &r.sni);
                let seen: Vec<&String> = earlier.collect();
                for (k, name) in route.sni.iter().enumerate() {
                    if seen.contains(&name) || route.sni[..k].contains(name) {
                        return Err(ConfigError::DuplicateSni {
                            frontend: i,
                            route: r,
                            name: name.clone(),
                        });
                    }
                }
            }
            let health = Some(&fe.health).filter(|h| h.checks);
            for (key, value) in [
                (Key::ConnectTimeout, Some(fe.connect_timeout)),
                (Key::HealthInterval, health.map(|h| h.interval)),
                (Key::HealthTimeout, health.map(|h| h.timeout)),
                (Key::IdleTimeout, fe.idle_timeout),
                (Key::MaxLifetime, fe.max_lifetime),
                (Key::ProxyHeaderTimeout, Some(fe.proxy_header_timeout)),
                (Key::FailTimeout, Some(fe.fail_timeout)),
                (Key::SniTimeout, Some(fe.sni_timeout)),
                (Key::ResolveInterval, Some(fe.resolve_interval)),
                (Key::ResolveHold, Some(fe.resolve_hold)),
            ] {
                if value.is_some_and(|v| v.is_zero()) {
                    return Err(ConfigError::ZeroDuration {
                        frontend: i,
                        route: None,
                        key,
                    });
                }
            }
            if !fe.accept_proxy_from.is_empty() && !fe.accept_proxy {
                return Err(ConfigError::ProxyFromWithoutProxy { frontend: i });
            }
            for other in &self.frontends[..i] {
                if other.name == fe.name {
                    return Err(ConfigError::DuplicateName {
                        frontend: i,
                        name: fe.name.clone(),
                    });
                }
                if other.listen == fe.listen && fe.listen.port() != 0 {
                    return Err(ConfigError::DuplicateListen {
                        frontend: i,
                        addr: fe.listen,
                        first: other.name.clone(),
                        second: fe.name.clone(),
                    });
                }
                if listens_overlap(other.listen, fe.listen) {
                    return Err(ConfigError::OverlappingListen {
                        frontend: i,
                        addr: fe.listen,
                        first: other.name.clone(),
                        first_addr: other.listen,
                        second: fe.name.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Settings fixed at start (threads, rings, the admin listener, the
    /// drain's length): sets them back to `running`'s values and returns the
    /// names of those that differed, for a reload to warn about.
    pub fn keep_restart_only(&mut self, running: &Config) -> Vec<&'static str> {
        fn keep<T: PartialEq + Clone>(
            changed: &mut Vec<&'static str>,
            name: &'static str,
            new: &mut T,
            old: &T,
        ) {
            if new != old {
                changed.push(name);
                *new = old.clone();
            }
        }
        let mut changed = Vec::new();
        keep(&mut changed, "workers", &mut self.workers, &running.workers);
        keep(&mut changed, "pin", &mut self.pin, &running.pin);
        keep(&mut changed, "sqpoll", &mut self.sqpoll, &running.sqpoll);
        keep(&mut changed, "admin", &mut self.admin, &running.admin);
        let token = &running.admin_token_file;
        keep(
            &mut changed,
            "admin-token-file",
            &mut self.admin_token_file,
            token,
        );
        let drain = &running.drain_timeout;
        keep(
            &mut changed,
            "drain-timeout",
            &mut self.drain_timeout,
            drain,
        );
        let ready = &running.ready_file;
        keep(&mut changed, "ready-file", &mut self.ready_file, ready);
        let control = &running.control_socket;
        keep(
            &mut changed,
            "control-socket",
            &mut self.control_socket,
            control,
        );
        let resolvers = &running.resolvers;
        keep(&mut changed, "resolvers", &mut self.resolvers, resolvers);
        changed
    }
}

/// Checks the weights and limits of one pool's backends.
fn check_backends(
    frontend: usize,
    route: Option<usize>,
    backends: &[BackendConfig],
) -> Result<(), ConfigError> {
    for (j, b) in backends.iter().enumerate() {
        let out_of_range = if !(1..=MAX_WEIGHT).contains(&b.weight) {
            Some((Key::Weight, b.weight))
        } else {
            b.max_conns.filter(|&n| n == 0).map(|n| (Key::MaxConns, n))
        };
        if let Some((key, value)) = out_of_range {
            return Err(ConfigError::BackendOutOfRange {
                frontend,
                route,
                backend: j,
                addr: b
                    .name
                    .as_ref()
                    .map_or_else(|| b.addr.to_string(), |n| n.to_string()),
                key,
                value,
            });
        }
    }
    Ok(())
}

/// Whether two listen addresses would share a port on some address, so the
/// kernel (SO_REUSEPORT) would split one frontend's clients with the other:
/// a wildcard covers every address of its family, and `[::]` is dual-stack,
/// so it covers IPv4 too. Port 0 is a fresh port each, so never overlaps.
fn listens_overlap(a: SocketAddr, b: SocketAddr) -> bool {
    fn covers(wildcard: IpAddr, other: IpAddr) -> bool {
        match wildcard {
            IpAddr::V4(w) => w.is_unspecified() && other.is_ipv4(),
            IpAddr::V6(w) => w.is_unspecified(),
        }
    }
    if a.port() != b.port() || a.port() == 0 {
        return false;
    }
    let (a, b) = (a.ip().to_canonical(), b.ip().to_canonical());
    a == b || covers(a, b) || covers(b, a)
}

/// Parses a source rule: a CIDR such as `10.0.0.0/8` or `2001:db8::/32`, or
/// a bare address (a /32 or /128). An IPv4-mapped IPv6 network is stored as
/// the IPv4 network it is, since peers are matched in canonical form.
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let net = match s.parse::<IpNet>() {
        Ok(net) => net,
        Err(e) => match s.parse::<IpAddr>() {
            Ok(ip) => IpNet::from(ip),
            // A slash means a CIDR was meant: its error says more.
            Err(_) if s.contains('/') => return Err(format!("invalid CIDR '{s}': {e}")),
            Err(e) => return Err(format!("invalid CIDR '{s}': {e}")),
        },
    };
    Ok(match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => Ipv4Net::new(v4, v6.prefix_len() - 96)
                .map_or(net, IpNet::V4)
                .trunc(),
            None => net,
        },
        net => net.trunc(),
    })
}

/// A duration that `never` turns off: `--idle-timeout`'s value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrNever(pub Option<Duration>);

impl fmt::Display for OrNever {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(d) => humantime::format_duration(d).fmt(f),
            None => f.write_str("never"),
        }
    }
}

impl std::str::FromStr for OrNever {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "never" => Ok(OrNever(None)),
            s => humantime::parse_duration(s)
                .map(|d| OrNever(Some(d)))
                .map_err(|e| format!("invalid duration '{s}': {e} (or \"never\")")),
        }
    }
}

/// Parses `ADDR[,weight=N][,max-conns=N][,backup][,slow-start=DURATION]`,
/// ADDR being `ip:port`, `host:port` or `srv:NAME`; ranges are
/// [`Config::validate`]'s to check. A name is not resolved here: see [`BackendName`].
pub fn parse_backend(value: &str) -> Result<BackendConfig, ConfigError> {
    let mut parts = value.split(',');
    let (addr, name) = parse_backend_addr(parts.next().unwrap_or_default())?;
    if addr.port() == 0 && name.is_none() {
        return Err(ConfigError::BackendPortZero(value.to_string()));
    }
    let mut backend = BackendConfig {
        addr,
        name,
        weight: DEFAULT_WEIGHT,
        max_conns: None,
        backup: false,
        slow_start: DEFAULT_SLOW_START,
    };
    for option in parts {
        let bad = |reason| ConfigError::BadBackendOption {
            value: value.to_string(),
            option: option.to_string(),
            reason,
        };
        if option == "backup" {
            backend.backup = true;
            continue;
        }
        let (key, val) = option
            .split_once('=')
            .ok_or_else(|| bad("expected key=value, or backup"))?;
        let number = || {
            val.parse::<u32>()
                .map_err(|_| bad("expected a whole number"))
        };
        match key {
            "weight" => {
                backend.weight = number()?;
                if let Some(BackendName::Srv { weight_given, .. }) = &mut backend.name {
                    *weight_given = true;
                }
            }
            "max-conns" => backend.max_conns = Some(number()?),
            "slow-start" => {
                let d = humantime::parse_duration(val)
                    .map_err(|_| bad("expected a duration such as 30s"))?;
                backend.slow_start = Some(d);
            }
            _ => {
                return Err(bad(
                    "known options are weight, max-conns, backup and slow-start",
                ))
            }
        }
    }
    Ok(backend)
}

/// Gives every backend of `backends` without a `slow-start` of its own the
/// frontend's `default`.
pub fn default_slow_start(backends: &mut [BackendConfig], default: Option<Duration>) {
    for b in backends {
        b.slow_start = b.slow_start.or(default);
    }
}

/// A backend's address: an IP literal, or a name for discovery (with a
/// template address holding its port).
pub fn parse_backend_addr(value: &str) -> Result<(SocketAddr, Option<BackendName>), ConfigError> {
    if let Ok(addr) = value.parse::<SocketAddr>() {
        return Ok((addr, None));
    }
    let bad = || ConfigError::BadAddress(value.to_string());
    let valid_name = |name: &str| {
        let name = name.strip_suffix('.').unwrap_or(name);
        !name.is_empty()
            && name.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes()
                        .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
            })
    };
    let template = |port| SocketAddr::from(([0, 0, 0, 0], port));
    if let Some(name) = value.strip_prefix("srv:") {
        if !valid_name(name) {
            return Err(bad());
        }
        let name = BackendName::Srv {
            name: name.to_string(),
            weight_given: false,
        };
        return Ok((template(0), Some(name)));
    }
    let (host, port) = value.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.parse::<IpAddr>().is_ok() || !valid_name(host) {
        return Err(bad());
    }
    let name = BackendName::Host {
        host: host.to_string(),
        port,
    };
    Ok((template(port), Some(name)))
}

/// Parses a `--resolver` value: an IP address, with a port or not (53).
pub fn parse_resolver(value: &str) -> Result<SocketAddr, String> {
    value
        .parse::<SocketAddr>()
        .or_else(|_| value.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, DNS_PORT)))
        .map_err(|_| {
            format!("invalid resolver '{value}': expected an IP address, with or without a port (e.g. 10.0.0.2 or 127.0.0.1:5353)")
        })
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

/// Parses a relay buffer size: bytes, or with a `k`/`m` suffix.
pub fn parse_buffer_size(s: &str) -> Result<usize, String> {
    let (digits, mult) = match s.as_bytes().last() {
        Some(b'k' | b'K') => (&s[..s.len() - 1], 1024),
        Some(b'm' | b'M') => (&s[..s.len() - 1], 1024 * 1024),
        _ => (s, 1),
    };
    let n: usize = digits
        .parse()
        .map_err(|_| "expected a byte count such as 16384, 16k or 1m".to_string())?;
    let n = n.saturating_mul(mult);
    if !BUFFER_SIZE_RANGE.contains(&n) {
        return Err(format!(
            "must be between {} and {} bytes",
            BUFFER_SIZE_RANGE.start(),
            BUFFER_SIZE_RANGE.end()
        ));
    }
    Ok(n)
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
        assert_eq!(
            (b.weight, b.max_conns, b.backup),
            (DEFAULT_WEIGHT, None, false)
        );
        let b = parse_backend("127.0.0.1:9000,backup,weight=2").unwrap();
        assert_eq!((b.weight, b.backup), (2, true));
        let b = parse_backend("127.0.0.1:9000,slow-start=30s").unwrap();
        assert_eq!(b.slow_start, Some(Duration::from_secs(30)));
        let mut both = [b, parse_backend("127.0.0.1:9001").unwrap()];
        default_slow_start(&mut both, Some(Duration::from_secs(5)));
        let got: Vec<_> = both.iter().map(|b| b.slow_start).collect();
        assert_eq!(
            got,
            [Some(Duration::from_secs(30)), Some(Duration::from_secs(5))],
            "the backend's own wins over the frontend's"
        );
        for bad in [
            "127.0.0.1:9000,backup=1",
            "127.0.0.1:9000,weight=x",
            "127.0.0.1:9000,colour=red",
            "127.0.0.1:9000,weight",
            "127.0.0.1:9000,slow-start=soon",
            "127.0.0.1:0",
        ] {
            let err = parse_backend(bad).unwrap_err().to_string();
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn backend_names_are_kept_for_discovery() {
        let b = parse_backend("web.example:8080,weight=2").unwrap();
        let host = BackendName::Host {
            host: "web.example".into(),
            port: 8080,
        };
        assert_eq!((b.name, b.addr.port(), b.weight), (Some(host), 8080, 2));
        let b = parse_backend("srv:_http._tcp.web.default.svc.cluster.local").unwrap();
        let srv = BackendName::Srv {
            name: "_http._tcp.web.default.svc.cluster.local".into(),
            weight_given: false,
        };
        assert_eq!(b.name.as_ref(), Some(&srv));
        assert_eq!(
            srv.to_string(),
            "srv:_http._tcp.web.default.svc.cluster.local"
        );
        let b = parse_backend("srv:_x._tcp.web,weight=3,backup").unwrap();
        assert!(matches!(
            b.name,
            Some(BackendName::Srv {
                weight_given: true,
                ..
            })
        ));
        assert!(b.backup);
        assert_eq!(parse_backend("127.0.0.1:1").unwrap().name, None);
        for bad in ["srv:", "srv:a..b", "web:0x", "we b:80", "web.example"] {
            assert!(parse_backend(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_resolver("127.0.0.1"),
            Ok("127.0.0.1:53".parse().unwrap())
        );
        assert_eq!(
            parse_resolver("[::1]:5353"),
            Ok("[::1]:5353".parse().unwrap())
        );
        assert!(parse_resolver("dns.example")
            .unwrap_err()
            .contains("dns.example"));
    }

    #[test]
    fn buffer_sizes() {
        assert_eq!(parse_buffer_size("16384"), Ok(16384));
        assert_eq!(parse_buffer_size("64k"), Ok(65536));
        assert_eq!(parse_buffer_size("1M"), Ok(1 << 20));
        assert!(parse_buffer_size("12").is_err());
        assert!(parse_buffer_size("lots").is_err());
        assert!(parse_buffer_size("99999999999999999999k").is_err());
    }

    fn frontend(name: &str, listen: &str, backends: &[&str]) -> FrontendConfig {
        FrontendConfig {
            name: name.into(),
            listen: listen.parse().unwrap(),
            backends: backends.iter().map(|b| parse_backend(b).unwrap()).collect(),
            balance: DEFAULT_BALANCE,
            health: DEFAULT_HEALTH,
            buffer_size: DEFAULT_BUFFER_SIZE,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            idle_timeout: None,
            max_lifetime: None,
            max_conns: None,
            send_proxy: None,
            accept_proxy: false,
            proxy_header_timeout: DEFAULT_PROXY_HEADER_TIMEOUT,
            allow: vec![],
            deny: vec![],
            accept_proxy_from: vec![],
            fail_timeout: DEFAULT_FAIL_TIMEOUT,
            observe_l4: DEFAULT_OBSERVE_L4,
            route_by: DEFAULT_ROUTE_BY,
            sni_timeout: DEFAULT_SNI_TIMEOUT,
            routes: vec![],
            resolve_interval: DEFAULT_RESOLVE_INTERVAL,
            resolve_hold: DEFAULT_RESOLVE_HOLD,
        }
    }

    fn config(frontends: Vec<FrontendConfig>) -> Config {
        Config {
            workers: 1,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            access_log: false,
            admin: None,
            admin_token_file: None,
            pin: false,
            sqpoll: false,
            ready_file: None,
            control_socket: None,
            frontends,
            resolvers: vec![],
            resolve_at_start: DEFAULT_RESOLVE_AT_START,
        }
    }

    /// Every validation error says where it is, down to the backend.
    #[test]
    fn validation_errors_are_located() {
        let at = |frontend, backend, key| {
            Some(Location {
                frontend,
                route: None,
                backend,
                key,
            })
        };
        let web = || frontend("web", "127.0.0.1:80", &["127.0.0.1:9000"]);
        let api = || frontend("api", "127.0.0.1:81", &["127.0.0.1:9000"]);
        let mut cases: Vec<(Config, Option<Location>)> = Vec::new();
        cases.push((config(vec![]), None));
        let mut c = config(vec![web(), api()]);
        c.frontends[1].backends.clear();
        cases.push((c, at(1, None, Key::Backends)));
        let mut c = config(vec![web(), api()]);
        c.frontends[1]
            .backends
            .push(parse_backend("127.0.0.1:1,weight=0").unwrap());
        cases.push((c, at(1, Some(1), Key::Weight)));
        let mut c = config(vec![web()]);
        c.frontends[0].backends[0].max_conns = Some(0);
        cases.push((c, at(0, Some(0), Key::MaxConns)));
        let mut c = config(vec![web(), api()]);
        c.frontends[1].health.timeout = Duration::ZERO;
        cases.push((c, at(1, None, Key::HealthTimeout)));
        cases.push((config(vec![web(), api(), web()]), at(2, None, Key::Name)));
        let mut c = config(vec![web(), api()]);
        c.frontends[1].listen = c.frontends[0].listen;
        cases.push((c, at(1, None, Key::Listen)));
        let mut c = config(vec![web(), api()]);
        c.frontends[0].listen = "0.0.0.0:81".parse().unwrap();
        cases.push((c, at(1, None, Key::Listen)));
        let mut c = config(vec![web()]);
        c.frontends[0].fail_timeout = Duration::ZERO;
        cases.push((c, at(0, None, Key::FailTimeout)));
        let mut c = config(vec![web()]);
        c.frontends[0].idle_timeout = Some(Duration::ZERO);
        cases.push((c, at(0, None, Key::IdleTimeout)));
        let mut c = config(vec![web()]);
        c.frontends[0].accept_proxy_from = vec![parse_cidr("10.0.0.0/8").unwrap()];
        cases.push((c, at(0, None, Key::AcceptProxyFrom)));
        for (c, location) in cases {
            let err = c.validate().unwrap_err();
            assert_eq!(err.location(), location, "{err}");
        }
        assert!(config(vec![web(), api()]).validate().is_ok());
    }

    #[test]
    fn listen_overlaps() {
        let overlap = |a: &str, b: &str| {
            let (a, b) = (a.parse().unwrap(), b.parse().unwrap());
            let one = listens_overlap(a, b);
            assert_eq!(one, listens_overlap(b, a), "{a} {b} is not symmetric");
            one
        };
        for (a, b) in [
            ("127.0.0.1:80", "127.0.0.1:80"),
            ("0.0.0.0:80", "127.0.0.1:80"),
            ("0.0.0.0:80", "0.0.0.0:80"),
            ("[::]:80", "[::1]:80"),
            // [::] is dual-stack.
            ("[::]:80", "127.0.0.1:80"),
            ("[::]:80", "0.0.0.0:80"),
            ("[::ffff:127.0.0.1]:80", "127.0.0.1:80"),
            ("0.0.0.0:80", "[::ffff:10.0.0.1]:80"),
        ] {
            assert!(overlap(a, b), "{a} {b}");
        }
        for (a, b) in [
            ("0.0.0.0:80", "0.0.0.0:81"),
            ("0.0.0.0:0", "127.0.0.1:0"),
            ("[::]:0", "[::]:0"),
            ("127.0.0.1:80", "127.0.0.2:80"),
            ("0.0.0.0:80", "[::1]:80"),
            ("[::1]:80", "127.0.0.1:80"),
        ] {
            assert!(!overlap(a, b), "{a} {b}");
        }
    }

    #[test]
    fn overlap_error_names_both_sides() {
        let a = frontend("a", "0.0.0.0:8080", &["127.0.0.1:9"]);
        let b = frontend("b", "127.0.0.1:8080", &["127.0.0.1:9"]);
        let err = config(vec![a, b]).validate().unwrap_err().to_string();
        for part in ["'a'", "'b'", "0.0.0.0:8080", "127.0.0.1:8080"] {
            assert!(err.contains(part), "{err} lacks {part}");
        }
    }

    #[test]
    fn idle_timeout_spellings() {
        assert_eq!("never".parse(), Ok(OrNever(None)));
        let ten = OrNever(Some(DEFAULT_IDLE_TIMEOUT));
        assert_eq!("10m".parse(), Ok(ten));
        assert_eq!(ten.to_string(), "10m");
        assert!("forever"
            .parse::<OrNever>()
            .unwrap_err()
            .contains("'forever'"));
    }

    #[test]
    fn restart_only_settings_are_kept() {
        let running = config(vec![]);
        let mut new = running.clone();
        new.workers = 7;
        new.admin = Some("127.0.0.1:1".parse().unwrap());
        assert_eq!(new.keep_restart_only(&running), ["workers", "admin"]);
        assert_eq!(new, running);
    }
}
