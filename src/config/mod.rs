//! The settings: file or flags in, a validated [`Config`] out. This module
//! holds the one table of defaults and limits (`DEFAULT_*`, `MAX_*`) that the
//! command line ([`cli`]) and the config file ([`file`](mod@file)) both fill
//! in from, and re-exports the parts so callers name them `config::X`:
//! - `model`: [`Config`] and its parts, plain data;
//! - `kinds`: the named choices a setting takes ([`Protocol`],
//!   [`Algorithm`], [`ProxyVersion`], [`RouteBy`], [`LogFormat`]);
//! - `error`: [`ConfigError`], and the [`Key`] and [`Location`] that say where
//!   a validation error is, so the file layer can point at the line without
//!   searching;
//! - `validate`: [`Config::validate`], what parsing one value cannot check;
//! - `parse`: the value parsers both layers share;
//! - `check`: what a health check says and expects ([`CheckSpec`]), and the
//!   agent check's settings.
//!
//! Nothing here binds a socket, and nothing here depends on a runtime module:
//! the runtime takes these types as they are.

use std::ops::RangeInclusive;
use std::time::Duration;

mod check;
pub mod cli;
mod error;
pub mod file;
mod kinds;
pub mod manual;
mod model;
mod parse;
mod validate;

pub use check::{
    parse_hex, parse_status_range, AgentConfig, CheckSpec, Expect, Pattern, Preset, RedisRole, Step,
};
pub(crate) use error::range_message;
pub use error::{ConfigError, Key, Location};
pub use kinds::{
    Algorithm, LogFormat, ParseAlgorithmError, ParseVersionError, Protocol, ProxyTlvs,
    ProxyVersion, RouteBy, SpliceMode,
};
pub use model::{
    BackendConfig, BackendName, Config, FrontendConfig, HealthConfig, Rate, RouteConfig,
    SourceLimits, UdpConfig,
};
pub use parse::{
    default_slow_start, parse_backend, parse_backend_addr, parse_buffer_size, parse_cidr,
    parse_payload, parse_rate, parse_resolver, parse_sni_pattern, resolve, OrNever,
};

/// A frontend's name when none is given.
pub const DEFAULT_NAME: &str = "default";
/// The transport a frontend serves, unless configured.
pub const DEFAULT_PROTOCOL: Protocol = Protocol::Tcp;
/// A UDP session with no datagram either way for this long ends.
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(60);
/// A UDP frontend's settings when it sets none (and a TCP frontend's).
pub const DEFAULT_UDP: UdpConfig = UdpConfig {
    session_timeout: DEFAULT_SESSION_TIMEOUT,
    responses: None,
    max_sessions: None,
    health_send: None,
    health_expect: None,
};
/// Most clients waiting for a backend slot in one pool, across workers.
pub const DEFAULT_MAX_QUEUE: usize = 4096;
/// What happens to a client's PROXY v2 TLVs: dropped.
pub const DEFAULT_PROXY_TLVS: ProxyTlvs = ProxyTlvs::Drop;
/// When a relay direction splices instead of copying: once it is bulk.
pub const DEFAULT_SPLICE: SpliceMode = SpliceMode::Auto;
/// Whether large copy-path sends are zero-copy: no, since it pays only on a
/// NIC that sends from user pages, and costs a completion per send.
pub const DEFAULT_SEND_ZC: bool = false;
/// Most kernel pipes open for spliced directions, across workers (each
/// holds two descriptors, counted by the connection ceiling): 64 pipes of
/// 1 MiB are what an unprivileged user may have in pipes by default
/// (/proc/sys/fs/pipe-user-pages-soft).
pub const DEFAULT_MAX_PIPES: usize = 64;
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
/// Most addresses one backend name (its A and AAAA records, or its SRV
/// targets' addresses) becomes backends of; the lowest are kept.
pub const DEFAULT_MAX_ADDRESSES: u32 = 1024;
/// The largest `max-addresses`: an A/AAAA answer holds a few thousand
/// addresses at most, but an SRV name brings its targets' answers together.
pub const MAX_MAX_ADDRESSES: u32 = 65_536;
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
    check: CheckSpec::CONNECT,
    agent_port: None,
    agent_interval: None,
    agent_send: None,
};

/// IPv4 clients are one source per address unless `source-prefix` groups them.
pub const DEFAULT_SOURCE_PREFIX: u8 = 32;
/// IPv6 clients are one source per /64 (what one host or LAN usually gets)
/// unless `source-prefix-v6` says otherwise.
pub const DEFAULT_SOURCE_PREFIX_V6: u8 = 64;
/// Most sources a frontend's table tracks at once, unless configured.
pub const DEFAULT_SOURCE_TABLE_SIZE: usize = 100_000;
/// The largest `source-table-size`.
pub const MAX_SOURCE_TABLE_SIZE: u64 = 1 << 24;
/// The largest count in `rate-per-source` and the largest `rate-burst`.
pub const MAX_SOURCE_RATE: u32 = 1_000_000;
/// No per-source limit: what a frontend has unless configured.
pub const DEFAULT_SOURCE_LIMITS: SourceLimits = SourceLimits {
    max_conns: None,
    rate: None,
    burst: None,
    prefix_v4: DEFAULT_SOURCE_PREFIX,
    prefix_v6: DEFAULT_SOURCE_PREFIX_V6,
    table_size: DEFAULT_SOURCE_TABLE_SIZE,
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
