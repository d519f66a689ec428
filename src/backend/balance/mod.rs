//! Backend selection: the [`Balancer`] trait, [`build`] for each
//! [`Algorithm`] users choose from (a config type), and the helpers the
//! algorithms share (a seeded PRNG, a stable 64-bit mixer and a weighted
//! sampler).
//!
//! Invariants every balancer keeps, whatever its inputs: `pick` returns only an
//! index `i < n` for which `eligible(i)` was true, returns `None` exactly when no
//! index is eligible, and never panics. That is what lets a worker fail over by
//! marking a tried backend ineligible and calling `pick` again. Balancers are
//! pure: no I/O, clocks, threads, atomics or locks; each worker owns its own,
//! and whatever is shared across workers (connection counts, health) reaches
//! them only through [`PickContext`].
//!
//! Adding an algorithm is one new file, one row in config's `algorithms!`
//! table (the enum, its names and parsing) and one arm in [`build`].

use std::net::IpAddr;

// The algorithm is a setting, so the type is config's.
pub(crate) use crate::config::Algorithm;

pub mod hash;
pub mod least_conn;
pub mod p2c;
pub mod random;
pub mod round_robin;

/// What an algorithm may look at when choosing.
pub struct PickContext<'a> {
    /// Client IP, the key for `hash`.
    pub client: IpAddr,
    /// Whether backend i may be chosen now (healthy, not yet tried for this client, not full).
    pub eligible: &'a dyn Fn(usize) -> bool,
    /// Active connections to backend i, counted across all workers.
    pub active: &'a dyn Fn(usize) -> usize,
}

/// A backend selection policy over a fixed set of `n` backends.
///
/// `Send` so a worker's balancer can be built before its thread starts; it is
/// still only ever used from that one thread.
pub trait Balancer: Send {
    /// Index of the chosen backend among 0..n, or None when none is eligible.
    fn pick(&mut self, ctx: &PickContext<'_>) -> Option<usize>;
}

/// Builds a balancer for backends with these weights (weights >= 1). `seed` seeds any randomness (each worker passes its own).
///
/// A weight of 0 is treated as 1 rather than rejected here: refusing it is the
/// config validator's job, and this function must not fail. An empty `weights`
/// gives a balancer that always returns `None`.
///
/// Besides seeding `random` and `p2c`, `seed` sets the starting phase of
/// `round-robin` and of `least-conn`'s tie rotation, so workers given seeds
/// 0, 1, 2, ... start on different backends instead of all sending their first
/// connection to backend 0. `hash` ignores it, since every worker must map a
/// client to the same backend.
pub fn build(alg: Algorithm, weights: &[u32], seed: u64) -> Box<dyn Balancer> {
    match alg {
        Algorithm::RoundRobin => Box::new(round_robin::RoundRobin::new(weights, seed)),
        Algorithm::LeastConn => Box::new(least_conn::LeastConn::new(weights, seed)),
        Algorithm::Random => Box::new(random::WeightedRandom::new(weights, seed)),
        Algorithm::P2c => Box::new(p2c::P2c::new(weights, seed)),
        Algorithm::Hash => Box::new(hash::Rendezvous::new(weights, seed)),
    }
}

/// Weights as the algorithms use them: a zero weight would make a backend
/// unreachable (or divide by zero in the ratio comparisons), so it counts as 1.
pub(crate) fn normalized(weights: &[u32]) -> Vec<u32> {
    weights.iter().map(|&w| w.max(1)).collect()
}

/// Whether `active_a / weight_a < active_b / weight_b`, exactly: cross-multiplied
/// in `u128`, which cannot overflow for `usize * u32`.
pub(crate) fn less_loaded(active_a: usize, weight_a: u32, active_b: usize, weight_b: u32) -> bool {
    (active_a as u128) * (weight_b as u128) < (active_b as u128) * (weight_a as u128)
}

/// splitmix64's finalizer: a bijection on `u64` with full avalanche, used both
/// as the PRNG output function and as the stable hash behind `hash`. Its
/// constants are fixed, so results are identical across processes and builds.
pub(crate) const fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The golden-ratio increment of splitmix64; odd, so the state visits every
/// `u64` before repeating.
const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// A small seeded PRNG (splitmix64). Statistical quality is ample for spreading
/// load and it keeps this module free of dependencies and of global state.
#[derive(Clone, Debug)]
pub(crate) struct Rng {
    state: u64,
}

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        // Small consecutive seeds (worker indices) would otherwise start
        // next to each other in the state space; mixing scatters them.
        Rng {
            state: mix64(seed ^ GOLDEN_GAMMA),
        }
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN_GAMMA);
        mix64(self.state)
    }

    /// Uniform in `0..n` without modulo bias (Lemire's multiply-and-reject);
    /// 0 when `n == 0` so callers need no special case to stay panic-free.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        let mut m = u128::from(self.next_u64()) * u128::from(n);
        if (m as u64) < n {
            let threshold = n.wrapping_neg() % n;
            while (m as u64) < threshold {
                m = u128::from(self.next_u64()) * u128::from(n);
            }
        }
        (m >> 64) as u64
    }
}

