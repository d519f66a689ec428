//! The config file: TOML text in, a validated [`Config`] out. This module owns
//! the file's schema (kebab-case keys mirroring the command-line flags, unknown
//! keys rejected everywhere) and [`FileError`], which names the file, the line
//! and the key path of whatever was wrong in one line. Keys left out take the
//! defaults of [`config`](super); values are parsed by the same functions the
//! command line uses ([`resolve`], [`parse_backend`], `humantime`,
//! [`Algorithm`]'s and [`ProxyVersion`]'s `FromStr`), and the result goes
//! through [`Config::validate`], so a file cannot express anything the flags
//! could not.
//!
//! Per-value checks run while deserializing, so toml's error span and the
//! serde key path come with the error. Validation errors carry their
//! [`Location`]; it becomes a key path, and the line is that key's in the
//! document as `toml_edit` parses it with spans.

use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::{
    default_slow_start, default_workers, parse_backend, parse_buffer_size, parse_cidr, parse_hex,
    parse_payload, parse_resolver, parse_sni_pattern, parse_status_range, range_message, resolve,
    Algorithm, BackendConfig, BackendName, CheckSpec, Config, ConfigError, Expect, FrontendConfig,
    HealthConfig, Location, OrNever, Pattern, Preset, Protocol, ProxyTlvs, ProxyVersion, RedisRole,
    RouteBy, RouteConfig, Step, UdpConfig, DEFAULT_BALANCE, DEFAULT_BUFFER_SIZE,
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_DRAIN_TIMEOUT, DEFAULT_FAIL_TIMEOUT, DEFAULT_HEALTH,
    DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_ADDRESSES, DEFAULT_MAX_QUEUE, DEFAULT_OBSERVE_L4,
    DEFAULT_PROTOCOL, DEFAULT_PROXY_HEADER_TIMEOUT, DEFAULT_PROXY_TLVS, DEFAULT_RESOLVE_AT_START,
    DEFAULT_RESOLVE_HOLD, DEFAULT_RESOLVE_INTERVAL, DEFAULT_ROUTE_BY, DEFAULT_SESSION_TIMEOUT,
    DEFAULT_SLOW_START, DEFAULT_SNI_TIMEOUT, DEFAULT_WEIGHT, MAX_MAX_ADDRESSES, MAX_RISE_FALL,
    MAX_WORKERS,
};
use super::{
    parse_rate, Rate, SourceLimits, DEFAULT_SOURCE_LIMITS, MAX_SOURCE_RATE, MAX_SOURCE_TABLE_SIZE,
};
use super::{SpliceMode, DEFAULT_MAX_PIPES, DEFAULT_SPLICE};

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<Config, FileError> {
    let text = std::fs::read_to_string(path).map_err(|e| FileError {
        path: path.to_path_buf(),
        line: None,
        key: None,
        message: one_line(&format!("cannot read: {e}")),
        source: Some(e),
    })?;
    parse(&text, path)
}

/// Parses and validates config text; `path` is only used in error messages.
pub fn parse(text: &str, path: &Path) -> Result<Config, FileError> {
    let raw: RawConfig = serde_path_to_error::deserialize(toml::Deserializer::new(text))
        .map_err(|e| FileError::from_toml(path, text, e))?;
    let config = raw.into_config();
    config
        .validate()
        .map_err(|e| FileError::from_validation(path, text, e))?;
    Ok(config)
}

/// [`parse`] without a name lookup: a `listen` or `admin` address must be an
/// IP literal (`ip:port`), and a host name there is refused as unresolvable.
/// For the fuzzer, which must never query DNS (a query can hang, and the
/// answer would depend on the network). Backend names are never resolved
/// while parsing, in either.
pub fn parse_offline(text: &str, path: &Path) -> Result<Config, FileError> {
    /// Puts the thread back to looking names up, even if parsing panicked.
    struct Online;
    impl Drop for Online {
        fn drop(&mut self) {
            OFFLINE.set(false);
        }
    }
    let _online = Online;
    OFFLINE.set(true);
    parse(text, path)
}

thread_local! {
    /// Whether [`Addr`] may look names up. A thread-local because serde's
    /// derive hands a deserializer no context; a seed instead would mean a
    /// hand-written visitor for every table.
    static OFFLINE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// What was wrong with a config file, and where. Its `Display` is one line:
/// `FILE:LINE: KEY: MESSAGE`, leaving out the line or key when not known, e.g.
/// `ringlb.toml:7: frontend[0].backends[1].weight: must be between 1 and 1000, got 0`.
#[derive(Debug, thiserror::Error)]
#[error("{}", Located(self))]
pub struct FileError {
    path: PathBuf,
    line: Option<usize>,
    key: Option<String>,
    message: String,
    source: Option<io::Error>,
}

impl FileError {
    /// The file the error is about, as given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The 1-based line of the offending value or key, when known.
    pub fn line(&self) -> Option<usize> {
        self.line
    }

    /// The dotted key path, e.g. `frontend[0].backends[1].weight`, when known.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// What was wrong, without the location.
    pub fn message(&self) -> &str {
        &self.message
    }

    fn new(
        path: &Path,
        text: &str,
        span: Option<Range<usize>>,
        key: String,
        message: &str,
    ) -> Self {
        FileError {
            path: path.to_path_buf(),
            line: span.map(|s| line_of(text, s.start)),
            key: (!key.is_empty()).then_some(key),
            message: match one_line(message) {
                m if m.is_empty() => "invalid TOML".into(),
                m => m,
            },
            source: None,
        }
    }

    /// A syntax, type or value error found while deserializing.
    fn from_toml(path: &Path, text: &str, e: serde_path_to_error::Error<toml::de::Error>) -> Self {
        let key = render_path(&serde_segments(e.path()));
        let inner = e.into_inner();
        let span = inner.span();
        // toml has no words for some syntax errors, such as a file cut off
        // right after `key =`.
        let message = match inner.message().trim() {
            "" if span
                .as_ref()
                .is_some_and(|s| s.start >= text.trim_end().len()) =>
            {
                "unexpected end of file: expected a value"
            }
            "" => "invalid TOML syntax",
            m => m,
        };
        FileError::new(path, text, span, key, message)
    }

    /// A [`Config::validate`] failure, at the key its [`Location`] names. A
    /// key the file leaves implicit (a weight given inside a backend string)
    /// is pointed at through the nearest key written, and named in the message.
    fn from_validation(path: &Path, text: &str, e: ConfigError) -> Self {
        let Some(at) = e.location() else {
            let key = match e {
                ConfigError::NoFrontend => "frontend",
                _ => "",
            };
            return FileError::new(path, text, None, key.into(), &e.to_string());
        };
        let wanted = location_path(&at);
        let (found, span) = find_in_document(text, &wanted);
        let unwritten: Vec<String> = wanted[found..].iter().map(Segment::to_string).collect();
        let message = match unwritten.join(".") {
            rest if rest.is_empty() => e.reason(),
            rest => format!("{rest} {}", e.reason()),
        };
        FileError::new(path, text, span, render_path(&wanted[..found]), &message)
    }
}

/// Renders a [`FileError`] as `FILE[:LINE]: [KEY: ]MESSAGE`.
struct Located<'a>(&'a FileError);

impl fmt::Display for Located<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = self.0;
        for c in e.path.display().to_string().chars() {
            match c {
                c if c.is_control() => write!(f, "{}", c.escape_default())?,
                c => write!(f, "{c}")?,
            }
        }
        if let Some(line) = e.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &e.key {
            write!(f, ": {key}")?;
        }
        write!(f, ": {}", e.message)
    }
}

/// One step of a key path: a table key or an array index.
#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Key(String),
    Index(usize),
    /// A step serde could not name.
    Unknown,
}

impl fmt::Display for Segment {
    /// A key as TOML writes it: bare when it can be, quoted otherwise, so
    /// the path stays unambiguous and on one line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Segment::Index(i) => write!(f, "[{i}]"),
            Segment::Unknown => f.write_str("?"),
            Segment::Key(key) => {
                let bare = !key.is_empty()
                    && key
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                if bare {
                    f.write_str(key)
                } else {
                    write!(f, "{key:?}")
                }
            }
        }
    }
}

/// The key path as users write it, e.g. `frontend[0].backends[1].weight`.
fn render_path(path: &[Segment]) -> String {
    let mut out = String::new();
    for segment in path {
        if !out.is_empty() && !matches!(segment, Segment::Index(_)) {
            out.push('.');
        }
        out.push_str(&segment.to_string());
    }
    out
}

/// serde's record of where deserializing failed.
fn serde_segments(path: &serde_path_to_error::Path) -> Vec<Segment> {
    use serde_path_to_error::Segment as S;
    path.iter()
        .map(|segment| match segment {
            S::Seq { index } => Segment::Index(*index),
            S::Map { key } | S::Enum { variant: key } => Segment::Key(key.clone()),
            S::Unknown => Segment::Unknown,
        })
        .collect()
}

