//! The command line, as clap parses it, and its conversion into a validated
//! [`Config`]. Every flag is documented here, and clap turns those docs into
//! `--help`; defaults come from the table in [`config`](super).

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use ipnet::IpNet;

use super::{
    default_slow_start, default_workers, parse_backend, parse_buffer_size, parse_cidr,
    parse_payload, parse_resolver, parse_sni_pattern, resolve, Algorithm, Config, ConfigError,
    FrontendConfig, HealthConfig, LogFormat, OrNever, Protocol, ProxyTlvs, ProxyVersion, RouteBy,
    RouteConfig, UdpConfig, DEFAULT_BALANCE, DEFAULT_BUFFER_SIZE, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_DRAIN_TIMEOUT, DEFAULT_FAIL_TIMEOUT, DEFAULT_FALL, DEFAULT_HEALTH,
    DEFAULT_HEALTH_INTERVAL, DEFAULT_HEALTH_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_ADDRESSES,
    DEFAULT_MAX_QUEUE, DEFAULT_NAME, DEFAULT_PROTOCOL, DEFAULT_PROXY_HEADER_TIMEOUT,
    DEFAULT_PROXY_TLVS, DEFAULT_RESOLVE_AT_START, DEFAULT_RESOLVE_HOLD, DEFAULT_RESOLVE_INTERVAL,
    DEFAULT_RISE, DEFAULT_ROUTE_BY, DEFAULT_SESSION_TIMEOUT, DEFAULT_SNI_TIMEOUT,
    MAX_MAX_ADDRESSES, MAX_RISE_FALL, MAX_WORKERS,
};
use super::{
    parse_rate, Rate, SourceLimits, DEFAULT_SOURCE_PREFIX, DEFAULT_SOURCE_PREFIX_V6,
    DEFAULT_SOURCE_TABLE_SIZE, MAX_SOURCE_RATE, MAX_SOURCE_TABLE_SIZE,
};
use super::{SpliceMode, DEFAULT_MAX_PIPES, DEFAULT_SPLICE};

/// A per-core io_uring TCP load balancer.
///
/// Accepts TCP connections on --listen and relays every byte to one of the
/// --backend servers and back. The rsp form `ringlb LISTEN_PORT BACKEND_HOST
/// BACKEND_PORT` listens on all interfaces at LISTEN_PORT, IPv6 and IPv4.
#[derive(Parser, Debug, Clone)]
#[command(name = "ringlb", version, about, long_about)]
pub struct Cli {
    /// Address to accept clients on, as host:port (port 0 picks a free port).
    #[arg(short = 'l', long, value_name = "ADDR", conflicts_with = "config")]
    pub listen: Option<String>,

