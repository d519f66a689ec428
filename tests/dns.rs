//! Backends that follow DNS, against a real authoritative DNS server
//! (hickory-server, in this process, UDP and TCP on a free loopback port)
//! whose records the tests change while clients go through ringlb. Backends
//! listen on 127.0.0.2-4, so one name can have several addresses.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{http_get, metric, run_to_exit, wait_until, Backend, Ringlb};
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Header, HeaderCounts, Metadata, ResponseCode};
use hickory_server::proto::rr::rdata::{A, SRV};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use hickory_server::Server;

/// The zone: records by lowercase name without the final dot. A name that
/// is not here is NXDOMAIN; a name here without records of the asked type
/// is an empty answer.
#[derive(Default)]
struct Zone {
    records: Mutex<HashMap<String, Vec<Record>>>,
    /// Names whose A queries are answered slowly, one at a time (see [`Dns::slow`]).
    slow: Mutex<Vec<String>>,
    /// How long each slow answer takes; zero answers the queued ones at once.
    slow_delay: Mutex<Duration>,
    /// Held while one slow answer is being made.
    slow_turn: tokio::sync::Mutex<()>,
    /// Slow names with a query waiting: the resolver's repeats of that
    /// query are answered with it and take no turn of their own.
    slow_waiting: Mutex<Vec<String>>,
    /// Slow queries received and answered so far.
    slow_started: AtomicUsize,
    slow_answered: AtomicUsize,
}

impl Zone {
    /// Waits out `name`'s delay if it is slow: one slow answer at a time, so
    /// slow queries asked together take as long as asked one after another.
    async fn delay(&self, name: &str) {
        if !self.slow.lock().unwrap().iter().any(|n| n == name) {
            return;
        }
        let waiting = |name: &str| self.slow_waiting.lock().unwrap().iter().any(|n| n == name);
        if waiting(name) {
            while waiting(name) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            return;
        }
        self.slow_waiting.lock().unwrap().push(name.into());
        self.slow_started.fetch_add(1, Ordering::SeqCst);
        let turn = self.slow_turn.lock().await;
        let delay = *self.slow_delay.lock().unwrap();
        tokio::time::sleep(delay).await;
        drop(turn);
        self.slow_waiting.lock().unwrap().retain(|n| n != name);
        self.slow_answered.fetch_add(1, Ordering::SeqCst);
    }
}

struct Handler(Arc<Zone>);

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = true;
        let answers: Vec<Record> = match request.request_info() {
            Ok(info) => {
                let name = info.query.name().to_string().to_lowercase();
                let name = name.trim_end_matches('.');
                let kind = info.query.query_type();
                if kind == RecordType::A {
                    self.0.delay(name).await;
                }
                match self.0.records.lock().unwrap().get(name) {
                    None => {
                        metadata.response_code = ResponseCode::NXDomain;
                        vec![]
                    }
                    Some(records) => records
                        .iter()
                        .filter(|r| r.record_type() == kind)
                        .cloned()
                        .collect(),
                }
            }
            Err(_) => {
                metadata.response_code = ResponseCode::FormErr;
                vec![]
            }
        };
        let builder = MessageResponseBuilder::from_message_request(request);
        let message = builder.build(metadata, answers.iter(), [], [], []);
        response.send_response(message).await.unwrap_or_else(|_| {
            ResponseInfo::from(Header {
                metadata,
                counts: HeaderCounts::default(),
            })
        })
    }
}

