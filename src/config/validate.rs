//! [`Config::validate`]: what parsing one value cannot check, such as a pool
//! per frontend, durations above zero, backend weights in range, unique names
//! and listen addresses that do not overlap. Pure: it reads the config and
//! nothing else, and its errors carry where they are.

use std::net::{IpAddr, SocketAddr};

use super::{
    BackendConfig, Config, ConfigError, FrontendConfig, HealthConfig, Key, Preset, Protocol,
    ProxyTlvs, ProxyVersion, RouteBy, DEFAULT_BUFFER_SIZE, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_QUEUE, DEFAULT_PROXY_HEADER_TIMEOUT, DEFAULT_PROXY_TLVS,
    DEFAULT_ROUTE_BY, DEFAULT_SESSION_TIMEOUT, DEFAULT_SNI_TIMEOUT, DEFAULT_SOURCE_LIMITS,
    MAX_WEIGHT,
};

impl Config {
    /// Checks what parsing one value cannot: durations above zero, a pool
    /// per frontend, backend weights and limits in range, unique names and
    /// listen addresses. The error says where (frontend, backend, key).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.frontends.is_empty() {
            return Err(ConfigError::NoFrontend);
        }
        for (i, fe) in self.frontends.iter().enumerate() {
            if let Some(key) = other_protocols_key(fe) {
                return Err(ConfigError::WrongProtocol {
                    frontend: i,
                    key,
                    protocol: fe.protocol,
                });
            }
            if fe.protocol == Protocol::Udp && fe.send_proxy == Some(ProxyVersion::V1) {
                return Err(ConfigError::ProxyV1Datagram { frontend: i });
            }
            if fe.udp.health_expect.is_some() && fe.udp.health_send.is_none() {
                return Err(ConfigError::ExpectWithoutSend { frontend: i });
            }
            match fe.route_by {
                RouteBy::None if !fe.routes.is_empty() => {
                    return Err(ConfigError::RoutesWithoutRouteBy { frontend: i })
                }
                RouteBy::None if fe.backends.is_empty() => {
                    return Err(ConfigError::NoBackend { frontend: i })
                }
                RouteBy::Sni if fe.routes.is_empty() && fe.backends.is_empty() => {
                    return Err(ConfigError::NoRoute { frontend: i })
                }
                _ => {}
            }
            check_backends(i, None, &fe.backends)?;
            for (r, route) in fe.routes.iter().enumerate() {
                let empty = |key| ConfigError::EmptyRoute {
                    frontend: i,
                    route: r,
                    label: route.label().to_string(),
                    key,
                };
                if route.sni.is_empty() {
                    return Err(empty(Key::Sni));
                }
                if route.backends.is_empty() {
                    return Err(empty(Key::Backends));
                }
                check_backends(i, Some(r), &route.backends)?;
                check_health(i, Some(r), &route.health)?;
                if route.health.checks {
                    for (key, value) in [
                        (Key::HealthInterval, route.health.interval),
                        (Key::HealthTimeout, route.health.timeout),
                    ] {
                        if value.is_zero() {
                            return Err(ConfigError::ZeroDuration {
                                frontend: i,
                                route: Some(r),
                                key,
                            });
                        }
                    }
                }
                let earlier = fe.routes[..r].iter().flat_map(|r| &r.sni);
                let seen: Vec<&String> = earlier.collect();
                for (k, name) in route.sni.iter().enumerate() {
                    if seen.contains(&name) || route.sni[..k].contains(name) {
                        return Err(ConfigError::DuplicateSni {
                            frontend: i,
                            route: r,
                            name: name.clone(),
                        });
                    }
                }
            }
            check_health(i, None, &fe.health)?;
            let health = Some(&fe.health).filter(|h| h.checks);
            for (key, value) in [
                (Key::ConnectTimeout, Some(fe.connect_timeout)),
                (Key::HealthInterval, health.map(|h| h.interval)),
                (Key::HealthTimeout, health.map(|h| h.timeout)),
                (Key::IdleTimeout, fe.idle_timeout),
                (Key::MaxLifetime, fe.max_lifetime),
                (Key::QueueTimeout, fe.queue_timeout),
                (Key::ProxyHeaderTimeout, Some(fe.proxy_header_timeout)),
                (Key::FailTimeout, Some(fe.fail_timeout)),
                (Key::SniTimeout, Some(fe.sni_timeout)),
                (Key::ResolveInterval, Some(fe.resolve_interval)),
                (Key::ResolveHold, Some(fe.resolve_hold)),
                (Key::SessionTimeout, Some(fe.udp.session_timeout)),
            ] {
                if value.is_some_and(|v| v.is_zero()) {
                    return Err(ConfigError::ZeroDuration {
                        frontend: i,
                        route: None,
                        key,
                    });
                }
            }
            if fe.sources.burst.is_some() && fe.sources.rate.is_none() {
                return Err(ConfigError::BurstWithoutRate { frontend: i });
            }
            if !fe.accept_proxy_from.is_empty() && !fe.accept_proxy {
                return Err(ConfigError::ProxyFromWithoutProxy { frontend: i });
            }
            let v2 = Some(ProxyVersion::V2);
            let sends_v2 = fe.send_proxy == v2 || fe.routes.iter().any(|r| r.send_proxy == v2);
            if fe.proxy_tlvs == ProxyTlvs::Forward && !(fe.accept_proxy && sends_v2) {
                return Err(ConfigError::TlvsNowhere { frontend: i });
            }
            for other in &self.frontends[..i] {
                if other.name == fe.name {
                    return Err(ConfigError::DuplicateName {
                        frontend: i,
                        name: fe.name.clone(),
                    });
                }
                // A TCP and a UDP socket never share clients.
                if other.protocol != fe.protocol {
                    continue;
                }
                if other.listen == fe.listen && fe.listen.port() != 0 {
                    return Err(ConfigError::DuplicateListen {
                        frontend: i,
                        addr: fe.listen,
                        first: other.name.clone(),
                        second: fe.name.clone(),
                    });
                }
                if listens_overlap(other.listen, fe.listen) {
                    return Err(ConfigError::OverlappingListen {
                        frontend: i,
                        addr: fe.listen,
                        first: other.name.clone(),
                        first_addr: other.listen,
                        second: fe.name.clone(),
                    });
                }
            }
        }
        Ok(())
    }
}