/// Draws an index with probability proportional to its weight, among the
/// indices a predicate accepts.
#[derive(Clone, Debug)]
pub(crate) struct WeightedSampler {
    weights: Vec<u32>,
    /// Inclusive prefix sums of `weights`, for the O(log n) first try.
    cumulative: Vec<u64>,
    uniform: bool,
}

impl WeightedSampler {
    pub(crate) fn new(weights: &[u32]) -> Self {
        let weights = normalized(weights);
        let cumulative = weights
            .iter()
            .scan(0u64, |sum, &w| {
                *sum += u64::from(w);
                Some(*sum)
            })
            .collect();
        let uniform = weights.windows(2).all(|w| w[0] == w[1]);
        WeightedSampler {
            weights,
            cumulative,
            uniform,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.weights.len()
    }

    pub(crate) fn weight(&self, i: usize) -> u32 {
        self.weights.get(i).copied().unwrap_or(1)
    }

    /// First draws from all backends and keeps the draw if it is accepted;
    /// only otherwise scans the accepted ones. The result is still exactly
    /// proportional among accepted indices: with `E` their total share,
    /// `P(i) = p_i + (1 - E) * p_i / E = p_i / E`. The first try makes the
    /// common case (everything eligible) O(log n) with one `accept` call.
    pub(crate) fn sample(&self, rng: &mut Rng, accept: impl Fn(usize) -> bool) -> Option<usize> {
        let total = self.cumulative.last().copied()?;
        let first = if self.uniform {
            rng.below(self.len() as u64) as usize
        } else {
            let r = rng.below(total);
            self.cumulative.partition_point(|&c| c <= r)
        };
        if first < self.len() && accept(first) {
            return Some(first);
        }

        let accepted_total: u64 = (0..self.len())
            .filter(|&i| accept(i))
            .map(|i| u64::from(self.weights[i]))
            .sum();
        if accepted_total == 0 {
            return None;
        }
        let mut r = rng.below(accepted_total);
        // `last` only matters if `accept` answers differently on this second
        // pass; then any accepted index is better than a wrong `None`.
        let mut last = None;
        for (i, &w) in self.weights.iter().enumerate() {
            if !accept(i) {
                continue;
            }
            let w = u64::from(w);
            if r < w {
                return Some(i);
            }
            r -= w;
            last = Some(i);
        }
        last
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::{Balancer, PickContext};
    use std::net::{IpAddr, Ipv4Addr};

    pub(crate) const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));

    /// One pick with eligibility and load given as slices (missing entries
    /// count as ineligible / idle).
    pub(crate) fn pick_with(
        b: &mut dyn Balancer,
        client: IpAddr,
        eligible: &[bool],
        active: &[usize],
    ) -> Option<usize> {
        let eligible = |i: usize| eligible.get(i).copied().unwrap_or(false);
        let active = |i: usize| active.get(i).copied().unwrap_or(0);
        b.pick(&PickContext {
            client,
            eligible: &eligible,
            active: &active,
        })
    }

    /// How many of `picks` picks went to each of `n` backends, all eligible and idle.
    pub(crate) fn counts(b: &mut dyn Balancer, n: usize, picks: usize) -> Vec<usize> {
        let all = vec![true; n];
        let idle = vec![0; n];
        let mut counts = vec![0; n];
        for _ in 0..picks {
            let i = pick_with(b, CLIENT, &all, &idle).expect("something is eligible");
            counts[i] += 1;
        }
        counts
    }

