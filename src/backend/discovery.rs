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
//! Answers are bounded: a name gives at most `max-addresses` backends (the
//! lowest addresses, SRV targets of the lowest priority value first, so every
//! instance keeps the same ones), a cut answer is counted
//! (`ringlb_dns_truncated_total`) and warned about once per change of the
//! kept set, and a name's lookup, an SRV name's targets included (looked up
//! together), has one deadline. Each name is looked up on its own schedule,
//! so a slow name holds back no other's change; the log line of a change
//! gives counts and a few addresses, computed outside the state's lock.
//!
//! Failures keep the last good set: a timeout or an error answer (SERVFAIL,
//! REFUSED...) for good, NXDOMAIN or an empty answer for a name that
//! resolved before for `resolve-hold`, then its backends go. Each change of
//! a name's state is logged once and every failed lookup counted
//! (`ringlb_dns_failures_total`). The state machine ([`NameState`]), the
//! schedule and the mapping of answers to backends are pure.

use std::collections::{BTreeMap, BTreeSet};
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
use crate::logging::Throttle;

/// The shortest time between two lookups of a name, whatever its TTL.
pub const MIN_RESOLVE_DELAY: Duration = Duration::from_secs(1);
/// How long one lookup of a name may take, an SRV name's targets included.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one DNS query may take (the resolver does not retry).
const QUERY_TIMEOUT: Duration = Duration::from_secs(1);
/// An SRV name's targets looked up at once.
const TARGETS_AT_ONCE: usize = 32;
/// At most one warning per name this often about a cut answer.
const TRUNCATED_WARNING_EVERY: Duration = Duration::from_secs(60);
/// Addresses a change's log line names, of those added and of those removed.
const LOGGED_ADDRESSES: usize = 4;

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
    /// Answers cut to the cap, for /metrics.
    truncated: u64,
    /// How many addresses the last answer had when it was cut.
    cut_from: Option<usize>,
}

