//! What a health check says to a backend once connected, and what an agent
//! check asks, as plain data: [`CheckSpec`] (a preset, or `send`/`expect`
//! steps, with their options) and [`AgentConfig`]. The file layer parses
//! each value with the parsers here ([`parse_hex`], [`Pattern::new`],
//! [`parse_status_range`]), so a bad one is an error at its key;
//! [`Config::validate`](super::Config::validate) checks how the keys go
//! together. The conversation itself is the prober's (`backend::check`).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Most bytes a compiled `expect-regex` may take: a pattern is the
/// operator's, but a check runs forever, so its cost is bounded.
pub const MAX_REGEX_SIZE: usize = 1 << 20;

/// How a health check talks to a backend after the connect.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CheckSpec {
    /// A protocol the check speaks (`preset`); `None` with no steps is the
    /// connect alone.
    pub preset: Option<Preset>,
    /// `send`/`expect` steps, in order (instead of a preset).
    pub steps: Vec<Step>,
    /// With the `redis` preset: the replication role the backend must have.
    pub role: Option<RedisRole>,
    /// With the `http` preset: the request's path (default `/`).
    pub http_path: Option<String>,
    /// With the `http` preset: the `Host` header (default the backend's address).
    pub http_host: Option<String>,
    /// With the `http` preset: the status codes that pass (default 200-399).
    pub http_status: Option<(u16, u16)>,
    /// With the `mysql` preset: log in as this user (no password) and quit,
    /// instead of closing after the handshake.
    pub mysql_user: Option<String>,
}

impl CheckSpec {
    /// The connect alone, as without a `health` table.
    pub const CONNECT: CheckSpec = CheckSpec {
        preset: None,
        steps: Vec::new(),
        role: None,
        http_path: None,
        http_host: None,
        http_status: None,
        mysql_user: None,
    };

    /// Whether any key of the check is set (a route that sets one sets
    /// the whole check, rather than mixing with its frontend's).
    pub fn is_set(&self) -> bool {
        *self != CheckSpec::CONNECT
    }
}

/// A protocol a check speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// `PING` answered `+PONG`; with a role, `INFO replication` too.
    Redis,
    /// The server's handshake packet, protocol 10.
    Mysql,
    /// An SSLRequest answered `S` or `N`.
    Postgres,
    /// A `GET` whose status line is in a range.
    Http,
}

impl FromStr for Preset {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "redis" => Ok(Preset::Redis),
            "mysql" => Ok(Preset::Mysql),
            "postgres" => Ok(Preset::Postgres),
            "http" => Ok(Preset::Http),
            _ => Err(format!(
                "invalid preset '{s}': expected \"redis\", \"mysql\", \"postgres\" or \"http\""
            )),
        }
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Preset::Redis => "redis",
            Preset::Mysql => "mysql",
            Preset::Postgres => "postgres",
            Preset::Http => "http",
        })
    }
}

/// The replication role a Redis backend must report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisRole {
    /// `role:master`: the one that takes writes.
    Master,
    /// `role:slave`: a replica.
    Replica,
}

impl RedisRole {
    /// As `INFO replication` spells it.
    pub fn info_name(self) -> &'static str {
        match self {
            RedisRole::Master => "master",
            RedisRole::Replica => "slave",
        }
    }
}

impl FromStr for RedisRole {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "master" => Ok(RedisRole::Master),
            "replica" | "slave" => Ok(RedisRole::Replica),
            _ => Err(format!(
                "invalid role '{s}': expected \"master\" or \"replica\""
            )),
        }
    }
}

/// One step of a check: bytes to send, then what must come back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Written first, if any.
    pub send: Option<Vec<u8>>,
    /// Read for until it matches (the bytes since the last match), if any.
    pub expect: Option<Expect>,
}

/// What a step waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// These bytes, anywhere in what came back (`expect` as text, or
    /// `expect-hex`).
    Bytes(Vec<u8>),
    /// A match of this regular expression (`expect-regex`).
    Regex(Pattern),
}

/// A compiled regular expression over bytes, equal by its source.
#[derive(Debug, Clone)]
pub struct Pattern(pub regex::bytes::Regex);

impl Pattern {
    /// Compiles `source`, within [`MAX_REGEX_SIZE`].
    pub fn new(source: &str) -> Result<Pattern, String> {
        regex::bytes::RegexBuilder::new(source)
            .size_limit(MAX_REGEX_SIZE)
            .build()
            .map(Pattern)
            .map_err(|e| {
                let e = e.to_string();
                let last = e.lines().last().unwrap_or("").trim();
                format!("invalid regular expression '{source}': {last}")
            })
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Pattern) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl Eq for Pattern {}

/// An agent check (HAProxy's): a connection to the backend's address on
/// another port, whose one line sets the backend's agent state and weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// The agent's port on the backend's address.
    pub port: u16,
    /// Time between two agent checks (the health interval unless set).
    pub interval: Duration,
    /// Sent to the agent before its answer is read, if any.
    pub send: Option<Vec<u8>>,
}

/// Bytes written as hex, two digits a byte, spaces allowed between bytes:
/// `"2a 31 0d 0a"` or `"2a310d0a"`.
pub fn parse_hex(s: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if digits.is_empty() {
        return Err("must not be empty".into());
    }
    if !digits.len().is_multiple_of(2) {
        return Err(format!("invalid hex '{s}': an odd number of digits"));
    }
    digits
        .chunks(2)
        .map(|pair| {
            let text = std::str::from_utf8(pair).unwrap_or("");
            u8::from_str_radix(text, 16).map_err(|_| {
                format!(
                    "invalid hex '{s}': '{}' is not a byte",
                    text.escape_default()
                )
            })
        })
        .collect()
}

/// HTTP status codes that pass: `"200"`, or `"200-399"`, within 100-599.
pub fn parse_status_range(s: &str) -> Result<(u16, u16), String> {
    let bad = || {
        format!("invalid status range '{s}': expected a code such as \"200\" or a range such as \"200-399\", within 100-599")
    };
    let (low, high) = s.split_once('-').unwrap_or((s, s));
    let low: u16 = low.trim().parse().map_err(|_| bad())?;
    let high: u16 = high.trim().parse().map_err(|_| bad())?;
    if !(100..=599).contains(&low) || !(100..=599).contains(&high) || low > high {
        return Err(bad());
    }
    Ok((low, high))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_takes_pairs_with_or_without_spaces() {
        assert_eq!(parse_hex("2a 31 0D0a").unwrap(), b"*1\r\n");
        assert!(parse_hex("2a3").unwrap_err().contains("odd"));
        assert!(parse_hex("zz").unwrap_err().contains("'zz'"));
        assert!(parse_hex("  ").is_err());
    }

    #[test]
    fn status_ranges() {
        assert_eq!(parse_status_range("200").unwrap(), (200, 200));
        assert_eq!(parse_status_range("200-399").unwrap(), (200, 399));
        for bad in ["", "2xx", "399-200", "99", "200-600", "-"] {
            assert!(parse_status_range(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_pattern_is_bounded_and_equal_by_source() {
        assert_eq!(Pattern::new("a+").unwrap(), Pattern::new("a+").unwrap());
        assert!(Pattern::new("(").unwrap_err().contains("'('"));
        assert!(Pattern::new(r"\w{1000}{1000}").is_err(), "too big");
    }
}