    /// Asserts each share `counts[i] / total` is within `tol` of `weights[i] / sum`.
    pub(crate) fn assert_proportional(counts: &[usize], weights: &[u32], tol: f64) {
        let total: usize = counts.iter().sum();
        let wsum: u32 = weights.iter().sum();
        for (i, (&c, &w)) in counts.iter().zip(weights).enumerate() {
            let got = c as f64 / total as f64;
            let want = f64::from(w) / f64::from(wsum);
            assert!(
                (got - want).abs() <= tol,
                "backend {i}: share {got:.4}, want {want:.4} ± {tol} (counts {counts:?})"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{pick_with, CLIENT};
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn every_algorithm_returns_none_when_nothing_is_eligible() {
        for &alg in Algorithm::ALL {
            let mut b = build(alg, &[1, 2, 3], 7);
            let none = pick_with(b.as_mut(), CLIENT, &[false; 3], &[0; 3]);
            assert_eq!(none, None, "{alg}");
            let mut empty = build(alg, &[], 7);
            assert_eq!(pick_with(empty.as_mut(), CLIENT, &[], &[]), None, "{alg}");
        }
    }

    #[test]
    fn every_algorithm_honours_random_eligibility_masks() {
        let weights = [1, 3, 0, 2, 5, 1, 1];
        let n = weights.len();
        let mut rng = Rng::new(42);
        for &alg in Algorithm::ALL {
            let mut b = build(alg, &weights, 3);
            for round in 0..5_000 {
                let mask: Vec<bool> = (0..n).map(|_| rng.below(3) != 0).collect();
                let active: Vec<usize> = (0..n).map(|_| rng.below(50) as usize).collect();
                let client = IpAddr::V4(Ipv4Addr::from(rng.next_u64() as u32));
                match pick_with(b.as_mut(), client, &mask, &active) {
                    Some(i) => assert!(mask[i], "{alg} round {round}: picked ineligible {i}"),
                    None => assert!(
                        mask.iter().all(|&e| !e),
                        "{alg} round {round}: None with {mask:?}"
                    ),
                }
            }
        }
    }

    #[test]
    fn every_algorithm_fails_over_through_each_backend_once() {
        // A worker's failover loop: each tried backend becomes ineligible.
        for &alg in Algorithm::ALL {
            let mut b = build(alg, &[2, 1, 1, 3], 11);
            for _ in 0..100 {
                let mut tried = [false; 4];
                let active = [4, 0, 9, 1];
                let mut order = Vec::new();
                loop {
                    let eligible: Vec<bool> = tried.iter().map(|t| !t).collect();
                    match pick_with(b.as_mut(), CLIENT, &eligible, &active) {
                        Some(i) => {
                            tried[i] = true;
                            order.push(i);
                        }
                        None => break,
                    }
                }
                order.sort_unstable();
                assert_eq!(order, [0, 1, 2, 3], "{alg}");
            }
        }
    }

    #[test]
    fn build_clamps_zero_weights() {
        for &alg in Algorithm::ALL {
            let mut b = build(alg, &[0, 0], 0);
            let picked = pick_with(b.as_mut(), CLIENT, &[false, true], &[0, 0]);
            assert_eq!(picked, Some(1), "{alg}");
        }
    }

    #[test]
    fn rng_below_is_in_range_and_covers_it() {
        let mut rng = Rng::new(1);
        let mut seen = [false; 7];
        for _ in 0..1_000 {
            let x = rng.below(7);
            assert!(x < 7);
            seen[x as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
        assert_eq!(rng.below(0), 0);
        assert_eq!(rng.below(1), 0);
    }

    #[test]
    fn sampler_is_proportional_among_accepted() {
        let sampler = WeightedSampler::new(&[1, 2, 3, 4]);
        let mut rng = Rng::new(9);
        let mut counts = [0usize; 3];
        for _ in 0..60_000 {
            // Backend 3 carries 40% of the weight but is never accepted.
            let i = sampler.sample(&mut rng, |i| i != 3).unwrap();
            counts[i] += 1;
        }
        test_support::assert_proportional(&counts, &[1, 2, 3], 0.01);
    }

    #[test]
    fn less_loaded_compares_ratios_exactly() {
        assert!(less_loaded(3, 2, 2, 1)); // 1.5 < 2
        assert!(!less_loaded(2, 1, 4, 2)); // 2 == 2
        assert!(less_loaded(usize::MAX - 1, u32::MAX, usize::MAX, u32::MAX));
    }
}
