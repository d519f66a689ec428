//! Which SNI route a ClientHello goes to; pure. An exact server name beats a
//! wildcard whatever their order; among routes of one kind the first in
//! config order wins. `*.example.com` matches exactly one more label
//! (`a.example.com`, not `example.com` nor `a.b.example.com`). A route with
//! ALPN protocols also needs the client to offer one of them.

use crate::config::RouteConfig;
use crate::protocol::tls::ClientHello;

/// The index of the route `hello` goes to, or `None` for the default.
pub fn pick(routes: &[RouteConfig], hello: &ClientHello) -> Option<usize> {
    let name = hello.sni.as_deref()?;
    let parent = name.split_once('.').map(|(_, parent)| parent);
    let alpn_ok = |r: &RouteConfig| {
        r.alpn.is_empty()
            || hello
                .alpn
                .iter()
                .any(|p| r.alpn.iter().any(|a| a.as_bytes() == p))
    };
    let exact = |r: &RouteConfig| r.sni.iter().any(|s| s == name);
    let wildcard = |r: &RouteConfig| {
        parent.is_some_and(|parent| r.sni.iter().any(|s| s.strip_prefix("*.") == Some(parent)))
    };
    let first = |matches: &dyn Fn(&RouteConfig) -> bool| {
        routes.iter().position(|r| matches(r) && alpn_ok(r))
    };
    first(&exact).or_else(|| first(&wildcard))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DEFAULT_BALANCE, DEFAULT_HEALTH};

    fn route(sni: &[&str], alpn: &[&str]) -> RouteConfig {
        RouteConfig {
            sni: sni.iter().map(|s| s.to_string()).collect(),
            alpn: alpn.iter().map(|s| s.to_string()).collect(),
            backends: vec![],
            balance: DEFAULT_BALANCE,
            send_proxy: None,
            health: DEFAULT_HEALTH,
        }
    }

    fn hello(sni: Option<&str>, alpn: &[&str]) -> ClientHello {
        ClientHello {
            sni: sni.map(str::to_string),
            alpn: alpn.iter().map(|p| p.as_bytes().to_vec()).collect(),
        }
    }

    #[test]
    fn exact_beats_wildcard_and_order_breaks_ties() {
        let routes = [
            route(&["*.example.com"], &[]),
            route(&["www.example.com"], &[]),
            route(&["www.example.com", "*.other.org"], &[]),
            route(&["*.example.com"], &[]),
        ];
        let at = |name| pick(&routes, &hello(Some(name), &[]));
        assert_eq!(at("www.example.com"), Some(1));
        assert_eq!(at("api.example.com"), Some(0));
        assert_eq!(at("a.other.org"), Some(2));
        assert_eq!(at("example.com"), None);
        assert_eq!(at("a.b.example.com"), None);
        assert_eq!(at("other.org"), None);
        assert_eq!(pick(&routes, &hello(None, &[])), None);
    }

    #[test]
    fn alpn_must_match_too() {
        let routes = [
            route(&["api.example.com"], &["h2"]),
            route(&["api.example.com", "*.example.com"], &[]),
        ];
        let at = |alpn: &[&str]| pick(&routes, &hello(Some("api.example.com"), alpn));
        assert_eq!(at(&["http/1.1", "h2"]), Some(0));
        assert_eq!(at(&["http/1.1"]), Some(1));
        assert_eq!(at(&[]), Some(1));
        let only_h2 = [route(&["*.example.com"], &["h2"])];
        assert_eq!(
            pick(&only_h2, &hello(Some("a.example.com"), &["h2"])),
            Some(0)
        );
        assert_eq!(pick(&only_h2, &hello(Some("a.example.com"), &[])), None);
    }
}