/// The DNS server: serves `zone` until stopped (or dropped).
struct Dns {
    addr: SocketAddr,
    zone: Arc<Zone>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

/// TTL of every record: short, so ringlb looks again every second.
const TTL: u32 = 1;

impl Dns {
    fn start() -> Dns {
        let zone = Arc::new(Zone::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let handler = Handler(zone.clone());
        let thread = thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                // UDP and TCP on one port: retry while the TCP side is taken.
                let (udp, tcp) = loop {
                    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
                    let addr = udp.local_addr().unwrap();
                    if let Ok(tcp) = tokio::net::TcpListener::bind(addr).await {
                        break (udp, tcp);
                    }
                };
                let addr = udp.local_addr().unwrap();
                let mut server = Server::new(handler);
                server.register_socket(udp);
                server.register_listener(tcp, Duration::from_secs(5), 4096);
                ready_tx.send(addr).unwrap();
                let _ = stopped.await;
                let _ = server.shutdown_gracefully().await;
            });
        });
        let addr = ready_rx.recv().unwrap();
        Dns {
            addr,
            zone,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Replaces `name`'s A records.
    fn set_a(&self, name: &str, ips: &[Ipv4Addr]) {
        let records = ips
            .iter()
            .map(|ip| Record::from_rdata(fqdn(name), TTL, RData::A(A(*ip))))
            .collect();
        self.replace(name, records);
    }

    /// Replaces `name`'s SRV records: (priority, weight, port, target).
    fn set_srv(&self, name: &str, targets: &[(u16, u16, u16, &str)]) {
        let records = targets
            .iter()
            .map(|&(priority, weight, port, target)| {
                let srv = SRV::new(priority, weight, port, fqdn(target));
                Record::from_rdata(fqdn(name), TTL, RData::SRV(srv))
            })
            .collect();
        self.replace(name, records);
    }

    /// Sets `name`'s records to `records`.
    fn replace(&self, name: &str, records: Vec<Record>) {
        self.zone
            .records
            .lock()
            .unwrap()
            .insert(name.into(), records);
    }

    /// Makes `names`' A queries answer after `delay` each, one answer at a
    /// time (AAAA at once); a zero delay answers every waiting query at once.
    fn slow(&self, names: &[String], delay: Duration) {
        *self.zone.slow.lock().unwrap() = names.to_vec();
        *self.zone.slow_delay.lock().unwrap() = delay;
    }

    /// Slow queries (received, answered) so far.
    fn slow_counts(&self) -> (usize, usize) {
        (
            self.zone.slow_started.load(Ordering::SeqCst),
            self.zone.slow_answered.load(Ordering::SeqCst),
        )
    }

    /// Takes `name` out of the zone: NXDOMAIN from now on.
    fn remove(&self, name: &str) {
        self.zone.records.lock().unwrap().remove(name);
    }

    /// Stops answering: the port is closed, lookups fail.
    fn stop(&mut self) {
        self.slow(&[], Duration::ZERO);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }

    fn arg(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.stop();
    }
}

fn fqdn(name: &str) -> Name {
    Name::from_ascii(format!("{name}.")).unwrap()
}

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

/// Tagged echo backends on 127.0.0.`last` for each of `lasts`, all on one
/// port (a name's addresses share its port); the tag is `last`.
fn backends_on_one_port(lasts: &[u8]) -> (u16, Vec<Backend>) {
    let at = |l: u8, port: u16| SocketAddr::new(IpAddr::V4(ip(l)), port);
    loop {
        let first = common::listen(at(lasts[0], 0));
        let port = first.local_addr().unwrap().port();
        // The port may be taken on another address (by a wildcard listener
        // elsewhere): then try another. The listeners bound here are the ones
        // the backends serve on, so nothing can take the port in between.
        let rest: Option<Vec<TcpListener>> = lasts[1..]
            .iter()
            .map(|&l| common::try_listen(at(l, port)).ok())
            .collect();
        let Some(rest) = rest else { continue };
        let backends = std::iter::once(first)
            .chain(rest)
            .zip(lasts)
            .map(|(listener, &l)| Backend::echo_on(listener, Some(l)))
            .collect();
        return (port, backends);
    }
}

