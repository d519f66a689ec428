//! The named choices a setting takes, with the names the command line and the
//! file spell them by (`FromStr` and `Display` agree).

use std::fmt;

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
