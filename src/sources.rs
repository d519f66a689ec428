//! Per-source limits on a frontend, as HAProxy's stick tables
//! (`src_conn_cur`, `src_conn_rate`): a [`SourceTable`] shared by every
//! worker keeps, per client source, its open connections and a token bucket
//! of new ones, so `max-conns-per-source = N` means N for the whole process.
//! A source is the client's address with its low bits cleared: the first
//! `source-prefix` bits of an IPv4 address, `source-prefix-v6` of an IPv6 one
//! (behind `accept-proxy`, the address from the PROXY header).
//!
//! The table is a fixed number of shards, each a mutex over a small map,
//! locked once when a connection is admitted and once when it closes (never
//! per byte), so workers rarely meet on one. It is bounded: it holds at most
//! `source-table-size` sources, each shard an equal share. An entry goes when
//! it holds nothing any more (no connection open, its bucket full again and
//! no connection in the last two seconds): at once when a connection closes
//! if only the count is limited, else when the shard's sweep passes it. When
//! a shard is full, a new source takes the place of one that has no
//! connection open, the first a clock sweep finds not seen since its last
//! pass (so roughly the least recently seen, as HAProxy's stick table drops
//! its oldest unused entry), else the first with no connection open among
//! the [`SWEEP_STEPS`] it looked at. An entry with a connection open is
//! never dropped, so its count stays exact. If every entry the sweep looked
//! at has connections open, the new source is served without a per-source
//! limit, and counted: a table filled by an attacker's live connections
//! never locks real clients out.
//!
//! Pure apart from its locks: time comes in as an argument.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use indexmap::IndexMap;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::config::SourceLimits;

/// Most shards a table is cut into: enough that two workers rarely want the
/// same lock at once.
const MAX_SHARDS: usize = 64;
/// Fewest sources per shard, so that a small table keeps a useful share in each.
const MIN_PER_SHARD: usize = 16;
/// Most entries one sweep for room looks at before giving up.
const SWEEP_STEPS: usize = 64;
/// Entries looked at for expiry each time a source is added.
const EXPIRE_STEPS: usize = 2;
/// The window of the rate [`SourceTable::top`] reports, in microseconds.
const WINDOW_US: u64 = 1_000_000;

/// Why a source's new connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// It has `max-conns-per-source` connections open.
    Conns,
    /// Its token bucket is empty (`rate-per-source`).
    Rate,
}

/// The sources of one frontend, across workers.
#[derive(Debug)]
pub(crate) struct SourceTable {
    shards: Box<[Mutex<Shard>]>,
    /// Most entries in one shard.
    per_shard: usize,
    /// Picks a key's shard; keyed at random, so no client can aim its
    /// sources at one shard.
    hasher: RandomState,
    prefix_v4: u8,
    prefix_v6: u8,
    /// Where the table's microseconds count from.
    epoch: Instant,
}

#[derive(Debug)]
struct Shard {
    map: IndexMap<u128, Entry>,
    /// Where the sweep goes on from.
    hand: usize,
}

/// One source.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Connections open.
    conns: u32,
    /// Tokens in its bucket at `refilled_us`.
    tokens: f64,
    refilled_us: u64,
    /// The second (since the table's epoch) `curr` counts in; `prev`
    /// counts the one before: new connections, refused ones included.
    window: u64,
    curr: u32,
    prev: u32,
    /// Seen since the sweep last passed it.
    seen: bool,
    /// Whether it outlives its last connection (with a rate limit, its
    /// bucket is worth keeping), as the last admission's limits said.
    keep: bool,
}

impl Entry {
    fn new(limits: &SourceLimits, now: u64) -> Entry {
        Entry {
            conns: 0,
            tokens: f64::from(limits.burst()),
            refilled_us: now,
            window: now / WINDOW_US,
            curr: 0,
            prev: 0,
            seen: true,
            keep: limits.rate.is_some(),
        }
    }