/// Clients going through ringlb one after another on a few threads; each
/// reads the backend's tag, echoes a byte, and counts per tag and failures.
struct Load {
    seen: Arc<Mutex<HashMap<u8, usize>>>,
    failures: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Load {
    fn start(addr: SocketAddr, threads: usize) -> Load {
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let failures = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..threads)
            .map(|_| {
                let (seen, failures, stop) = (seen.clone(), failures.clone(), stop.clone());
                thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        match one_client(addr) {
                            Ok(tag) => *seen.lock().unwrap().entry(tag).or_default() += 1,
                            Err(err) => {
                                eprintln!("client failed: {err}");
                                failures.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        thread::sleep(Duration::from_millis(2));
                    }
                })
            })
            .collect();
        Load {
            seen,
            failures,
            stop,
            threads,
        }
    }

    fn count(&self, tag: u8) -> usize {
        self.seen.lock().unwrap().get(&tag).copied().unwrap_or(0)
    }

    fn total(&self) -> usize {
        self.seen.lock().unwrap().values().sum()
    }

    fn failures(&self) -> usize {
        self.failures.load(Ordering::SeqCst)
    }

    fn finish(mut self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            t.join().unwrap();
        }
        self.failures()
    }
}

/// One client: the backend's tag, then one byte echoed.
fn one_client(addr: SocketAddr) -> std::io::Result<u8> {
    let mut conn = common::client(addr);
    let mut tag = [0u8; 1];
    conn.read_exact(&mut tag)?;
    conn.write_all(b"x")?;
    let mut echo = [0u8; 1];
    conn.read_exact(&mut echo)?;
    if echo != *b"x" {
        return Err(std::io::Error::other("wrong echo"));
    }
    Ok(tag[0])
}

/// The /backends JSON of `lb`.
fn backends_json(lb: &Ringlb) -> Vec<serde_json::Value> {
    let (status, body) = http_get(lb.admin_addr(), "/backends");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn listed(lb: &Ringlb) -> Vec<String> {
    let mut out: Vec<String> = backends_json(lb)
        .iter()
        .map(|b| b["address"].as_str().unwrap().to_string())
        .collect();
    out.sort();
    out
}

#[test]
fn a_name_follows_its_records_under_load() {
    let started = Instant::now();
    let dns = Dns::start();
    let (port, backends) = backends_on_one_port(&[2, 3, 4]);
    dns.set_a("web.test", &[ip(2), ip(3)]);
    let name = format!("web.test:{port}");
    let mut dns = dns;
    let lb = Ringlb::over(&name)
        .arg("--resolver", dns.arg())
        .arg("--resolve-interval", "1s")
        .admin()
        .start();
    assert_eq!(
        listed(&lb),
        [format!("127.0.0.2:{port}"), format!("127.0.0.3:{port}")]
    );
    let entry = &backends_json(&lb)[0];
    assert_eq!(entry["name"], name.as_str(), "{entry}");

    let load = Load::start(lb.addr, 3);
    wait_until("both addresses serve", || {
        load.count(2) > 0 && load.count(3) > 0
    });

    // A third address: it gets traffic within two intervals.
    dns.set_a("web.test", &[ip(2), ip(3), ip(4)]);
    let changed = Instant::now();
    wait_until("the new address serves", || load.count(4) > 0);
    let took = changed.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "the new address took {took:?}; log:\n{}",
        lb.log()
    );

    // One address goes: it gets no new connection, and no client fails.
    dns.set_a("web.test", &[ip(2), ip(4)]);
    wait_until("127.0.0.3 is no longer listed", || {
        !listed(&lb).contains(&format!("127.0.0.3:{port}"))
    });
    // Workers take the new generation up just after the admin endpoint, and
    // clients already on 127.0.0.3 finish: let a few more go by first.
    let before = load.total();
    wait_until("a few more clients", || load.total() > before + 20);
    let served = backends[1].served();
    let before = load.total();
    wait_until("more clients served", || load.total() > before + 100);
    assert_eq!(
        backends[1].served(),
        served,
        "the removed address got clients"
    );

    // DNS goes away: service goes on with the last addresses.
    dns.stop();
    wait_until("a failed lookup", || {
        let (_, text) = http_get(lb.admin_addr(), "/metrics");
        metric(
            &text,
            &format!("ringlb_dns_failures_total{{name=\"{name}\"}}"),
        ) > 0
    });
    let (_, text) = http_get(lb.admin_addr(), "/metrics");
    assert_eq!(
        metric(&text, &format!("ringlb_dns_stale{{name=\"{name}\"}}")),
        1
    );
    assert_eq!(
        metric(&text, &format!("ringlb_dns_addresses{{name=\"{name}\"}}")),
        2
    );
    let label = format!("backend=\"127.0.0.2:{port}\",name=\"{name}\"");
    assert!(text.contains(&label), "no {label} in:\n{text}");
    let (two, four) = (load.count(2), load.count(4));
    wait_until("both kept addresses serve on", || {
        load.count(2) > two + 20 && load.count(4) > four + 20
    });
    assert_eq!(
        lb.log().matches("DNS lookup of").count(),
        1,
        "one warning per change of state; log:\n{}",
        lb.log()
    );
    assert_eq!(load.finish(), 0, "failed clients; log:\n{}", lb.log());
    eprintln!("took {:?}", started.elapsed());
}

