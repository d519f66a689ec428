//! Backends that follow DNS. A backend written as a name (`host:port`, A and
//! AAAA records, or `srv:_service._proto.name`, SRV records) stays a name in
//! the config: a template with its options. This module resolves every
//! name once at start (and when a reload adds one), then keeps resolving
//! them on one thread of its own (a current-thread tokio runtime with
//! hickory's resolver, never a worker), every `resolve-interval` or at the
//! records' TTL when that is sooner (at most once a second). Each address a
//! name yields becomes one backend with the name's options; an SRV record's
//! weight is the backend's weight unless the config set one, and targets
//! above the lowest priority value are backups.
//!
//! Discovery only produces address sets: when a name's addresses change it
//! calls the hook it was spawned with, and the frontend's publisher builds a
//! new generation from [`Discovery::config`], the running templates with
//! every name's current addresses (the file is not read again), serialised
//! with reloads. Workers pick the new pool up without a lock on the data
//! path; the generation's build carries the health of kept addresses over,
//! and open connections keep the pool they started with, so a removed
//! address drains.
//!
//! Failures keep the last good set: a timeout or an error answer (SERVFAIL,
//! REFUSED...) for good, NXDOMAIN or an empty answer for a name that
//! resolved before for `resolve-hold`, then its backends go. Each change of
//! a name's state is logged once and every failed lookup counted
//! (`ringlb_dns_failures_total`). The state machine ([`NameState`]), the
//! schedule and the mapping of answers to backends are pure.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::config::{BackendConfig, BackendName, Config, MAX_WEIGHT};

/// The shortest time between two lookups of a name, whatever its TTL.
pub const MIN_RESOLVE_DELAY: Duration = Duration::from_secs(1);
/// How long one lookup (with its retry) may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// A name could not be resolved where that is an error: at start, or for a
/// name a reload adds (unless `resolve-at-start = false`).
#[derive(Debug, thiserror::Error)]
#[error("cannot resolve '{name}': {reason} (--resolve-at-start=false starts its backends empty instead)")]
pub struct DiscoveryError {
    /// The name as written.
    pub name: String,
    /// What DNS said.
    pub reason: String,
}

/// One address a name yielded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Found {
    /// Where the backend listens.
    pub addr: SocketAddr,
    /// For an SRV target: its record's priority and weight.
    pub srv: Option<SrvRecord>,
}

/// What an SRV record says about its target besides the port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SrvRecord {
    /// Lower is preferred: the lowest value present is the primaries'.
    pub priority: u16,
    /// Relative share among targets of one priority.
    pub weight: u16,
}

/// What one lookup of a name gave.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// Addresses, and how long DNS says they hold.
    Found(Vec<Found>, Duration),
    /// NXDOMAIN, or no records of the type.
    Empty,
    /// No usable answer: a timeout, SERVFAIL, REFUSED, a network error.
    Failed(String),
}

/// A name's trouble, logged once per change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trouble {
    /// Lookups fail: the last set is kept.
    Failing,
    /// DNS says the name has no addresses: the last set is kept for the hold.
    Missing,
}

/// What a lookup changed that is worth a log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Lookups started failing; the last addresses stay.
    Failing(String),
    /// DNS said NXDOMAIN or nothing; `held` when the last addresses stay for
    /// the hold.
    Missing {
        /// Whether there were addresses to keep.
        held: bool,
    },
    /// The hold ran out: the name has no backends any more.
    Emptied,
    /// Answers again after trouble.
    Recovered,
}

/// One name's addresses and trouble, as lookups come in.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NameState {
    /// The last good set, sorted (so every instance orders backends alike).
    set: Vec<Found>,
    trouble: Option<Trouble>,
    /// Since when DNS has said the name is gone while it still had addresses.
    empty_since: Option<Instant>,
    /// Failed lookups, for /metrics.
    failures: u64,
}