    /// Refills the bucket up to `now`.
    fn refill(&mut self, limits: &SourceLimits, now: u64) {
        if let Some(rate) = limits.rate {
            let elapsed = now.saturating_sub(self.refilled_us) as f64 / 1e6;
            let burst = f64::from(limits.burst());
            self.tokens = (self.tokens + elapsed * rate.per_second()).min(burst);
        }
        self.refilled_us = now;
    }

    /// Counts a new connection in the rate window.
    fn count(&mut self, now: u64) {
        let second = now / WINDOW_US;
        if second != self.window {
            self.prev = if second == self.window + 1 {
                self.curr
            } else {
                0
            };
            self.curr = 0;
            self.window = second;
        }
        self.curr = self.curr.saturating_add(1);
    }

    /// New connections per second over the last second, as HAProxy's
    /// `conn_rate` estimates it: the current second's count plus the
    /// previous one's, weighted by how much of it the last second covers.
    fn rate(&self, now: u64) -> f64 {
        let second = now / WINDOW_US;
        let left = 1.0 - (now % WINDOW_US) as f64 / WINDOW_US as f64;
        match second.checked_sub(self.window) {
            Some(0) => f64::from(self.curr) + f64::from(self.prev) * left,
            Some(1) => f64::from(self.curr) * left,
            _ => 0.0,
        }
    }

    /// Whether it holds nothing a fresh entry would not: no connection
    /// open, none counted in the rate window, a full bucket.
    fn is_spent(&self, limits: &SourceLimits, now: u64) -> bool {
        if self.conns > 0 || now / WINDOW_US <= self.window + 1 {
            return false;
        }
        match limits.rate {
            None => true,
            Some(rate) => {
                let elapsed = now.saturating_sub(self.refilled_us) as f64 / 1e6;
                self.tokens + elapsed * rate.per_second() >= f64::from(limits.burst())
            }
        }
    }
}

impl Shard {
    /// Drops one entry to make room for a new source: the first with no
    /// connection open that is spent or was not seen since the sweep last
    /// passed, clearing the mark of those it passes; if none of those it
    /// looks at is, the first it passed with no connection open. False if
    /// every entry it looked at has connections open.
    fn make_room(&mut self, limits: &SourceLimits, now: u64) -> bool {
        let mut fallback = None;
        for _ in 0..SWEEP_STEPS.min(self.map.len()) {
            if self.hand >= self.map.len() {
                self.hand = 0;
            }
            let (_, e) = self
                .map
                .get_index_mut(self.hand)
                .expect("hand within the map");
            if e.conns == 0 {
                if !e.seen || e.is_spent(limits, now) {
                    self.map.swap_remove_index(self.hand);
                    return true;
                }
                fallback.get_or_insert(self.hand);
            }
            e.seen = false;
            self.hand += 1;
        }
        match fallback {
            Some(i) => {
                self.map.swap_remove_index(i);
                true
            }
            None => self.map.is_empty(),
        }
    }

    /// Drops the spent entries among the next few the sweep passes, so
    /// idle sources leave even while the shard has room.
    fn expire(&mut self, limits: &SourceLimits, now: u64) {
        for _ in 0..EXPIRE_STEPS.min(self.map.len()) {
            if self.hand >= self.map.len() {
                self.hand = 0;
            }
            let (_, e) = self.map.get_index(self.hand).expect("hand within the map");
            if e.is_spent(limits, now) {
                self.map.swap_remove_index(self.hand);
            } else {
                self.hand += 1;
            }
        }
    }
}

/// One admitted connection's place in its source's count; dropping it (the
/// connection closed) gives the place back. Every connection task holds
/// one (as an `Option`), so it is kept to two words and a pointer.
#[derive(Debug)]
pub(crate) struct Ticket<'a> {
    table: &'a SourceTable,
    /// The source's key, as two halves (a `u128` would align the ticket,
    /// and the task holding it, to 16 bytes).
    key: [u64; 2],
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let key = u128::from(self.key[0]) << 64 | u128::from(self.key[1]);
        let mut shard = self.table.shard(key);
        if let Some(i) = shard.map.get_index_of(&key) {
            let (_, e) = shard.map.get_index_mut(i).expect("just found");
            e.conns = e.conns.saturating_sub(1);
            if e.conns == 0 && !e.keep {
                shard.map.swap_remove_index(i);
            }
        }
    }
}