    /// Transport to serve on --listen: tcp, or udp (each client address a
    /// session with its own backend).
    #[arg(
        long,
        value_name = "PROTOCOL",
        default_value_t = DEFAULT_PROTOCOL,
        conflicts_with = "config"
    )]
    pub protocol: Protocol,

    /// Backend to relay to, as ADDR, then optionally `,weight=N`,
    /// `,max-conns=N`, `,backup` and `,slow-start=DURATION`; repeat for
    /// several. ADDR is `ip:port`, `host:port` (every A and AAAA address,
    /// re-resolved while running) or `srv:_service._proto.name` (SRV
    /// records: each target and port, weighted by the records).
    #[arg(
        short = 'b',
        long = "backend",
        value_name = "ADDR",
        conflicts_with = "config"
    )]
    pub backends: Vec<String>,

    /// Worker threads, each with its own io_uring and listening socket [default: number of CPUs].
    #[arg(short = 'w', long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_WORKERS)))]
    pub workers: Option<u32>,

    /// Balancing algorithm: round-robin (smooth weighted), least-conn, random, p2c
    /// (power of two choices) or hash (consistent hashing on the client IP).
    #[arg(
        long,
        value_name = "ALGORITHM",
        default_value_t = DEFAULT_BALANCE,
        conflicts_with = "config"
    )]
    pub balance: Algorithm,

    /// Time between two active health checks (a TCP connect) of each backend.
    #[arg(long, value_name = "DURATION", default_value_t = DEFAULT_HEALTH_INTERVAL.into(), conflicts_with = "config")]
    pub health_interval: humantime::Duration,

    /// How long a health check connect may take before it counts as failed.
    #[arg(long, value_name = "DURATION", default_value_t = DEFAULT_HEALTH_TIMEOUT.into(), conflicts_with = "config")]
    pub health_timeout: humantime::Duration,

    /// Consecutive passed checks that bring a down backend back.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_RISE, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_RISE_FALL)), conflicts_with = "config")]
    pub rise: u32,

    /// Consecutive failed checks (or failed connects) that take a backend down.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_FALL, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_RISE_FALL)), conflicts_with = "config")]
    pub fall: u32,

    /// With health checks off: after --fall failed connects (or layer-4
    /// failures) in a row, a backend is left out this long, then real traffic
    /// tries it again (nginx max_fails/fail_timeout).
    #[arg(long, value_name = "DURATION", default_value_t = DEFAULT_FAIL_TIMEOUT.into(), conflicts_with = "config")]
    pub fail_timeout: humantime::Duration,

    /// Don't count a backend connection that the backend resets or closes
    /// before sending a byte, within --connect-timeout of the connect, as a
    /// failure (HAProxy observe layer4).
    #[arg(long, conflicts_with = "config")]
    pub no_observe_l4: bool,

    /// Turn active health checks off; failed connects still fail over to the next backend.
    #[arg(long, conflicts_with = "config")]
    pub no_health_checks: bool,

    /// Size of the large relay buffer a busy direction reads into (idle ones use 512 bytes).
    #[arg(conflicts_with = "config", long, value_name = "BYTES", default_value_t = DEFAULT_BUFFER_SIZE,
          value_parser = parse_buffer_size)]
    pub buffer_size: usize,

    /// How long to wait for a backend to accept a connection before trying the next.
    #[arg(long, value_name = "DURATION", default_value_t = DEFAULT_CONNECT_TIMEOUT.into(), conflicts_with = "config")]
    pub connect_timeout: humantime::Duration,

    /// On SIGINT/SIGTERM, how long open connections may finish before they are closed [default: 30s].
    // An Option, not a default_value_t, so that a flag not given leaves the file's value.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub drain_timeout: Option<Duration>,

    /// Close a connection after this long with no byte in either direction; `never` turns it off.
    #[arg(long, value_name = "DURATION", default_value_t = OrNever(Some(DEFAULT_IDLE_TIMEOUT)), conflicts_with = "config")]
    pub idle_timeout: OrNever,

    /// Close a connection this long after it was accepted, busy or not [default: never].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, conflicts_with = "config")]
    pub max_lifetime: Option<Duration>,

    /// Most client connections open at once, across workers; past it new
    /// clients wait in the kernel's backlog instead of being accepted [default: no limit].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..), conflicts_with = "config")]
    pub max_conns: Option<u64>,

    /// While every eligible backend is at its max-conns, how long a client
    /// waits for a slot, first in first out, before it is closed [default:
    /// the connect timeout].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, conflicts_with = "config")]
    pub queue_timeout: Option<Duration>,

    /// Most clients waiting for a backend slot in one pool, across workers;
    /// past it a new client is closed at once.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_QUEUE as u64, value_parser = clap::value_parser!(u64).range(1..), conflicts_with = "config")]
    pub max_queue: u64,

    /// Most connections open at once from one client source (its address,
    /// grouped by --source-prefix), across workers; past it a new one is
    /// closed without a byte [default: no limit].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..), conflicts_with = "config")]
    pub max_conns_per_source: Option<u32>,

    /// New connections one client source may open, as N/s, N/m or N/h: a
    /// token bucket of --rate-burst refilled at this rate; past it a new
    /// one is closed without a byte [default: no limit].
    #[arg(long, value_name = "RATE", value_parser = parse_rate, conflicts_with = "config")]
    pub rate_per_source: Option<Rate>,

    /// With --rate-per-source, the bucket's size: connections a source may
    /// open at once after a quiet spell [default: the rate's N].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=MAX_SOURCE_RATE as i64), conflicts_with = "config")]
    pub rate_burst: Option<u32>,

    /// Prefix length that groups IPv4 clients into one source for the
    /// per-source limits (32: each address).
    #[arg(long, value_name = "BITS", default_value_t = DEFAULT_SOURCE_PREFIX, value_parser = clap::value_parser!(u8).range(0..=32), conflicts_with = "config")]
    pub source_prefix: u8,

    /// Prefix length that groups IPv6 clients into one source for the
    /// per-source limits (128: each address).
    #[arg(long, value_name = "BITS", default_value_t = DEFAULT_SOURCE_PREFIX_V6, value_parser = clap::value_parser!(u8).range(0..=128), conflicts_with = "config")]
    pub source_prefix_v6: u8,

    /// Most sources tracked at once for the per-source limits; when full, a
    /// new source replaces the least recently seen one with no connection
    /// open.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_SOURCE_TABLE_SIZE as u64, value_parser = clap::value_parser!(u64).range(1..=MAX_SOURCE_TABLE_SIZE), conflicts_with = "config")]
    pub source_table_size: u64,

    /// Write one info line per closed connection (client, backend, bytes, duration, reason) to the log.
    #[arg(long)]
    pub access_log: bool,

    /// Serve GET /metrics (Prometheus), /healthz and /backends (JSON), and PATCH
    /// /frontends/NAME/backends/ADDR (drain, maint, weight), over HTTP on this address.
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<String>,

    /// Read the admin endpoint's token from this file (surrounding
    /// whitespace trimmed): every admin request but GET /metrics and
    /// /healthz must then carry `Authorization: Bearer TOKEN`. Without it,
    /// changes (PATCH) are refused unless --admin is a loopback address.
    #[arg(long, value_name = "PATH")]
    pub admin_token_file: Option<PathBuf>,

    /// Ramp each backend's weight up linearly over this long after it comes
    /// up (at start, after recovering its health, after leaving drain or
    /// maint); a backend's own `slow-start=` wins [default: no ramp].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, conflicts_with = "config")]
    pub slow_start: Option<Duration>,

    /// Send a PROXY protocol header (v1 text or v2 binary) to each backend, so it learns the client address.
    #[arg(long, value_name = "VERSION", conflicts_with = "config")]
    pub send_proxy: Option<ProxyVersion>,

    /// Expect a PROXY protocol header (v1 or v2) from each client, e.g. behind another load balancer.
    #[arg(long, conflicts_with = "config")]
    pub accept_proxy: bool,

    /// With --accept-proxy and --send-proxy v2: what happens to the TLVs of a
    /// client's v2 header (a cloud endpoint ID, say): `forward` passes them
    /// on to the backend (all but a CRC32C checksum), `drop` does not.
    #[arg(long, value_name = "drop|forward", default_value_t = DEFAULT_PROXY_TLVS, conflicts_with = "config")]
    pub proxy_tlvs: ProxyTlvs,

    /// When a relay direction forwards through a kernel pipe (splice, zero
    /// copy) instead of copying through a buffer: `auto` once it is bulk (a
    /// read fills the large buffer), `always` from its first byte, `never`.
    /// Without a pipe to be had (max-pipes, the fd limit) it copies.
    #[arg(long, value_name = "auto|always|never", default_value_t = DEFAULT_SPLICE, conflicts_with = "config")]
    pub splice: SpliceMode,

    /// Sends of at least 16 KiB from the copy path are zero-copy
    /// (IORING_OP_SEND_ZC): the kernel sends from the relay's buffer, which
    /// pays with a NIC that can, not on loopback, where the kernel copies.
    #[arg(long, conflicts_with = "config")]
    pub send_zc: bool,

    /// Most kernel pipes open for spliced directions, across workers; each
    /// holds two descriptors, which the connection ceiling counts [default: 64].
    #[arg(long, value_name = "N")]
    pub max_pipes: Option<usize>,

    /// How long a client may take to send its PROXY protocol header.
    #[arg(long, value_name = "DURATION", default_value_t = DEFAULT_PROXY_HEADER_TIMEOUT.into(), conflicts_with = "config")]
    pub proxy_header_timeout: humantime::Duration,

    /// With --accept-proxy, believe PROXY headers only from these sources (CIDR
    /// or address; repeat for several); others are closed at once [default: anyone].
    #[arg(long, value_name = "CIDR", value_parser = parse_cidr, conflicts_with = "config")]
    pub accept_proxy_from: Vec<IpNet>,

    /// Serve only clients from these sources (CIDR or address, e.g.
    /// 10.0.0.0/8 or 2001:db8::1; repeat for several) [default: every source].
    #[arg(long, value_name = "CIDR", value_parser = parse_cidr, conflicts_with = "config")]
    pub allow: Vec<IpNet>,

    /// Refuse clients from these sources, whatever --allow says (CIDR or
    /// address; repeat for several).
    #[arg(long, value_name = "CIDR", value_parser = parse_cidr, conflicts_with = "config")]
    pub deny: Vec<IpNet>,

    /// Route TLS connections by the server name in their ClientHello (sni),
    /// passing the encrypted bytes through, or not at all (none).
    #[arg(long, value_name = "HOW", default_value_t = DEFAULT_ROUTE_BY, conflicts_with = "config")]
    pub route_by: RouteBy,

    /// With --route-by sni, how long a client may take to send its ClientHello.
    #[arg(long, value_name = "DURATION", default_value_t = DEFAULT_SNI_TIMEOUT.into(), conflicts_with = "config")]
    pub sni_timeout: humantime::Duration,

    /// With --route-by sni, a route: `NAME[,NAME...]=ADDR[;ADDR...]`, server
    /// names (exact, or `*.example.com` for one more label) and their
    /// backends (each as --backend takes it); repeat for several, tried in
    /// order. --backend, if given, is the default for no SNI or no match.
    #[arg(long = "route", value_name = "ROUTE", value_parser = parse_route, conflicts_with = "config")]
    pub routes: Vec<RouteConfig>,

    /// How often backends written as names are resolved again (sooner when
    /// the records' TTL is shorter, at most once a second).
    #[arg(long, value_name = "DURATION", default_value_t = DEFAULT_RESOLVE_INTERVAL.into(), conflicts_with = "config")]
    pub resolve_interval: humantime::Duration,

    /// How long a name that resolved before keeps its last addresses once
    /// DNS answers NXDOMAIN or no records; then its backends go. (Failures
    /// such as SERVFAIL or a timeout keep them for good.)
    #[arg(long, value_name = "DURATION", default_value_t = DEFAULT_RESOLVE_HOLD.into(), conflicts_with = "config")]
    pub resolve_hold: humantime::Duration,

    /// Most addresses one backend name (its A and AAAA records, or its SRV
    /// targets') becomes backends of; past it the lowest are kept, with a
    /// warning and ringlb_dns_truncated_total counting the cut answers.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_ADDRESSES, conflicts_with = "config",
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_MAX_ADDRESSES)))]
    pub max_addresses: u32,

    /// Whether a backend name that does not resolve at start is an error;
    /// with `--resolve-at-start=false` its backends start empty and fill
    /// when DNS answers [default: true].
    #[arg(long, value_name = "BOOL", num_args = 1, require_equals = true)]
    pub resolve_at_start: Option<bool>,

    /// DNS server for backends written as names, `IP` or `IP:PORT` (port 53
    /// if not given); repeat for several [default: those of /etc/resolv.conf].
    #[arg(long = "resolver", value_name = "ADDR", value_parser = parse_resolver)]
    pub resolvers: Vec<SocketAddr>,

    /// UDP: a session with no datagram either way for this long ends.
    #[arg(long, value_name = "DURATION", default_value_t = DEFAULT_SESSION_TIMEOUT.into(), conflicts_with = "config")]
    pub session_timeout: humantime::Duration,

    /// UDP: end a session once the backend sent N replies per datagram of
    /// the client (nginx proxy_responses; 1 for DNS) [default: no limit].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..), conflicts_with = "config")]
    pub responses: Option<u32>,

    /// UDP: most sessions open at once, across workers; past it datagrams
    /// from new clients are dropped and counted [default: no limit].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..), conflicts_with = "config")]
    pub max_sessions: Option<u64>,

    /// UDP: the datagram an active health check sends to each backend, as
    /// text or `hex:` and hex digits; without it a UDP pool has no active check.
    #[arg(long, value_name = "PAYLOAD", value_parser = payload, conflicts_with = "config")]
    pub health_send: Option<Payload>,

    /// UDP: what a health check's reply must start with, as text or `hex:`
    /// and hex digits [default: any reply].
    #[arg(long, value_name = "PAYLOAD", value_parser = payload, conflicts_with = "config")]
    pub health_expect: Option<Payload>,

    /// Frontend name, used in logs and metric labels.
    #[arg(
        long,
        value_name = "NAME",
        default_value = DEFAULT_NAME,
        conflicts_with = "config"
    )]
    pub name: String,

    /// Pin worker N to the Nth CPU this process may run on.
    #[arg(long)]
    pub pin: bool,

    /// Let a kernel thread per worker poll the io_uring submission queue (for machines with cores to spare).
    #[arg(long)]
    pub sqpoll: bool,

    /// Log line format on stderr.
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter, e.g. `info` or `ringlb=debug` (overrides RUST_LOG) [default: RUST_LOG, else info].
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,

    /// Once every listener is bound and the workers accept, write this file
    /// (atomically: FILE.tmp, then renamed) with one line per frontend,
    /// `NAME ADDR` (the bound address, e.g. `web 127.0.0.1:41234`), and
    /// `admin ADDR` with --admin; rewritten after every reload.
    #[arg(long, value_name = "FILE")]
    pub ready_file: Option<PathBuf>,

    /// Serve hot binary upgrades on this Unix socket (mode 0600, removed on
    /// exit): a new ringlb started with `--takeover PATH` receives every
    /// listening socket over it, and this process then drains and exits.
    #[arg(long, value_name = "PATH")]
    pub control_socket: Option<PathBuf>,

    /// Take over from the ringlb serving this control socket: receive its
    /// listeners (no client refused), accept on them, then tell it to drain.
    /// Given the same path as --control-socket, a first start with nobody
    /// there starts fresh, so every generation can be started the same way.
    #[arg(long, value_name = "PATH")]
    pub takeover: Option<PathBuf>,

    /// Read frontends and settings from this TOML file (see docs/configuration.md); SIGHUP reloads it.
    /// Flags that set process-wide values (--workers, --drain-timeout, --admin,
    /// --admin-token-file, --access-log, --pin, --sqpoll, --ready-file, --control-socket,
    /// --resolver, --resolve-at-start) override the file; frontend flags cannot be combined with it.
    #[arg(short = 'c', long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Validate the configuration (file or flags), print a summary and exit: 0 if valid, 2 if not.
    #[arg(long)]
    pub check: bool,

    /// Print a completion script for this shell and exit, e.g.
    /// `ringlb --completions bash > /etc/bash_completion.d/ringlb`.
    #[arg(long, value_name = "SHELL", exclusive = true)]
    pub completions: Option<clap_complete::Shell>,

    /// Print the man page (roff) and exit, e.g. `ringlb --man | man -l -`.
    #[arg(long, exclusive = true)]
    pub man: bool,

    /// rsp form: port to listen on, on all interfaces (`[::]`, dual-stack; `0.0.0.0` without IPv6).
    #[arg(value_name = "LISTEN_PORT", requires_all = ["backend_host", "backend_port"],
          conflicts_with_all = ["listen", "backends", "config"])]
    pub listen_port: Option<u16>,

    /// rsp form: backend host.
    #[arg(value_name = "BACKEND_HOST", requires = "backend_port")]
    pub backend_host: Option<String>,

    /// rsp form: backend port.
    #[arg(value_name = "BACKEND_PORT")]
    pub backend_port: Option<u16>,
}