impl NameState {
    /// Takes in one answer at `now`; returns whether the set changed and
    /// what to log.
    pub fn observe(
        &mut self,
        answer: Answer,
        now: Instant,
        hold: Duration,
    ) -> (bool, Option<Event>) {
        match answer {
            Answer::Found(mut set, _) => {
                set.sort();
                set.dedup();
                let changed = set != self.set;
                self.set = set;
                self.empty_since = None;
                (changed, self.trouble.take().map(|_| Event::Recovered))
            }
            Answer::Failed(why) => {
                self.failures += 1;
                let event = (self.trouble != Some(Trouble::Failing)).then_some(Event::Failing(why));
                self.trouble = Some(Trouble::Failing);
                (false, event)
            }
            Answer::Empty => {
                self.failures += 1;
                let held = !self.set.is_empty();
                let event =
                    (self.trouble != Some(Trouble::Missing)).then_some(Event::Missing { held });
                self.trouble = Some(Trouble::Missing);
                if !held {
                    return (false, event);
                }
                let since = *self.empty_since.get_or_insert(now);
                if now.saturating_duration_since(since) >= hold {
                    self.set.clear();
                    self.empty_since = None;
                    return (true, Some(Event::Emptied));
                }
                (false, event)
            }
        }
    }

    /// The current addresses.
    pub fn set(&self) -> &[Found] {
        &self.set
    }

    /// When the next lookup is due after one at `now`: after `interval`, or
    /// the answer's TTL if shorter (at least [`MIN_RESOLVE_DELAY`]), and no
    /// later than the end of a running hold.
    pub fn next_due(
        &self,
        now: Instant,
        interval: Duration,
        ttl: Option<Duration>,
        hold: Duration,
    ) -> Instant {
        let delay = ttl.map_or(interval, |ttl| ttl.max(MIN_RESOLVE_DELAY).min(interval));
        let due = now + delay;
        match self.empty_since {
            Some(since) => due.min((since + hold).max(now + MIN_RESOLVE_DELAY.min(delay))),
            None => due,
        }
    }
}

/// The backends `template` (a backend written as a name) stands for, given
/// its name's addresses: one per address with the template's options; for
/// SRV the record's weight (unless the config set one) and, above the
/// lowest priority value present, `backup`.
pub fn expand_backend(template: &BackendConfig, found: &[Found]) -> Vec<BackendConfig> {
    let weight_given = !matches!(
        template.name,
        Some(BackendName::Srv {
            weight_given: false,
            ..
        })
    );
    let primary = found.iter().filter_map(|f| f.srv).map(|s| s.priority).min();
    found
        .iter()
        .map(|f| {
            let mut b = template.clone();
            b.addr = f.addr;
            if let Some(srv) = f.srv {
                if !weight_given {
                    // Weight 0 is "rarely" in SRV; here the smallest share.
                    b.weight = u32::from(srv.weight).clamp(1, MAX_WEIGHT);
                }
                b.backup |= Some(srv.priority) != primary;
            }
            b
        })
        .collect()
}

/// `templates` with every backend written as a name replaced by the
/// backends its current addresses give (none for a name not resolved).
pub fn expand(templates: &Config, sets: &BTreeMap<BackendName, NameState>) -> Config {
    let each = |backends: &[BackendConfig]| -> Vec<BackendConfig> {
        backends
            .iter()
            .flat_map(|b| match &b.name {
                None => vec![b.clone()],
                Some(name) => sets
                    .get(&lookup_key(name))
                    .map_or_else(Vec::new, |s| expand_backend(b, s.set())),
            })
            .collect()
    };
    let mut config = templates.clone();
    for fe in &mut config.frontends {
        fe.backends = each(&fe.backends);
        for route in &mut fe.routes {
            route.backends = each(&route.backends);
        }
    }
    config
}

/// Every name `config` uses, with the shortest interval and hold of the
/// frontends using it.
pub fn names(config: &Config) -> BTreeMap<BackendName, (Duration, Duration)> {
    let mut out: BTreeMap<BackendName, (Duration, Duration)> = BTreeMap::new();
    for fe in &config.frontends {
        let pools = std::iter::once(&fe.backends).chain(fe.routes.iter().map(|r| &r.backends));
        for name in pools
            .flatten()
            .filter_map(|b| b.name.as_ref().map(lookup_key))
        {
            let entry = out
                .entry(name)
                .or_insert((fe.resolve_interval, fe.resolve_hold));
            entry.0 = entry.0.min(fe.resolve_interval);
            entry.1 = entry.1.min(fe.resolve_hold);
        }
    }
    out
}

/// What is looked up for `name`: the same for every spelling of its options
/// (an SRV name with a weight set or not is one lookup, one metric series).
fn lookup_key(name: &BackendName) -> BackendName {
    match name {
        BackendName::Srv { name, .. } => BackendName::Srv {
            name: name.clone(),
            weight_given: false,
        },
        host => host.clone(),
    }
}

