//! The command line, as clap parses it. Every flag is documented here, and clap
//! turns those docs into `--help`. Nothing here resolves or validates beyond
//! syntax: `config` turns a [`Cli`] into a validated `Config`.

use std::time::Duration;

use clap::Parser;

use crate::balance::Algorithm;
use crate::logging::LogFormat;
use crate::proxy_protocol::Version as ProxyVersion;

/// Default size of the large relay buffer, in bytes. Measured with
/// scripts/bench.sh's bulk workload: 16 KiB matched HAProxy, 64 KiB gave about
/// 1.4x, 256 KiB about 1.7x; larger gained little more for the memory.
pub const DEFAULT_BUFFER_SIZE: usize = 256 * 1024;

/// A per-core io_uring TCP load balancer.
///
/// Accepts TCP connections on --listen and relays every byte to one of the
/// --backend servers and back. The rsp form `ringlb LISTEN_PORT BACKEND_HOST
/// BACKEND_PORT` listens on all interfaces at LISTEN_PORT.
#[derive(Parser, Debug, Clone)]
#[command(name = "ringlb", version, about, long_about)]
pub struct Cli {
    /// Address to accept clients on, as host:port (port 0 picks a free port).
    #[arg(short = 'l', long, value_name = "ADDR", conflicts_with = "config")]
    pub listen: Option<String>,

    /// Backend to relay to, as `host:port[,weight=N][,max-conns=N]`; repeat for several.
    #[arg(
        short = 'b',
        long = "backend",
        value_name = "ADDR",
        conflicts_with = "config"
    )]
    pub backends: Vec<String>,

    /// Worker threads, each with its own io_uring and listening socket [default: number of CPUs].
    #[arg(short = 'w', long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub workers: Option<u32>,

    /// Balancing algorithm: round-robin (smooth weighted), least-conn, random, p2c
    /// (power of two choices) or hash (consistent hashing on the client IP).
    #[arg(
        long,
        value_name = "ALGORITHM",
        default_value = "round-robin",
        conflicts_with = "config"
    )]
    pub balance: Algorithm,

    /// Time between two active health checks (a TCP connect) of each backend.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = humantime::parse_duration, conflicts_with = "config")]
    pub health_interval: Duration,

    /// How long a health check connect may take before it counts as failed.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration, conflicts_with = "config")]
    pub health_timeout: Duration,

    /// Consecutive passed checks that bring a down backend back.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=1000), conflicts_with = "config")]
    pub rise: u32,

    /// Consecutive failed checks (or failed connects) that take a backend down.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1000), conflicts_with = "config")]
    pub fall: u32,

    /// Turn active health checks off; failed connects still fail over to the next backend.
    #[arg(long, conflicts_with = "config")]
    pub no_health_checks: bool,

    /// Size of the large relay buffer a busy direction reads into (idle ones use 512 bytes).
    #[arg(conflicts_with = "config", long, value_name = "BYTES", default_value_t = DEFAULT_BUFFER_SIZE,
          value_parser = parse_buffer_size)]
    pub buffer_size: usize,

    /// How long to wait for a backend to accept a connection before trying the next.
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = humantime::parse_duration, conflicts_with = "config")]
    pub connect_timeout: Duration,

    /// On SIGINT/SIGTERM, how long open connections may finish before they are closed [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub drain_timeout: Option<Duration>,

    /// Close a connection after this long with no byte in either direction [default: never].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, conflicts_with = "config")]
    pub idle_timeout: Option<Duration>,

    /// Close a connection this long after it was accepted, busy or not [default: never].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, conflicts_with = "config")]
    pub max_lifetime: Option<Duration>,

    /// Most client connections open at once, across workers; past it new
    /// clients wait in the kernel's backlog instead of being accepted [default: no limit].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..), conflicts_with = "config")]
    pub max_conns: Option<u64>,

    /// Write one info line per closed connection (client, backend, bytes, duration, reason) to the log.
    #[arg(long)]
    pub access_log: bool,

    /// Serve GET /metrics (Prometheus), /healthz and /backends (JSON) over HTTP on this address.
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<String>,

    /// Send a PROXY protocol header (v1 text or v2 binary) to each backend, so it learns the client address.
    #[arg(long, value_name = "VERSION", conflicts_with = "config")]
    pub send_proxy: Option<ProxyVersion>,

    /// Expect a PROXY protocol header (v1 or v2) from each client, e.g. behind another load balancer.
    #[arg(long, conflicts_with = "config")]
    pub accept_proxy: bool,

    /// How long a client may take to send its PROXY protocol header.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration, conflicts_with = "config")]
    pub proxy_header_timeout: Duration,

    /// Frontend name, used in logs and metric labels.
    #[arg(
        long,
        value_name = "NAME",
        default_value = "default",
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

    /// Read frontends and settings from this TOML file (see README); SIGHUP reloads it.
    /// Flags that set process-wide values (--workers, --drain-timeout, --admin,
    /// --access-log, --pin, --sqpoll) override the file; frontend flags cannot be combined with it.
    #[arg(short = 'c', long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,

    /// Validate the configuration (file or flags), print a summary and exit: 0 if valid, 2 if not.
    #[arg(long)]
    pub check: bool,

    /// rsp form: port to listen on, on all interfaces.
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

/// Buffers below this cannot hold even a small request, above it they waste memory.
const BUFFER_SIZE_RANGE: std::ops::RangeInclusive<usize> = 512..=(16 << 20);

pub(crate) fn parse_buffer_size(s: &str) -> Result<usize, String> {
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
    fn buffer_sizes() {
        assert_eq!(parse_buffer_size("16384"), Ok(16384));
        assert_eq!(parse_buffer_size("64k"), Ok(65536));
        assert_eq!(parse_buffer_size("1M"), Ok(1 << 20));
        assert!(parse_buffer_size("12").is_err());
        assert!(parse_buffer_size("lots").is_err());
        assert!(parse_buffer_size("99999999999999999999k").is_err());
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