impl Config {
    /// Validates the command line into a config with one frontend.
    pub fn from_cli(cli: &Cli) -> Result<Config, ConfigError> {
        let (listen, backends) = match (&cli.listen_port, &cli.backend_host, &cli.backend_port) {
            (Some(lport), Some(host), Some(bport)) => {
                // Dual-stack; net falls back to 0.0.0.0 where IPv6 is missing.
                let listen = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), *lport);
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
        let mut backends = backends;
        default_slow_start(&mut backends, cli.slow_start);
        let health = HealthConfig {
            checks: !cli.no_health_checks,
            interval: cli.health_interval.into(),
            timeout: cli.health_timeout.into(),
            rise: cli.rise,
            fall: cli.fall,
            ..DEFAULT_HEALTH
        };
        let frontend = FrontendConfig {
            name: cli.name.clone(),
            listen,
            protocol: cli.protocol,
            backends,
            balance: cli.balance,
            health: health.clone(),
            buffer_size: cli.buffer_size,
            connect_timeout: cli.connect_timeout.into(),
            idle_timeout: cli.idle_timeout.0,
            max_lifetime: cli.max_lifetime,
            max_conns: cli.max_conns.map(|n| n as usize),
            queue_timeout: cli.queue_timeout,
            max_queue: cli.max_queue as usize,
            send_proxy: cli.send_proxy,
            accept_proxy: cli.accept_proxy,
            proxy_tlvs: cli.proxy_tlvs,
            proxy_header_timeout: cli.proxy_header_timeout.into(),
            allow: cli.allow.clone(),
            deny: cli.deny.clone(),
            accept_proxy_from: cli.accept_proxy_from.clone(),
            fail_timeout: cli.fail_timeout.into(),
            observe_l4: !cli.no_observe_l4,
            route_by: cli.route_by,
            sni_timeout: cli.sni_timeout.into(),
            routes: cli
                .routes
                .iter()
                .map(|r| {
                    let mut route = RouteConfig {
                        balance: cli.balance,
                        send_proxy: cli.send_proxy,
                        health: health.clone(),
                        ..r.clone()
                    };
                    default_slow_start(&mut route.backends, cli.slow_start);
                    route
                })
                .collect(),
            resolve_interval: cli.resolve_interval.into(),
            resolve_hold: cli.resolve_hold.into(),
            max_addresses: cli.max_addresses,
            sources: SourceLimits {
                max_conns: cli.max_conns_per_source,
                rate: cli.rate_per_source,
                burst: cli.rate_burst,
                prefix_v4: cli.source_prefix,
                prefix_v6: cli.source_prefix_v6,
                table_size: cli.source_table_size as usize,
            },
            udp: UdpConfig {
                session_timeout: cli.session_timeout.into(),
                responses: cli.responses,
                max_sessions: cli.max_sessions.map(|n| n as usize),
                health_send: cli.health_send.clone().map(|p| p.0),
                health_expect: cli.health_expect.clone().map(|p| p.0),
            },
            splice: cli.splice,
            send_zc: cli.send_zc,
        };
        let config = Config {
            workers: cli.workers.map_or_else(default_workers, |n| n as usize),
            drain_timeout: cli.drain_timeout.unwrap_or(DEFAULT_DRAIN_TIMEOUT),
            access_log: cli.access_log,
            admin: cli.admin.as_deref().map(resolve).transpose()?,
            admin_token_file: cli.admin_token_file.clone(),
            pin: cli.pin,
            sqpoll: cli.sqpoll,
            ready_file: cli.ready_file.clone(),
            control_socket: cli.control_socket.clone(),
            frontends: vec![frontend],
            resolvers: cli.resolvers.clone(),
            resolve_at_start: cli.resolve_at_start.unwrap_or(DEFAULT_RESOLVE_AT_START),
            max_pipes: cli.max_pipes.unwrap_or(DEFAULT_MAX_PIPES),
        };
        config.validate()?;
        Ok(config)
    }

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
        if let Some(path) = &cli.admin_token_file {
            self.admin_token_file = Some(path.clone());
        }
        if let Some(path) = &cli.ready_file {
            self.ready_file = Some(path.clone());
        }
        if let Some(path) = &cli.control_socket {
            self.control_socket = Some(path.clone());
        }
        if !cli.resolvers.is_empty() {
            self.resolvers = cli.resolvers.clone();
        }
        if let Some(at_start) = cli.resolve_at_start {
            self.resolve_at_start = at_start;
        }
        if let Some(n) = cli.max_pipes {
            self.max_pipes = n;
        }
        self.access_log |= cli.access_log;
        self.pin |= cli.pin;
        self.sqpoll |= cli.sqpoll;
        Ok(self)
    }
}

