//! Source access rules: which TCP peers a frontend serves (`allow`, `deny`)
//! and whose PROXY header it believes (`accept-proxy-from`). Pure: it takes
//! the peer's address and the frontend's settings, and neither reads nor
//! closes a socket. Peers are matched in canonical form, so an IPv4 client on
//! a dual-stack `[::]` listener (`::ffff:a.b.c.d`) matches IPv4 rules.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::config::FrontendConfig;

/// Why a client was refused at accept; [`Refusal::label`] is its metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Denied, or not allowed.
    Source,
    /// A PROXY header would be read from a source not trusted to send one.
    ProxySource,
    /// The source has max-conns-per-source connections open.
    SourceConns,
    /// The source opened connections faster than rate-per-source allows.
    SourceRate,
}

impl Refusal {
    /// The `reason` label of `ringlb_refused_total`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Refusal::Source => "source",
            Refusal::ProxySource => "proxy-source",
            Refusal::SourceConns => "source-conns",
            Refusal::SourceRate => "source-rate",
        }
    }
}

/// Whether `fe` serves a client whose TCP peer is `peer`: a deny match
/// always refuses, a non-empty allow list must match, and with accept-proxy
/// a non-empty accept-proxy-from must match.
pub(crate) fn check(fe: &FrontendConfig, peer: IpAddr) -> Result<(), Refusal> {
    let peer = peer.to_canonical();
    if matches(&fe.deny, peer) || !(fe.allow.is_empty() || matches(&fe.allow, peer)) {
        return Err(Refusal::Source);
    }
    if fe.accept_proxy && !fe.accept_proxy_from.is_empty() && !matches(&fe.accept_proxy_from, peer)
    {
        return Err(Refusal::ProxySource);
    }
    Ok(())
}

/// The rules of `fe` that look as if they held IPv4 clients of its dual-stack
/// (`[::]`) listener but never do: IPv6 networks that cover IPv4-mapped
/// addresses (`::ffff:0:0/96`, such as `::/0`), while those clients are
/// matched as the IPv4 addresses they are. Each with its key.
pub(crate) fn unmatched_v4_rules(fe: &FrontendConfig) -> Vec<(&'static str, IpNet)> {
    let dual_stack = matches!(fe.listen.ip(), IpAddr::V6(ip) if ip.is_unspecified());
    if !dual_stack {
        return Vec::new();
    }
    let mapped: IpNet = "::ffff:0:0/96".parse().expect("a valid network");
    let overlaps = |net: &IpNet| net.contains(&mapped) || mapped.contains(net);
    [
        ("allow", &fe.allow),
        ("deny", &fe.deny),
        ("accept-proxy-from", &fe.accept_proxy_from),
    ]
    .into_iter()
    .flat_map(|(key, nets)| {
        nets.iter()
            .filter(|net| matches!(net, IpNet::V6(_)) && overlaps(net))
            .map(move |net| (key, *net))
    })
    .collect()
}

