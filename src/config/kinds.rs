//! The named choices a setting takes, with the names the command line and the
//! file spell them by (`FromStr` and `Display` agree). They are config types:
//! the runtime modules that act on them (balance, proxy_protocol, logging)
//! use these, so config depends on none of them.

use std::fmt;
use std::str::FromStr;

use clap::ValueEnum;

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

impl FromStr for RouteBy {
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

/// The transport a frontend serves; each is a service of its own in the
/// workers, and a TCP and a UDP frontend may share an address and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// TCP: each accepted connection is relayed to one backend.
    Tcp,
    /// UDP: each client address is a session, relayed to one backend.
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

impl FromStr for Protocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            _ => Err(format!(
                "invalid protocol '{s}': expected \"tcp\" or \"udp\""
            )),
        }
    }
}

/// What a frontend does with the TLVs of a client's PROXY v2 header (a
/// cloud endpoint ID, the TLS details a front proxy saw, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyTlvs {
    /// Dropped: the header sent to the backend carries none.
    Drop,
    /// Passed on in the v2 header sent to the backend (all but a checksum,
    /// which the new header would fail).
    Forward,
}

impl fmt::Display for ProxyTlvs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProxyTlvs::Drop => "drop",
            ProxyTlvs::Forward => "forward",
        })
    }
}

impl FromStr for ProxyTlvs {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "drop" => Ok(ProxyTlvs::Drop),
            "forward" => Ok(ProxyTlvs::Forward),
            _ => Err(format!(
                "invalid proxy-tlvs '{s}': expected \"drop\" or \"forward\""
            )),
        }
    }
}

/// Declares every balancing algorithm once, so the enum, its list and its
/// names cannot drift apart. The runtime's `balance::build` matches on the
/// enum, so an algorithm added here without a balancer does not compile.
macro_rules! algorithms {
    ($( $(#[$doc:meta])* $variant:ident = $name:literal, )+) => {
        /// A balancing algorithm, named on the command line as `round-robin`,
        /// `least-conn`, `random`, `p2c` or `hash`.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Algorithm {
            $( $(#[$doc])* $variant, )+
        }

        impl Algorithm {
            /// Every algorithm, in declaration order.
            pub const ALL: &'static [Algorithm] = &[$(Algorithm::$variant),+];

            /// The name accepted by [`FromStr`] and printed by [`Display`](fmt::Display).
            pub const fn name(self) -> &'static str {
                match self {
                    $(Algorithm::$variant => $name,)+
                }
            }
        }
    };
}

algorithms! {
    /// Smooth weighted round-robin (nginx's): weighted shares without bursts.
    RoundRobin = "round-robin",
    /// Fewest active connections per unit of weight; ties rotate.
    LeastConn = "least-conn",
    /// Weighted random choice.
    Random = "random",
    /// Power of two random choices: the less loaded of two weighted-random picks.
    P2c = "p2c",
    /// Weighted rendezvous hashing of the client IP: sticky and consistent across workers.
    Hash = "hash",
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Algorithm {
    type Err = ParseAlgorithmError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Algorithm::ALL
            .iter()
            .copied()
            .find(|alg| alg.name() == s)
            .ok_or_else(|| ParseAlgorithmError(s.to_owned()))
    }
}

/// The string given was not the name of any [`Algorithm`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseAlgorithmError(pub String);

impl fmt::Display for ParseAlgorithmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown balancing algorithm {:?} (expected one of",
            self.0
        )?;
        for (i, alg) in Algorithm::ALL.iter().enumerate() {
            let sep = if i == 0 { " " } else { ", " };
            write!(f, "{sep}{alg}")?;
        }
        f.write_str(")")
    }
}

impl std::error::Error for ParseAlgorithmError {}

/// Which PROXY protocol header version to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyVersion {
    /// The human-readable text line (`PROXY TCP4 ...\r\n`).
    V1,
    /// The binary form with the 12-byte signature.
    V2,
}

impl fmt::Display for ProxyVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProxyVersion::V1 => "v1",
            ProxyVersion::V2 => "v2",
        })
    }
}

/// The error from parsing a [`ProxyVersion`] out of anything but `v1` or `v2`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown PROXY protocol version {0:?} (expected \"v1\" or \"v2\")")]
pub struct ParseVersionError(String);

impl FromStr for ProxyVersion {
    type Err = ParseVersionError;

    /// Accepts `v1` and `v2`, ignoring ASCII case so `V2` in a config works too.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("v1") {
            Ok(ProxyVersion::V1)
        } else if s.eq_ignore_ascii_case("v2") {
            Ok(ProxyVersion::V2)
        } else {
            Err(ParseVersionError(s.to_owned()))
        }
    }
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let names: Vec<String> = Algorithm::ALL.iter().map(|a| a.to_string()).collect();
        assert_eq!(
            names,
            ["round-robin", "least-conn", "random", "p2c", "hash"]
        );
        for &alg in Algorithm::ALL {
            assert_eq!(alg.name().parse::<Algorithm>(), Ok(alg));
        }
    }

    #[test]
    fn unknown_name_is_an_error_listing_the_choices() {
        let err = "roundrobin".parse::<Algorithm>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown balancing algorithm \"roundrobin\" \
             (expected one of round-robin, least-conn, random, p2c, hash)"
        );
    }

    #[test]
    fn protocol_names() {
        for p in [Protocol::Tcp, Protocol::Udp] {
            assert_eq!(p.to_string().parse(), Ok(p));
        }
        for bad in ["sctp", "TCP", ""] {
            let err = bad.parse::<Protocol>().unwrap_err();
            assert!(err.contains(&format!("'{bad}'")), "{err}");
        }
    }

    #[test]
    fn version_text() {
        for v in [ProxyVersion::V1, ProxyVersion::V2] {
            assert_eq!(v.to_string().parse::<ProxyVersion>(), Ok(v));
        }
        assert_eq!("V2".parse::<ProxyVersion>(), Ok(ProxyVersion::V2));
        assert!("v3".parse::<ProxyVersion>().is_err());
        assert!("".parse::<ProxyVersion>().is_err());
    }
}

/// When a relay direction forwards through a kernel pipe (splice(2)), so
/// its bytes never enter user space, instead of copying through a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpliceMode {
    /// Once a direction is bulk (a read fills the large buffer), as
    /// HAProxy's `splice-auto`; small request/response traffic is copied.
    Auto,
    /// From a direction's first byte, whenever a pipe can be had.
    Always,
    /// Never: every byte is copied.
    Never,
}

impl fmt::Display for SpliceMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SpliceMode::Auto => "auto",
            SpliceMode::Always => "always",
            SpliceMode::Never => "never",
        })
    }
}

impl FromStr for SpliceMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(SpliceMode::Auto),
            "always" => Ok(SpliceMode::Always),
            "never" => Ok(SpliceMode::Never),
            _ => Err(format!(
                "invalid splice '{s}': expected \"auto\", \"always\" or \"never\""
            )),
        }
    }
}