/// A health check payload's bytes (a type of its own: clap would take a
/// `Vec<u8>` for a list of numbers).
#[derive(Debug, Clone)]
pub struct Payload(pub Vec<u8>);

fn payload(s: &str) -> Result<Payload, String> {
    parse_payload(s).map(Payload)
}

/// Parses `--route NAME[,NAME...]=ADDR[;ADDR...]`; its balance, PROXY
/// header and health checks are set from the other flags.
fn parse_route(value: &str) -> Result<RouteConfig, String> {
    let (names, addrs) = value.split_once('=').ok_or_else(|| {
        format!("invalid route '{value}': expected NAME[,NAME...]=ADDR[;ADDR...]")
    })?;
    let sni = names
        .split(',')
        .map(parse_sni_pattern)
        .collect::<Result<Vec<_>, _>>()?;
    let backends = addrs
        .split(';')
        .map(|b| parse_backend(b).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RouteConfig {
        sni,
        alpn: vec![],
        backends,
        balance: DEFAULT_BALANCE,
        send_proxy: None,
        health: super::DEFAULT_HEALTH,
    })
}

/// Joins host and port, bracketing bare IPv6 literals.
fn format_host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_joining() {
        assert_eq!(format_host_port("::1", 80), "[::1]:80");
        assert_eq!(format_host_port("example", 80), "example:80");
    }

    #[test]
    fn rsp_form_listens_dual_stack() {
        let cli = Cli::try_parse_from(["ringlb", "8080", "127.0.0.1", "9000"]).unwrap();
        let config = Config::from_cli(&cli).unwrap();
        assert_eq!(config.frontends[0].listen, "[::]:8080".parse().unwrap());
    }

    #[test]
    fn slow_start_and_the_admin_token_from_flags() {
        let cli = Cli::try_parse_from([
            "ringlb",
            "--listen",
            "127.0.0.1:0",
            "--backend",
            "127.0.0.1:1,slow-start=1m",
            "--backend",
            "127.0.0.1:2",
            "--slow-start",
            "10s",
            "--admin-token-file",
            "/run/token",
        ])
        .unwrap();
        let config = Config::from_cli(&cli).unwrap();
        let ramps: Vec<_> = config.frontends[0]
            .backends
            .iter()
            .map(|b| b.slow_start)
            .collect();
        let secs = |s| Some(Duration::from_secs(s));
        assert_eq!(ramps, [secs(60), secs(10)]);
        assert_eq!(
            config.admin_token_file.as_deref(),
            Some(std::path::Path::new("/run/token"))
        );
        let file = Config {
            admin_token_file: None,
            ..config.clone()
        };
        let overridden = file.with_cli_overrides(&cli).unwrap();
        assert_eq!(overridden.admin_token_file, config.admin_token_file);
    }

    #[test]
    fn protocol_flag_takes_tcp_and_udp() {
        let args = [
            "ringlb",
            "--listen",
            "127.0.0.1:0",
            "--backend",
            "127.0.0.1:1",
        ];
        let config = Config::from_cli(&Cli::try_parse_from(args).unwrap()).unwrap();
        assert_eq!(config.frontends[0].protocol, Protocol::Tcp);
        let tcp = Cli::try_parse_from(args.iter().chain(&["--protocol", "tcp"])).unwrap();
        assert_eq!(tcp.protocol, Protocol::Tcp);
        let udp = [
            "--protocol",
            "udp",
            "--responses",
            "1",
            "--max-sessions",
            "9",
        ];
        let cli = Cli::try_parse_from(args.iter().chain(&udp)).unwrap();
        let fe = Config::from_cli(&cli).unwrap().frontends.remove(0);
        assert_eq!(fe.protocol, Protocol::Udp);
        assert_eq!((fe.udp.responses, fe.udp.max_sessions), (Some(1), Some(9)));
        assert_eq!(fe.udp.session_timeout, DEFAULT_SESSION_TIMEOUT);
        let err = Cli::try_parse_from(args.iter().chain(&["--protocol", "sctp"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid protocol 'sctp'"), "{err}");
        let cli = Cli::try_parse_from(args.iter().chain(&["--responses", "1"])).unwrap();
        let err = Config::from_cli(&cli).unwrap_err().to_string();
        assert_eq!(
            err,
            "--responses does not apply to a tcp frontend (--protocol tcp)"
        );
    }

    #[test]
    fn routes_from_flags() {
        let args = [
            "ringlb",
            "--listen",
            "127.0.0.1:0",
            "--route-by",
            "sni",
            "--balance",
            "least-conn",
            "--route",
            "A.example,*.b.example=127.0.0.1:1;127.0.0.1:2,weight=3",
            "--route",
            "c.example=127.0.0.1:3",
        ];
        let cli = Cli::try_parse_from(args).unwrap();
        let fe = Config::from_cli(&cli).unwrap().frontends.remove(0);
        assert_eq!(fe.route_by, RouteBy::Sni);
        assert_eq!(fe.sni_timeout, DEFAULT_SNI_TIMEOUT);
        assert!(fe.backends.is_empty());
        assert_eq!(fe.routes[0].sni, ["a.example", "*.b.example"]);
        assert_eq!(fe.routes[0].backends[1].weight, 3);
        assert_eq!(fe.routes[0].balance, Algorithm::LeastConn);
        assert_eq!(fe.routes[1].sni, ["c.example"]);

        assert!(parse_route("a.example").is_err());
        assert!(parse_route("a b=127.0.0.1:1").is_err());
        assert!(parse_route("a.example=nowhere").is_err());
        let no_route = Cli::try_parse_from(&args[..5]).unwrap();
        assert!(matches!(
            Config::from_cli(&no_route),
            Err(ConfigError::NoRoute { frontend: 0 })
        ));
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