/// Whether any of `nets` holds `ip` (already canonical).
fn matches(nets: &[IpNet], ip: IpAddr) -> bool {
    nets.iter().any(|net| net.contains(&ip))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{cli::Cli, parse_cidr, Config};
    use clap::Parser;

    fn frontend(args: &[&str]) -> FrontendConfig {
        let base = [
            "ringlb",
            "--listen",
            "127.0.0.1:0",
            "--backend",
            "127.0.0.1:9",
        ];
        let cli = Cli::try_parse_from(base.iter().chain(args)).unwrap();
        Config::from_cli(&cli).unwrap().frontends.remove(0)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv6_rules_over_mapped_addresses_are_named_on_a_dual_stack_listener() {
        let mut fe = frontend(&["--allow", "::/0", "--deny", "2001:db8::/32"]);
        // A client 10.1.2.3 of [::] arrives as ::ffff:10.1.2.3 and is
        // matched as 10.1.2.3: `::/0` does not hold it.
        assert_eq!(check(&fe, ip("::ffff:10.1.2.3")), Err(Refusal::Source));
        assert!(unmatched_v4_rules(&fe).is_empty(), "not dual-stack");
        fe.listen = "[::]:8080".parse().unwrap();
        let named: Vec<String> = unmatched_v4_rules(&fe)
            .iter()
            .map(|(key, net)| format!("{key} {net}"))
            .collect();
        assert_eq!(named, ["allow ::/0"]);
        // A rule inside the mapped range is an IPv4 rule already.
        let mut fe = frontend(&["--deny", "::ffff:10.0.0.0/104"]);
        fe.listen = "[::]:8080".parse().unwrap();
        assert!(unmatched_v4_rules(&fe).is_empty());
        assert_eq!(check(&fe, ip("::ffff:10.1.2.3")), Err(Refusal::Source));
    }

    #[test]
    fn no_rules_serve_everyone() {
        let fe = frontend(&[]);
        for peer in ["10.0.0.1", "::1", "::ffff:1.2.3.4"] {
            assert_eq!(check(&fe, ip(peer)), Ok(()), "{peer}");
        }
    }

    #[test]
    fn allow_and_deny() {
        let fe = frontend(&[
            "--allow",
            "10.0.0.0/8",
            "--allow",
            "2001:db8::/32",
            "--deny",
            "10.1.0.0/16",
            "--deny",
            "2001:db8::1",
        ]);
        for (peer, served) in [
            ("10.2.3.4", true),
            ("::ffff:10.2.3.4", true),
            ("10.1.2.3", false),
            ("::ffff:10.1.2.3", false),
            ("11.0.0.1", false),
            ("2001:db8::2", true),
            ("2001:db8::1", false),
            ("2001:db9::1", false),
        ] {
            let want = if served { Ok(()) } else { Err(Refusal::Source) };
            assert_eq!(check(&fe, ip(peer)), want, "{peer}");
        }
        let deny_only = frontend(&["--deny", "192.0.2.7"]);
        assert_eq!(check(&deny_only, ip("192.0.2.8")), Ok(()));
        assert_eq!(check(&deny_only, ip("192.0.2.7")), Err(Refusal::Source));
    }

    #[test]
    fn proxy_sources() {
        let fe = frontend(&["--accept-proxy", "--accept-proxy-from", "192.0.2.0/24"]);
        assert_eq!(check(&fe, ip("192.0.2.9")), Ok(()));
        assert_eq!(check(&fe, ip("::ffff:192.0.2.9")), Ok(()));
        assert_eq!(check(&fe, ip("198.51.100.1")), Err(Refusal::ProxySource));
        // The source rules come first.
        let fe = frontend(&[
            "--accept-proxy",
            "--accept-proxy-from",
            "192.0.2.0/24",
            "--deny",
            "192.0.2.9",
        ]);
        assert_eq!(check(&fe, ip("192.0.2.9")), Err(Refusal::Source));
    }

    #[test]
    fn cidr_parsing() {
        for (given, net) in [
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("10.1.2.3/8", "10.0.0.0/8"),
            ("10.1.2.3", "10.1.2.3/32"),
            ("::1", "::1/128"),
            ("2001:db8::/32", "2001:db8::/32"),
            ("::ffff:10.0.0.0/104", "10.0.0.0/8"),
            ("::ffff:10.1.2.3", "10.1.2.3/32"),
        ] {
            assert_eq!(parse_cidr(given), Ok(net.parse().unwrap()), "{given}");
        }
        for bad in [
            "127.0.0.300/8",
            "10.0.0.0/33",
            "::1/129",
            "",
            "10.0.0.0/",
            "any",
        ] {
            let err = parse_cidr(bad).unwrap_err();
            assert!(err.contains(&format!("'{bad}'")), "{err}");
        }
    }
}