/// Checks that one pool's health keys go together: a preset's options with
/// that preset, steps without one, agent options with an agent port, and an
/// agent only with the health checks on.
fn check_health(
    frontend: usize,
    route: Option<usize>,
    h: &HealthConfig,
) -> Result<(), ConfigError> {
    let c = &h.check;
    let http = c.preset == Some(Preset::Http);
    let rules = [
        (
            Key::HealthSteps,
            !c.steps.is_empty() && c.preset.is_some(),
            "give a preset or steps, not both",
        ),
        (
            Key::HealthRole,
            c.role.is_some() && c.preset != Some(Preset::Redis),
            "needs preset = \"redis\"",
        ),
        (
            Key::HealthHttpPath,
            c.http_path.is_some() && !http,
            "needs preset = \"http\"",
        ),
        (
            Key::HealthHttpHost,
            c.http_host.is_some() && !http,
            "needs preset = \"http\"",
        ),
        (
            Key::HealthHttpStatus,
            c.http_status.is_some() && !http,
            "needs preset = \"http\"",
        ),
        (
            Key::HealthMysqlUser,
            c.mysql_user.is_some() && c.preset != Some(Preset::Mysql),
            "needs preset = \"mysql\"",
        ),
        (
            Key::AgentInterval,
            h.agent_interval.is_some() && h.agent_port.is_none(),
            "needs agent-port",
        ),
        (
            Key::AgentSend,
            h.agent_send.is_some() && h.agent_port.is_none(),
            "needs agent-port",
        ),
        (
            Key::AgentPort,
            h.agent_port.is_some() && !h.checks,
            "agent checks run with the health checks: needs enabled = true",
        ),
    ];
    if let Some((key, _, reason)) = rules.into_iter().find(|(_, broken, _)| *broken) {
        return Err(ConfigError::HealthKeys {
            frontend,
            route,
            key,
            reason,
        });
    }
    if h.checks && h.agent_interval.is_some_and(|d| d.is_zero()) {
        return Err(ConfigError::ZeroDuration {
            frontend,
            route,
            key: Key::AgentInterval,
        });
    }
    Ok(())
}