/// One name as /metrics shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameSample {
    /// As written (`host:port` or `srv:name`).
    pub name: String,
    /// Addresses in use.
    pub addresses: u64,
    /// Failed lookups so far.
    pub failures: u64,
    /// Whether the addresses in use are a kept set (the last lookup failed).
    pub stale: bool,
}

/// The names' state for /metrics, updated after every lookup.
pub type Status = Mutex<Vec<NameSample>>;

/// A name being followed.
#[derive(Debug)]
struct Entry {
    state: NameState,
    interval: Duration,
    hold: Duration,
    due: Instant,
}

/// The running templates and every name's state.
#[derive(Debug)]
struct State {
    templates: Config,
    names: BTreeMap<BackendName, Entry>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Wakes the thread when a reload changed the names.
    wake: Notify,
    status: Arc<Status>,
}

/// The handle on discovery: for the server's reloads and the metrics.
#[derive(Debug, Clone)]
pub struct Discovery {
    shared: Arc<Shared>,
}

impl Discovery {
    /// Resolves every name of `config` once and returns the config with
    /// their addresses as backends. A name that does not resolve is an
    /// error unless `resolve-at-start` is off.
    pub fn start(config: Config) -> Result<(Discovery, Config), DiscoveryError> {
        let now = Instant::now();
        let wanted = names(&config);
        let answers = resolve_now(&config.resolvers, wanted.keys().cloned().collect());
        let mut entries = BTreeMap::new();
        for ((name, (interval, hold)), answer) in wanted.into_iter().zip(answers) {
            entries.insert(
                name.clone(),
                first_entry(&config, &name, answer, now, interval, hold)?,
            );
        }
        let expanded = expand(&config, &sets(&entries));
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                templates: config,
                names: entries,
            }),
            wake: Notify::new(),
            status: Arc::default(),
        });
        let discovery = Discovery { shared };
        discovery.update_status();
        Ok((discovery, expanded))
    }

    /// Starts the thread that keeps resolving, and calls `changed` after
    /// lookups that changed a name's addresses.
    pub fn spawn(&self, changed: impl Fn() + Send + 'static) -> std::io::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let this = self.clone();
        thread::Builder::new()
            .name("ringlb-dns".into())
            .spawn(move || rt.block_on(this.run(changed)))?;
        Ok(())
    }

    /// The running templates with every name's current addresses as backends.
    pub fn config(&self) -> Config {
        let state = lock(&self.shared.state);
        expand(&state.templates, &sets(&state.names))
    }

    /// The names' state for /metrics.
    pub fn status(&self) -> Arc<Status> {
        self.shared.status.clone()
    }

    /// Takes a reloaded config's templates: names it adds are resolved now
    /// (an error, as at start, unless `resolve-at-start` is off), names it
    /// keeps keep their addresses. Returns the config with addresses as
    /// backends.
    pub fn reload(&self, config: Config) -> Result<Config, DiscoveryError> {
        let now = Instant::now();
        let wanted = names(&config);
        let known: Vec<BackendName> = lock(&self.shared.state).names.keys().cloned().collect();
        let new: Vec<BackendName> = wanted
            .keys()
            .filter(|n| !known.contains(n))
            .cloned()
            .collect();
        let answers = resolve_now(&config.resolvers, new.clone());
        let mut added = BTreeMap::new();
        for (name, answer) in new.into_iter().zip(answers) {
            let (interval, hold) = wanted[&name];
            added.insert(
                name.clone(),
                first_entry(&config, &name, answer, now, interval, hold)?,
            );
        }
        let expanded = {
            let mut state = lock(&self.shared.state);
            state.names.retain(|name, _| wanted.contains_key(name));
            for (name, entry) in &mut state.names {
                (entry.interval, entry.hold) = wanted[name];
                entry.due = entry.due.min(now + entry.interval);
            }
            state.names.append(&mut added);
            state.templates = config;
            expand(&state.templates, &sets(&state.names))
        };
        self.update_status();
        self.shared.wake.notify_one();
        Ok(expanded)
    }

    /// The thread: look up each name when due, call `changed` when a set changed.
    async fn run(self, changed_hook: impl Fn()) {
        let mut resolver = None;
        loop {
            let woken = self.shared.wake.notified();
            let now = Instant::now();
            let (due, next) = {
                let state = lock(&self.shared.state);
                let due: Vec<BackendName> = state
                    .names
                    .iter()
                    .filter(|(_, e)| e.due <= now)
                    .map(|(n, _)| n.clone())
                    .collect();
                (due, state.names.values().map(|e| e.due).min())
            };
            if due.is_empty() {
                let sleep = next.map_or(Duration::from_secs(3600), |at| at - now);
                tokio::select! {
                    _ = tokio::time::sleep(sleep) => {}
                    _ = woken => {}
                }
                continue;
            }
            let resolver = match &resolver {
                Some(r) => r,
                None => match build_resolver(&lock(&self.shared.state).templates.resolvers) {
                    Ok(r) => resolver.insert(r),
                    Err(err) => {
                        warn!(%err, "cannot set up the DNS resolver: backend names are not resolved again");
                        return;
                    }
                },
            };
            let mut lookups = tokio::task::JoinSet::new();
            for name in due {
                let resolver = resolver.clone();
                lookups.spawn(async move {
                    let answer = lookup(&resolver, &name).await;
                    (name, answer)
                });
            }
            let mut changed = false;
            while let Some(done) = lookups.join_next().await {
                if let Ok((name, answer)) = done {
                    changed |= self.observe(&name, answer);
                }
            }
            self.update_status();
            if changed {
                changed_hook();
            }
        }
    }

    /// Takes one answer for `name` in; returns whether its set changed.
    fn observe(&self, name: &BackendName, answer: Answer) -> bool {
        let now = Instant::now();
        let mut state = lock(&self.shared.state);
        let Some(entry) = state.names.get_mut(name) else {
            return false;
        };
        let ttl = match &answer {
            Answer::Found(_, ttl) => Some(*ttl),
            _ => None,
        };
        let before = entry.state.set().to_vec();
        let (changed, event) = entry.state.observe(answer, now, entry.hold);
        entry.due = entry.state.next_due(now, entry.interval, ttl, entry.hold);
        log_event(name, event, entry.hold);
        if changed {
            let list = |set: &[Found]| {
                set.iter()
                    .map(|f| f.addr.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            };
            let after = entry.state.set();
            let added: Vec<&Found> = after.iter().filter(|f| !before.contains(f)).collect();
            let removed: Vec<&Found> = before.iter().filter(|f| !after.contains(f)).collect();
            info!(
                %name,
                addresses = %list(after),
                added = %added.iter().map(|f| f.addr.to_string()).collect::<Vec<_>>().join(","),
                removed = %removed.iter().map(|f| f.addr.to_string()).collect::<Vec<_>>().join(","),
                "backend name {name} resolves to {} address(es) now", after.len()
            );
        }
        changed
    }

    fn update_status(&self) {
        let samples: Vec<NameSample> = lock(&self.shared.state)
            .names
            .iter()
            .map(|(name, e)| NameSample {
                name: name.to_string(),
                addresses: e.state.set().len() as u64,
                failures: e.state.failures,
                stale: e.state.trouble.is_some() && !e.state.set().is_empty(),
            })
            .collect();
        *lock(&self.shared.status) = samples;
    }
}

