//! What can be wrong with the settings, and where: [`ConfigError`] names the
//! bad value, and for the errors [`Config::validate`](super::Config::validate) finds, a [`Location`]
//! (frontend, route, backend, [`Key`]) that each layer turns into its own
//! words, a flag or a file's key path.

use std::io;
use std::net::SocketAddr;
use std::ops::RangeInclusive;

use super::{Protocol, MAX_WEIGHT};

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
    /// `proxy-tlvs`.
    ProxyTlvs,
    /// `queue-timeout`.
    QueueTimeout,
    /// `rate-burst`.
    RateBurst,
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
    /// The health check's `steps` (file only).
    HealthSteps,
    /// The health check's `preset` (file only).
    HealthPreset,
    /// The health check's `role` (file only).
    HealthRole,
    /// The health check's `http-path` (file only).
    HealthHttpPath,
    /// The health check's `http-host` (file only).
    HealthHttpHost,
    /// The health check's `http-status` (file only).
    HealthHttpStatus,
    /// The health check's `mysql-user` (file only).
    HealthMysqlUser,
    /// `agent-port` (file only).
    AgentPort,
    /// `agent-interval` (file only).
    AgentInterval,
    /// `agent-send` (file only).
    AgentSend,
    /// `buffer-size`.
    BufferSize,
    /// `max-queue`.
    MaxQueue,
    /// `send-proxy`.
    SendProxy,
    /// `accept-proxy`.
    AcceptProxy,
    /// `session-timeout`.
    SessionTimeout,
    /// `responses`.
    Responses,
    /// `max-sessions`.
    MaxSessions,
    /// `health-send`.
    HealthSend,
    /// `health-expect`.
    HealthExpect,
    /// `max-conns-per-source`.
    MaxConnsPerSource,
    /// `rate-per-source`.
    RatePerSource,
    /// `source-prefix`.
    SourcePrefix,
    /// `source-prefix-v6`.
    SourcePrefixV6,
    /// `source-table-size`.
    SourceTableSize,
    /// `send-zc`.
    SendZc,
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
            Key::ProxyTlvs => "proxy-tlvs",
            Key::QueueTimeout => "queue-timeout",
            Key::RateBurst => "rate-burst",
            Key::HealthInterval => "health-interval",
            Key::HealthTimeout => "health-timeout",
            Key::Weight => "weight",
            Key::MaxConns => "max-conns",
            Key::RouteBy => "route-by",
            Key::SniTimeout => "sni-timeout",
            Key::Sni => "route",
            Key::ResolveInterval => "resolve-interval",
            Key::ResolveHold => "resolve-hold",
            Key::HealthSteps => "health steps",
            Key::HealthPreset => "health preset",
            Key::HealthRole => "health role",
            Key::HealthHttpPath => "health http-path",
            Key::HealthHttpHost => "health http-host",
            Key::HealthHttpStatus => "health http-status",
            Key::HealthMysqlUser => "health mysql-user",
            Key::AgentPort => "health agent-port",
            Key::AgentInterval => "health agent-interval",
            Key::AgentSend => "health agent-send",
            Key::BufferSize => "buffer-size",
            Key::MaxQueue => "max-queue",
            Key::SendProxy => "send-proxy",
            Key::AcceptProxy => "accept-proxy",
            Key::SessionTimeout => "session-timeout",
            Key::Responses => "responses",
            Key::MaxSessions => "max-sessions",
            Key::HealthSend => "health-send",
            Key::HealthExpect => "health-expect",
            Key::MaxConnsPerSource => "max-conns-per-source",
            Key::RatePerSource => "rate-per-source",
            Key::SourcePrefix => "source-prefix",
            Key::SourcePrefixV6 => "source-prefix-v6",
            Key::SourceTableSize => "source-table-size",
            Key::SendZc => "send-zc",
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
            Key::ProxyTlvs => &["proxy-tlvs"],
            Key::QueueTimeout => &["queue-timeout"],
            Key::RateBurst => &["rate-burst"],
            Key::HealthInterval => &["health", "interval"],
            Key::HealthTimeout => &["health", "timeout"],
            Key::Weight => &["weight"],
            Key::MaxConns => &["max-conns"],
            Key::RouteBy => &["route-by"],
            Key::SniTimeout => &["sni-timeout"],
            Key::Sni => &["sni"],
            Key::ResolveInterval => &["resolve-interval"],
            Key::ResolveHold => &["resolve-hold"],
            Key::HealthSteps => &["health", "steps"],
            Key::HealthPreset => &["health", "preset"],
            Key::HealthRole => &["health", "role"],
            Key::HealthHttpPath => &["health", "http-path"],
            Key::HealthHttpHost => &["health", "http-host"],
            Key::HealthHttpStatus => &["health", "http-status"],
            Key::HealthMysqlUser => &["health", "mysql-user"],
            Key::AgentPort => &["health", "agent-port"],
            Key::AgentInterval => &["health", "agent-interval"],
            Key::AgentSend => &["health", "agent-send"],
            Key::BufferSize => &["buffer-size"],
            Key::MaxQueue => &["max-queue"],
            Key::SendProxy => &["send-proxy"],
            Key::AcceptProxy => &["accept-proxy"],
            Key::SessionTimeout => &["session-timeout"],
            Key::Responses => &["responses"],
            Key::MaxSessions => &["max-sessions"],
            Key::HealthSend => &["health-send"],
            Key::HealthExpect => &["health-expect"],
            Key::MaxConnsPerSource => &["max-conns-per-source"],
            Key::RatePerSource => &["rate-per-source"],
            Key::SourcePrefix => &["source-prefix"],
            Key::SourcePrefixV6 => &["source-prefix-v6"],
            Key::SourceTableSize => &["source-table-size"],
            Key::SendZc => &["send-zc"],
        }
    }
}

