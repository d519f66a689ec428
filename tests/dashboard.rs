//! deploy/grafana/ringlb.json queries only what ringlb exposes: every metric
//! name in its queries and template variables, and every label it groups
//! by, appears in a real `/metrics` scrape. So the dashboard and the metric
//! table in src/metrics.rs cannot drift apart.

mod common;

use std::collections::BTreeSet;

use common::{echo_once, http_get, Backend, Ringlb};

const DASHBOARD: &str = include_str!("../deploy/grafana/ringlb.json");

/// Every query string in the dashboard: panel targets and template variables.
fn queries(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr" | "definition", serde_json::Value::String(s)) => out.push(s.clone()),
                    ("query", serde_json::Value::String(s)) if s.contains("ringlb_") => {
                        out.push(s.clone())
                    }
                    _ => queries(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| queries(v, out)),
        _ => {}
    }
}

/// The `ringlb_*` names in a query.
fn metric_names(query: &str) -> Vec<String> {
    query
        .match_indices("ringlb_")
        .map(|(at, _)| {
            query[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

/// The labels of every `by (...)` in a query.
fn grouping_labels(query: &str) -> Vec<String> {
    query
        .match_indices("by (")
        .flat_map(|(at, _)| {
            let rest = &query[at + 4..];
            rest[..rest.find(')').unwrap()]
                .split(',')
                .map(|l| l.trim().to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn every_metric_and_label_the_dashboard_queries_is_scraped() {
    let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD).expect("valid JSON");
    let mut all = Vec::new();
    queries(&dashboard, &mut all);
    let panels = dashboard["panels"].as_array().unwrap();
    for panel in panels {
        let targets = panel["targets"].as_array().map_or(0, Vec::len);
        assert!(targets > 0, "panel without a query: {}", panel["title"]);
    }

    let backend = Backend::echo();
    let lb = Ringlb::builder()
        .arg("--listen", "127.0.0.1:0")
        .backend(&backend)
        .admin()
        .start();
    assert_eq!(echo_once(&lb, b"ping").unwrap(), b"ping");
    let (status, scrape) = http_get(lb.admin_addr(), "/metrics");
    assert_eq!(status, 200);
    let scraped: BTreeSet<&str> = scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| &l[..l.find(['{', ' ']).unwrap()])
        .collect();

    let mut queried = BTreeSet::new();
    for query in &all {
        for name in metric_names(query) {
            assert!(
                scraped.contains(name.as_str()),
                "the dashboard queries {name}, which /metrics lacks ({query}); scraped: {scraped:?}"
            );
            queried.insert(name);
        }
        for label in grouping_labels(query) {
            // Prometheus adds `instance` itself when it scrapes.
            if label != "instance" {
                assert!(
                    scrape.contains(&format!("{label}=\"")),
                    "the dashboard groups by {label}, which no scraped series has ({query})"
                );
            }
        }
    }
    // What the dashboard is for: traffic, backends, failures, errors, rejects.
    for needed in [
        "ringlb_connections_total",
        "ringlb_connections_active",
        "ringlb_bytes_in_total",
        "ringlb_bytes_out_total",
        "ringlb_backend_up",
        "ringlb_backend_connect_failures_total",
        "ringlb_relay_errors_total",
        "ringlb_refused_total",
        "ringlb_proxy_header_errors_total",
    ] {
        assert!(
            queried.contains(needed),
            "the dashboard does not chart {needed}"
        );
    }
}

#[test]
fn the_name_extraction_sees_through_promql() {
    let q = r#"sum by (frontend, side) (rate(ringlb_relay_errors_total{instance=~"$instance"}[$__rate_interval])) / ringlb_backend_up"#;
    assert_eq!(
        metric_names(q),
        ["ringlb_relay_errors_total", "ringlb_backend_up"]
    );
    assert_eq!(grouping_labels(q), ["frontend", "side"]);
}
