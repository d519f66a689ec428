//! Balancing and health against several real backends: spreads, weights,
//! least-conn, client-IP stickiness, a backend killed and restarted, max-conns.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};

use common::{
    http_get, metric, read_to_end, tag_of, visit, wait_until, Backend, Ringlb, Start, PATIENCE,
};

fn counts(tags: impl IntoIterator<Item = u8>, n: usize) -> Vec<usize> {
    let mut c = vec![0; n];
    for t in tags {
        c[t as usize] += 1;
    }
    c
}

#[test]
fn round_robin_spreads_evenly() {
    let backends: Vec<_> = (0..3).map(Backend::tagged).collect();
    let lb = Ringlb::builder().workers(2).backends(&backends).start();
    let c = counts((0..300).map(|_| visit(&lb)), 3);
    // Each worker rotates exactly; the two workers' phases differ by at most one each.
    for n in &c {
        assert!((98..=102).contains(n), "uneven spread {c:?}");
    }
}

#[test]
fn weights_are_honoured() {
    let (a, b) = (Backend::tagged(0), Backend::tagged(1));
    let lb = Ringlb::builder()
        .workers(1)
        .backend_with(&a, "weight=3")
        .backend(&b)
        .start();
    assert_eq!(counts((0..400).map(|_| visit(&lb)), 2), vec![300, 100]);
}

#[test]
fn least_conn_avoids_the_backend_holding_long_connections() {
    let (a, b) = (Backend::tagged(0), Backend::tagged(1));
    let lb = Ringlb::builder()
        .workers(1)
        .arg("--balance", "least-conn")
        .backends(&[&a, &b])
        .start();
    let held: Vec<_> = (0..10).map(|_| tag_of(lb.connect())).collect();
    assert_eq!(counts(held.iter().map(|(t, _)| *t), 2), vec![5, 5]);
    // Close the five on backend 1, keep the five on backend 0.
    let (on_a, on_b): (Vec<_>, Vec<_>) = held.into_iter().partition(|(t, _)| *t == 0);
    for (_, mut conn) in on_b {
        conn.shutdown(Shutdown::Write).unwrap();
        assert!(read_to_end(&mut conn).is_empty());
    }
    // Backend 1 now has none, backend 0 five: the next five all go to 1.
    let next: Vec<_> = (0..5).map(|_| tag_of(lb.connect())).collect();
    assert_eq!(counts(next.iter().map(|(t, _)| *t), 2), vec![0, 5]);
    drop(on_a);
}

/// A client connection from a chosen loopback source address.
fn connect_from(source: [u8; 4], to: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let from = SocketAddr::from((source, 0));
    socket.bind(&from.into()).unwrap();
    socket.connect_timeout(&to.into(), PATIENCE).unwrap();
    let conn: TcpStream = socket.into();
    conn.set_read_timeout(Some(PATIENCE)).unwrap();
    conn
}

#[test]
fn hash_keeps_a_client_on_its_backend() {
    let backends: Vec<_> = (0..4).map(Backend::tagged).collect();
    let lb = Ringlb::builder()
        .workers(2)
        .arg("--balance", "hash")
        .backends(&backends)
        .start();
    let mut first = Vec::new();
    for client in 1..=40u8 {
        let source = [127, 0, 3, client];
        let tags: Vec<u8> = (0..4)
            .map(|_| tag_of(connect_from(source, lb.addr)).0)
            .collect();
        assert!(
            tags.iter().all(|t| *t == tags[0]),
            "client {client} moved: {tags:?}"
        );
        first.push(tags[0]);
    }
    let c = counts(first, 4);
    assert!(
        c.iter().all(|n| *n > 0),
        "hash used only some backends: {c:?}"
    );
}

#[test]
fn killed_backend_is_taken_out_and_restarted_one_comes_back() {
    let a = Backend::tagged(0);
    let b = Backend::tagged(1);
    let lb = Ringlb::builder()
        .workers(2)
        .health_interval("50ms")
        .arg("--health-timeout", "200ms")
        .arg("--fall", "3")
        .arg("--rise", "2")
        .backends(&[&a, &b])
        .start();
    let b_addr = b.addr;
    b.stop();
    // While b is dying and after, every client is served (failover past refused connects).
    let down = format!("backend {b_addr} down after 3 failed");
    wait_until("b marked down", || {
        assert_eq!(visit(&lb), 0, "a client reached the stopped backend");
        lb.log().contains(&down)
    });
    let c = counts((0..20).map(|_| visit(&lb)), 2);
    assert_eq!(c, vec![20, 0]);

    let b = Backend::echo_at(b_addr, Some(1));
    let up = format!("backend {b_addr} up after 2 passed checks");
    wait_until("b back up", || lb.log().contains(&up));
    let c = counts((0..20).map(|_| visit(&lb)), 2);
    assert!(c[1] >= 8, "restarted backend gets no traffic: {c:?}");
    drop(b);
}

