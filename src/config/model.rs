//! The validated settings as plain data: [`Config`] and its frontends,
//! routes, backends and health settings. Every field says what it is for;
//! the values are already checked (see [`Config::validate`]), so the runtime
//! reads them without checking again.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use super::{
    AgentConfig, Algorithm, CheckSpec, Protocol, ProxyTlvs, ProxyVersion, RouteBy, SpliceMode,
};

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
    /// Most kernel pipes open for spliced relay directions, across workers.
    pub max_pipes: usize,
}

/// One frontend: a listen address and everything about its backend pool.
#[derive(Debug, Clone, PartialEq)]
pub struct FrontendConfig {
    /// Unique name, for logs, metric labels and reloads.
    pub name: String,
    /// Where clients connect; port 0 means "any free port", fixed by the first bind.
    pub listen: SocketAddr,
    /// The transport it serves.
    pub protocol: Protocol,
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
    /// How long a client may wait for a backend slot while every eligible
    /// backend is at its max-conns; `None` is the connect timeout.
    pub queue_timeout: Option<Duration>,
    /// Most clients waiting for a slot in one pool, across workers.
    pub max_queue: usize,
    /// Send a PROXY protocol header of this version to backends.
    pub send_proxy: Option<ProxyVersion>,
    /// Expect a PROXY protocol header (v1 or v2) from every client.
    pub accept_proxy: bool,
    /// What happens to the TLVs of a client's PROXY v2 header.
    pub proxy_tlvs: ProxyTlvs,
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
    /// Most addresses one backend name becomes backends of (the lowest are
    /// kept).
    pub max_addresses: u32,
    /// Limits per client source (address grouped by prefix), across workers.
    pub sources: SourceLimits,
    /// The settings of a UDP frontend (their defaults on a TCP one).
    pub udp: UdpConfig,
    /// When a relay direction splices (socket -> pipe -> socket) instead of
    /// copying through a buffer.
    pub splice: SpliceMode,
    /// Whether large sends of the copy path are zero-copy (IORING_OP_SEND_ZC).
    pub send_zc: bool,
}

/// Per-source limits on a frontend and the bounded table that keeps them
/// (see `sources`, the runtime's side).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceLimits {
    /// Most connections open at once from one source; `None` is unlimited.
    pub max_conns: Option<u32>,
    /// New connections one source may open, as a token bucket refilled at
    /// this rate; `None` is unlimited.
    pub rate: Option<Rate>,
    /// The bucket's size: connections a source may open at once after a
    /// quiet spell; `None` is the rate's count (one period's worth).
    pub burst: Option<u32>,
    /// IPv4 clients are grouped into sources by this prefix length.
    pub prefix_v4: u8,
    /// IPv6 clients are grouped into sources by this prefix length.
    pub prefix_v6: u8,
    /// Most sources the table tracks at once.
    pub table_size: usize,
}

impl SourceLimits {
    /// Whether any limit is set (else no table is kept).
    pub fn enabled(&self) -> bool {
        self.max_conns.is_some() || self.rate.is_some()
    }

    /// The token bucket's size.
    pub fn burst(&self) -> u32 {
        self.burst
            .or(self.rate.map(|r| r.count))
            .unwrap_or(1)
            .max(1)
    }
}

/// A rate such as `10/s`: `count` events per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Events per period (>= 1).
    pub count: u32,
    /// The period: a second, a minute or an hour.
    pub per: Duration,
}

impl Rate {
    /// Events per second.
    pub fn per_second(&self) -> f64 {
        f64::from(self.count) / self.per.as_secs_f64()
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.per.as_secs() {
            60 => "m",
            3600 => "h",
            _ => "s",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

impl FrontendConfig {
    /// The most clients open at once across workers: max-conns for TCP,
    /// max-sessions for UDP.
    pub fn max_clients(&self) -> Option<usize> {
        match self.protocol {
            Protocol::Tcp => self.max_conns,
            Protocol::Udp => self.udp.max_sessions,
        }
    }
}

/// The settings only a UDP frontend takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpConfig {
    /// A session with no datagram either way for this long ends.
    pub session_timeout: Duration,
    /// A session ends once it has had this many replies per datagram from
    /// its client (nginx's `proxy_responses`; DNS uses 1); `None` is no limit.
    pub responses: Option<u32>,
    /// Most sessions open at once, across workers; past it datagrams from
    /// new clients are dropped and counted.
    pub max_sessions: Option<usize>,
    /// The payload an active health check sends to each backend; without
    /// it a UDP pool has no active check.
    pub health_send: Option<Vec<u8>>,
    /// What a health check's reply must start with; `None` takes any reply.
    pub health_expect: Option<Vec<u8>>,
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
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// What a check says and expects once connected (a route's is its
    /// frontend's unless the route sets any of its keys).
    pub check: CheckSpec,
    /// `agent-port`: the port of the backend's agent, for agent checks.
    pub agent_port: Option<u16>,
    /// `agent-interval`: time between agent checks; `None` is `interval`.
    pub agent_interval: Option<Duration>,
    /// `agent-send`: what is sent to the agent before its answer is read.
    pub agent_send: Option<Vec<u8>>,
}

impl HealthConfig {
    /// The agent check, if `agent-port` is set.
    pub fn agent(&self) -> Option<AgentConfig> {
        Some(AgentConfig {
            port: self.agent_port?,
            interval: self.agent_interval.unwrap_or(self.interval),
            send: self.agent_send.clone(),
        })
    }
}

impl Config {
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

#[cfg(test)]
pub(super) mod tests {
    use crate::config::*;

    pub(in crate::config) fn frontend(
        name: &str,
        listen: &str,
        backends: &[&str],
    ) -> FrontendConfig {
        FrontendConfig {
            name: name.into(),
            listen: listen.parse().unwrap(),
            protocol: DEFAULT_PROTOCOL,
            backends: backends.iter().map(|b| parse_backend(b).unwrap()).collect(),
            balance: DEFAULT_BALANCE,
            health: DEFAULT_HEALTH,
            buffer_size: DEFAULT_BUFFER_SIZE,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            idle_timeout: None,
            max_lifetime: None,
            max_conns: None,
            queue_timeout: None,
            max_queue: DEFAULT_MAX_QUEUE,
            send_proxy: None,
            accept_proxy: false,
            proxy_tlvs: DEFAULT_PROXY_TLVS,
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
            max_addresses: DEFAULT_MAX_ADDRESSES,
            sources: DEFAULT_SOURCE_LIMITS,
            udp: DEFAULT_UDP,
            splice: DEFAULT_SPLICE,
            send_zc: DEFAULT_SEND_ZC,
        }
    }

    pub(in crate::config) fn config(frontends: Vec<FrontendConfig>) -> Config {
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
            max_pipes: DEFAULT_MAX_PIPES,
        }
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
