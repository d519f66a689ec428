//! The admin endpoint through the real binary: `/metrics` read by the
//! reference parser of the Prometheus text format (Python's
//! `prometheus_client`) with a frontend name that needs escaping.

mod common;

use std::io::Write;
use std::net::{Shutdown, SocketAddr};
use std::process::{Command, Stdio};

use common::{http_get, metric, read_to_end, wait_until, Backend, Ringlb, TempDir};

/// Interpreters to try for the parser: the one on PATH, then Debian's, which
/// is where `python3-prometheus-client` installs it.
const PYTHONS: &[&str] = &["python3", "/usr/bin/python3"];

/// Prints every sample of the exposition on stdin as JSON:
/// `{"types": {family: type}, "samples": [[name, labels, value]]}`.
const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
types, samples = {}, []
for family in text_string_to_metric_families(sys.stdin.read()):
    types[family.name] = family.type
    samples += [[s.name, s.labels, s.value] for s in family.samples]
print(json.dumps({"types": types, "samples": samples}))
"#;

/// `text` as parsed by `prometheus_client`; panics if no Python has it.
fn parse_exposition(text: &str) -> serde_json::Value {
    let python = PYTHONS
        .iter()
        .find(|p| {
            Command::new(p)
                .args(["-c", "import prometheus_client"])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .expect("no python3 with prometheus_client: apt-get install python3-prometheus-client");
    let mut child = Command::new(python)
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the parser refused /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn metrics_parse_with_the_reference_parser_whatever_the_frontend_name() {
    let name = "a\"b\\c\nd";
    let backend = Backend::echo();
    let dir = TempDir::new("admin-names");
    // A TOML basic string: \" \\ \n are the three characters to escape.
    let config = format!(
        "admin = \"127.0.0.1:0\"\nworkers = 2\n\n[[frontend]]\nname = \"a\\\"b\\\\c\\nd\"\nlisten = \"127.0.0.1:0\"\nbackends = [\"{}\"]\n",
        backend.arg()
    );
    let lb = Ringlb::start_with_config(&dir.write("ringlb.toml", &config), &[]);
    let admin: SocketAddr = lb.log_value("admin").parse().unwrap();

    let mut sent = 0.0;
    for i in 0..5 {
        let msg = vec![b'x'; 10 + i];
        let mut conn = lb.connect();
        conn.write_all(&msg).unwrap();
        conn.shutdown(Shutdown::Write).unwrap();
        assert_eq!(read_to_end(&mut conn), msg);
        sent += msg.len() as f64;
    }
    let escaped = "a\\\"b\\\\c\\nd";
    let mut text = String::new();
    wait_until("every connection closed and counted", || {
        text = http_get(admin, "/metrics").1;
        metric(
            &text,
            &format!("ringlb_connections_active{{frontend=\"{escaped}\"}}"),
        ) == 0
    });

    let parsed = parse_exposition(&text);
    assert_eq!(parsed["types"]["ringlb_connections"], "counter", "{parsed}");
    assert_eq!(parsed["types"]["ringlb_backend_up"], "gauge", "{parsed}");
    let samples = parsed["samples"].as_array().unwrap();
    for sample in samples {
        assert_eq!(sample[1]["frontend"], name, "{sample}");
    }
    let value = |series: &str, backend_label: Option<&str>| {
        samples
            .iter()
            .find(|s| s[0] == series && s[1]["backend"].as_str() == backend_label)
            .and_then(|s| s[2].as_f64())
            .unwrap_or_else(|| panic!("no {series} in {parsed}"))
    };
    assert_eq!(value("ringlb_connections_total", None), 5.0);
    assert_eq!(value("ringlb_bytes_in_total", None), sent);
    assert_eq!(value("ringlb_bytes_out_total", None), sent);
    let arg = backend.arg();
    assert_eq!(value("ringlb_backend_connections_total", Some(&arg)), 5.0);
    assert_eq!(value("ringlb_backend_bytes_out_total", Some(&arg)), sent);
    assert_eq!(value("ringlb_backend_up", Some(&arg)), 1.0);
}