/// Where a validation [`Location`] is in the file's terms.
fn location_path(at: &Location) -> Vec<Segment> {
    let mut path = vec![Segment::Key("frontend".into()), Segment::Index(at.frontend)];
    if let Some(route) = at.route {
        path.extend([Segment::Key("route".into()), Segment::Index(route)]);
    }
    if let Some(backend) = at.backend {
        path.extend([Segment::Key("backends".into()), Segment::Index(backend)]);
    }
    path.extend(
        at.key
            .file_path()
            .iter()
            .map(|k| Segment::Key(k.to_string())),
    );
    path
}

/// Follows `path` through the document as far as it is written: how many
/// segments were found, and the span of the last one found.
fn find_in_document(text: &str, path: &[Segment]) -> (usize, Option<Range<usize>>) {
    let Ok(doc) = toml_edit::ImDocument::parse(text) else {
        return (0, None);
    };
    let mut item = doc.as_item();
    let mut span = None;
    for (found, segment) in path.iter().enumerate() {
        let next = match segment {
            Segment::Key(key) => item.get(key.as_str()),
            Segment::Index(i) => item.get(*i),
            Segment::Unknown => None,
        };
        match next {
            Some(next) => {
                item = next;
                span = item.span().or(span);
            }
            None => return (found, span),
        }
    }
    (path.len(), span)
}

/// 1-based line holding byte `offset`.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    1 + text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
}

/// Joins a multi-line message into one line, and escapes the control
/// characters left (a value quoted from the file can hold any, e.g. an
/// escape sequence that would rewrite the terminal) as `\u{1b}`.
fn one_line(s: &str) -> String {
    s.split(['\n', '\r'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
        .chars()
        .fold(String::new(), |mut out, c| {
            match c {
                c if c.is_control() => out.extend(c.escape_default()),
                c => out.push(c),
            }
            out
        })
}

/// The file as written, before defaults and validation.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawConfig {
    workers: Option<Int<1, { MAX_WORKERS as u64 }>>,
    drain_timeout: Option<Dur>,
    #[serde(default)]
    access_log: bool,
    admin: Option<Addr>,
    admin_token_file: Option<PathBuf>,
    #[serde(default)]
    pin: bool,
    #[serde(default)]
    sqpoll: bool,
    #[serde(default)]
    resolvers: Vec<Resolver>,
    resolve_at_start: Option<bool>,
    max_pipes: Option<Int<0, { u32::MAX as u64 }>>,
    #[serde(default)]
    frontend: Frontends,
}

/// One `[[frontend]]` table as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawFrontend {
    name: Name,
    listen: Addr,
    protocol: Option<ProtocolValue>,
    balance: Option<Balance>,
    #[serde(default)]
    backends: Backends,
    connect_timeout: Option<Dur>,
    buffer_size: Option<BufferSize>,
    idle_timeout: Option<DurOrNever>,
    max_lifetime: Option<Dur>,
    max_conns: Option<Int<1, { usize::MAX as u64 }>>,
    queue_timeout: Option<Dur>,
    max_queue: Option<Int<1, { u32::MAX as u64 }>>,
    send_proxy: Option<SendProxy>,
    #[serde(default)]
    accept_proxy: bool,
    proxy_tlvs: Option<ProxyTlvsValue>,
    proxy_header_timeout: Option<Dur>,
    #[serde(default)]
    accept_proxy_from: Vec<Cidr>,
    #[serde(default)]
    allow: Vec<Cidr>,
    #[serde(default)]
    deny: Vec<Cidr>,
    fail_timeout: Option<Dur>,
    observe_l4: Option<bool>,
    health: Option<Table<RawHealth>>,
    route_by: Option<RouteByValue>,
    sni_timeout: Option<Dur>,
    slow_start: Option<Dur>,
    #[serde(default)]
    route: Vec<Table<RawRoute>>,
    resolve_interval: Option<Dur>,
    resolve_hold: Option<Dur>,
    max_addresses: Option<Int<1, { MAX_MAX_ADDRESSES as u64 }>>,
    max_conns_per_source: Option<Int<1, { u32::MAX as u64 }>>,
    rate_per_source: Option<RateValue>,
    rate_burst: Option<Int<1, { MAX_SOURCE_RATE as u64 }>>,
    source_prefix: Option<Int<0, 32>>,
    source_prefix_v6: Option<Int<0, 128>>,
    source_table_size: Option<Int<1, MAX_SOURCE_TABLE_SIZE>>,
    session_timeout: Option<Dur>,
    responses: Option<Int<1, { u32::MAX as u64 }>>,
    max_sessions: Option<Int<1, { usize::MAX as u64 }>>,
    health_send: Option<PayloadValue>,
    health_expect: Option<PayloadValue>,
    splice: Option<SpliceValue>,
    send_zc: Option<bool>,
}

/// One `[[frontend.route]]` table as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawRoute {
    #[serde(default)]
    sni: Vec<SniPattern>,
    #[serde(default)]
    alpn: Vec<String>,
    #[serde(default)]
    backends: Backends,
    balance: Option<Balance>,
    send_proxy: Option<SendProxy>,
    health: Option<Table<RawHealth>>,
}

/// A `[frontend.health]` table as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawHealth {
    enabled: Option<bool>,
    interval: Option<Dur>,
    timeout: Option<Dur>,
    rise: Option<Int<1, { MAX_RISE_FALL as u64 }>>,
    fall: Option<Int<1, { MAX_RISE_FALL as u64 }>>,
    preset: Option<Parsed<Preset>>,
    steps: Option<Vec<StepTable>>,
    role: Option<Parsed<RedisRole>>,
    http_path: Option<HttpPath>,
    http_host: Option<Text>,
    http_status: Option<StatusRange>,
    mysql_user: Option<MysqlUser>,
    agent_port: Option<Int<1, { u16::MAX as u64 }>>,
    agent_interval: Option<Dur>,
    agent_send: Option<Text>,
}

/// One `[[frontend.health.steps]]` table as written: at most one way to
/// send and one to expect.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawStep {
    send: Option<Text>,
    send_hex: Option<Hex>,
    expect: Option<Text>,
    expect_hex: Option<Hex>,
    expect_regex: Option<Regex>,
}

/// A backend written as a table; the ranges of weight and max-conns are
/// [`Config::validate`]'s to check.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct BackendTable {
    addr: BackendAddr,
    weight: Option<Int<0, { u32::MAX as u64 }>>,
    max_conns: Option<Int<0, { u32::MAX as u64 }>>,
    backup: Option<bool>,
    slow_start: Option<Dur>,
}

impl RawConfig {
    /// Fills in defaults; what is left to check is [`Config::validate`]'s job.
    fn into_config(self) -> Config {
        Config {
            workers: self.workers.map_or_else(default_workers, |n| n.0 as usize),
            drain_timeout: self.drain_timeout.map_or(DEFAULT_DRAIN_TIMEOUT, |d| d.0),
            access_log: self.access_log,
            admin: self.admin.map(|a| a.0),
            admin_token_file: self.admin_token_file,
            pin: self.pin,
            sqpoll: self.sqpoll,
            ready_file: None,
            control_socket: None,
            frontends: self
                .frontend
                .0
                .into_iter()
                .map(RawFrontend::into_config)
                .collect(),
            resolvers: self.resolvers.into_iter().map(|r| r.0).collect(),
            resolve_at_start: self.resolve_at_start.unwrap_or(DEFAULT_RESOLVE_AT_START),
            max_pipes: self.max_pipes.map_or(DEFAULT_MAX_PIPES, |n| n.0 as usize),
        }
    }
}