/// A name's entry after its first lookup (at start, or added by a reload).
fn first_entry(
    config: &Config,
    name: &BackendName,
    answer: Answer,
    now: Instant,
    interval: Duration,
    hold: Duration,
) -> Result<Entry, DiscoveryError> {
    let ttl = match &answer {
        Answer::Found(set, _) if set.is_empty() => None,
        Answer::Found(_, ttl) => Some(*ttl),
        _ => None,
    };
    let failed = match &answer {
        Answer::Found(set, _) if !set.is_empty() => None,
        Answer::Found(..) | Answer::Empty => {
            Some("no addresses (NXDOMAIN or no records)".to_string())
        }
        Answer::Failed(why) => Some(why.clone()),
    };
    if let Some(reason) = &failed {
        if config.resolve_at_start {
            return Err(DiscoveryError {
                name: name.to_string(),
                reason: reason.clone(),
            });
        }
        warn!(%name, %reason, "backend name {name} does not resolve: its backends start empty");
    }
    let mut state = NameState::default();
    let (_, event) = state.observe(answer, now, hold);
    if failed.is_none() {
        log_event(name, event, hold);
    }
    Ok(Entry {
        due: state.next_due(now, interval, ttl, hold),
        state,
        interval,
        hold,
    })
}

fn log_event(name: &BackendName, event: Option<Event>, hold: Duration) {
    match event {
        None => {}
        Some(Event::Failing(why)) => {
            warn!(%name, error = %why, "DNS lookup of {name} failed: keeping its last addresses")
        }
        Some(Event::Missing { held: true }) => warn!(
            %name,
            "DNS says {name} has no addresses: keeping its last ones for {}",
            humantime::format_duration(hold)
        ),
        Some(Event::Missing { held: false }) => {
            warn!(%name, "DNS says {name} has no addresses")
        }
        Some(Event::Emptied) => {
            warn!(%name, "{name} still has no addresses: its backends are gone")
        }
        Some(Event::Recovered) => info!(%name, "DNS answers for {name} again"),
    }
}