#[test]
fn srv_records_give_ports_weights_and_backups() {
    let dns = Dns::start();
    let a = Backend::echo_at("127.0.0.2:0".parse().unwrap(), Some(b'a'));
    let b = Backend::echo_at("127.0.0.3:0".parse().unwrap(), Some(b'b'));
    let c = Backend::echo_at("127.0.0.4:0".parse().unwrap(), Some(b'c'));
    dns.set_a("a.svc.test", &[ip(2)]);
    dns.set_a("b.svc.test", &[ip(3)]);
    dns.set_a("c.svc.test", &[ip(4)]);
    dns.set_srv(
        "_app._tcp.svc.test",
        &[
            (10, 3, a.addr.port(), "a.svc.test"),
            (10, 1, b.addr.port(), "b.svc.test"),
            (20, 1, c.addr.port(), "c.svc.test"),
        ],
    );
    let lb = Ringlb::over("srv:_app._tcp.svc.test")
        .arg("--resolver", dns.arg())
        .workers(1)
        .admin()
        .start();
    let mut entries = backends_json(&lb);
    entries.sort_by_key(|e| e["address"].as_str().unwrap().to_string());
    let got: Vec<(String, u64, bool)> = entries
        .iter()
        .map(|e| {
            assert_eq!(e["name"], "srv:_app._tcp.svc.test", "{e}");
            let addr = e["address"].as_str().unwrap().to_string();
            (addr, e["weight"].as_u64().unwrap(), e["backup"] == true)
        })
        .collect();
    assert_eq!(
        got,
        [(a.arg(), 3, false), (b.arg(), 1, false), (c.arg(), 1, true)]
    );

    let mut seen: HashMap<u8, usize> = HashMap::new();
    for _ in 0..400 {
        *seen.entry(one_client(lb.addr).unwrap()).or_default() += 1;
    }
    let (na, nb) = (seen[&b'a'], seen.get(&b'b').copied().unwrap_or(0));
    assert!(
        (280..=320).contains(&na) && (80..=120).contains(&nb),
        "{seen:?}"
    );
    assert_eq!(
        seen.get(&b'c'),
        None,
        "the backup served while primaries were up"
    );

    // The primaries go: the higher priority value takes over.
    a.stop();
    b.stop();
    wait_until("the backup serves", || {
        one_client(lb.addr).is_ok_and(|tag| tag == b'c')
    });
}

#[test]
fn resolve_at_start_and_the_hold() {
    let dns = Dns::start();
    let (port, _backends) = backends_on_one_port(&[2]);
    let name = format!("later.test:{port}");
    let base = [
        "--listen",
        "127.0.0.1:0",
        "--backend",
        &name,
        "--resolver",
        &dns.arg(),
    ];
    // Unresolvable at start is an error, naming the name.
    let (status, out) = run_to_exit(&base);
    assert_eq!(status.code(), Some(2), "{out}");
    assert!(
        out.contains(&name) && out.contains("cannot resolve"),
        "{out}"
    );

    // Unless told otherwise: the backend starts empty and fills.
    let lb = Ringlb::builder()
        .args(&base)
        .flag("--resolve-at-start=false")
        .arg("--resolve-interval", "1s")
        .arg("--resolve-hold", "2s")
        .admin()
        .start();
    assert!(listed(&lb).is_empty());
    dns.set_a("later.test", &[ip(2)]);
    wait_until("the name resolves", || !listed(&lb).is_empty());
    assert_eq!(one_client(lb.addr).unwrap(), 2);

    // NXDOMAIN: the last address stays for the hold, then goes.
    dns.remove("later.test");
    wait_until("the NXDOMAIN is seen", || {
        lb.log().contains("has no addresses")
    });
    let seen = Instant::now();
    assert_eq!(listed(&lb).len(), 1, "gone before the hold");
    assert_eq!(one_client(lb.addr).unwrap(), 2);
    wait_until("the hold runs out", || listed(&lb).is_empty());
    assert!(
        seen.elapsed() >= Duration::from_millis(900),
        "{:?}",
        seen.elapsed()
    );
}