impl RawFrontend {
    fn into_config(self) -> FrontendConfig {
        let health = RawHealth::over(self.health, &DEFAULT_HEALTH);
        let send_proxy = self.send_proxy.map(|v| v.0);
        let slow_start = self.slow_start.map(|d| d.0).or(DEFAULT_SLOW_START);
        let backends = |mut b: Backends| {
            default_slow_start(&mut b.0, slow_start);
            b.0
        };
        FrontendConfig {
            name: self.name.0,
            listen: self.listen.0,
            protocol: self.protocol.map_or(DEFAULT_PROTOCOL, |p| p.0),
            backends: backends(self.backends),
            balance: self.balance.map_or(DEFAULT_BALANCE, |b| b.0),
            health: health.clone(),
            buffer_size: self.buffer_size.map_or(DEFAULT_BUFFER_SIZE, |b| b.0),
            connect_timeout: self
                .connect_timeout
                .map_or(DEFAULT_CONNECT_TIMEOUT, |d| d.0),
            idle_timeout: self
                .idle_timeout
                .map_or(Some(DEFAULT_IDLE_TIMEOUT), |d| d.0 .0),
            max_lifetime: self.max_lifetime.map(|d| d.0),
            max_conns: self.max_conns.map(|n| n.0 as usize),
            queue_timeout: self.queue_timeout.map(|d| d.0),
            max_queue: self.max_queue.map_or(DEFAULT_MAX_QUEUE, |n| n.0 as usize),
            send_proxy,
            accept_proxy: self.accept_proxy,
            proxy_tlvs: self.proxy_tlvs.map_or(DEFAULT_PROXY_TLVS, |t| t.0),
            proxy_header_timeout: self
                .proxy_header_timeout
                .map_or(DEFAULT_PROXY_HEADER_TIMEOUT, |d| d.0),
            allow: self.allow.into_iter().map(|c| c.0).collect(),
            deny: self.deny.into_iter().map(|c| c.0).collect(),
            accept_proxy_from: self.accept_proxy_from.into_iter().map(|c| c.0).collect(),
            fail_timeout: self.fail_timeout.map_or(DEFAULT_FAIL_TIMEOUT, |d| d.0),
            observe_l4: self.observe_l4.unwrap_or(DEFAULT_OBSERVE_L4),
            route_by: self.route_by.map_or(DEFAULT_ROUTE_BY, |r| r.0),
            sni_timeout: self.sni_timeout.map_or(DEFAULT_SNI_TIMEOUT, |d| d.0),
            routes: self
                .route
                .into_iter()
                .map(|Table(r)| RouteConfig {
                    sni: r.sni.into_iter().map(|s| s.0).collect(),
                    alpn: r.alpn,
                    backends: backends(r.backends),
                    balance: r.balance.map_or(DEFAULT_BALANCE, |b| b.0),
                    send_proxy: r.send_proxy.map(|v| v.0).or(send_proxy),
                    health: RawHealth::over(r.health, &health),
                })
                .collect(),
            resolve_interval: self
                .resolve_interval
                .map_or(DEFAULT_RESOLVE_INTERVAL, |d| d.0),
            resolve_hold: self.resolve_hold.map_or(DEFAULT_RESOLVE_HOLD, |d| d.0),
            max_addresses: self
                .max_addresses
                .map_or(DEFAULT_MAX_ADDRESSES, |n| n.0 as u32),
            sources: SourceLimits {
                max_conns: self.max_conns_per_source.map(|n| n.0 as u32),
                rate: self.rate_per_source.map(|r| r.0),
                burst: self.rate_burst.map(|n| n.0 as u32),
                prefix_v4: self
                    .source_prefix
                    .map_or(DEFAULT_SOURCE_LIMITS.prefix_v4, |n| n.0 as u8),
                prefix_v6: self
                    .source_prefix_v6
                    .map_or(DEFAULT_SOURCE_LIMITS.prefix_v6, |n| n.0 as u8),
                table_size: self
                    .source_table_size
                    .map_or(DEFAULT_SOURCE_LIMITS.table_size, |n| n.0 as usize),
            },
            udp: UdpConfig {
                session_timeout: self
                    .session_timeout
                    .map_or(DEFAULT_SESSION_TIMEOUT, |d| d.0),
                responses: self.responses.map(|n| n.0 as u32),
                max_sessions: self.max_sessions.map(|n| n.0 as usize),
                health_send: self.health_send.map(|p| p.0),
                health_expect: self.health_expect.map(|p| p.0),
            },
            splice: self.splice.map_or(DEFAULT_SPLICE, |s| s.0),
            send_zc: self.send_zc.unwrap_or(super::DEFAULT_SEND_ZC),
        }
    }
}

impl RawHealth {
    /// `base` with the keys `raw` sets replaced; the check's keys (preset,
    /// steps and their options) replace `base`'s check as a whole.
    fn over(raw: Option<Table<RawHealth>>, base: &HealthConfig) -> HealthConfig {
        match raw.map(|t| t.0) {
            None => base.clone(),
            Some(h) => {
                let check = CheckSpec {
                    preset: h.preset.map(|p| p.0),
                    steps: h
                        .steps
                        .unwrap_or_default()
                        .into_iter()
                        .map(|s| s.0)
                        .collect(),
                    role: h.role.map(|r| r.0),
                    http_path: h.http_path.map(|p| p.0),
                    http_host: h.http_host.map(|t| t.0),
                    http_status: h.http_status.map(|s| s.0),
                    mysql_user: h.mysql_user.map(|u| u.0),
                };
                HealthConfig {
                    checks: h.enabled.unwrap_or(base.checks),
                    interval: h.interval.map_or(base.interval, |d| d.0),
                    timeout: h.timeout.map_or(base.timeout, |d| d.0),
                    rise: h.rise.map_or(base.rise, |n| n.0 as u32),
                    fall: h.fall.map_or(base.fall, |n| n.0 as u32),
                    check: if check.is_set() {
                        check
                    } else {
                        base.check.clone()
                    },
                    agent_port: h.agent_port.map(|n| n.0 as u16).or(base.agent_port),
                    agent_interval: h.agent_interval.map(|d| d.0).or(base.agent_interval),
                    agent_send: h
                        .agent_send
                        .map(|t| t.0.into_bytes())
                        .or_else(|| base.agent_send.clone()),
                }
            }
        }
    }
}

/// A step table, checked to send or expect (or both), one way each.
struct StepTable(Step);

impl<'de> Deserialize<'de> for StepTable {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let Table(raw) = Table::<RawStep>::deserialize(d)?;
        let sends: Vec<Vec<u8>> = [
            raw.send.map(|t| t.0.into_bytes()),
            raw.send_hex.map(|h| h.0),
        ]
        .into_iter()
        .flatten()
        .collect();
        let expects: Vec<Expect> = [
            raw.expect.map(|t| Expect::Bytes(t.0.into_bytes())),
            raw.expect_hex.map(|h| Expect::Bytes(h.0)),
            raw.expect_regex.map(|r| Expect::Regex(r.0)),
        ]
        .into_iter()
        .flatten()
        .collect();
        let message = match (sends.len(), expects.len()) {
            (0, 0) => "a step needs send, send-hex, expect, expect-hex or expect-regex",
            (2.., _) => "give send or send-hex, not both",
            (_, 2..) => "give one of expect, expect-hex and expect-regex",
            _ => "",
        };
        if !message.is_empty() {
            return Err(de::Error::custom(message));
        }
        Ok(StepTable(Step {
            send: sends.into_iter().next(),
            expect: expects.into_iter().next(),
        }))
    }
}

/// The `[[frontend]]` tables.
#[derive(Default)]
struct Frontends(Vec<RawFrontend>);

impl<'de> Deserialize<'de> for Frontends {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_seq(FrontendsVisitor)
    }
}

struct FrontendsVisitor;

impl<'de> Visitor<'de> for FrontendsVisitor {
    type Value = Frontends;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[[frontend]] tables (with double brackets)")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut frontends = Vec::new();
        while let Some(Table(fe)) = seq.next_element()? {
            frontends.push(fe);
        }
        Ok(Frontends(frontends))
    }
}

/// A TOML table deserialized as `T`; unlike serde's derive, it does not also
/// accept an array of the fields' values, and says "expected a table".
struct Table<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Table<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(TableVisitor(PhantomData))
    }
}

struct TableVisitor<T>(PhantomData<fn() -> T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for TableVisitor<T> {
    type Value = Table<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a table")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        T::deserialize(de::value::MapAccessDeserializer::new(map)).map(Table)
    }
}

/// A visitor for values written as strings, parsed by `parse`; its error is
/// raised inside the deserializer, so it gets the value's span and key path.
struct StrVisitor<T, F> {
    expecting: &'static str,
    parse: F,
    value: PhantomData<fn() -> T>,
}

fn from_str<'de, D, T, E, F>(d: D, expecting: &'static str, parse: F) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    E: fmt::Display,
    F: FnOnce(&str) -> Result<T, E>,
{
    d.deserialize_str(StrVisitor {
        expecting,
        parse,
        value: PhantomData,
    })
}

impl<'de, T, E, F> Visitor<'de> for StrVisitor<T, F>
where
    E: fmt::Display,
    F: FnOnce(&str) -> Result<T, E>,
{
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<Err: de::Error>(self, v: &str) -> Result<T, Err> {
        (self.parse)(v).map_err(Err::custom)
    }
}

/// A non-empty frontend name.
struct Name(String);

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str(d, "a frontend name", |s| match s {
            "" => Err("must not be empty"),
            s => Ok(Name(s.to_string())),
        })
    }
}

/// A `host:port` resolved with [`resolve`] (an IP literal only, offline).
struct Addr(SocketAddr);

impl<'de> Deserialize<'de> for Addr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str(d, "an address such as \"127.0.0.1:8080\"", |s| {
            if !OFFLINE.get() {
                return resolve(s).map(Addr);
            }
            s.parse().map(Addr).map_err(|_| ConfigError::Unresolvable {
                value: s.to_string(),
                source: io::Error::new(io::ErrorKind::Unsupported, "no name lookup offline"),
            })
        })
    }
}

/// A `resolvers` entry: an IP address, with a port or not.
struct Resolver(SocketAddr);

impl<'de> Deserialize<'de> for Resolver {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str(
            d,
            "an address such as \"10.0.0.2\" or \"127.0.0.1:5353\"",
            |s| parse_resolver(s).map(Resolver),
        )
    }
}

/// A backend table's `addr`: an address only, options go in their own keys.
struct BackendAddr(BackendConfig);

impl<'de> Deserialize<'de> for BackendAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str(d, "an address such as \"127.0.0.1:9000\"", |s| {
            if s.contains(',') {
                return Err(format!(
                    "invalid address '{s}': in a table, give weight and max-conns as keys"
                ));
            }
            parse_backend(s).map(BackendAddr).map_err(|e| e.to_string())
        })
    }
}