fn sets(entries: &BTreeMap<BackendName, Entry>) -> BTreeMap<BackendName, NameState> {
    entries
        .iter()
        .map(|(n, e)| (n.clone(), e.state.clone()))
        .collect()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A resolver over `servers`, or /etc/resolv.conf's when empty; no cache,
/// so every lookup asks the server.
fn build_resolver(servers: &[SocketAddr]) -> Result<TokioResolver, NetError> {
    let mut builder = if servers.is_empty() {
        TokioResolver::builder_tokio()?
    } else {
        let servers = servers
            .iter()
            .map(|s| {
                let mut server = NameServerConfig::udp_and_tcp(s.ip());
                for c in &mut server.connections {
                    c.port = s.port();
                }
                server
            })
            .collect();
        TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(servers),
            TokioRuntimeProvider::default(),
        )
    };
    let options = builder.options_mut();
    options.cache_size = 0;
    options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    options.timeout = LOOKUP_TIMEOUT / 2;
    options.attempts = 1;
    builder.build()
}

/// Looks `names` up once, on this thread, in order (for start and reloads).
fn resolve_now(servers: &[SocketAddr], names: Vec<BackendName>) -> Vec<Answer> {
    if names.is_empty() {
        return Vec::new();
    }
    let failed = |why: String| names.iter().map(|_| Answer::Failed(why.clone())).collect();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => return failed(err.to_string()),
    };
    rt.block_on(async {
        let resolver = match build_resolver(servers) {
            Ok(r) => r,
            Err(err) => return failed(format!("cannot set up the resolver: {err}")),
        };
        let mut lookups = tokio::task::JoinSet::new();
        for (i, name) in names.iter().enumerate() {
            let (resolver, name) = (resolver.clone(), name.clone());
            lookups.spawn(async move { (i, lookup(&resolver, &name).await) });
        }
        let mut answers = vec![Answer::Failed("lookup did not finish".into()); names.len()];
        while let Some(done) = lookups.join_next().await {
            if let Ok((i, answer)) = done {
                answers[i] = answer;
            }
        }
        answers
    })
}

/// One lookup of `name`, within [`LOOKUP_TIMEOUT`] (for SRV, per step).
async fn lookup(resolver: &TokioResolver, name: &BackendName) -> Answer {
    match name {
        BackendName::Host { host, port } => lookup_host(resolver, host, *port, None).await,
        BackendName::Srv { name, .. } => {
            let records = match tokio::time::timeout(
                LOOKUP_TIMEOUT,
                resolver.srv_lookup(name.as_str()),
            )
            .await
            {
                Err(_) => return Answer::Failed("timed out".into()),
                Ok(Err(err)) => return classify(err),
                Ok(Ok(records)) => records,
            };
            let mut ttl = records
                .valid_until()
                .saturating_duration_since(Instant::now());
            let mut found = Vec::new();
            for record in records.answers() {
                let RData::SRV(srv) = &record.data else {
                    continue;
                };
                if srv.target.is_root() {
                    continue;
                }
                let meta = SrvRecord {
                    priority: srv.priority,
                    weight: srv.weight,
                };
                match lookup_host(resolver, &srv.target.to_string(), srv.port, Some(meta)).await {
                    Answer::Found(set, t) => {
                        found.extend(set);
                        ttl = ttl.min(t);
                    }
                    // A target without addresses serves nothing; the others still do.
                    Answer::Empty => {}
                    Answer::Failed(why) => {
                        return Answer::Failed(format!("target {}: {why}", srv.target))
                    }
                }
            }
            if found.is_empty() {
                Answer::Empty
            } else {
                Answer::Found(found, ttl)
            }
        }
    }
}