/// The first setting `fe` has that its protocol does not take: a TCP-only
/// setting away from its default on a UDP frontend, or the reverse.
fn other_protocols_key(fe: &FrontendConfig) -> Option<Key> {
    let tcp_only = [
        (Key::BufferSize, fe.buffer_size != DEFAULT_BUFFER_SIZE),
        (
            Key::ConnectTimeout,
            fe.connect_timeout != DEFAULT_CONNECT_TIMEOUT,
        ),
        (
            Key::IdleTimeout,
            fe.idle_timeout != Some(DEFAULT_IDLE_TIMEOUT),
        ),
        (Key::MaxLifetime, fe.max_lifetime.is_some()),
        (Key::MaxConns, fe.max_conns.is_some()),
        (Key::QueueTimeout, fe.queue_timeout.is_some()),
        (Key::MaxQueue, fe.max_queue != DEFAULT_MAX_QUEUE),
        (Key::AcceptProxy, fe.accept_proxy),
        (Key::ProxyTlvs, fe.proxy_tlvs != DEFAULT_PROXY_TLVS),
        (
            Key::ProxyHeaderTimeout,
            fe.proxy_header_timeout != DEFAULT_PROXY_HEADER_TIMEOUT,
        ),
        (Key::AcceptProxyFrom, !fe.accept_proxy_from.is_empty()),
        (
            Key::RouteBy,
            fe.route_by != DEFAULT_ROUTE_BY || !fe.routes.is_empty(),
        ),
        (Key::SniTimeout, fe.sni_timeout != DEFAULT_SNI_TIMEOUT),
        // The health presets, steps and agent speak TCP.
        (Key::HealthPreset, fe.health.check.preset.is_some()),
        (Key::HealthSteps, !fe.health.check.steps.is_empty()),
        (Key::AgentPort, fe.health.agent_port.is_some()),
        // Per-source limits count connections at accept.
        (Key::MaxConnsPerSource, fe.sources.max_conns.is_some()),
        (Key::RatePerSource, fe.sources.rate.is_some()),
        (Key::RateBurst, fe.sources.burst.is_some()),
        (
            Key::SourcePrefix,
            fe.sources.prefix_v4 != DEFAULT_SOURCE_LIMITS.prefix_v4,
        ),
        (
            Key::SourcePrefixV6,
            fe.sources.prefix_v6 != DEFAULT_SOURCE_LIMITS.prefix_v6,
        ),
        (
            Key::SourceTableSize,
            fe.sources.table_size != DEFAULT_SOURCE_LIMITS.table_size,
        ),
        (Key::SendZc, fe.send_zc),
    ];
    let udp = &fe.udp;
    let udp_only = [
        (
            Key::SessionTimeout,
            udp.session_timeout != DEFAULT_SESSION_TIMEOUT,
        ),
        (Key::Responses, udp.responses.is_some()),
        (Key::MaxSessions, udp.max_sessions.is_some()),
        (Key::HealthSend, udp.health_send.is_some()),
        (Key::HealthExpect, udp.health_expect.is_some()),
    ];
    let foreign = match fe.protocol {
        Protocol::Tcp => &udp_only[..],
        Protocol::Udp => &tcp_only[..],
    };
    foreign.iter().find(|(_, set)| *set).map(|(key, _)| *key)
}

/// Checks the weights and limits of one pool's backends.
fn check_backends(
    frontend: usize,
    route: Option<usize>,
    backends: &[BackendConfig],
) -> Result<(), ConfigError> {
    for (j, b) in backends.iter().enumerate() {
        let out_of_range = if !(1..=MAX_WEIGHT).contains(&b.weight) {
            Some((Key::Weight, b.weight))
        } else {
            b.max_conns.filter(|&n| n == 0).map(|n| (Key::MaxConns, n))
        };
        if let Some((key, value)) = out_of_range {
            return Err(ConfigError::BackendOutOfRange {
                frontend,
                route,
                backend: j,
                addr: b
                    .name
                    .as_ref()
                    .map_or_else(|| b.addr.to_string(), |n| n.to_string()),
                key,
                value,
            });
        }
    }
    Ok(())
}