#[test]
fn a_reload_adds_and_checks_names() {
    let dns = Dns::start();
    let (port, _backends) = backends_on_one_port(&[2, 3, 4]);
    dns.set_a("web.test", &[ip(2), ip(3)]);
    let dir = common::TempDir::new("dns-reload");
    let file = |backend: &str| {
        format!(
            "admin = \"127.0.0.1:0\"\nresolvers = [\"{}\"]\n\n[[frontend]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\nbackends = [\"{backend}\"]\nresolve-interval = \"1s\"\n",
            dns.arg()
        )
    };
    let path = dir.write("ringlb.toml", &file(&format!("127.0.0.2:{port}")));
    let lb = Ringlb::builder().config(&path).start();
    assert_eq!(listed(&lb), [format!("127.0.0.2:{port}")]);

    // A reload brings a name in: resolved at once, then followed.
    dir.write("ringlb.toml", &file(&format!("web.test:{port}")));
    lb.signal("HUP");
    wait_until("the name's addresses", || listed(&lb).len() == 2);
    dns.set_a("web.test", &[ip(2), ip(3), ip(4)]);
    wait_until("the new address", || listed(&lb).len() == 3);

    // A reload with a name that does not resolve is rejected.
    dir.write("ringlb.toml", &file(&format!("nowhere.test:{port}")));
    lb.signal("HUP");
    wait_until("the rejection", || lb.log().contains("reload rejected"));
    assert!(lb.log().contains("nowhere.test"), "{}", lb.log());
    assert_eq!(listed(&lb).len(), 3);
    assert_eq!(
        one_client(lb.addr).map(|t| (2..=4).contains(&t)).ok(),
        Some(true)
    );
}

#[test]
fn a_name_gives_at_most_max_addresses_backends() {
    let dns = Dns::start();
    let (port, _backends) = backends_on_one_port(&[2, 3, 4, 5, 6, 7]);
    dns.set_a("many.test", &[ip(7), ip(3), ip(5), ip(2), ip(6), ip(4)]);
    let name = format!("many.test:{port}");
    let lb = Ringlb::over(&name)
        .arg("--resolver", dns.arg())
        .arg("--resolve-interval", "1s")
        .arg("--max-addresses", "4")
        .admin()
        .start();
    // The lowest four, whatever order DNS gives them in.
    let lowest: Vec<String> = (2..=5).map(|l| format!("127.0.0.{l}:{port}")).collect();
    assert_eq!(listed(&lb), lowest);
    let truncated = format!("ringlb_dns_truncated_total{{name=\"{name}\"}}");
    let (_, text) = http_get(lb.admin_addr(), "/metrics");
    assert!(metric(&text, &truncated) >= 1, "{text}");
    assert_eq!(
        metric(&text, &format!("ringlb_dns_addresses{{name=\"{name}\"}}")),
        4
    );
    // Every later cut answer counts; the set stays the same four.
    let before = metric(&text, &truncated);
    wait_until("another cut answer", || {
        let (_, text) = http_get(lb.admin_addr(), "/metrics");
        metric(&text, &truncated) > before
    });
    assert_eq!(listed(&lb), lowest);
    assert_eq!(
        lb.log().matches("max-addresses").count(),
        1,
        "one warning while the cut set stays the same; log:\n{}",
        lb.log()
    );
    // Under the cap again: every address.
    dns.set_a("many.test", &[ip(2), ip(6)]);
    wait_until("the two addresses", || listed(&lb).len() == 2);
    assert_eq!(
        listed(&lb),
        [format!("127.0.0.2:{port}"), format!("127.0.0.6:{port}")]
    );
}

