//! The value parsers the command line and the file share: backends (with
//! their options and names for discovery), addresses, CIDRs, resolvers,
//! buffer sizes, server names and durations that may be `never`. Each error
//! names the value it could not take; ranges that involve more than one
//! value are [`Config::validate`](super::Config::validate)'s.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net};

use super::{
    BackendConfig, BackendName, ConfigError, Rate, BUFFER_SIZE_RANGE, DEFAULT_SLOW_START,
    DEFAULT_WEIGHT, DNS_PORT, MAX_SOURCE_RATE,
};

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

/// A rate such as `10/s`, `600/m` or `3600/h`: a whole number of events
/// (1 to [`MAX_SOURCE_RATE`]) per second, minute or hour.
pub fn parse_rate(s: &str) -> Result<Rate, String> {
    let bad = |why: &str| format!("invalid rate '{s}': {why}");
    let (count, unit) = s
        .split_once('/')
        .ok_or_else(|| bad("expected N/s, N/m or N/h, e.g. 10/s"))?;
    let per = match unit.trim() {
        "s" => Duration::from_secs(1),
        "m" => Duration::from_secs(60),
        "h" => Duration::from_secs(3600),
        _ => return Err(bad("the period must be s, m or h, e.g. 10/s")),
    };
    let count: u32 = count
        .trim()
        .parse()
        .map_err(|_| bad("expected a whole number before the '/', e.g. 10/s"))?;
    if !(1..=MAX_SOURCE_RATE).contains(&count) {
        return Err(bad(&format!(
            "the count must be between 1 and {MAX_SOURCE_RATE}"
        )));
    }
    Ok(Rate { count, per })
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
/// [`Config::validate`](super::Config::validate)'s to check. A name is not resolved here: see [`BackendName`].
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

/// The largest health check payload: one UDP datagram.
pub const MAX_PAYLOAD: usize = 65_507;

/// Parses a health check payload: `hex:` and hex digits (spaces and colons
/// between bytes allowed, e.g. `hex:00 01 ab`), or else the text's bytes.
pub fn parse_payload(s: &str) -> Result<Vec<u8>, String> {
    let bytes = match s.strip_prefix("hex:") {
        Some(hex) => {
            let digits: Vec<u8> = hex.bytes().filter(|b| !matches!(b, b' ' | b':')).collect();
            if !digits.len().is_multiple_of(2) || !digits.iter().all(u8::is_ascii_hexdigit) {
                return Err(format!(
                    "invalid payload '{s}': after hex: expected pairs of hex digits, e.g. hex:00 01 ab"
                ));
            }
            digits
                .chunks(2)
                .map(|pair| {
                    let text = std::str::from_utf8(pair).unwrap_or("00");
                    u8::from_str_radix(text, 16).unwrap_or(0)
                })
                .collect()
        }
        None => s.as_bytes().to_vec(),
    };
    if bytes.is_empty() || bytes.len() > MAX_PAYLOAD {
        return Err(format!(
            "invalid payload '{s}': must be 1 to {MAX_PAYLOAD} bytes, got {}",
            bytes.len()
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_IDLE_TIMEOUT;

    #[test]
    fn payloads_in_hex_or_text() {
        assert_eq!(parse_payload("ping").unwrap(), b"ping");
        assert_eq!(parse_payload("hex:00 01:Ab").unwrap(), [0, 1, 0xab]);
        for bad in ["hex:0", "hex:zz", "hex:", ""] {
            let err = parse_payload(bad).unwrap_err();
            assert!(err.contains(&format!("'{bad}'")), "{err}");
        }
    }

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
    fn rates() {
        for (given, count, secs) in [("10/s", 10, 1), ("600/m", 600, 60), (" 1 / h", 1, 3600)] {
            let rate = parse_rate(given).unwrap();
            assert_eq!((rate.count, rate.per.as_secs()), (count, secs), "{given}");
        }
        assert_eq!(parse_rate("600/m").unwrap().to_string(), "600/m");
        assert_eq!(parse_rate("5/s").unwrap().per_second(), 5.0);
        for bad in [
            "10",
            "10/d",
            "/s",
            "0/s",
            "-1/s",
            "1.5/s",
            "2000000/s",
            "ten/s",
            "",
        ] {
            let err = parse_rate(bad).unwrap_err();
            assert!(err.contains(&format!("'{bad}'")), "{err}");
        }
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
}