#[test]
fn every_backend_down_closes_clients_and_logs_once() {
    let a = Backend::tagged(0);
    let lb = Ringlb::builder()
        .health_interval("50ms")
        .arg("--fall", "2")
        .arg("--rise", "1")
        .backend(&a)
        .start();
    let addr = a.addr;
    a.stop();
    wait_until("all down", || lb.log().contains("every backend is down"));
    for _ in 0..5 {
        let mut conn = lb.connect();
        let mut buf = [0u8; 1];
        assert!(matches!(conn.read(&mut buf), Ok(0) | Err(_)));
    }
    assert_eq!(lb.log().matches("every backend is down").count(), 1);
    let _a = Backend::echo_at(addr, Some(0));
    wait_until("service resumed", || {
        lb.log().contains("a backend is up again")
    });
    assert_eq!(visit(&lb), 0);
}

/// ringlb with `workers` over `a` with `max-conns=1`, without health checks,
/// queueing clients for up to `connect_timeout`.
fn one_slot(a: &Backend, workers: usize, connect_timeout: &str) -> Start {
    Ringlb::builder()
        .workers(workers)
        .connect_timeout(connect_timeout)
        .no_health_checks()
        .backend_with(a, "max-conns=1")
}

#[test]
fn queued_clients_on_every_worker_are_woken_as_slots_free() {
    // Two workers, one slot: the queued clients land on either worker, and a
    // slot freed by one worker must wake a client queued on the other. The
    // connect timeout outlasts the clients' patience, so a missed wakeup
    // fails the test instead of ending the wait.
    let a = Backend::tagged(0);
    let lb = one_slot(&a, 2, "120s").admin().start();
    let admin: SocketAddr = lb.log_value("admin").parse().unwrap();
    let (_, mut first) = tag_of(lb.connect());
    let queued: Vec<_> = (0..6)
        .map(|_| {
            let conn = lb.connect();
            std::thread::spawn(move || {
                let (tag, mut conn) = tag_of(conn);
                conn.write_all(b"q").unwrap();
                conn.shutdown(Shutdown::Write).unwrap();
                (tag, read_to_end(&mut conn))
            })
        })
        .collect();
    wait_until("six clients queued", || {
        let text = http_get(admin, "/metrics").1;
        metric(&text, "ringlb_queue_length{frontend=\"default\"}") == 6
    });
    first.shutdown(Shutdown::Write).unwrap();
    assert!(read_to_end(&mut first).is_empty());
    for client in queued {
        assert_eq!(client.join().unwrap(), (0, b"q".to_vec()));
    }
}

#[test]
fn max_conns_queues_then_times_out() {
    let a = Backend::tagged(0);
    let lb = one_slot(&a, 1, "300ms").start();
    let (_, mut first) = tag_of(lb.connect());
    // The second client waits for the slot...
    let mut second = lb.connect();
    (&second).write_all(b"queued").unwrap();
    // ...and is closed when the connect timeout passes with the slot still taken.
    let mut buf = [0u8; 1];
    assert!(
        matches!(second.read(&mut buf), Ok(0) | Err(_)),
        "queued client was served past max-conns"
    );

    // A queued client gets the slot as soon as it frees.
    let third = lb.connect();
    let releaser = std::thread::spawn(move || {
        first.shutdown(Shutdown::Write).unwrap();
        read_to_end(&mut first)
    });
    let (tag, mut third) = tag_of(third);
    assert_eq!(tag, 0);
    third.write_all(b"y").unwrap();
    third.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_end(&mut third), b"y");
    releaser.join().unwrap();
}

#[test]
fn a_backup_serves_only_while_no_primary_is_up() {
    let primary = Backend::tagged(0);
    let backup = Backend::tagged(1);
    let lb = Ringlb::builder()
        .workers(2)
        .health_interval("50ms")
        .arg("--health-timeout", "200ms")
        .arg("--rise", "1")
        .backend(&primary)
        .backend_with(&backup, "backup")
        .start();
    assert_eq!(
        counts((0..20).map(|_| visit(&lb)), 2),
        vec![20, 0],
        "the backup idles while the primary is up"
    );

    let primary_addr = primary.addr;
    primary.stop();
    // Every client is served while the primary dies (failover reaches the
    // backup once no primary is up), and then all go to the backup.
    wait_until("the backup takes over", || visit(&lb) == 1);
    assert_eq!(counts((0..20).map(|_| visit(&lb)), 2), vec![0, 20]);

    let primary = Backend::echo_at(primary_addr, Some(0));
    wait_until("the primary takes back", || visit(&lb) == 0);
    assert_eq!(counts((0..20).map(|_| visit(&lb)), 2), vec![20, 0]);
    drop(primary);
}