/// One source as `GET /sources` shows it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SourceStat {
    /// The source: the client's address with its low bits cleared.
    pub source: IpNet,
    /// Connections open.
    pub connections: u32,
    /// New connections (refused ones too) per second over the last second.
    pub rate: f64,
}

impl SourceTable {
    /// A table grouping clients as `limits` says, holding at most its
    /// `table_size` sources.
    pub(crate) fn new(limits: &SourceLimits) -> SourceTable {
        let size = limits.table_size.max(1);
        let shards = (size / MIN_PER_SHARD).clamp(1, MAX_SHARDS);
        let per_shard = size / shards;
        SourceTable {
            // Room for a full shard at once, so it never grows by doubling;
            // the pages are touched (resident) only as sources come.
            shards: (0..shards)
                .map(|_| {
                    Mutex::new(Shard {
                        map: IndexMap::with_capacity(per_shard),
                        hand: 0,
                    })
                })
                .collect(),
            per_shard,
            hasher: RandomState::new(),
            prefix_v4: limits.prefix_v4,
            prefix_v6: limits.prefix_v6,
            epoch: Instant::now(),
        }
    }

    /// Whether this table groups sources as `limits` would and has its
    /// size, so a reload may keep it (and the counts in it).
    pub(crate) fn fits(&self, limits: &SourceLimits) -> bool {
        let size = limits.table_size.max(1);
        let shards = (size / MIN_PER_SHARD).clamp(1, MAX_SHARDS);
        self.prefix_v4 == limits.prefix_v4
            && self.prefix_v6 == limits.prefix_v6
            && self.shards.len() == shards
            && self.per_shard == size / shards
    }

    /// Most sources it holds.
    pub(crate) fn capacity(&self) -> usize {
        self.per_shard * self.shards.len()
    }