/// Where in a [`Config`](super::Config) a validation error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// Index into [`Config::frontends`](super::Config::frontends).
    pub frontend: usize,
    /// Index into that frontend's routes, for a route's key.
    pub route: Option<usize>,
    /// Index into that frontend's (or route's) backends, for a backend's key.
    pub backend: Option<usize>,
    /// The offending setting.
    pub key: Key,
}

/// A bad value; each variant names the value, and those found by
/// [`Config::validate`](super::Config::validate) also where it is ([`ConfigError::location`]).
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
    /// proxy-tlvs = "forward" where no TLV can come in or go out.
    #[error("--proxy-tlvs forward needs --accept-proxy and --send-proxy v2")]
    TlvsNowhere {
        /// The frontend.
        frontend: usize,
    },
    /// rate-burst without a rate to refill the bucket.
    #[error("--rate-burst needs --rate-per-source")]
    BurstWithoutRate {
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
    /// Health check keys that do not go together.
    #[error("invalid {}: {reason}", .key.flag())]
    HealthKeys {
        /// The frontend.
        frontend: usize,
        /// The route, for a route's health settings.
        route: Option<usize>,
        /// The key that does not fit.
        key: Key,
        /// Why.
        reason: &'static str,
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
    /// A setting of one transport on a frontend of the other (a TCP-only
    /// key on a UDP frontend, or the reverse).
    #[error("--{} does not apply to a {protocol} frontend (--protocol {protocol})", .key.flag())]
    WrongProtocol {
        /// The frontend.
        frontend: usize,
        /// The setting.
        key: Key,
        /// The frontend's protocol.
        protocol: Protocol,
    },
    /// send-proxy v1 on a UDP frontend: only v2 has a datagram form.
    #[error("--send-proxy v1 has no datagram form: a udp frontend sends v2")]
    ProxyV1Datagram {
        /// The frontend.
        frontend: usize,
    },
    /// health-expect without health-send.
    #[error("--health-expect needs --health-send")]
    ExpectWithoutSend {
        /// The frontend.
        frontend: usize,
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
    /// Where the error is, for those [`Config::validate`](super::Config::validate) finds.
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
            ConfigError::TlvsNowhere { frontend } => (frontend, None, None, Key::ProxyTlvs),
            ConfigError::BurstWithoutRate { frontend } => (frontend, None, None, Key::RateBurst),
            ConfigError::WrongProtocol { frontend, key, .. } => (frontend, None, None, key),
            ConfigError::ExpectWithoutSend { frontend } => {
                (frontend, None, None, Key::HealthExpect)
            }
            ConfigError::ProxyV1Datagram { frontend } => (frontend, None, None, Key::SendProxy),
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
            }
            | ConfigError::HealthKeys {
                frontend,
                route,
                key,
                ..
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
            ConfigError::HealthKeys { reason, .. } => (*reason).into(),
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
            ConfigError::BurstWithoutRate { .. } => "needs rate-per-source".into(),
            ConfigError::WrongProtocol { protocol, .. } => {
                format!("does not apply to a frontend with protocol = \"{protocol}\"")
            }
            ConfigError::ExpectWithoutSend { .. } => "needs health-send".into(),
            ConfigError::ProxyV1Datagram { .. } => {
                "\"v1\" has no datagram form: a udp frontend sends \"v2\"".into()
            }
            ConfigError::TlvsNowhere { .. } => {
                "\"forward\" needs accept-proxy = true and send-proxy = \"v2\" (on the frontend or a route)".into()
            }
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