/// A duration as humantime reads it, e.g. `"3s"` or `"1h 30m"`.
struct Dur(Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str(
            d,
            "a duration such as \"3s\", \"500ms\" or \"1h 30m\"",
            |s| {
                humantime::parse_duration(s)
                    .map(Dur)
                    .map_err(|e| format!("invalid duration '{s}': {e}"))
            },
        )
    }
}

/// A duration, or `"never"` to turn the limit off.
struct DurOrNever(OrNever);

impl<'de> Deserialize<'de> for DurOrNever {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str(d, "a duration such as \"10m\", or \"never\"", |s| {
            s.parse().map(DurOrNever)
        })
    }
}

/// A source rule: a CIDR such as `"10.0.0.0/8"` or a bare address.
struct Cidr(ipnet::IpNet);

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str(d, "a CIDR such as \"10.0.0.0/8\" or an address", |s| {
            parse_cidr(s).map(Cidr)
        })
    }
}

/// A rate: `"10/s"`, `"600/m"`, `"3600/h"`.
struct RateValue(Rate);

impl<'de> Deserialize<'de> for RateValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str(d, "a rate such as \"10/s\"", |s| {
            parse_rate(s).map(RateValue)
        })
    }
}

/// A transport's name: `"tcp"` or `"udp"`.
struct ProtocolValue(Protocol);

impl<'de> Deserialize<'de> for ProtocolValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str(d, "\"tcp\" or \"udp\"", |s| s.parse().map(ProtocolValue))
    }
}

/// A health check payload: text, or `"hex:"` and hex digits.
struct PayloadValue(Vec<u8>);

impl<'de> Deserialize<'de> for PayloadValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str(d, "a payload such as \"ping\" or \"hex:00 01\"", |s| {
            parse_payload(s).map(PayloadValue)
        })
    }
}

/// What happens to a client's PROXY v2 TLVs: `"drop"` or `"forward"`.
struct ProxyTlvsValue(ProxyTlvs);

impl<'de> Deserialize<'de> for ProxyTlvsValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str(d, "\"drop\" or \"forward\"", |s| {
            s.parse().map(ProxyTlvsValue)
        })
    }
}

/// When a relay direction splices: `"auto"`, `"always"` or `"never"`.
struct SpliceValue(SpliceMode);

impl<'de> Deserialize<'de> for SpliceValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str(d, "\"auto\", \"always\" or \"never\"", |s| {
            s.parse().map(SpliceValue)
        })
    }
}

/// A balancing algorithm's name.
struct Balance(Algorithm);

impl<'de> Deserialize<'de> for Balance {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str(d, "an algorithm name such as \"round-robin\"", |s| {
            s.parse().map(Balance)
        })
    }
}

/// `"none"` or `"sni"`.
struct RouteByValue(RouteBy);

impl<'de> Deserialize<'de> for RouteByValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str(d, "\"none\" or \"sni\"", |s| s.parse().map(RouteByValue))
    }
}

/// A route's server name: exact or `*.example.com`.
struct SniPattern(String);

impl<'de> Deserialize<'de> for SniPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str(d, "a server name such as \"www.example.com\"", |s| {
            parse_sni_pattern(s).map(SniPattern)
        })
    }
}

/// A PROXY protocol version, `"v1"` or `"v2"`.
struct SendProxy(ProxyVersion);

impl<'de> Deserialize<'de> for SendProxy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str(d, "\"v1\" or \"v2\"", |s| s.parse().map(SendProxy))
    }
}

/// A value of a type whose `FromStr` says what is wrong in one line.
struct Parsed<T>(T);

impl<'de, T: std::str::FromStr<Err = String>> Deserialize<'de> for Parsed<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str(d, "a string", |s| s.parse().map(Parsed))
    }
}

/// A non-empty string, as bytes to send or expect.
struct Text(String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str(d, "a string", |s| match s {
            "" => Err("must not be empty"),
            s => Ok(Text(s.to_string())),
        })
    }
}

/// An HTTP path: starts with `/`, no space or control character.
struct HttpPath(String);

impl<'de> Deserialize<'de> for HttpPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str(d, "a path such as \"/healthz\"", |s| {
            if !s.starts_with('/') || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(format!(
                    "invalid path '{s}': must start with / and hold no space"
                ));
            }
            Ok(HttpPath(s.to_string()))
        })
    }
}

/// A MySQL user name: 1 to 80 bytes, no NUL (it goes in a packet as a C string).
struct MysqlUser(String);

impl<'de> Deserialize<'de> for MysqlUser {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str(d, "a user name", |s| {
            if s.is_empty() || s.len() > 80 || s.contains('\0') {
                return Err(format!(
                    "invalid user '{}': 1 to 80 bytes, no NUL",
                    s.escape_default()
                ));
            }
            Ok(MysqlUser(s.to_string()))
        })
    }
}

/// Bytes written as hex, e.g. `"2a 31 0d 0a"`.
struct Hex(Vec<u8>);

impl<'de> Deserialize<'de> for Hex {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str(d, "hex bytes such as \"2b504f4e47\"", |s| {
            parse_hex(s).map(Hex)
        })
    }
}

/// A regular expression, compiled (and so checked) as it is read.
struct Regex(Pattern);

impl<'de> Deserialize<'de> for Regex {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str(d, "a regular expression", |s| Pattern::new(s).map(Regex))
    }
}

/// HTTP status codes: `"200"` or `"200-399"`.
struct StatusRange((u16, u16));

impl<'de> Deserialize<'de> for StatusRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str(d, "a status range such as \"200-399\"", |s| {
            parse_status_range(s).map(StatusRange)
        })
    }
}

/// A whole number in `MIN..=MAX`.
#[derive(Clone, Copy, Debug)]
struct Int<const MIN: u64, const MAX: u64>(u64);

impl<'de, const MIN: u64, const MAX: u64> Deserialize<'de> for Int<MIN, MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_u64(IntVisitor::<MIN, MAX>)
    }
}

struct IntVisitor<const MIN: u64, const MAX: u64>;

impl<const MIN: u64, const MAX: u64> IntVisitor<MIN, MAX> {
    fn check<E: de::Error>(n: i128) -> Result<Int<MIN, MAX>, E> {
        if (i128::from(MIN)..=i128::from(MAX)).contains(&n) {
            return Ok(Int(n as u64));
        }
        Err(E::custom(range_message(MIN..=MAX, n)))
    }
}

impl<'de, const MIN: u64, const MAX: u64> Visitor<'de> for IntVisitor<MIN, MAX> {
    type Value = Int<MIN, MAX>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a whole number")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Self::check(v.into())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Self::check(v.into())
    }
}

/// A relay buffer size: bytes as a number, or a string such as `"256k"`,
/// checked by the same rules as `--buffer-size`.
struct BufferSize(usize);

impl<'de> Deserialize<'de> for BufferSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(BufferSizeVisitor)
    }
}

struct BufferSizeVisitor;

impl BufferSizeVisitor {
    fn parse<E: de::Error>(s: &str) -> Result<BufferSize, E> {
        parse_buffer_size(s)
            .map(BufferSize)
            .map_err(|e| E::custom(format_args!("invalid buffer size '{s}': {e}")))
    }
}

impl<'de> Visitor<'de> for BufferSizeVisitor {
    type Value = BufferSize;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a byte count such as 16384, \"16k\" or \"1m\"")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Self::parse(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Self::parse(&v.to_string())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Self::parse(&v.to_string())
    }
}

/// The non-empty backend list.
#[derive(Default)]
struct Backends(Vec<BackendConfig>);

impl<'de> Deserialize<'de> for Backends {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_seq(BackendsVisitor)
    }
}

struct BackendsVisitor;

impl<'de> Visitor<'de> for BackendsVisitor {
    type Value = Backends;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of backends")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut backends = Vec::new();
        while let Some(Backend(b)) = seq.next_element()? {
            backends.push(b);
        }
        if backends.is_empty() {
            return Err(de::Error::custom(
                "no backend: list at least one, e.g. [\"127.0.0.1:9000\"]",
            ));
        }
        Ok(Backends(backends))
    }
}

/// One backend: `"host:port[,weight=N][,max-conns=N]"` as on the command
/// line, or a table `{ addr = "host:port", weight = N, max-conns = N }`.
struct Backend(BackendConfig);

impl<'de> Deserialize<'de> for Backend {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(BackendVisitor)
    }
}

struct BackendVisitor;