    /// Sources it holds now.
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).map.len()).sum()
    }

    fn micros(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_micros() as u64
    }

    /// The key of `ip`'s source: IPv4 sources as IPv4-mapped IPv6
    /// addresses, which no IPv6 source can be (clients arrive canonical).
    fn key(&self, ip: IpAddr) -> u128 {
        match ip.to_canonical() {
            IpAddr::V4(v4) => {
                let bits = u32::from(v4) & mask32(self.prefix_v4);
                u128::from(Ipv4Addr::from(bits).to_ipv6_mapped())
            }
            IpAddr::V6(v6) => u128::from(v6) & mask128(self.prefix_v6),
        }
    }

    /// The source a key stands for.
    fn source(&self, key: u128) -> IpNet {
        let v6 = Ipv6Addr::from(key);
        match v6.to_ipv4_mapped() {
            Some(v4) => IpNet::V4(Ipv4Net::new(v4, self.prefix_v4).expect("a valid prefix")),
            None => IpNet::V6(Ipv6Net::new(v6, self.prefix_v6).expect("a valid prefix")),
        }
    }

    fn shard(&self, key: u128) -> MutexGuard<'_, Shard> {
        let i = self.hasher.hash_one(key) as usize % self.shards.len();
        lock(&self.shards[i])
    }

    /// Admits or refuses a new connection from `ip` under `limits` at
    /// `now`: a ticket to hold while it is open, `None` when the table had
    /// no room for a new source (served without a per-source limit), or why
    /// not.
    pub(crate) fn admit(
        &self,
        ip: IpAddr,
        limits: &SourceLimits,
        now: Instant,
    ) -> Result<Option<Ticket<'_>>, Refused> {
        let now = self.micros(now);
        let key = self.key(ip);
        let mut shard = self.shard(key);
        let entry = match shard.map.get_index_of(&key) {
            Some(i) => shard.map.get_index_mut(i).expect("just found").1,
            None => {
                shard.expire(limits, now);
                if shard.map.len() >= self.per_shard && !shard.make_room(limits, now) {
                    return Ok(None);
                }
                shard.map.entry(key).or_insert(Entry::new(limits, now))
            }
        };
        entry.seen = true;
        entry.keep = limits.rate.is_some();
        entry.count(now);
        entry.refill(limits, now);
        if limits.max_conns.is_some_and(|max| entry.conns >= max) {
            return Err(Refused::Conns);
        }
        if limits.rate.is_some() {
            if entry.tokens < 1.0 {
                return Err(Refused::Rate);
            }
            entry.tokens -= 1.0;
        }
        entry.conns += 1;
        Ok(Some(Ticket {
            table: self,
            key: [(key >> 64) as u64, key as u64],
        }))
    }

    /// The `n` busiest sources at `now`: most connections open first, then
    /// the highest rate; sources with neither are left out.
    pub(crate) fn top(&self, n: usize, now: Instant) -> Vec<SourceStat> {
        let now = self.micros(now);
        let mut busy: Vec<(u128, u32, f64)> = Vec::new();
        for shard in self.shards.iter() {
            let shard = lock(shard);
            busy.extend(
                shard
                    .map
                    .iter()
                    .map(|(&key, e)| (key, e.conns, e.rate(now)))
                    .filter(|&(_, conns, rate)| conns > 0 || rate > 0.0),
            );
        }
        let order = |a: &(u128, u32, f64), b: &(u128, u32, f64)| {
            b.1.cmp(&a.1).then(b.2.total_cmp(&a.2)).then(a.0.cmp(&b.0))
        };
        if busy.len() > n && n > 0 {
            busy.select_nth_unstable_by(n - 1, order);
        }
        busy.truncate(n);
        busy.sort_by(order);
        busy.into_iter()
            .map(|(key, connections, rate)| SourceStat {
                source: self.source(key),
                connections,
                rate,
            })
            .collect()
    }
}

fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The first `prefix` bits of an IPv4 address.
fn mask32(prefix: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(prefix.min(32)))
        .unwrap_or(0)
}