async fn lookup_host(
    resolver: &TokioResolver,
    host: &str,
    port: u16,
    srv: Option<SrvRecord>,
) -> Answer {
    match tokio::time::timeout(LOOKUP_TIMEOUT, resolver.lookup_ip(host)).await {
        Err(_) => Answer::Failed("timed out".into()),
        Ok(Err(err)) => classify(err),
        Ok(Ok(ips)) => {
            let ttl = ips.valid_until().saturating_duration_since(Instant::now());
            let set: Vec<Found> = ips
                .iter()
                .map(|ip| Found {
                    addr: SocketAddr::new(ip, port),
                    srv,
                })
                .collect();
            if set.is_empty() {
                Answer::Empty
            } else {
                Answer::Found(set, ttl)
            }
        }
    }
}

/// NXDOMAIN and "no records" say the name has no addresses; anything else
/// says nothing about it.
fn classify(err: NetError) -> Answer {
    match &err {
        NetError::Dns(DnsError::NoRecordsFound(none))
            if matches!(
                none.response_code,
                ResponseCode::NXDomain | ResponseCode::NoError
            ) =>
        {
            Answer::Empty
        }
        _ => Answer::Failed(err.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_backend;

    const HOLD: Duration = Duration::from_secs(30);
    const INTERVAL: Duration = Duration::from_secs(5);

    fn found(addrs: &[&str]) -> Vec<Found> {
        addrs
            .iter()
            .map(|a| Found {
                addr: a.parse().unwrap(),
                srv: None,
            })
            .collect()
    }

    fn answer(addrs: &[&str]) -> Answer {
        Answer::Found(found(addrs), Duration::from_secs(60))
    }

    #[test]
    fn a_new_set_is_a_change_and_order_does_not_matter() {
        let now = Instant::now();
        let mut s = NameState::default();
        assert_eq!(
            s.observe(answer(&["127.0.0.3:1", "127.0.0.2:1"]), now, HOLD),
            (true, None)
        );
        assert_eq!(s.set(), found(&["127.0.0.2:1", "127.0.0.3:1"]));
        assert_eq!(
            s.observe(answer(&["127.0.0.2:1", "127.0.0.3:1"]), now, HOLD),
            (false, None)
        );
        assert!(
            s.observe(
                answer(&["127.0.0.2:1", "127.0.0.3:1", "127.0.0.4:1"]),
                now,
                HOLD
            )
            .0
        );
        assert!(
            s.observe(answer(&["127.0.0.2:1", "127.0.0.4:1"]), now, HOLD)
                .0
        );
    }

    #[test]
    fn failures_keep_the_set_for_good_and_warn_once() {
        let now = Instant::now();
        let mut s = NameState::default();
        s.observe(answer(&["127.0.0.2:1"]), now, HOLD);
        let fail = || Answer::Failed("SERVFAIL".into());
        assert_eq!(
            s.observe(fail(), now, HOLD),
            (false, Some(Event::Failing("SERVFAIL".into())))
        );
        let much_later = now + Duration::from_secs(86_400);
        assert_eq!(
            s.observe(fail(), much_later, HOLD),
            (false, None),
            "once per change"
        );
        assert_eq!(s.set(), found(&["127.0.0.2:1"]));
        assert_eq!(s.failures, 2);
        assert_eq!(
            s.observe(answer(&["127.0.0.2:1"]), much_later, HOLD),
            (false, Some(Event::Recovered))
        );
    }

    #[test]
    fn nxdomain_keeps_the_set_for_the_hold_then_empties_it() {
        let t0 = Instant::now();
        let mut s = NameState::default();
        s.observe(answer(&["127.0.0.2:1"]), t0, HOLD);
        assert_eq!(
            s.observe(Answer::Empty, t0, HOLD),
            (false, Some(Event::Missing { held: true }))
        );
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(s.observe(Answer::Empty, t1, HOLD), (false, None));
        assert_eq!(s.set().len(), 1);
        // The hold bounds the next lookup, so the set goes on time.
        assert_eq!(
            s.next_due(t1, Duration::from_secs(60), None, HOLD),
            t0 + HOLD
        );
        assert_eq!(
            s.observe(Answer::Empty, t0 + HOLD, HOLD),
            (true, Some(Event::Emptied))
        );
        assert!(s.set().is_empty());
        // An answer within the hold cancels it.
        let mut s = NameState::default();
        s.observe(answer(&["127.0.0.2:1"]), t0, HOLD);
        s.observe(Answer::Empty, t0, HOLD);
        s.observe(answer(&["127.0.0.2:1"]), t1, HOLD);
        assert!(!s.observe(Answer::Empty, t0 + HOLD, HOLD).0, "a new hold");
        // Never resolved: nothing to hold.
        let mut s = NameState::default();
        assert_eq!(
            s.observe(Answer::Empty, t0, HOLD),
            (false, Some(Event::Missing { held: false }))
        );
    }

    #[test]
    fn next_lookup_at_the_ttl_when_shorter_but_not_within_a_second() {
        let now = Instant::now();
        let s = NameState::default();
        assert_eq!(s.next_due(now, INTERVAL, None, HOLD), now + INTERVAL);
        assert_eq!(
            s.next_due(now, INTERVAL, Some(Duration::from_secs(60)), HOLD),
            now + INTERVAL
        );
        assert_eq!(
            s.next_due(now, INTERVAL, Some(Duration::from_secs(2)), HOLD),
            now + Duration::from_secs(2)
        );
        assert_eq!(
            s.next_due(now, INTERVAL, Some(Duration::ZERO), HOLD),
            now + MIN_RESOLVE_DELAY
        );
    }

    fn srv(addr: &str, priority: u16, weight: u16) -> Found {
        Found {
            addr: addr.parse().unwrap(),
            srv: Some(SrvRecord { priority, weight }),
        }
    }

    #[test]
    fn srv_records_become_weighted_backends_and_backups() {
        let template = parse_backend("srv:_x._tcp.web.test,max-conns=9").unwrap();
        let set = [
            srv("127.0.0.2:81", 10, 3),
            srv("127.0.0.3:82", 10, 1),
            srv("127.0.0.4:83", 20, 0),
        ];
        let b = expand_backend(&template, &set);
        let got: Vec<_> = b
            .iter()
            .map(|b| (b.addr.port(), b.weight, b.backup, b.max_conns))
            .collect();
        assert_eq!(
            got,
            [
                (81, 3, false, Some(9)),
                (82, 1, false, Some(9)),
                (83, 1, true, Some(9))
            ]
        );
        assert!(b.iter().all(|b| b.name == template.name));
        // A configured weight wins over the records'.
        let template = parse_backend("srv:_x._tcp.web.test,weight=5").unwrap();
        assert!(expand_backend(&template, &set)
            .iter()
            .all(|b| b.weight == 5));
        // A name: every address on the name's port, with its options.
        let template = parse_backend("web.test:80,weight=4,backup").unwrap();
        let b = expand_backend(&template, &found(&["127.0.0.2:80", "[::1]:80"]));
        assert_eq!(b.len(), 2);
        assert!(b.iter().all(|b| b.weight == 4 && b.backup));
    }

    #[test]
    fn expanding_a_config_replaces_names_and_keeps_addresses() {
        use clap::Parser;
        let cli = crate::config::cli::Cli::try_parse_from([
            "ringlb",
            "--listen",
            "127.0.0.1:0",
            "--backend",
            "127.0.0.1:9",
            "--backend",
            "web.test:80",
            "--backend",
            "gone.test:80",
        ])
        .unwrap();
        let config = Config::from_cli(&cli).unwrap();
        let wanted = names(&config);
        assert_eq!(wanted.len(), 2);
        let now = Instant::now();
        let mut sets = BTreeMap::new();
        let mut web = NameState::default();
        web.observe(answer(&["127.0.0.3:80", "127.0.0.2:80"]), now, HOLD);
        sets.insert(
            wanted
                .keys()
                .find(|n| n.to_string() == "web.test:80")
                .unwrap()
                .clone(),
            web,
        );
        let expanded = expand(&config, &sets);
        let addrs: Vec<String> = expanded.frontends[0]
            .backends
            .iter()
            .map(|b| b.addr.to_string())
            .collect();
        assert_eq!(addrs, ["127.0.0.1:9", "127.0.0.2:80", "127.0.0.3:80"]);
    }
}
