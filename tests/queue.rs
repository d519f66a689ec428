//! The queue at max-conns through the real binary: while every backend is
//! full, clients wait first in first out across workers, up to
//! `--queue-timeout`, at most `--max-queue` of them; a freed slot serves the
//! oldest. The queue's length, the time spent in it (a histogram) and its
//! timeouts are in the metrics and on the stats page's snapshot.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Mutex};

use common::{http_get, metric, wait_until, Backend, Ringlb};

/// A backend that records the first byte of each connection (the client's
/// number), echoes it, and holds the connection until the client closes.
fn recording() -> (Backend, Arc<Mutex<Vec<u8>>>) {
    let order = Arc::new(Mutex::new(Vec::new()));
    let seen = order.clone();
    let backend = Backend::spawn(move |mut conn| {
        let mut id = [0u8; 1];
        if conn.read_exact(&mut id).is_err() {
            return;
        }
        seen.lock().unwrap().push(id[0]);
        let _ = conn.write_all(&id);
        let _ = conn.read_to_end(&mut Vec::new());
    });
    (backend, order)
}

fn queue_length(lb: &Ringlb) -> u64 {
    let (_, text) = http_get(lb.admin_addr(), "/metrics");
    metric(&text, "ringlb_queue_length{frontend=\"default\"}")
}

fn scrape(lb: &Ringlb) -> String {
    http_get(lb.admin_addr(), "/metrics").1
}

/// The frontend's entry in `/stats.json`.
fn stats(lb: &Ringlb) -> serde_json::Value {
    let (_, body) = http_get(lb.admin_addr(), "/stats.json");
    let snapshot: serde_json::Value = serde_json::from_str(&body).unwrap();
    snapshot["frontends"][0].clone()
}

/// The queue-wait histogram's `_sum`, in seconds.
fn wait_sum(text: &str) -> f64 {
    let series = "ringlb_queue_wait_seconds_sum{frontend=\"default\"} ";
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

/// The queue-wait histogram's bucket `le`: clients that waited at most `le` s.
fn wait_bucket(text: &str, le: &str) -> u64 {
    metric(
        text,
        &format!("ringlb_queue_wait_seconds_bucket{{frontend=\"default\",le=\"{le}\"}}"),
    )
}

/// A client that has sent its number `id`.
fn client(lb: &Ringlb, id: u8) -> TcpStream {
    let mut conn = lb.connect();
    conn.write_all(&[id]).unwrap();
    conn
}

#[test]
fn a_freed_slot_serves_the_oldest_waiter_across_workers() {
    let (backend, order) = recording();
    let lb = Ringlb::builder()
        .backend_with(&backend, "max-conns=1")
        .workers(2)
        .admin()
        .arg("--queue-timeout", "30s")
        .start();
    let mut held = client(&lb, 0);
    let mut echo = [0u8; 1];
    held.read_exact(&mut echo).unwrap();
    // Five more, each queued before the next arrives (on either worker).
    let mut waiting: Vec<TcpStream> = Vec::new();
    for id in 1..=5u8 {
        waiting.push(client(&lb, id));
        wait_until("the client queued", || queue_length(&lb) == u64::from(id));
    }
    // The stats page's snapshot shows them waiting.
    let snapshot = stats(&lb);
    assert_eq!(snapshot["queued"], 5, "{snapshot}");
    assert_eq!(snapshot["max_queue"], 4096, "{snapshot}");
    assert_eq!(
        snapshot["queue_waits"], 0,
        "none has left the queue: {snapshot}"
    );
    // Each slot freed goes to the one that waited longest.
    let mut current = held;
    for (served, next) in waiting.into_iter().enumerate() {
        current.shutdown(Shutdown::Both).unwrap();
        drop(current);
        wait_until("the next client served", || {
            order.lock().unwrap().len() == served + 2
        });
        current = next;
    }
    assert_eq!(*order.lock().unwrap(), [0, 1, 2, 3, 4, 5]);
    assert_eq!(queue_length(&lb), 0);

    // Each of the five that queued is in the histogram once; the first
    // never waited.
    let text = scrape(&lb);
    assert_eq!(
        metric(
            &text,
            "ringlb_queue_wait_seconds_count{frontend=\"default\"}"
        ),
        5,
        "{text}"
    );
    assert_eq!(wait_bucket(&text, "+Inf"), 5, "{text}");
    assert!(
        text.contains("# TYPE ringlb_queue_wait_seconds histogram\n"),
        "{text}"
    );
    // Buckets are cumulative.
    let buckets: Vec<u64> = ["0.001", "0.01", "0.1", "1", "10", "+Inf"]
        .iter()
        .map(|le| wait_bucket(&text, le))
        .collect();
    assert!(
        buckets.windows(2).all(|w| w[0] <= w[1]),
        "{buckets:?}\n{text}"
    );
    assert!(wait_sum(&text) > 0.0, "{text}");
    let snapshot = stats(&lb);
    assert_eq!(snapshot["queued"], 0, "{snapshot}");
    assert_eq!(snapshot["queue_waits"], 5, "{snapshot}");
}

#[test]
fn past_max_queue_a_client_is_closed_at_once_and_a_waiter_past_the_timeout_too() {
    let (backend, _order) = recording();
    let lb = Ringlb::builder()
        .backend_with(&backend, "max-conns=1")
        .admin()
        .access_log()
        .arg("--max-queue", "2")
        .arg("--queue-timeout", "1s")
        .start();
    let mut held = client(&lb, 0);
    held.read_exact(&mut [0u8; 1]).unwrap();
    let mut first = client(&lb, 1);
    let _second = client(&lb, 2);
    wait_until("two queued", || queue_length(&lb) == 2);

    // The queue is full: the third is closed without waiting.
    let mut third = client(&lb, 3);
    assert_eq!(third.read(&mut [0u8; 1]).unwrap_or(0), 0);
    wait_until("its close logged", || {
        lb.log().contains("reason=no backend: all full, queue full")
    });

    // The waiters are closed at the queue timeout, and counted.
    assert_eq!(first.read(&mut [0u8; 1]).unwrap_or(0), 0);
    wait_until("both timeouts counted", || {
        let (_, text) = http_get(lb.admin_addr(), "/metrics");
        metric(&text, "ringlb_queue_timeouts_total{frontend=\"default\"}") == 2
    });
    assert!(lb
        .log()
        .contains("reason=no backend: all full until the queue timeout"));
    assert_eq!(queue_length(&lb), 0);

    // Both waited their second: none in the buckets up to half a second.
    // The one refused at once never queued.
    let text = scrape(&lb);
    assert_eq!(wait_bucket(&text, "0.5"), 0, "{text}");
    assert_eq!(wait_bucket(&text, "+Inf"), 2, "{text}");
    assert!(wait_sum(&text) >= 1.8, "{text}");
    let snapshot = stats(&lb);
    assert_eq!(snapshot["queue_timeouts"], 2, "{snapshot}");
    assert_eq!(snapshot["max_queue"], 2, "{snapshot}");
    assert!(
        snapshot["queue_wait_ms"].as_u64().unwrap() >= 1800,
        "{snapshot}"
    );
}