/// The first `prefix` bits of an IPv6 address.
fn mask128(prefix: u8) -> u128 {
    u128::MAX
        .checked_shl(128 - u32::from(prefix.min(128)))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Rate, DEFAULT_SOURCE_LIMITS};
    use std::time::Duration;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn conns(max: u32) -> SourceLimits {
        SourceLimits {
            max_conns: Some(max),
            ..DEFAULT_SOURCE_LIMITS
        }
    }

    #[test]
    fn sources_are_grouped_by_prefix_per_family() {
        let limits = SourceLimits {
            prefix_v4: 24,
            prefix_v6: 64,
            ..conns(1)
        };
        let table = SourceTable::new(&limits);
        let now = Instant::now();
        let a = table.admit(ip("10.1.2.3"), &limits, now).unwrap();
        assert!(a.is_some());
        // The same /24, as itself or IPv4-mapped: one source.
        for same in ["10.1.2.200", "::ffff:10.1.2.9"] {
            assert_eq!(
                table.admit(ip(same), &limits, now).unwrap_err(),
                Refused::Conns
            );
        }
        let _b = table.admit(ip("10.1.3.3"), &limits, now).unwrap();
        let _c = table.admit(ip("2001:db8:0:1::5"), &limits, now).unwrap();
        assert_eq!(
            table
                .admit(ip("2001:db8:0:1:ffff::"), &limits, now)
                .unwrap_err(),
            Refused::Conns
        );
        let _d = table.admit(ip("2001:db8:0:2::5"), &limits, now).unwrap();
        let top: Vec<String> = table
            .top(10, now)
            .iter()
            .map(|s| s.source.to_string())
            .collect();
        assert_eq!(top.len(), 4);
        for net in [
            "10.1.2.0/24",
            "10.1.3.0/24",
            "2001:db8:0:1::/64",
            "2001:db8:0:2::/64",
        ] {
            assert!(top.contains(&net.to_string()), "{net} in {top:?}");
        }
        assert_eq!(mask32(0), 0);
        assert_eq!(mask128(128), u128::MAX);
    }

    #[test]
    fn a_closed_connection_gives_its_place_back_and_its_entry_goes() {
        let limits = conns(2);
        let table = SourceTable::new(&limits);
        let now = Instant::now();
        let a = table.admit(ip("192.0.2.1"), &limits, now).unwrap();
        let b = table.admit(ip("192.0.2.1"), &limits, now).unwrap();
        assert_eq!(
            table.admit(ip("192.0.2.1"), &limits, now).unwrap_err(),
            Refused::Conns
        );
        drop(a);
        let c = table.admit(ip("192.0.2.1"), &limits, now).unwrap();
        drop((b, c));
        assert_eq!(table.len(), 0, "nothing left to keep without a rate limit");
    }

    #[test]
    fn the_bucket_allows_the_burst_then_the_rate() {
        let limits = SourceLimits {
            rate: Some(Rate {
                count: 10,
                per: Duration::from_secs(1),
            }),
            burst: Some(5),
            ..DEFAULT_SOURCE_LIMITS
        };
        let table = SourceTable::new(&limits);
        let start = Instant::now();
        let admitted = |at: Instant| table.admit(ip("192.0.2.7"), &limits, at).is_ok();
        let burst = (0..20).filter(|_| admitted(start)).count();
        assert_eq!(burst, 5, "the burst at once");
        // Over the next 10 s, one attempt per ms: 10 per second more.
        let later = (1..=10_000)
            .filter(|&ms| admitted(start + Duration::from_millis(ms)))
            .count();
        assert!((99..=101).contains(&later), "{later}");
        // Another source has its own bucket.
        assert!(table.admit(ip("192.0.2.8"), &limits, start).is_ok());
        assert_eq!(
            table
                .admit(
                    ip("192.0.2.7"),
                    &limits,
                    start + Duration::from_millis(10_000)
                )
                .unwrap_err(),
            Refused::Rate
        );
    }

    #[test]
    fn a_full_table_drops_idle_sources_never_open_ones_and_never_refuses() {
        let limits = SourceLimits {
            table_size: 16,
            ..conns(1)
        };
        let table = SourceTable::new(&limits);
        assert_eq!(table.capacity(), 16);
        let now = Instant::now();
        // 16 sources holding a connection each fill it.
        let held: Vec<_> = (0..16)
            .map(|i| {
                table
                    .admit(ip(&format!("10.0.0.{i}")), &limits, now)
                    .unwrap()
            })
            .collect();
        assert!(held.iter().all(Option::is_some));
        assert_eq!(table.len(), 16);
        // A new source is served, untracked, and the open ones stay exact.
        let extra = table.admit(ip("10.0.1.1"), &limits, now).unwrap();
        assert!(extra.is_none());
        assert_eq!(
            table.admit(ip("10.0.0.3"), &limits, now).unwrap_err(),
            Refused::Conns
        );
        assert_eq!(table.len(), 16);

        // With a rate limit entries outlive their connections; thousands
        // of sources that come and go keep the table at its bound.
        let limits = SourceLimits {
            rate: Some(Rate {
                count: 1,
                per: Duration::from_secs(3600),
            }),
            table_size: 64,
            max_conns: None,
            ..DEFAULT_SOURCE_LIMITS
        };
        let table = SourceTable::new(&limits);
        let steady = table.admit(ip("192.0.2.1"), &limits, now).unwrap();
        for i in 0..10_000u32 {
            let from = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
            let ticket = table.admit(from, &limits, now).unwrap();
            assert!(ticket.is_some() || i > 0);
            drop(ticket);
            assert!(table.len() <= table.capacity());
        }
        assert!(steady.is_some());
        assert_eq!(std::mem::size_of_val(&steady), 24);
        assert_eq!(table.top(1, now)[0].source.to_string(), "192.0.2.1/32");
        assert_eq!(table.top(1, now)[0].connections, 1);
    }

    #[test]
    fn spent_entries_expire() {
        let limits = SourceLimits {
            rate: Some(Rate {
                count: 100,
                per: Duration::from_secs(1),
            }),
            ..DEFAULT_SOURCE_LIMITS
        };
        let table = SourceTable::new(&limits);
        let now = Instant::now();
        drop(table.admit(ip("192.0.2.1"), &limits, now).unwrap());
        assert_eq!(table.len(), 1, "its bucket is kept");
        let top = table.top(5, now);
        assert_eq!((top[0].connections, top[0].rate), (0, 1.0));
        // Three seconds on, it is spent; new sources sweep it away.
        let later = now + Duration::from_secs(3);
        assert!(table.top(5, later).is_empty());
        for i in 1..=300u32 {
            drop(table.admit(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)), &limits, later));
        }
        let old = table.key(ip("192.0.2.1"));
        assert!(
            !lock(&table.shards[table.hasher.hash_one(old) as usize % table.shards.len()])
                .map
                .contains_key(&old)
        );
    }

    /// The table's memory with 100,000 sources, as docs/performance.md
    /// gives it: `cargo test --lib table_memory -- --ignored --nocapture`
    /// (the process's resident memory before and after, so run it alone).
    #[test]
    #[ignore]
    fn table_memory_at_100k_sources() {
        fn rss_kib() -> u64 {
            let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
            let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
            pages * 4
        }
        let limits = SourceLimits {
            rate: Some(Rate {
                count: 1,
                per: Duration::from_secs(3600),
            }),
            table_size: 100_000,
            ..DEFAULT_SOURCE_LIMITS
        };
        let before = rss_kib();
        let table = SourceTable::new(&limits);
        let now = Instant::now();
        for i in 0..200_000u32 {
            let from = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
            drop(table.admit(from, &limits, now).unwrap());
        }
        let after = rss_kib();
        let n = table.len();
        println!(
            "{n} sources (capacity {}): {} KiB resident, {:.0} bytes per source; entry {} bytes",
            table.capacity(),
            after - before,
            (after - before) as f64 * 1024.0 / n as f64,
            std::mem::size_of::<Entry>()
        );
        assert!(n > 99_000 && n <= 100_000, "{n}");
    }

    /// What admitting and closing one connection costs with a full table
    /// of 100,000 sources, as docs/performance.md gives it: `cargo test
    /// --release --lib admit_cost -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn admit_cost_with_a_full_table() {
        let limits = SourceLimits {
            max_conns: Some(1000),
            rate: Some(Rate {
                count: 1,
                per: Duration::from_secs(3600),
            }),
            burst: Some(1_000_000),
            table_size: 100_000,
            ..DEFAULT_SOURCE_LIMITS
        };
        let table = SourceTable::new(&limits);
        let now = Instant::now();
        let sources: Vec<IpAddr> = (0..100_000u32)
            .map(|i| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)))
            .collect();
        for &from in &sources {
            drop(table.admit(from, &limits, now));
        }
        let rounds = 500_000;
        for (what, pick) in [
            (
                "one source",
                &(|_: usize| sources[0]) as &dyn Fn(usize) -> IpAddr,
            ),
            ("every source in turn", &|i: usize| {
                sources[(i * 7919) % sources.len()]
            }),
        ] {
            let start = Instant::now();
            for i in 0..rounds {
                let ticket = table.admit(pick(i), &limits, Instant::now()).unwrap();
                assert!(ticket.is_some());
            }
            let ns = start.elapsed().as_nanos() as f64 / f64::from(rounds as u32);
            println!(
                "{} sources, {what}: {ns:.0} ns per admit and close",
                table.len()
            );
        }
    }
}