impl<'de> Visitor<'de> for BackendVisitor {
    type Value = Backend;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "a backend address such as \"127.0.0.1:9000\" or a table such as \
             { addr = \"127.0.0.1:9000\", weight = 2 }",
        )
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        parse_backend(v).map(Backend).map_err(E::custom)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let t = BackendTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
        let mut name = t.addr.0.name;
        if let (Some(BackendName::Srv { weight_given, .. }), Some(_)) = (&mut name, &t.weight) {
            *weight_given = true;
        }
        Ok(Backend(BackendConfig {
            addr: t.addr.0.addr,
            name,
            weight: t.weight.map_or(DEFAULT_WEIGHT, |n| n.0 as u32),
            max_conns: t.max_conns.map(|n| n.0 as u32),
            backup: t.backup.unwrap_or(false),
            slow_start: t.slow_start.map(|d| d.0),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &str = "ringlb.toml";

    fn parse_str(text: &str) -> Result<Config, FileError> {
        parse(text, Path::new(PATH))
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn minimal_shape() {
        let text = r#"
[[frontend]]
name = "web"
listen = "127.0.0.1:8080"
balance = "round-robin"
backends = ["127.0.0.1:9000", { addr = "127.0.0.1:9001", weight = 2 }]
"#;
        let expected = Config {
            workers: default_workers(),
            drain_timeout: Duration::from_secs(30),
            access_log: false,
            admin: None,
            admin_token_file: None,
            pin: false,
            sqpoll: false,
            ready_file: None,
            control_socket: None,
            frontends: vec![FrontendConfig {
                name: "web".into(),
                listen: addr("127.0.0.1:8080"),
                protocol: Protocol::Tcp,
                backends: vec![
                    BackendConfig {
                        addr: addr("127.0.0.1:9000"),
                        weight: 1,
                        max_conns: None,
                        backup: false,
                        slow_start: None,
                        name: None,
                    },
                    BackendConfig {
                        addr: addr("127.0.0.1:9001"),
                        weight: 2,
                        max_conns: None,
                        backup: false,
                        slow_start: None,
                        name: None,
                    },
                ],
                balance: Algorithm::RoundRobin,
                health: HealthConfig {
                    checks: true,
                    interval: Duration::from_secs(2),
                    timeout: Duration::from_secs(1),
                    rise: 2,
                    fall: 3,
                    ..DEFAULT_HEALTH
                },
                buffer_size: DEFAULT_BUFFER_SIZE,
                connect_timeout: Duration::from_secs(3),
                idle_timeout: Some(Duration::from_secs(600)),
                max_lifetime: None,
                max_conns: None,
                queue_timeout: None,
                max_queue: DEFAULT_MAX_QUEUE,
                send_proxy: None,
                accept_proxy: false,
                proxy_tlvs: ProxyTlvs::Drop,
                proxy_header_timeout: Duration::from_secs(5),
                allow: vec![],
                deny: vec![],
                accept_proxy_from: vec![],
                fail_timeout: Duration::from_secs(10),
                observe_l4: true,
                route_by: RouteBy::None,
                sni_timeout: Duration::from_secs(5),
                routes: vec![],
                resolve_interval: Duration::from_secs(5),
                resolve_hold: Duration::from_secs(30),
                max_addresses: 1024,
                sources: DEFAULT_SOURCE_LIMITS,
                udp: crate::config::DEFAULT_UDP,
                splice: SpliceMode::Auto,
                send_zc: false,
            }],
            resolvers: vec![],
            resolve_at_start: true,
            max_pipes: 64,
        };
        assert_eq!(parse_str(text).unwrap(), expected);
    }

    /// A file that sets nothing optional means what the bare command line means.
    #[test]
    fn defaults_match_the_command_line() {
        use clap::Parser;
        let cli = crate::config::cli::Cli::try_parse_from([
            "ringlb",
            "--listen",
            "127.0.0.1:8080",
            "--backend",
            "127.0.0.1:9000",
        ])
        .unwrap();
        let text = r#"
[[frontend]]
name = "default"
listen = "127.0.0.1:8080"
backends = ["127.0.0.1:9000"]
"#;
        assert_eq!(parse_str(text).unwrap(), Config::from_cli(&cli).unwrap());
    }

    #[test]
    fn every_key() {
        let text = r#"
workers = 3
drain-timeout = "10s"
access-log = true
admin = "127.0.0.1:9900"
admin-token-file = "/etc/ringlb/admin-token"
pin = true
sqpoll = true
resolvers = ["127.0.0.1:5353", "::1"]
resolve-at-start = false

[[frontend]]
name = "db"
listen = "127.0.0.1:5432"
balance = "least-conn"
backends = ["127.0.0.1:6000,weight=3,max-conns=7", { addr = "127.0.0.1:6001", max-conns = 5, backup = true, slow-start = "1m" }]
slow-start = "20s"
connect-timeout = "250ms"
buffer-size = 65536
idle-timeout = "5m"
max-lifetime = "1h"
max-conns = 100
send-proxy = "v1"
accept-proxy = true
proxy-header-timeout = "2s"
accept-proxy-from = ["192.0.2.0/24"]
allow = ["10.0.0.0/8", "::1"]
deny = ["10.9.0.0/16"]
fail-timeout = "30s"
observe-l4 = false
resolve-interval = "2s"
resolve-hold = "1m"
max-addresses = 64
send-zc = true

[frontend.health]
interval = "10s"
timeout = "3s"
rise = 1
fall = 5

[[frontend]]
name = "off"
listen = "127.0.0.1:5433"
backends = [{ addr = "127.0.0.1:6002" }]
buffer-size = "1m"
idle-timeout = "never"
health = { enabled = false, interval = "0s" }
"#;
        let c = parse_str(text).unwrap();
        assert_eq!(c.workers, 3);
        assert_eq!(c.drain_timeout, Duration::from_secs(10));
        assert!(c.access_log && c.pin && c.sqpoll);
        assert_eq!(c.admin, Some(addr("127.0.0.1:9900")));
        let token = c.admin_token_file.as_deref();
        assert_eq!(token, Some(Path::new("/etc/ringlb/admin-token")));
        let [db, off] = &c.frontends[..] else {
            panic!("{c:?}")
        };
        assert_eq!(db.balance, Algorithm::LeastConn);
        assert_eq!(
            db.backends,
            [
                BackendConfig {
                    addr: addr("127.0.0.1:6000"),
                    weight: 3,
                    max_conns: Some(7),
                    backup: false,
                    slow_start: Some(Duration::from_secs(20)),
                    name: None,
                },
                BackendConfig {
                    addr: addr("127.0.0.1:6001"),
                    weight: 1,
                    max_conns: Some(5),
                    backup: true,
                    slow_start: Some(Duration::from_secs(60)),
                    name: None,
                }
            ]
        );
        assert_eq!(db.connect_timeout, Duration::from_millis(250));
        assert_eq!(db.buffer_size, 65536);
        assert_eq!(db.idle_timeout, Some(Duration::from_secs(300)));
        assert_eq!(db.max_lifetime, Some(Duration::from_secs(3600)));
        assert_eq!(db.max_conns, Some(100));
        assert_eq!(db.send_proxy, Some(ProxyVersion::V1));
        assert!(db.accept_proxy);
        assert_eq!(db.proxy_header_timeout, Duration::from_secs(2));
        assert_eq!(
            db.health,
            HealthConfig {
                checks: true,
                interval: Duration::from_secs(10),
                timeout: Duration::from_secs(3),
                rise: 1,
                fall: 5,
                ..DEFAULT_HEALTH
            }
        );
        let nets = |list: &[&str]| -> Vec<ipnet::IpNet> {
            list.iter().map(|n| n.parse().unwrap()).collect()
        };
        assert_eq!(db.accept_proxy_from, nets(&["192.0.2.0/24"]));
        assert_eq!(db.allow, nets(&["10.0.0.0/8", "::1/128"]));
        assert_eq!(db.deny, nets(&["10.9.0.0/16"]));
        assert_eq!(db.fail_timeout, Duration::from_secs(30));
        assert!(!db.observe_l4 && off.observe_l4);
        assert!(db.send_zc && !off.send_zc);
        assert_eq!(
            c.resolvers,
            [addr("127.0.0.1:5353"), addr("[::1]:53")],
            "resolvers"
        );
        assert!(!c.resolve_at_start);
        assert_eq!(db.resolve_interval, Duration::from_secs(2));
        assert_eq!(db.resolve_hold, Duration::from_secs(60));
        assert_eq!(db.max_addresses, 64);
        assert_eq!(off.max_addresses, DEFAULT_MAX_ADDRESSES);
        assert_eq!(off.resolve_interval, DEFAULT_RESOLVE_INTERVAL);
        assert_eq!(off.idle_timeout, None);
        assert_eq!(off.buffer_size, 1 << 20);
        assert!(!off.health.checks);
    }

    #[test]
    fn example_file_loads() {
        let c = parse(
            include_str!("../../examples/ringlb.toml"),
            Path::new("examples/ringlb.toml"),
        )
        .unwrap();
        assert_eq!(c.frontends.len(), 4);
        assert_eq!(c.frontends[2].routes.len(), 2);
        assert_eq!(c.frontends[3].protocol, Protocol::Udp);
    }

    #[test]
    fn offline_takes_ip_literals_and_refuses_names() {
        let example = include_str!("../../examples/ringlb.toml");
        let path = Path::new("examples/ringlb.toml");
        assert_eq!(
            parse_offline(example, path).unwrap(),
            parse(example, path).unwrap()
        );
        let named = "[[frontend]]\nname = \"web\"\nlisten = \"localhost:8080\"\nbackends = [\"127.0.0.1:9000\"]\n";
        assert_eq!(
            parse_offline(named, Path::new(PATH)).unwrap_err().to_string(),
            "ringlb.toml:3: frontend[0].listen: cannot resolve 'localhost:8080': no name lookup offline"
        );
        // The thread looks names up again afterwards.
        parse(named, Path::new(PATH)).unwrap();
    }

    #[test]
    fn missing_file() {
        let e = load(Path::new("/nonexistent/ringlb.toml")).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("/nonexistent/ringlb.toml: cannot read: "),
            "{msg}"
        );
        assert!(std::error::Error::source(&e).is_some());
    }

    #[test]
    fn bad_inputs() {
        const FE: &str = "[[frontend]]\nname = \"web\"\nlisten = \"127.0.0.1:8080\"\n";
        let cases: &[(&str, String, usize, &str, &str)] = &[
            (
                "unknown top-level key",
                format!("workers = 2\ncolour = \"red\"\n{FE}backends = [\"127.0.0.1:9000\"]\n"),
                2,
                "colour",
                "unknown field `colour`",
            ),
            (
                "unknown frontend key",
                format!("{FE}backends = [\"127.0.0.1:9000\"]\ncolour = \"red\"\n"),
                5,
                "frontend[0].colour",
                "unknown field `colour`",
            ),
            (
                "unknown backend key",
                format!(
                    "{FE}backends = [\n  \"127.0.0.1:9000\",\n  {{ addr = \"127.0.0.1:9001\", colour = 1 }},\n]\n"
                ),
                6,
                "frontend[0].backends[1].colour",
                "unknown field `colour`",
            ),
            (
                "unknown health key",
                format!("{FE}backends = [\"127.0.0.1:9000\"]\n[frontend.health]\nrise = 2\nsnooze = 1\n"),
                7,
                "frontend[0].health.snooze",
                "unknown field `snooze`",
            ),
            (
                "wrong type",
                format!(
                    "{FE}backends = [\n  \"127.0.0.1:9000\",\n  {{ addr = \"127.0.0.1:9001\", weight = \"two\" }},\n]\n"
                ),
                6,
                "frontend[0].backends[1].weight",
                "invalid type: string \"two\"",
            ),
            (
                "weight 0",
                format!("{FE}backends = [\n  {{ addr = \"127.0.0.1:9001\", weight = 0 }},\n]\n"),
                5,
                "frontend[0].backends[0].weight",
                "must be between 1 and 1000, got 0",
            ),
            (
                "weight 0 in the string form",
                format!("{FE}backends = [\"127.0.0.1:9000,weight=0\"]\n"),
                4,
                "frontend[0].backends[0]",
                "weight must be between 1 and 1000",
            ),
            (
                "bad backend address",
                format!("{FE}backends = [\"127.0.0.1\"]\n"),
                4,
                "frontend[0].backends[0]",
                "invalid address '127.0.0.1'",
            ),
            (
                "bad listen address",
                "[[frontend]]\nname = \"web\"\nlisten = \"8080\"\nbackends = [\"127.0.0.1:9000\"]\n"
                    .to_string(),
                3,
                "frontend[0].listen",
                "invalid address '8080'",
            ),
            (
                "bad table address",
                format!("{FE}backends = [{{ addr = \"127.0.0.1:0\" }}]\n"),
                4,
                "frontend[0].backends[0].addr",
                "port 0",
            ),
            (
                "bad duration",
                format!("{FE}backends = [\"127.0.0.1:9000\"]\nconnect-timeout = \"3 parsecs\"\n"),
                5,
                "frontend[0].connect-timeout",
                "invalid duration '3 parsecs'",
            ),
            (
                "duration as a number",
                format!("drain-timeout = 30\n{FE}backends = [\"127.0.0.1:9000\"]\n"),
                1,
                "drain-timeout",
                "expected a duration",
            ),
            (
                "unknown balance",
                format!("{FE}balance = \"fastest\"\nbackends = [\"127.0.0.1:9000\"]\n"),
                4,
                "frontend[0].balance",
                "fastest",
            ),
            (
                "bad send-proxy",
                format!("{FE}send-proxy = \"v3\"\nbackends = [\"127.0.0.1:9000\"]\n"),
                4,
                "frontend[0].send-proxy",
                "v3",
            ),
            (
                "max-addresses 0",
                format!("{FE}max-addresses = 0\nbackends = [\"127.0.0.1:9000\"]\n"),
                4,
                "frontend[0].max-addresses",
                "must be between 1 and 65536, got 0",
            ),
            (
                "bad buffer size",
                format!("{FE}buffer-size = \"12\"\nbackends = [\"127.0.0.1:9000\"]\n"),
                4,
                "frontend[0].buffer-size",
                "must be between 512 and",
            ),
            (
                "workers 0",
                format!("workers = 0\n{FE}backends = [\"127.0.0.1:9000\"]\n"),
                1,
                "workers",
                "must be between 1 and 4096, got 0",
            ),
            (
                "duplicate names",
                format!(
                    "{FE}backends = [\"127.0.0.1:9000\"]\n\n[[frontend]]\nname = \"web\"\nlisten = \"127.0.0.1:8081\"\nbackends = [\"127.0.0.1:9000\"]\n"
                ),
                7,
                "frontend[1].name",
                "two frontends are named 'web'",
            ),
            (
                "duplicate listen",
                format!(
                    "{FE}backends = [\"127.0.0.1:9000\"]\n[[frontend]]\nname = \"api\"\nlisten = \"127.0.0.1:8080\"\nbackends = [\"127.0.0.1:9000\"]\n"
                ),
                7,
                "frontend[1].listen",
                "both listen on 127.0.0.1:8080",
            ),
            (
                "bad CIDR",
                format!("{FE}backends = [\"127.0.0.1:9000\"]\nallow = [\n  \"10.0.0.0/8\",\n  \"127.0.0.300/8\",\n]\n"),
                7,
                "frontend[0].allow[1]",
                "invalid CIDR '127.0.0.300/8'",
            ),
            (
                "accept-proxy-from without accept-proxy",
                format!("{FE}backends = [\"127.0.0.1:9000\"]\naccept-proxy-from = [\"10.0.0.1\"]\n"),
                5,
                "frontend[0].accept-proxy-from",
                "needs accept-proxy = true",
            ),
            (
                "bad rate-per-source",
                format!("{FE}backends = [\"127.0.0.1:9000\"]\nrate-per-source = \"10/d\"\n"),
                5,
                "frontend[0].rate-per-source",
                "invalid rate '10/d'",
            ),
            (
                "rate-burst without a rate",
                format!("{FE}backends = [\"127.0.0.1:9000\"]\nmax-conns-per-source = 3\nrate-burst = 5\n"),
                6,
                "frontend[0].rate-burst",
                "needs rate-per-source",
            ),
            (
                "source-prefix-v6 129",
                format!("{FE}backends = [\"127.0.0.1:9000\"]\nsource-prefix-v6 = 129\n"),
                5,
                "frontend[0].source-prefix-v6",
                "must be between 0 and 128, got 129",
            ),
            (
                "max-conns-per-source 0",
                format!("{FE}backends = [\"127.0.0.1:9000\"]\nmax-conns-per-source = 0\n"),
                5,
                "frontend[0].max-conns-per-source",
                "must be at least 1, got 0",
            ),
            (
                "source-table-size 0",
                format!("{FE}backends = [\"127.0.0.1:9000\"]\nsource-table-size = 0\n"),
                5,
                "frontend[0].source-table-size",
                "must be between 1 and 16777216, got 0",
            ),
            (
                "bad idle-timeout",
                format!("{FE}backends = [\"127.0.0.1:9000\"]\nidle-timeout = \"forever\"\n"),
                5,
                "frontend[0].idle-timeout",
                "invalid duration 'forever'",
            ),
            (
                "zero fail-timeout",
                format!("{FE}backends = [\"127.0.0.1:9000\"]\nfail-timeout = \"0s\"\n"),
                5,
                "frontend[0].fail-timeout",
                "must be more than zero",
            ),
            (
                "overlapping listen",
                format!(
                    "{FE}backends = [\"127.0.0.1:9000\"]\n[[frontend]]\nname = \"any\"\nlisten = \"[::]:8080\"\nbackends = [\"127.0.0.1:9000\"]\n"
                ),
                7,
                "frontend[1].listen",
                "frontends 'web' on 127.0.0.1:8080 and 'any' on [::]:8080 overlap",
            ),
            (
                "missing listen",
                "workers = 1\n\n[[frontend]]\nname = \"web\"\nbackends = [\"127.0.0.1:9000\"]\n"
                    .to_string(),
                3,
                "frontend[0]",
                "missing field `listen`",
            ),
            (
                "empty backends",
                format!("{FE}backends = []\n"),
                4,
                "frontend[0].backends",
                "no backend",
            ),
            (
                "zero connect-timeout",
                format!(
                    "{FE}backends = [\"127.0.0.1:9000\"]\n[[frontend]]\nname = \"api\"\nlisten = \"127.0.0.1:8081\"\nbackends = [\"127.0.0.1:9000\"]\nconnect-timeout = \"0s\"\n"
                ),
                9,
                "frontend[1].connect-timeout",
                "must be more than zero",
            ),
            (
                "zero health interval",
                format!("{FE}backends = [\"127.0.0.1:9000\"]\n[frontend.health]\ninterval = \"0s\"\n"),
                6,
                "frontend[0].health.interval",
                "must be more than zero",
            ),
            (
                "syntax error",
                format!("{FE}backends = [\"127.0.0.1:9000\"\nworkers = 2\n"),
                5,
                "",
                "",
            ),
        ];
        for (what, text, line, key, message) in cases {
            let err = parse_str(text).expect_err(what).to_string();
            let prefix = match *key {
                "" => format!("{PATH}:{line}: "),
                key => format!("{PATH}:{line}: {key}: "),
            };
            assert!(err.starts_with(&prefix), "{what}: {err:?} lacks {prefix:?}");
            assert!(err.contains(message), "{what}: {err:?} lacks {message:?}");
            assert!(!err.contains('\n'), "{what}: {err:?} is not one line");
        }
    }

    /// A health table's check and agent keys: read into the check, a route
    /// that sets a check key replaces its frontend's check as a whole, and
    /// every bad value or pairing is a located one-line error.
    #[test]
    fn health_checks_and_agents() {
        let text = r#"
[[frontend]]
name = "cache"
listen = "127.0.0.1:6380"
backends = ["127.0.0.1:6379"]
route-by = "sni"
[frontend.health]
preset = "redis"
role = "master"
agent-port = 9777
agent-send = "cache\n"

[[frontend.route]]
sni = ["a.example"]
backends = ["127.0.0.1:9000"]
[frontend.route.health]
agent-interval = "5s"
[[frontend.route.health.steps]]
send = "HELLO\r\n"
expect-regex = "^\\+OK"
[[frontend.route.health.steps]]
send-hex = "00ff"
expect-hex = "2b 4f 4b"

[[frontend.route]]
sni = ["b.example"]
backends = ["127.0.0.1:9001"]
[frontend.route.health]
preset = "http"
http-path = "/healthz"
http-status = "200-299"
"#;
        let c = parse_str(text).unwrap();
        let fe = &c.frontends[0];
        assert_eq!(fe.health.check.preset, Some(Preset::Redis));
        assert_eq!(fe.health.check.role, Some(RedisRole::Master));
        let agent = fe.health.agent().unwrap();
        assert_eq!((agent.port, agent.interval), (9777, fe.health.interval));
        assert_eq!(agent.send.as_deref(), Some(&b"cache\n"[..]));
        let [a, b] = &fe.routes[..] else { panic!() };
        assert_eq!(a.health.check.preset, None, "steps replace the preset");
        assert_eq!(a.health.check.role, None);
        assert_eq!(a.health.check.steps.len(), 2);
        assert_eq!(
            a.health.check.steps[0].send.as_deref(),
            Some(&b"HELLO\r\n"[..])
        );
        assert_eq!(
            a.health.check.steps[1].send.as_deref(),
            Some(&[0, 0xff][..])
        );
        assert_eq!(
            a.health.check.steps[1].expect,
            Some(Expect::Bytes(b"+OK".to_vec()))
        );
        assert_eq!(a.health.agent().unwrap().interval, Duration::from_secs(5));
        assert_eq!(b.health.check.http_status, Some((200, 299)));
        assert_eq!(b.health.agent_port, Some(9777), "agent keys one by one");

        const FE: &str = "[[frontend]]\nname = \"web\"\nlisten = \"127.0.0.1:8080\"\nbackends = [\"127.0.0.1:9000\"]\n[frontend.health]\n";
        let cases: &[(&str, usize, &str, &str)] = &[
            (
                "preset = \"memcached\"\n",
                6,
                "frontend[0].health.preset",
                "invalid preset 'memcached'",
            ),
            (
                "preset = \"redis\"\nrole = \"boss\"\n",
                7,
                "frontend[0].health.role",
                "invalid role 'boss'",
            ),
            (
                "role = \"master\"\n",
                6,
                "frontend[0].health.role",
                "needs preset = \"redis\"",
            ),
            (
                "preset = \"mysql\"\nhttp-path = \"/\"\n",
                7,
                "frontend[0].health.http-path",
                "needs preset = \"http\"",
            ),
            (
                "preset = \"http\"\nhttp-path = \"health\"\n",
                7,
                "frontend[0].health.http-path",
                "invalid path 'health'",
            ),
            (
                "preset = \"http\"\nhttp-status = \"2xx\"\n",
                7,
                "frontend[0].health.http-status",
                "invalid status range '2xx'",
            ),
            (
                "http-host = \"a\"\n",
                6,
                "frontend[0].health.http-host",
                "needs preset",
            ),
            (
                "http-status = \"200\"\n",
                6,
                "frontend[0].health.http-status",
                "needs preset",
            ),
            (
                "mysql-user = \"x\"\n",
                6,
                "frontend[0].health.mysql-user",
                "needs preset = \"mysql\"",
            ),
            (
                "preset = \"mysql\"\nmysql-user = \"\"\n",
                7,
                "frontend[0].health.mysql-user",
                "invalid user ''",
            ),
            (
                "preset = \"redis\"\n[[frontend.health.steps]]\nsend = \"x\"\n",
                7,
                "frontend[0].health.steps",
                "give a preset or steps, not both",
            ),
            (
                "[[frontend.health.steps]]\nexpect-regex = \"(\"\n",
                7,
                "frontend[0].health.steps[0].expect-regex",
                "invalid regular expression '('",
            ),
            (
                "[[frontend.health.steps]]\nexpect-hex = \"0g\"\n",
                7,
                "frontend[0].health.steps[0].expect-hex",
                "invalid hex '0g'",
            ),
            (
                "[[frontend.health.steps]]\nsend = \"\"\n",
                7,
                "frontend[0].health.steps[0].send",
                "must not be empty",
            ),
            (
                "[[frontend.health.steps]]\nsend = \"a\"\nsend-hex = \"61\"\n",
                6,
                "frontend[0].health.steps[0]",
                "give send or send-hex, not both",
            ),
            (
                "[[frontend.health.steps]]\nexpect = \"a\"\nexpect-regex = \"a\"\n",
                6,
                "frontend[0].health.steps[0]",
                "give one of expect",
            ),
            (
                "[[frontend.health.steps]]\n",
                6,
                "frontend[0].health.steps[0]",
                "a step needs send",
            ),
            (
                "[[frontend.health.steps]]\nsned = \"a\"\n",
                7,
                "frontend[0].health.steps[0].sned",
                "unknown field `sned`",
            ),
            (
                "agent-port = 0\n",
                6,
                "frontend[0].health.agent-port",
                "must be between 1 and 65535, got 0",
            ),
            (
                "agent-port = 70000\n",
                6,
                "frontend[0].health.agent-port",
                "must be between 1 and 65535",
            ),
            (
                "agent-interval = \"1s\"\n",
                6,
                "frontend[0].health.agent-interval",
                "needs agent-port",
            ),
            (
                "agent-send = \"x\"\n",
                6,
                "frontend[0].health.agent-send",
                "needs agent-port",
            ),
            (
                "agent-port = 9\nagent-interval = \"0s\"\n",
                7,
                "frontend[0].health.agent-interval",
                "must be more than zero",
            ),
            (
                "enabled = false\nagent-port = 9\n",
                7,
                "frontend[0].health.agent-port",
                "needs enabled = true",
            ),
        ];
        for (keys, line, key, message) in cases {
            let text = format!("{FE}{keys}");
            let err = parse_str(&text).expect_err(keys).to_string();
            let prefix = format!("{PATH}:{line}: {key}: ");
            assert!(err.starts_with(&prefix), "{keys}: {err:?} lacks {prefix:?}");
            assert!(err.contains(message), "{keys}: {err:?} lacks {message:?}");
            assert!(!err.contains('\n'), "{keys}: {err:?} is not one line");
        }
    }

    /// `protocol` takes "tcp" only, and anything else is a located error
    /// naming the value, as `balance` does.
    /// `protocol` takes "tcp" and "udp"; anything else, and a key of the
    /// other protocol, is a located error naming the value, as `balance` does.
    #[test]
    fn protocol_tcp_or_udp() {
        const FE: &str = "[[frontend]]\nname = \"web\"\nlisten = \"127.0.0.1:8080\"\n";
        let tcp = format!("{FE}protocol = \"tcp\"\nbackends = [\"127.0.0.1:9000\"]\n");
        assert_eq!(
            parse_str(&tcp).unwrap().frontends[0].protocol,
            Protocol::Tcp
        );
        let udp = format!(
            "{FE}protocol = \"udp\"\nbackends = [\"127.0.0.1:9000\"]\nsession-timeout = \"5s\"\n\
             responses = 1\nmax-sessions = 100\nhealth-send = \"hex:00ff\"\nhealth-expect = \"ok\"\n"
        );
        let fe = parse_str(&udp).unwrap().frontends.remove(0);
        assert_eq!(fe.protocol, Protocol::Udp);
        assert_eq!(
            fe.udp,
            UdpConfig {
                session_timeout: Duration::from_secs(5),
                responses: Some(1),
                max_sessions: Some(100),
                health_send: Some(vec![0, 0xff]),
                health_expect: Some(b"ok".to_vec()),
            }
        );
        let bad = format!("{FE}protocol = \"sctp\"\nbackends = [\"127.0.0.1:9000\"]\n");
        let err = parse_str(&bad).unwrap_err().to_string();
        assert_eq!(
            err,
            format!("{PATH}:4: frontend[0].protocol: invalid protocol 'sctp': expected \"tcp\" or \"udp\"")
        );
        let tcp_key = format!(
            "{FE}protocol = \"udp\"\nbackends = [\"127.0.0.1:9000\"]\nidle-timeout = \"1m\"\n"
        );
        let err = parse_str(&tcp_key).unwrap_err().to_string();
        assert_eq!(
            err,
            format!("{PATH}:6: frontend[0].idle-timeout: does not apply to a frontend with protocol = \"udp\"")
        );
        let udp_key = format!("{FE}backends = [\"127.0.0.1:9000\"]\nresponses = 1\n");
        let err = parse_str(&udp_key).unwrap_err().to_string();
        assert_eq!(
            err,
            format!("{PATH}:5: frontend[0].responses: does not apply to a frontend with protocol = \"tcp\"")
        );
    }

    #[test]
    fn sni_routes() {
        let text = r#"
[[frontend]]
name = "tls"
listen = "127.0.0.1:8443"
route-by = "sni"
sni-timeout = "2s"

[[frontend.route]]
sni = ["API.example.com.", "*.api.example.com"]
alpn = ["h2"]
backends = ["127.0.0.1:9001", "127.0.0.1:9002"]
balance = "least-conn"
send-proxy = "v1"
[frontend.route.health]
interval = "9s"

[[frontend.route]]
sni = ["www.example.com"]
backends = ["127.0.0.1:9003"]

[frontend.health]
rise = 7
"#;
        let fe = parse_str(text).unwrap().frontends.remove(0);
        assert_eq!(fe.route_by, RouteBy::Sni);
        assert_eq!(fe.sni_timeout, Duration::from_secs(2));
        assert!(fe.backends.is_empty());
        assert_eq!(fe.routes.len(), 2);
        assert_eq!(fe.routes[0].sni, ["api.example.com", "*.api.example.com"]);
        assert_eq!(fe.routes[0].alpn, ["h2"]);
        assert_eq!(fe.routes[0].balance, Algorithm::LeastConn);
        assert_eq!(fe.routes[0].backends.len(), 2);
        assert_eq!(fe.routes[1].balance, DEFAULT_BALANCE);
        assert_eq!(fe.routes[0].send_proxy, Some(ProxyVersion::V1));
        assert_eq!(fe.routes[1].send_proxy, None);
        assert_eq!(fe.routes[0].health.interval, Duration::from_secs(9));
        assert_eq!(fe.routes[0].health.rise, 7);
        assert_eq!(fe.routes[1].health, fe.health);
        assert_eq!(fe.routes[1].label(), "www.example.com");
    }

    #[test]
    fn bad_sni_routes() {
        const FE: &str = "[[frontend]]\nname = \"tls\"\nlisten = \"127.0.0.1:8443\"\n";
        let route = |sni: &str, backends: &str| {
            format!("[[frontend.route]]\nsni = [{sni}]\nbackends = [{backends}]\n")
        };
        let b = "\"127.0.0.1:9000\"";
        let cases: Vec<(&str, String, usize, &str, &str)> = vec![
            (
                "duplicate name across routes",
                format!(
                    "{FE}route-by = \"sni\"\n{}{}",
                    route("\"a.b\"", b),
                    route("\"x.y\", \"A.B.\"", b)
                ),
                9,
                "frontend[0].route[1].sni",
                "server name 'a.b' is in two routes",
            ),
            (
                "route without names",
                format!("{FE}route-by = \"sni\"\n{}", route("", b)),
                6,
                "frontend[0].route[0].sni",
                "no server name",
            ),
            (
                "route without backends",
                format!("{FE}route-by = \"sni\"\n[[frontend.route]]\nsni = [\"a.b\"]\n"),
                5,
                "frontend[0].route[0]",
                "backends no backend",
            ),
            (
                "zero route health interval",
                format!(
                    "{FE}route-by = \"sni\"\n{}[frontend.route.health]\ninterval = \"0s\"\n",
                    route("\"a.b\"", b)
                ),
                9,
                "frontend[0].route[0].health.interval",
                "must be more than zero",
            ),
            (
                "sni with nothing to route to",
                format!("{FE}route-by = \"sni\"\n"),
                4,
                "frontend[0].route-by",
                "needs a [[frontend.route]]",
            ),
            (
                "routes without route-by",
                format!("{FE}{}", route("\"a.b\"", b)),
                1,
                "frontend[0]: route-by",
                "must be \"sni\" for [[frontend.route]]",
            ),
            (
                "bad name",
                format!("{FE}route-by = \"sni\"\n{}", route("\"a b\"", b)),
                6,
                "frontend[0].route[0].sni[0]",
                "invalid server name 'a b'",
            ),
            (
                "bad route-by",
                format!("{FE}route-by = \"host\"\nbackends = [{b}]\n"),
                4,
                "frontend[0].route-by",
                "expected \"none\" or \"sni\"",
            ),
            (
                "route backend weight",
                format!(
                    "{FE}route-by = \"sni\"\n{}",
                    route("\"a.b\"", "\"127.0.0.1:1,weight=0\"")
                ),
                7,
                "frontend[0].route[0].backends[0]",
                "weight must be between 1 and 1000",
            ),
        ];
        for (what, text, line, key, message) in cases {
            let err = parse_str(&text).expect_err(what).to_string();
            let prefix = format!("{PATH}:{line}: {key}");
            assert!(err.starts_with(&prefix), "{what}: {err:?} lacks {prefix:?}");
            assert!(err.contains(message), "{what}: {err:?} lacks {message:?}");
        }
    }

    #[test]
    fn no_frontend() {
        for text in ["", "workers = 2\n", "frontend = []\n"] {
            let err = parse_str(text).unwrap_err().to_string();
            assert!(
                err.starts_with("ringlb.toml: frontend: no frontend"),
                "{err}"
            );
        }
    }

    #[test]
    fn odd_keys_and_paths_stay_on_one_line() {
        let e = parse("\"a\\nb.c\" = 1", Path::new("x\ny.toml")).unwrap_err();
        assert_eq!(e.key(), Some("\"a\\nb.c\""));
        assert_eq!(e.line(), Some(1));
        let msg = e.to_string();
        assert!(
            msg.starts_with("x\\ny.toml:1: \"a\\nb.c\": unknown field"),
            "{msg}"
        );
        assert!(!msg.contains('\n'), "{msg:?}");
    }

    /// A control character in a value is escaped in the error, which stays
    /// one printable line (found by the config_file fuzz target).
    #[test]
    fn control_characters_in_values_are_escaped() {
        let text = "[[frontend]]\nname = \"w\"\nlisten = \"127.0.0.1:1\"\nprotocol = \"\\u001b[2J\\u000b\\tx\"\n";
        let msg = parse(text, Path::new("a\u{7}.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with(
                "a\\u{7}.toml:4: frontend[0].protocol: invalid protocol '\\u{1b}[2J\\u{b}\\tx'"
            ),
            "{msg}"
        );
        assert!(!msg.chars().any(char::is_control), "{msg:?}");
    }

    /// A file cut off anywhere still gets an error with a reason.
    #[test]
    fn truncated_files_have_a_reason() {
        let full = "workers = 1\n[[frontend]]\nname = \"a\"\nlisten = \"127.0.0.1:0\"\nbackends = [\"127.0.0.1:9\"]\n";
        for end in 0..full.len() {
            let Err(e) = parse_str(&full[..end]) else {
                continue;
            };
            assert!(!e.message().trim().is_empty(), "{:?}: {e}", &full[..end]);
        }
        let e = parse_str("workers =").unwrap_err();
        assert_eq!(
            e.to_string(),
            "ringlb.toml:1: unexpected end of file: expected a value"
        );
    }

    /// Odd input gives an error, never a panic.
    #[test]
    fn odd_inputs() {
        for text in [
            "[frontend]\nname = 1\n",
            "frontend = 3",
            "frontend = [[]]",
            "[[frontend]]\nbackends = [[1]]",
            "[[frontend]]\nbackends = [{}]",
            "[[frontend]]\nmax-conns = -1",
            "[[frontend]]\nmax-conns = 9223372036854775807",
            "[[frontend]]\nbuffer-size = -5",
            "[[frontend]]\nname = \"\"",
            "[[frontend]]\nhealth = 1",
            "[[frontend]]\nhealth = []",
            "[[frontend]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n[[frontend.backends]]\nweight = 2",
            "a = [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]",
            "\u{feff}\u{0}",
            "é = \"\n",
            "\"a\\nb.c\" = 1",
            "\"a\\rb\" = 1",
        ] {
            let err = parse_str(text).unwrap_err().to_string();
            assert!(err.starts_with(PATH) && !err.contains('\n'), "{err:?}");
        }
    }
}
