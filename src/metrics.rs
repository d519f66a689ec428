//! The exposition: every metric's name, type, help text and source (the
//! workers' [`counters`](crate::counters) summed, a pool's state, a DNS
//! name's status) is one row of one table here; at scrape a
//! `prometheus-client` collector walks that table over the current frontends
//! (nothing on the data path), and [`render`] writes the Prometheus text
//! format, escaping label values.

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{prometheus_text, DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::backend::discovery::NameSample;
use crate::backend::pool::{AdminState, Pool};
use crate::counters::{
    BackendMetrics, Counter, Histogram, HistogramSum, Metrics, WorkerMetrics, QUEUE_WAIT_BOUNDS,
};

/// Whether a family only goes up or can go down.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Counter,
    Gauge,
    /// Per-bucket counts, their sum and count (`_bucket`, `_sum`, `_count`).
    Histogram,
}

/// Picks one counter out of a worker's.
type WorkerCounter = fn(&WorkerMetrics) -> &Counter;

/// Where a family's samples come from.
enum Source {
    /// A worker counter summed over workers: one sample per frontend.
    Frontend(fn(&WorkerMetrics) -> &Counter),
    /// A worker histogram summed over workers: one per frontend.
    FrontendHistogram(fn(&WorkerMetrics) -> &Histogram),
    /// Worker counters summed over workers, one per value of one label:
    /// one sample per frontend and value.
    ByLabel(&'static str, &'static [(&'static str, WorkerCounter)]),
    /// A backend's worker counter summed over workers: one sample per backend.
    Backend(fn(&BackendMetrics) -> &Counter),
    /// A value the pool keeps for each backend, across workers.
    Pool(fn(&Pool, usize) -> u64),
    /// A backend name DNS discovery follows: one sample per name.
    Name(fn(&NameSample) -> u64),
}

/// One sample's value.
enum Sample {
    /// A counter's or gauge's.
    Scalar(u64),
    /// A histogram's buckets and sum.
    Histogram(HistogramSum),
}

/// One metric family as exposed.
struct Family {
    /// The exposed name; a counter's ends in `_total`.
    name: &'static str,
    kind: Kind,
    help: &'static str,
    source: Source,
}

/// Every metric ringlb exposes, in exposition order: the one place for
/// names and help texts.
const FAMILIES: &[Family] = &[
    Family {
        name: "ringlb_connections_total",
        kind: Kind::Counter,
        help: "Client connections accepted.",
        source: Source::Frontend(|w| &w.connections_total),
    },
    Family {
        name: "ringlb_connections_active",
        kind: Kind::Gauge,
        help: "Client connections open.",
        source: Source::Frontend(|w| &w.connections_active),
    },
    Family {
        name: "ringlb_bytes_in_total",
        kind: Kind::Counter,
        help: "Bytes relayed from clients to backends.",
        source: Source::Frontend(|w| &w.bytes_in),
    },
    Family {
        name: "ringlb_bytes_out_total",
        kind: Kind::Counter,
        help: "Bytes relayed from backends to clients.",
        source: Source::Frontend(|w| &w.bytes_out),
    },
    Family {
        name: "ringlb_spliced_bytes_total",
        kind: Kind::Counter,
        help: "Bytes relayed (either way) through a kernel pipe, never copied: part of ringlb_bytes_in_total and ringlb_bytes_out_total.",
        source: Source::Frontend(|w| &w.spliced),
    },
    Family {
        name: "ringlb_send_zc_total",
        kind: Kind::Counter,
        help: "Sends made zero-copy (send-zc): the kernel sent from the relay's buffer.",
        source: Source::Frontend(|w| &w.send_zc),
    },
    Family {
        name: "ringlb_send_zc_copied_total",
        kind: Kind::Counter,
        help: "Zero-copy sends whose notification said the kernel copied the bytes after all (always on loopback).",
        source: Source::Frontend(|w| &w.send_zc_copied),
    },
    Family {
        name: "ringlb_connect_failures_total",
        kind: Kind::Counter,
        help: "Backend connects that failed or timed out.",
        source: Source::Frontend(|w| &w.connect_failures),
    },
    Family {
        name: "ringlb_local_connect_failures_total",
        kind: Kind::Counter,
        help: "Backend connects that failed for lack of local resources (descriptors, ports, memory); not held against the backend.",
        source: Source::Frontend(|w| &w.local_connect_failures),
    },
    Family {
        name: "ringlb_l4_failures_total",
        kind: Kind::Counter,
        help: "Backend connections reset or closed by the backend before its first byte, within connect-timeout (layer-4 observation).",
        source: Source::Frontend(|w| &w.l4_failures),
    },
    Family {
        name: "ringlb_relay_errors_total",
        kind: Kind::Counter,
        help: "Connections ended by a read or write error, by side.",
        source: Source::ByLabel(
            "side",
            &[
                ("client", |w| &w.client_errors),
                ("backend", |w| &w.backend_errors),
            ],
        ),
    },
    Family {
        name: "ringlb_accept_errors_total",
        kind: Kind::Counter,
        help: "Failed accept calls.",
        source: Source::Frontend(|w| &w.accept_errors),
    },
    Family {
        name: "ringlb_no_backend_total",
        kind: Kind::Counter,
        help: "Clients closed because no backend could take them.",
        source: Source::Frontend(|w| &w.no_backend),
    },
    Family {
        name: "ringlb_timeouts_total",
        kind: Kind::Counter,
        help: "Connections closed by the idle timeout or lifetime limit.",
        source: Source::Frontend(|w| &w.timeouts),
    },
    Family {
        name: "ringlb_proxy_header_errors_total",
        kind: Kind::Counter,
        help: "Clients closed for a bad PROXY protocol header.",
        source: Source::Frontend(|w| &w.proxy_header_errors),
    },
    Family {
        name: "ringlb_refused_total",
        kind: Kind::Counter,
        help: "Clients closed without a byte by the source rules (allow/deny), accept-proxy-from or a per-source limit, by reason.",
        source: Source::ByLabel(
            "reason",
            &[
                ("source", |w| &w.refused_source),
                ("proxy-source", |w| &w.refused_proxy_source),
                ("source-conns", |w| &w.refused_source_conns),
                ("source-rate", |w| &w.refused_source_rate),
            ],
        ),
    },
    Family {
        name: "ringlb_source_untracked_total",
        kind: Kind::Counter,
        help: "Clients of a new source served without a per-source limit because the source table had no room (every entry looked at had connections open).",
        source: Source::Frontend(|w| &w.source_untracked),
    },
    Family {
        name: "ringlb_sni_rejects_total",
        kind: Kind::Counter,
        help: "Clients closed before a backend was chosen by SNI routing, by reason.",
        source: Source::ByLabel(
            "reason",
            &[
                ("not_tls", |w| &w.sni_not_tls),
                ("malformed", |w| &w.sni_malformed),
                ("oversized", |w| &w.sni_oversized),
                ("timeout", |w| &w.sni_timeout),
                ("truncated", |w| &w.sni_truncated),
                ("no_route", |w| &w.sni_no_route),
            ],
        ),
    },
    Family {
        name: "ringlb_queue_length",
        kind: Kind::Gauge,
        help: "Clients waiting for a backend slot.",
        source: Source::Frontend(|w| &w.queued),
    },
    Family {
        name: "ringlb_queue_timeouts_total",
        kind: Kind::Counter,
        help: "Clients closed after waiting queue-timeout for a backend slot.",
        source: Source::Frontend(|w| &w.queue_timeouts),
    },
    Family {
        name: "ringlb_queue_wait_seconds",
        kind: Kind::Histogram,
        help: "Time clients spent in the queue at max-conns, whether a slot came or the queue timeout.",
        source: Source::FrontendHistogram(|w| &w.queue_wait),
    },
    Family {
        name: "ringlb_udp_sessions_total",
        kind: Kind::Counter,
        help: "UDP sessions opened (a client address's first datagram).",
        source: Source::Frontend(|w| &w.udp_sessions_total),
    },
    Family {
        name: "ringlb_udp_sessions_active",
        kind: Kind::Gauge,
        help: "UDP sessions open.",
        source: Source::Frontend(|w| &w.udp_sessions_active),
    },
    Family {
        name: "ringlb_udp_datagrams_total",
        kind: Kind::Counter,
        help: "UDP datagrams relayed, by direction: in (client to backend) and out (backend to client).",
        source: Source::ByLabel(
            "direction",
            &[
                ("in", |w| &w.udp_datagrams_in),
                ("out", |w| &w.udp_datagrams_out),
            ],
        ),
    },
    Family {
        name: "ringlb_udp_drops_total",
        kind: Kind::Counter,
        help: "UDP datagrams dropped, by reason.",
        source: Source::ByLabel(
            "reason",
            &[
                ("no-backend", |w| &w.udp_drops_no_backend),
                ("session-limit", |w| &w.udp_drops_session_limit),
                ("truncated", |w| &w.udp_drops_truncated),
                ("backend-unreachable", |w| &w.udp_drops_unreachable),
            ],
        ),
    },
    Family {
        name: "ringlb_backend_connections_total",
        kind: Kind::Counter,
        help: "Connections made to each backend.",
        source: Source::Backend(|b| &b.connections),
    },
    Family {
        name: "ringlb_backend_connections_active",
        kind: Kind::Gauge,
        help: "Connections open to each backend.",
        source: Source::Pool(|p, i| p.active(i) as u64),
    },
    Family {
        name: "ringlb_backend_connect_failures_total",
        kind: Kind::Counter,
        help: "Failed connects to each backend.",
        source: Source::Backend(|b| &b.connect_failures),
    },
    Family {
        name: "ringlb_backend_bytes_in_total",
        kind: Kind::Counter,
        help: "Bytes sent to each backend.",
        source: Source::Backend(|b| &b.bytes_in),
    },
    Family {
        name: "ringlb_backend_bytes_out_total",
        kind: Kind::Counter,
        help: "Bytes received from each backend.",
        source: Source::Backend(|b| &b.bytes_out),
    },
    Family {
        name: "ringlb_backend_up",
        kind: Kind::Gauge,
        help: "1 while the backend passes health checks.",
        source: Source::Pool(|p, i| p.is_up(i) as u64),
    },
    Family {
        name: "ringlb_backend_ready",
        kind: Kind::Gauge,
        help: "1 while the backend's runtime state is ready, 0 in drain or maint (admin endpoint).",
        source: Source::Pool(|p, i| (p.state(i) == AdminState::Ready) as u64),
    },
    Family {
        name: "ringlb_backend_weight",
        kind: Kind::Gauge,
        help: "The backend's weight now: as configured, or as set on the admin endpoint (0 takes no new connections).",
        source: Source::Pool(|p, i| u64::from(p.weight(i))),
    },
    Family {
        name: "ringlb_dns_addresses",
        kind: Kind::Gauge,
        help: "Addresses a backend name (host:port or srv:name) resolves to and that serve as backends now.",
        source: Source::Name(|n| n.addresses),
    },
    Family {
        name: "ringlb_dns_failures_total",
        kind: Kind::Counter,
        help: "Lookups of a backend name that failed (timeout, SERVFAIL...) or found nothing (NXDOMAIN, no records); the last addresses are kept.",
        source: Source::Name(|n| n.failures),
    },
    Family {
        name: "ringlb_dns_stale",
        kind: Kind::Gauge,
        help: "1 while a backend name's addresses are kept from an earlier answer because its lookups fail.",
        source: Source::Name(|n| n.stale as u64),
    },
    Family {
        name: "ringlb_dns_truncated_total",
        kind: Kind::Counter,
        help: "Answers for a backend name with more addresses than max-addresses; its lowest ones serve.",
        source: Source::Name(|n| n.truncated),
    },
];

impl Family {
    /// The name to hand the encoder, which appends `_total` to a counter's
    /// name itself.
    fn encoder_name(&self) -> &'static str {
        match self.kind {
            Kind::Counter => self.name.strip_suffix("_total").unwrap_or(self.name),
            Kind::Gauge | Kind::Histogram => self.name,
        }
    }

    fn encode(
        &self,
        frontends: &[ScrapedFrontend],
        names: &[NameSample],
        encoder: &mut DescriptorEncoder,
    ) -> fmt::Result {
        let metric_type = match self.kind {
            Kind::Counter => MetricType::Counter,
            Kind::Gauge => MetricType::Gauge,
            Kind::Histogram => MetricType::Histogram,
        };
        let mut family =
            encoder.encode_descriptor(self.encoder_name(), self.help, None, metric_type)?;
        let mut sample = |labels: &[(&str, &str)], value: Sample| {
            let metric = family.encode_family(&labels)?;
            match (self.kind, value) {
                (Kind::Counter, Sample::Scalar(v)) => ConstCounter::new(v).encode(metric),
                (_, Sample::Scalar(v)) => ConstGauge::new(v).encode(metric),
                (_, Sample::Histogram(h)) => {
                    let bounds = QUEUE_WAIT_BOUNDS.iter().copied().chain([f64::INFINITY]);
                    let buckets: Vec<(f64, u64)> = bounds.zip(h.buckets.iter().copied()).collect();
                    let sum = h.sum_us as f64 / 1e6;
                    let mut metric = metric;
                    metric.encode_histogram::<NoLabelSet>(sum, h.count(), &buckets, None)
                }
            }
        };
        if let Source::Name(f) = &self.source {
            for n in names {
                sample(&[("name", n.name.as_str())], Sample::Scalar(f(n)))?;
            }
            return Ok(());
        }
        for (m, pools) in frontends {
            let frontend = ("frontend", m.frontend.as_str());
            // A frontend with backends written as names labels every
            // backend with its name ("" for an address).
            let named = pools
                .iter()
                .any(|(_, pool, _)| (0..pool.len()).any(|i| pool.config(i).name.is_some()));
            // A frontend with routes labels every backend with its route;
            // the frontend's own pool is route "".
            let routed = pools.len() > 1;
            let backends = pools.iter().flat_map(|(route, pool, first)| {
                (0..pool.len()).map(move |i| (route.as_deref().unwrap_or(""), pool, i, first + i))
            });
            match &self.source {
                Source::Frontend(f) => sample(&[frontend], Sample::Scalar(m.sum(f)))?,
                Source::FrontendHistogram(f) => {
                    sample(&[frontend], Sample::Histogram(m.sum_histogram(f)))?
                }
                Source::ByLabel(label, values) => {
                    for (value, f) in *values {
                        sample(&[frontend, (label, value)], Sample::Scalar(m.sum(f)))?;
                    }
                }
                Source::Backend(_) | Source::Pool(_) => {
                    for (route, pool, i, counter) in backends {
                        let addr = pool.addr(i).to_string();
                        let name = pool.config(i).name.as_ref().map(|n| n.to_string());
                        let value = match &self.source {
                            Source::Backend(f) => m.sum_backend(counter, f),
                            Source::Pool(f) => f(pool, i),
                            _ => 0,
                        };
                        let mut labels = vec![frontend];
                        if routed {
                            labels.push(("route", route));
                        }
                        labels.push(("backend", &addr));
                        if named {
                            labels.push(("name", name.as_deref().unwrap_or("")));
                        }
                        sample(&labels, Sample::Scalar(value))?;
                    }
                }
                Source::Name(_) => {}
            }
        }
        Ok(())
    }
}

/// One pool as a scrape reads it: its route's name (`None` for the
/// frontend's own), the pool, and the index of its first backend in the
/// per-backend counters.
pub type ScrapedPool = (Option<String>, Arc<Pool>, usize);

/// One frontend as a scrape reads it: its counters and its pools.
pub type ScrapedFrontend = (Arc<Metrics>, Vec<ScrapedPool>);

/// What a scrape reads: each frontend's counters and pools, in config order.
pub type Frontends = Vec<ScrapedFrontend>;

/// The collector behind `/metrics`: at each scrape it asks for the current
/// frontends and sums their per-worker counters; it keeps no state of its own.
struct Collect<F, N>(F, N);

impl<F, N> fmt::Debug for Collect<F, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ringlb metrics collector")
    }
}