impl NameState {
    /// Takes in one answer at `now`, keeping at most `cap` addresses of
    /// it; returns whether the set changed and what to log.
    pub fn observe(
        &mut self,
        answer: Answer,
        now: Instant,
        hold: Duration,
        cap: usize,
    ) -> (bool, Option<Event>) {
        match answer {
            Answer::Found(mut set, _) => {
                set.sort();
                set.dedup();
                self.cut_from = None;
                if set.len() > cap {
                    self.cut_from = Some(set.len());
                    self.truncated += 1;
                    keep_lowest(&mut set, cap);
                }
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

    /// How many addresses the last answer had, when more than the cap.
    pub fn cut_from(&self) -> Option<usize> {
        self.cut_from
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

/// Cuts the sorted `set` to its `cap` lowest addresses, SRV targets of the
/// lowest priority value first (the primaries stay primaries); still sorted.
fn keep_lowest(set: &mut Vec<Found>, cap: usize) {
    if set.len() <= cap {
        return;
    }
    set.sort_by_key(|f| (f.srv.map(|s| s.priority), f.addr, f.srv));
    set.truncate(cap);
    set.sort();
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

/// How a name is followed: the shortest interval and hold, and the lowest
/// cap, of the frontends using it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Follow {
    /// `resolve-interval`.
    pub interval: Duration,
    /// `resolve-hold`.
    pub hold: Duration,
    /// `max-addresses`.
    pub cap: usize,
}

/// Every name `config` uses, and how it is followed.
pub fn names(config: &Config) -> BTreeMap<BackendName, Follow> {
    let mut out: BTreeMap<BackendName, Follow> = BTreeMap::new();
    for fe in &config.frontends {
        let pools = std::iter::once(&fe.backends).chain(fe.routes.iter().map(|r| &r.backends));
        let cap = fe.max_addresses as usize;
        for name in pools
            .flatten()
            .filter_map(|b| b.name.as_ref().map(lookup_key))
        {
            let entry = out.entry(name).or_insert(Follow {
                interval: fe.resolve_interval,
                hold: fe.resolve_hold,
                cap,
            });
            entry.interval = entry.interval.min(fe.resolve_interval);
            entry.hold = entry.hold.min(fe.resolve_hold);
            entry.cap = entry.cap.min(cap);
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
    /// Answers cut to `max-addresses` so far.
    pub truncated: u64,
}

/// The names' state for /metrics, updated after every lookup.
pub type Status = Mutex<Vec<NameSample>>;

/// A name being followed.
#[derive(Debug)]
struct Entry {
    state: NameState,
    follow: Follow,
    due: Instant,
    /// Bounds the warnings about cut answers of a name whose set keeps changing.
    cut_warnings: Throttle,
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
        for ((name, follow), answer) in wanted.into_iter().zip(answers) {
            entries.insert(
                name.clone(),
                first_entry(&config, &name, answer, now, follow)?,
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
            let follow = wanted[&name];
            added.insert(
                name.clone(),
                first_entry(&config, &name, answer, now, follow)?,
            );
        }
        let expanded = {
            let mut state = lock(&self.shared.state);
            state.names.retain(|name, _| wanted.contains_key(name));
            for (name, entry) in &mut state.names {
                let follow = wanted[name];
                // A lower cap cuts the kept set now; a higher one waits for
                // the next answer.
                keep_lowest(&mut entry.state.set, follow.cap);
                entry.follow = follow;
                entry.due = entry.due.min(now + follow.interval);
            }
            state.names.append(&mut added);
            state.templates = config;
            expand(&state.templates, &sets(&state.names))
        };
        self.update_status();
        self.shared.wake.notify_one();
        Ok(expanded)
    }

    /// The thread: look up each name when it is due, each on its own (a
    /// slow name holds back no other), and call `changed` when a set changed.
    async fn run(self, changed_hook: impl Fn()) {
        // Set up when a name is first due: a config without names needs none.
        let mut resolver: Option<TokioResolver> = None;
        let mut lookups = tokio::task::JoinSet::new();
        let mut in_flight: BTreeSet<BackendName> = BTreeSet::new();
        loop {
            let woken = self.shared.wake.notified();
            let now = Instant::now();
            let (due, next) = {
                let state = lock(&self.shared.state);
                let waiting = state.names.iter().filter(|(n, _)| !in_flight.contains(*n));
                let due: Vec<BackendName> = waiting
                    .clone()
                    .filter(|(_, e)| e.due <= now)
                    .map(|(n, _)| n.clone())
                    .collect();
                (due, waiting.map(|(_, e)| e.due).min())
            };
            if !due.is_empty() && resolver.is_none() {
                match build_resolver(&lock(&self.shared.state).templates.resolvers) {
                    Ok(r) => resolver = Some(r),
                    Err(err) => {
                        warn!(%err, "cannot set up the DNS resolver: backend names are not resolved again");
                        return;
                    }
                }
            }
            for name in due {
                let Some(resolver) = resolver.clone() else {
                    break;
                };
                in_flight.insert(name.clone());
                lookups.spawn(async move {
                    let answer = lookup(&resolver, &name).await;
                    (name, answer)
                });
            }
            let sleep = next.map_or(Duration::from_secs(3600), |at| {
                at.saturating_duration_since(now)
            });
            let first = tokio::select! {
                done = lookups.join_next(), if !lookups.is_empty() => done,
                _ = tokio::time::sleep(sleep) => None,
                _ = woken => None,
            };
            let Some(first) = first else {
                continue;
            };
            // Answers that came in together make one change.
            let mut changed = false;
            let mut done = Some(first);
            while let Some(result) = done {
                if let Ok((name, answer)) = result {
                    in_flight.remove(&name);
                    changed |= self.observe(&name, answer);
                }
                done = lookups.try_join_next();
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
        let ttl = match &answer {
            Answer::Found(_, ttl) => Some(*ttl),
            _ => None,
        };
        let (before, after, event, hold, cut) = {
            let mut state = lock(&self.shared.state);
            let Some(entry) = state.names.get_mut(name) else {
                return false;
            };
            let hold = entry.follow.hold;
            let was_cut = entry.state.cut_from().is_some();
            let before = entry.state.set.clone();
            let (changed, event) = entry.state.observe(answer, now, hold, entry.follow.cap);
            entry.due = entry.state.next_due(now, entry.follow.interval, ttl, hold);
            let after = changed.then(|| entry.state.set().to_vec());
            // Once per change of the kept set, and not more often than the throttle.
            let cut = entry
                .state
                .cut_from()
                .filter(|_| changed || !was_cut)
                .filter(|_| entry.cut_warnings.allow(now).is_some())
                .map(|from| (from, entry.follow.cap));
            (before, after, event, hold, cut)
        };
        log_event(name, event, hold);
        if let Some((from, cap)) = cut {
            warn!(
                %name,
                "{name} has {from} addresses, more than max-addresses: its lowest {cap} serve"
            );
        }
        let Some(after) = after else {
            return false;
        };
        let old: BTreeSet<SocketAddr> = before.iter().map(|f| f.addr).collect();
        let new: BTreeSet<SocketAddr> = after.iter().map(|f| f.addr).collect();
        let added: Vec<&SocketAddr> = new.difference(&old).collect();
        let removed: Vec<&SocketAddr> = old.difference(&new).collect();
        info!(
            %name,
            addresses = after.len(),
            added = %few(&added),
            removed = %few(&removed),
            "backend name {name} resolves to {} address(es) now", after.len()
        );
        true
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
                truncated: e.state.truncated,
            })
            .collect();
        *lock(&self.shared.status) = samples;
    }
}

/// How many of `addrs` there are and the first few of them, for a log line.
fn few(addrs: &[&SocketAddr]) -> String {
    let mut out = addrs.len().to_string();
    if !addrs.is_empty() {
        let named: Vec<String> = addrs
            .iter()
            .take(LOGGED_ADDRESSES)
            .map(|a| a.to_string())
            .collect();
        let more = if addrs.len() > LOGGED_ADDRESSES {
            ",..."
        } else {
            ""
        };
        out += &format!(" ({}{more})", named.join(","));
    }
    out
}

/// A name's entry after its first lookup (at start, or added by a reload).
fn first_entry(
    config: &Config,
    name: &BackendName,
    answer: Answer,
    now: Instant,
    follow: Follow,
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
    let (_, event) = state.observe(answer, now, follow.hold, follow.cap);
    if failed.is_none() {
        log_event(name, event, follow.hold);
    }
    let cut_warnings = Throttle::new(TRUNCATED_WARNING_EVERY);
    if let Some(from) = state.cut_from() {
        cut_warnings.allow(now);
        warn!(
            %name,
            "{name} has {from} addresses, more than max-addresses: its lowest {} serve",
            follow.cap
        );
    }
    Ok(Entry {
        due: state.next_due(now, follow.interval, ttl, follow.hold),
        state,
        follow,
        cut_warnings,
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
    options.timeout = QUERY_TIMEOUT;
    options.attempts = 1;
    builder.build()
}

/// Looks `names` up once, together, on this thread (for start and reloads).
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

/// One lookup of `name` within [`LOOKUP_TIMEOUT`], an SRV name's targets
/// included.
async fn lookup(resolver: &TokioResolver, name: &BackendName) -> Answer {
    let answer = async {
        match name {
            BackendName::Host { host, port } => lookup_host(resolver, host, *port, None).await,
            BackendName::Srv { name, .. } => lookup_srv(resolver, name).await,
        }
    };
    tokio::time::timeout(LOOKUP_TIMEOUT, answer)
        .await
        .unwrap_or_else(|_| Answer::Failed("timed out".into()))
}

/// An SRV name's records, then its targets' addresses, looked up together
/// ([`TARGETS_AT_ONCE`] at a time), each target name once.
async fn lookup_srv(resolver: &TokioResolver, name: &str) -> Answer {
    let records = match resolver.srv_lookup(name).await {
        Err(err) => return classify(err),
        Ok(records) => records,
    };
    let mut ttl = records
        .valid_until()
        .saturating_duration_since(Instant::now());
    let srvs: Vec<_> = records
        .answers()
        .iter()
        .filter_map(|record| match &record.data {
            RData::SRV(srv) if !srv.target.is_root() => Some(srv.clone()),
            _ => None,
        })
        .collect();
    let targets: BTreeSet<String> = srvs.iter().map(|s| s.target.to_string()).collect();
    let gate = Arc::new(tokio::sync::Semaphore::new(TARGETS_AT_ONCE));
    let mut lookups = tokio::task::JoinSet::new();
    for target in targets {
        let (resolver, gate) = (resolver.clone(), gate.clone());
        lookups.spawn(async move {
            let _turn = gate.acquire_owned().await;
            let answer = lookup_host(&resolver, &target, 0, None).await;
            (target, answer)
        });
    }
    let mut addresses: BTreeMap<String, Vec<Found>> = BTreeMap::new();
    while let Some(done) = lookups.join_next().await {
        let Ok((target, answer)) = done else {
            return Answer::Failed("a target's lookup did not finish".into());
        };
        match answer {
            Answer::Found(set, t) => {
                ttl = ttl.min(t);
                addresses.insert(target, set);
            }
            // A target without addresses serves nothing; the others still do.
            Answer::Empty => {}
            Answer::Failed(why) => return Answer::Failed(format!("target {target}: {why}")),
        }
    }
    let mut found = Vec::new();
    for srv in &srvs {
        let meta = SrvRecord {
            priority: srv.priority,
            weight: srv.weight,
        };
        for f in addresses.get(&srv.target.to_string()).into_iter().flatten() {
            found.push(Found {
                addr: SocketAddr::new(f.addr.ip(), srv.port),
                srv: Some(meta),
            });
        }
    }
    if found.is_empty() {
        Answer::Empty
    } else {
        Answer::Found(found, ttl)
    }
}

/// `host`'s A and AAAA addresses on `port`.
async fn lookup_host(
    resolver: &TokioResolver,
    host: &str,
    port: u16,
    srv: Option<SrvRecord>,
) -> Answer {
    match resolver.lookup_ip(host).await {
        Err(err) => classify(err),
        Ok(ips) => {
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
    const CAP: usize = 1024;

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
            s.observe(answer(&["127.0.0.3:1", "127.0.0.2:1"]), now, HOLD, CAP),
            (true, None)
        );
        assert_eq!(s.set(), found(&["127.0.0.2:1", "127.0.0.3:1"]));
        assert_eq!(
            s.observe(answer(&["127.0.0.2:1", "127.0.0.3:1"]), now, HOLD, CAP),
            (false, None)
        );
        assert!(
            s.observe(
                answer(&["127.0.0.2:1", "127.0.0.3:1", "127.0.0.4:1"]),
                now,
                HOLD,
                CAP
            )
            .0
        );
        assert!(
            s.observe(answer(&["127.0.0.2:1", "127.0.0.4:1"]), now, HOLD, CAP)
                .0
        );
    }

    #[test]
    fn an_answer_over_the_cap_keeps_the_lowest_addresses_primaries_first() {
        let now = Instant::now();
        let mut s = NameState::default();
        let big = answer(&["127.0.0.9:1", "127.0.0.3:1", "127.0.0.7:1", "127.0.0.2:1"]);
        assert_eq!(s.observe(big.clone(), now, HOLD, 2), (true, None));
        assert_eq!(s.set(), found(&["127.0.0.2:1", "127.0.0.3:1"]));
        assert_eq!((s.cut_from(), s.truncated), (Some(4), 1));
        // The same answer again: the same two, counted again.
        assert_eq!(s.observe(big, now, HOLD, 2), (false, None));
        assert_eq!(s.truncated, 2);
        assert_eq!(
            s.observe(answer(&["127.0.0.3:1"]), now, HOLD, 2),
            (true, None)
        );
        assert_eq!((s.cut_from(), s.truncated), (None, 2));
        // SRV: the lowest priority value's targets first, then addresses.
        let mut s = NameState::default();
        let set = vec![
            srv("127.0.0.2:81", 20, 1),
            srv("127.0.0.5:82", 10, 1),
            srv("127.0.0.4:83", 10, 1),
        ];
        s.observe(Answer::Found(set, INTERVAL), now, HOLD, 2);
        assert_eq!(
            s.set(),
            [srv("127.0.0.4:83", 10, 1), srv("127.0.0.5:82", 10, 1)]
        );
    }

    #[test]
    fn failures_keep_the_set_for_good_and_warn_once() {
        let now = Instant::now();
        let mut s = NameState::default();
        s.observe(answer(&["127.0.0.2:1"]), now, HOLD, CAP);
        let fail = || Answer::Failed("SERVFAIL".into());
        assert_eq!(
            s.observe(fail(), now, HOLD, CAP),
            (false, Some(Event::Failing("SERVFAIL".into())))
        );
        let much_later = now + Duration::from_secs(86_400);
        assert_eq!(
            s.observe(fail(), much_later, HOLD, CAP),
            (false, None),
            "once per change"
        );
        assert_eq!(s.set(), found(&["127.0.0.2:1"]));
        assert_eq!(s.failures, 2);
        assert_eq!(
            s.observe(answer(&["127.0.0.2:1"]), much_later, HOLD, CAP),
            (false, Some(Event::Recovered))
        );
    }

    #[test]
    fn nxdomain_keeps_the_set_for_the_hold_then_empties_it() {
        let t0 = Instant::now();
        let mut s = NameState::default();
        s.observe(answer(&["127.0.0.2:1"]), t0, HOLD, CAP);
        assert_eq!(
            s.observe(Answer::Empty, t0, HOLD, CAP),
            (false, Some(Event::Missing { held: true }))
        );
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(s.observe(Answer::Empty, t1, HOLD, CAP), (false, None));
        assert_eq!(s.set().len(), 1);
        // The hold bounds the next lookup, so the set goes on time.
        assert_eq!(
            s.next_due(t1, Duration::from_secs(60), None, HOLD),
            t0 + HOLD
        );
        assert_eq!(
            s.observe(Answer::Empty, t0 + HOLD, HOLD, CAP),
            (true, Some(Event::Emptied))
        );
        assert!(s.set().is_empty());
        // An answer within the hold cancels it.
        let mut s = NameState::default();
        s.observe(answer(&["127.0.0.2:1"]), t0, HOLD, CAP);
        s.observe(Answer::Empty, t0, HOLD, CAP);
        s.observe(answer(&["127.0.0.2:1"]), t1, HOLD, CAP);
        assert!(
            !s.observe(Answer::Empty, t0 + HOLD, HOLD, CAP).0,
            "a new hold"
        );
        // Never resolved: nothing to hold.
        let mut s = NameState::default();
        assert_eq!(
            s.observe(Answer::Empty, t0, HOLD, CAP),
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
        web.observe(answer(&["127.0.0.3:80", "127.0.0.2:80"]), now, HOLD, CAP);
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