/// Whether two listen addresses would share a port on some address, so the
/// kernel (SO_REUSEPORT) would split one frontend's clients with the other:
/// a wildcard covers every address of its family, and `[::]` is dual-stack,
/// so it covers IPv4 too. Port 0 is a fresh port each, so never overlaps.
fn listens_overlap(a: SocketAddr, b: SocketAddr) -> bool {
    fn covers(wildcard: IpAddr, other: IpAddr) -> bool {
        match wildcard {
            IpAddr::V4(w) => w.is_unspecified() && other.is_ipv4(),
            IpAddr::V6(w) => w.is_unspecified(),
        }
    }
    if a.port() != b.port() || a.port() == 0 {
        return false;
    }
    let (a, b) = (a.ip().to_canonical(), b.ip().to_canonical());
    a == b || covers(a, b) || covers(b, a)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::model::tests::{config, frontend};
    use crate::config::{parse_backend, parse_cidr, Location};

    /// `fe` as a UDP frontend with every TCP setting at its default.
    fn udp(mut fe: FrontendConfig) -> FrontendConfig {
        fe.protocol = Protocol::Udp;
        fe.idle_timeout = Some(DEFAULT_IDLE_TIMEOUT);
        fe
    }

    /// Every validation error says where it is, down to the backend.
    #[test]
    fn validation_errors_are_located() {
        let at = |frontend, backend, key| {
            Some(Location {
                frontend,
                route: None,
                backend,
                key,
            })
        };
        let web = || frontend("web", "127.0.0.1:80", &["127.0.0.1:9000"]);
        let api = || frontend("api", "127.0.0.1:81", &["127.0.0.1:9000"]);
        let mut cases: Vec<(Config, Option<Location>)> = Vec::new();
        cases.push((config(vec![]), None));
        let mut c = config(vec![web(), api()]);
        c.frontends[1].backends.clear();
        cases.push((c, at(1, None, Key::Backends)));
        let mut c = config(vec![web(), api()]);
        c.frontends[1]
            .backends
            .push(parse_backend("127.0.0.1:1,weight=0").unwrap());
        cases.push((c, at(1, Some(1), Key::Weight)));
        let mut c = config(vec![web()]);
        c.frontends[0].backends[0].max_conns = Some(0);
        cases.push((c, at(0, Some(0), Key::MaxConns)));
        let mut c = config(vec![web(), api()]);
        c.frontends[1].health.timeout = Duration::ZERO;
        cases.push((c, at(1, None, Key::HealthTimeout)));
        cases.push((config(vec![web(), api(), web()]), at(2, None, Key::Name)));
        let mut c = config(vec![web(), api()]);
        c.frontends[1].listen = c.frontends[0].listen;
        cases.push((c, at(1, None, Key::Listen)));
        let mut c = config(vec![web(), api()]);
        c.frontends[0].listen = "0.0.0.0:81".parse().unwrap();
        cases.push((c, at(1, None, Key::Listen)));
        let mut c = config(vec![web()]);
        c.frontends[0].fail_timeout = Duration::ZERO;
        cases.push((c, at(0, None, Key::FailTimeout)));
        let mut c = config(vec![web()]);
        c.frontends[0].idle_timeout = Some(Duration::ZERO);
        cases.push((c, at(0, None, Key::IdleTimeout)));
        let mut c = config(vec![web()]);
        c.frontends[0].accept_proxy_from = vec![parse_cidr("10.0.0.0/8").unwrap()];
        cases.push((c, at(0, None, Key::AcceptProxyFrom)));
        let mut c = config(vec![web()]);
        c.frontends[0].proxy_tlvs = ProxyTlvs::Forward;
        c.frontends[0].accept_proxy = true;
        c.frontends[0].send_proxy = Some(ProxyVersion::V1);
        cases.push((c, at(0, None, Key::ProxyTlvs)));
        let mut c = config(vec![udp(web())]);
        c.frontends[0].idle_timeout = None;
        cases.push((c, at(0, None, Key::IdleTimeout)));
        let mut c = config(vec![web()]);
        c.frontends[0].udp.responses = Some(1);
        cases.push((c, at(0, None, Key::Responses)));
        let mut c = config(vec![udp(web())]);
        c.frontends[0].udp.health_expect = Some(b"x".to_vec());
        cases.push((c, at(0, None, Key::HealthExpect)));
        let mut c = config(vec![udp(web())]);
        c.frontends[0].health.agent_port = Some(9999);
        cases.push((c, at(0, None, Key::AgentPort)));
        let mut c = config(vec![udp(web())]);
        c.frontends[0].sources.max_conns = Some(1);
        cases.push((c, at(0, None, Key::MaxConnsPerSource)));
        let mut c = config(vec![udp(web())]);
        c.frontends[0].send_proxy = Some(ProxyVersion::V1);
        cases.push((c, at(0, None, Key::SendProxy)));
        let mut c = config(vec![udp(web())]);
        c.frontends[0].udp.session_timeout = Duration::ZERO;
        cases.push((c, at(0, None, Key::SessionTimeout)));
        let mut c = config(vec![udp(web())]);
        c.frontends[0].send_zc = true;
        cases.push((c, at(0, None, Key::SendZc)));
        for (c, location) in cases {
            let err = c.validate().unwrap_err();
            assert_eq!(err.location(), location, "{err}");
        }
        assert!(config(vec![web(), api()]).validate().is_ok());
    }

    #[test]
    fn listen_overlaps() {
        let overlap = |a: &str, b: &str| {
            let (a, b) = (a.parse().unwrap(), b.parse().unwrap());
            let one = listens_overlap(a, b);
            assert_eq!(one, listens_overlap(b, a), "{a} {b} is not symmetric");
            one
        };
        for (a, b) in [
            ("127.0.0.1:80", "127.0.0.1:80"),
            ("0.0.0.0:80", "127.0.0.1:80"),
            ("0.0.0.0:80", "0.0.0.0:80"),
            ("[::]:80", "[::1]:80"),
            // [::] is dual-stack.
            ("[::]:80", "127.0.0.1:80"),
            ("[::]:80", "0.0.0.0:80"),
            ("[::ffff:127.0.0.1]:80", "127.0.0.1:80"),
            ("0.0.0.0:80", "[::ffff:10.0.0.1]:80"),
        ] {
            assert!(overlap(a, b), "{a} {b}");
        }
        for (a, b) in [
            ("0.0.0.0:80", "0.0.0.0:81"),
            ("0.0.0.0:0", "127.0.0.1:0"),
            ("[::]:0", "[::]:0"),
            ("127.0.0.1:80", "127.0.0.2:80"),
            ("0.0.0.0:80", "[::1]:80"),
            ("[::1]:80", "127.0.0.1:80"),
        ] {
            assert!(!overlap(a, b), "{a} {b}");
        }
    }

    #[test]
    fn tcp_and_udp_share_an_address() {
        let tcp = frontend("dns-tcp", "0.0.0.0:53", &["127.0.0.1:9"]);
        let mut udp = udp(frontend("dns-udp", "127.0.0.1:53", &["127.0.0.1:9"]));
        udp.udp.responses = Some(1);
        let mut both = config(vec![tcp, udp.clone()]);
        both.validate().unwrap();
        both.frontends[0] = FrontendConfig {
            name: "other".into(),
            ..udp
        };
        let err = both.validate().unwrap_err();
        assert_eq!(err.location().map(|l| l.key), Some(Key::Listen), "{err}");
    }

    #[test]
    fn a_foreign_key_names_the_protocol() {
        let mut udp = udp(frontend("u", "127.0.0.1:53", &["127.0.0.1:9"]));
        udp.accept_proxy = true;
        let err = config(vec![udp]).validate().unwrap_err();
        assert_eq!(
            err.to_string(),
            "--accept-proxy does not apply to a udp frontend (--protocol udp)"
        );
        assert_eq!(
            err.reason(),
            "does not apply to a frontend with protocol = \"udp\""
        );
    }

    #[test]
    fn overlap_error_names_both_sides() {
        let a = frontend("a", "0.0.0.0:8080", &["127.0.0.1:9"]);
        let b = frontend("b", "127.0.0.1:8080", &["127.0.0.1:9"]);
        let err = config(vec![a, b]).validate().unwrap_err().to_string();
        for part in ["'a'", "'b'", "0.0.0.0:8080", "127.0.0.1:8080"] {
            assert!(err.contains(part), "{err} lacks {part}");
        }
    }
}