impl<F, N> Collector for Collect<F, N>
where
    F: Fn() -> Frontends + Send + Sync + 'static,
    N: Fn() -> Vec<NameSample> + Send + Sync + 'static,
{
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let frontends = (self.0)();
        let names = (self.1)();
        FAMILIES
            .iter()
            .try_for_each(|family| family.encode(&frontends, &names, &mut encoder))
    }
}

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// A registry exposing every family over whatever `frontends` and `names`
/// (the backend names DNS discovery follows) return at scrape time.
pub fn registry(
    frontends: impl Fn() -> Frontends + Send + Sync + 'static,
    names: impl Fn() -> Vec<NameSample> + Send + Sync + 'static,
) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Collect(frontends, names)));
    registry
}

/// The Prometheus text exposition (version 0.0.4) of `registry`.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing to a String fails only if a collector does, and ours does not.
    prometheus_text::encode(&mut out, registry).expect("encoding metrics into a String");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BackendConfig;
    use std::time::Duration;

    fn pool() -> Arc<Pool> {
        let passive = crate::backend::pool::Passive {
            fall: 3,
            fail_timeout: std::time::Duration::from_secs(10),
            active_checks: true,
            observe_l4: true,
        };
        let backend = BackendConfig {
            addr: "127.0.0.1:9000".parse().unwrap(),
            weight: 1,
            max_conns: None,
            backup: false,
            slow_start: None,
            name: None,
        };
        Arc::new(Pool::new(&[backend], passive))
    }

    fn scrape(frontends: Frontends) -> String {
        render(&registry(move || frontends.clone(), Vec::new))
    }

    #[test]
    fn sums_workers_and_renders_prometheus_text() {
        let m = Arc::new(Metrics::new("web", 2, 1));
        m.workers[0].connections_total.add(3);
        m.workers[1].connections_total.add(4);
        m.workers[0].backends[0].bytes_in.add(10);
        m.workers[1].backends[0].bytes_in.add(5);
        m.workers[1].connections_active.inc();
        m.workers[1].connections_active.inc();
        m.workers[1].connections_active.dec();
        m.workers[0].backend_errors.inc();
        m.workers[0].queue_wait.observe(Duration::from_millis(4));
        m.workers[1].queue_wait.observe(Duration::from_secs(2));
        m.workers[1].queue_wait.observe(Duration::from_secs(10));
        let text = scrape(vec![(m, vec![(None, pool(), 0)])]);
        for line in [
            "# HELP ringlb_connections_total Client connections accepted.\n",
            "# TYPE ringlb_connections_total counter\n",
            "ringlb_connections_total{frontend=\"web\"} 7\n",
            "ringlb_connections_active{frontend=\"web\"} 1\n",
            "ringlb_relay_errors_total{frontend=\"web\",side=\"client\"} 0\n",
            "ringlb_relay_errors_total{frontend=\"web\",side=\"backend\"} 1\n",
            "ringlb_backend_bytes_in_total{frontend=\"web\",backend=\"127.0.0.1:9000\"} 15\n",
            "ringlb_backend_up{frontend=\"web\",backend=\"127.0.0.1:9000\"} 1\n",
            "# TYPE ringlb_queue_length gauge\n",
            "ringlb_refused_total{frontend=\"web\",reason=\"proxy-source\"} 0\n",
            "ringlb_queue_wait_seconds_bucket{frontend=\"web\",le=\"0.005\"} 1\n",
            "ringlb_queue_wait_seconds_bucket{frontend=\"web\",le=\"2.5\"} 2\n",
            "ringlb_queue_wait_seconds_bucket{frontend=\"web\",le=\"+Inf\"} 3\n",
            "ringlb_queue_wait_seconds_sum{frontend=\"web\"} 12.004\n",
            "ringlb_queue_wait_seconds_count{frontend=\"web\"} 3\n",
        ] {
            assert!(text.contains(line), "no {line:?} in:\n{text}");
        }
    }

    #[test]
    fn routed_backends_are_labelled_with_their_route() {
        let m = Arc::new(Metrics::new("tls", 1, 2));
        m.workers[0].backends[1].connections.add(4);
        m.workers[0].sni_not_tls.add(2);
        let routes = vec![
            (None, pool(), 0),
            (Some("api.example".to_string()), pool(), 1),
        ];
        let text = scrape(vec![(m, routes)]);
        for line in [
            "ringlb_backend_connections_total{frontend=\"tls\",route=\"\",backend=\"127.0.0.1:9000\"} 0\n",
            "ringlb_backend_connections_total{frontend=\"tls\",route=\"api.example\",backend=\"127.0.0.1:9000\"} 4\n",
            "ringlb_sni_rejects_total{frontend=\"tls\",reason=\"not_tls\"} 2\n",
        ] {
            assert!(text.contains(line), "no {line:?} in:\n{text}");
        }
    }

    #[test]
    fn every_family_is_exposed_under_its_table_name_once() {
        let text = scrape(vec![(
            Arc::new(Metrics::new("web", 1, 1)),
            vec![(None, pool(), 0)],
        )]);
        assert!(!text.contains("_total_total"), "{text}");
        let types: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .collect();
        assert_eq!(types.len(), FAMILIES.len(), "{text}");
        for (family, line) in FAMILIES.iter().zip(types) {
            let kind = match family.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Histogram => "histogram",
            };
            assert_eq!(line, format!("{} {kind}", family.name));
            assert_eq!(
                family.kind == Kind::Counter,
                family.name.ends_with("_total")
            );
        }
    }

    #[test]
    fn backend_names_label_their_frontend_and_have_families_of_their_own() {
        let passive = pool().passive();
        let named = BackendConfig {
            addr: "127.0.0.2:80".parse().unwrap(),
            weight: 1,
            max_conns: None,
            backup: false,
            slow_start: None,
            name: Some(crate::config::BackendName::Host {
                host: "web.test".into(),
                port: 80,
            }),
        };
        let plain = BackendConfig {
            name: None,
            addr: "127.0.0.1:81".parse().unwrap(),
            ..named.clone()
        };
        let both = Arc::new(Pool::new(&[named, plain], passive));
        let m = Arc::new(Metrics::new("web", 1, 2));
        let names = vec![NameSample {
            name: "web.test:80".into(),
            addresses: 1,
            failures: 4,
            stale: true,
            truncated: 2,
        }];
        let frontends = vec![(m, vec![(None, both, 0)])];
        let text = render(&registry(move || frontends.clone(), move || names.clone()));
        for line in [
            "ringlb_backend_up{frontend=\"web\",backend=\"127.0.0.2:80\",name=\"web.test:80\"} 1\n",
            "ringlb_backend_up{frontend=\"web\",backend=\"127.0.0.1:81\",name=\"\"} 1\n",
            "ringlb_dns_addresses{name=\"web.test:80\"} 1\n",
            "ringlb_dns_failures_total{name=\"web.test:80\"} 4\n",
            "ringlb_dns_stale{name=\"web.test:80\"} 1\n",
            "ringlb_dns_truncated_total{name=\"web.test:80\"} 2\n",
        ] {
            assert!(text.contains(line), "no {line:?} in:\n{text}");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        let name = "a\"b\\c\nd";
        let m = Arc::new(Metrics::new(name, 1, 1));
        m.workers[0].connections_total.add(2);
        let text = scrape(vec![(m, vec![(None, pool(), 0)])]);
        assert!(
            text.contains("ringlb_connections_total{frontend=\"a\\\"b\\\\c\\nd\"} 2\n"),
            "{text}"
        );
    }
}