#[test]
fn a_slow_srv_name_does_not_hold_back_another_names_change() {
    let dns = Dns::start();
    let (port, _backends) = backends_on_one_port(&[2, 3]);
    dns.set_a("fast.test", &[ip(2)]);
    // An SRV name with many targets, each answering slowly once switched on.
    const TARGETS: u16 = 20;
    let targets: Vec<String> = (0..TARGETS).map(|i| format!("t{i}.slow.test")).collect();
    for target in &targets {
        dns.set_a(target, &[ip(4)]);
    }
    let records: Vec<(u16, u16, u16, &str)> = targets
        .iter()
        .enumerate()
        .map(|(i, t)| (10, 1, 9000 + i as u16, t.as_str()))
        .collect();
    dns.set_srv("_slow._tcp.test", &records);
    let fast = format!("fast.test:{port}");
    let lb = Ringlb::over(&fast)
        .backend("srv:_slow._tcp.test")
        .arg("--resolver", dns.arg())
        .arg("--resolve-interval", "1s")
        .no_health_checks()
        .admin()
        .start();
    assert_eq!(listed(&lb).len(), 1 + TARGETS as usize);

    // Each target answers after 0.6 s, one answer at a time (under the
    // resolver's 1 s per query): the whole SRV name takes 12 s answered in turn.
    dns.slow(&targets, Duration::from_millis(600));
    wait_until("a lookup of the slow targets", || dns.slow_counts().0 > 0);
    let (_, answered) = dns.slow_counts();
    dns.set_a("fast.test", &[ip(2), ip(3)]);
    wait_until("the fast name's new address", || {
        listed(&lb).contains(&format!("127.0.0.3:{port}"))
    });
    // Looked up one after another, the slow round in flight (all of its
    // targets answered in turn) would come before the fast name's change.
    let later = dns.slow_counts().1 - answered;
    eprintln!("{later} slow answers came before the fast name's change");
    assert!(
        later < usize::from(TARGETS) / 2,
        "{later} slow answers came before the fast name's change; log:\n{}",
        lb.log()
    );
    // The slow name keeps its addresses meanwhile.
    assert_eq!(listed(&lb).len(), 2 + TARGETS as usize, "{}", lb.log());
}

/// Threads of process `pid`.
fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count()
}

#[test]
fn dns_generations_held_by_connections_do_not_add_threads() {
    let dns = Dns::start();
    let (port, _backends) = backends_on_one_port(&[2, 3]);
    dns.set_a("web.test", &[ip(2)]);
    let lb = Ringlb::over(format!("web.test:{port}"))
        .arg("--resolver", dns.arg())
        .arg("--resolve-interval", "1s")
        .health_interval("100ms")
        .workers(1)
        .admin()
        .start();
    // One connection per generation, held: it keeps its generation's pool.
    let hold = |held: &mut Vec<std::net::TcpStream>| {
        let mut conn = lb.connect();
        let mut tag = [0u8; 1];
        conn.read_exact(&mut tag).unwrap();
        conn.write_all(b"x").unwrap();
        conn.read_exact(&mut tag).unwrap();
        held.push(conn);
    };
    let mut held = Vec::new();
    hold(&mut held);
    let start = threads(lb.pid());
    const GENERATIONS: usize = 10;
    for g in 0..GENERATIONS {
        let set: &[Ipv4Addr] = if g % 2 == 0 {
            &[ip(2), ip(3)]
        } else {
            &[ip(2)]
        };
        dns.set_a("web.test", set);
        wait_until("the new generation", || listed(&lb).len() == set.len());
        hold(&mut held);
    }
    let end = threads(lb.pid());
    eprintln!("threads: {start} at start, {end} after {GENERATIONS} generations");
    assert!(
        end < start + GENERATIONS / 2,
        "threads grew from {start} to {end} over {GENERATIONS} DNS generations"
    );
}
