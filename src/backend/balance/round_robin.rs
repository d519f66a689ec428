//! Smooth weighted round-robin, as in nginx's upstream module.
//!
//! Each pick adds every eligible backend's weight to its running `current`
//! score, takes the highest (lowest index on ties) and charges it the eligible
//! total. Over any window, each backend is chosen in proportion to its weight,
//! and a heavy backend's turns are interleaved with the others' instead of
//! coming in a burst (weights 5, 1, 1 give `a a b a c a a`).
//!
//! When all weights are equal that scheme is plain rotation, so it is replaced
//! by a rotating index that skips ineligible backends: O(1) when the next
//! backend is eligible, no per-backend state, and exact rotation even while
//! some backends are ineligible.
//!
//! Invariant of the weighted path: the sum of `current` over all backends is
//! always 0, since each pick adds the eligible total and then subtracts it
//! once; this keeps the scores bounded.

use super::{normalized, Balancer, PickContext};

/// `new` starts a weighted rotation `seed` picks into its cycle to stagger
/// workers. Up to this many backend visits it steps there pick by pick (the
/// exact sequence); past it, it places the scores where an ideal rotation
/// would be after that many picks, in O(N log N), so a rebuild never stalls
/// the worker however many backends and however long the cycle.
const MAX_PHASE_WORK: u64 = 1 << 12;

/// Smooth weighted round-robin over a fixed backend set.
#[derive(Clone, Debug)]
pub struct RoundRobin {
    weights: Vec<i64>,
    /// nginx's `current_weight`: how far each backend is owed a turn.
    current: Vec<i64>,
    /// All weights equal: use the rotating index and leave `current` alone.
    uniform: bool,
    /// Where the uniform rotation resumes.
    next: usize,
}

impl RoundRobin {
    /// A round-robin over backends with these weights (0 counts as 1).
    ///
    /// The rotation starts `seed` picks into its cycle, so workers seeded
    /// 0, 1, 2, ... begin on different backends.
    pub fn new(weights: &[u32], seed: u64) -> Self {
        let weights: Vec<i64> = normalized(weights).into_iter().map(i64::from).collect();
        let n = weights.len();
        let uniform = weights.windows(2).all(|w| w[0] == w[1]);
        let mut rr = RoundRobin {
            current: vec![0; n],
            weights,
            uniform,
            next: 0,
        };
        if n == 0 {
            return rr;
        }
        if uniform {
            rr.next = (seed % n as u64) as usize;
        } else {
            rr.advance(seed % rr.cycle_len());
        }
        rr
    }

    /// Moves the weighted rotation `k` picks into its all-eligible cycle.
    fn advance(&mut self, k: u64) {
        let n = self.weights.len() as u64;
        if k.saturating_mul(n) <= MAX_PHASE_WORK {
            for _ in 0..k {
                self.pick_weighted(&|_| true);
            }
            return;
        }
        // After k picks each backend has had about k * w / W turns, and its
        // score is what it is owed: k * w - W * turns. Give each the floor
        // of its share, the remaining turns to the largest remainders (so
        // the turns add up to k and the scores to 0, the invariant above),
        // and the scores follow; every score stays within one total weight
        // of 0, as in a rotation that started at 0.
        let total: i128 = self.weights.iter().map(|&w| i128::from(w)).sum();
        let k = i128::from(k);
        let mut turns: Vec<i128> = self
            .weights
            .iter()
            .map(|&w| k * i128::from(w) / total)
            .collect();
        let given: i128 = turns.iter().sum();
        let mut by_remainder: Vec<usize> = (0..self.weights.len()).collect();
        by_remainder.sort_by_key(|&i| std::cmp::Reverse(k * i128::from(self.weights[i]) % total));
        for &i in by_remainder.iter().take((k - given) as usize) {
            turns[i] += 1;
        }
        for (i, cur) in self.current.iter_mut().enumerate() {
            let owed = k * i128::from(self.weights[i]) - total * turns[i];
            *cur = owed as i64;
        }
        #[cfg(test)]
        tests::WARMUP_VISITS.with(|v| v.set(v.get() + n));
    }

    /// Picks after which the all-eligible sequence repeats: the weights' sum
    /// once divided by their gcd (scaling all weights leaves the choices unchanged).
    fn cycle_len(&self) -> u64 {
        let g = self
            .weights
            .iter()
            .fold(0u64, |g, &w| gcd(g, w as u64))
            .max(1);
        self.weights
            .iter()
            .map(|&w| w as u64 / g)
            .sum::<u64>()
            .max(1)
    }

    fn pick_uniform(&mut self, eligible: &dyn Fn(usize) -> bool) -> Option<usize> {
        let n = self.weights.len();
        let start = self.next.min(n);
        let i = (start..n).chain(0..start).find(|&i| eligible(i))?;
        self.next = if i + 1 == n { 0 } else { i + 1 };
        Some(i)
    }

    fn pick_weighted(&mut self, eligible: &dyn Fn(usize) -> bool) -> Option<usize> {
        #[cfg(test)]
        tests::WARMUP_VISITS.with(|v| v.set(v.get() + self.weights.len() as u64));
        let mut total: i64 = 0;
        let mut best: Option<(usize, i64)> = None;
        for (i, (cur, &w)) in self.current.iter_mut().zip(&self.weights).enumerate() {
            if !eligible(i) {
                continue;
            }
            *cur = cur.saturating_add(w);
            total = total.saturating_add(w);
            // Strict `>` keeps the lowest index on ties, matching nginx's sequence.
            if best.is_none_or(|(_, top)| *cur > top) {
                best = Some((i, *cur));
            }
        }
        let (b, _) = best?;
        if let Some(cur) = self.current.get_mut(b) {
            *cur = cur.saturating_sub(total);
        }
        Some(b)
    }
}

impl Balancer for RoundRobin {
    fn pick(&mut self, ctx: &PickContext<'_>) -> Option<usize> {
        if self.uniform {
            self.pick_uniform(ctx.eligible)
        } else {
            self.pick_weighted(ctx.eligible)
        }
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::balance::test_support::{assert_proportional, counts, pick_with, CLIENT};

    thread_local! {
        /// Backends visited by this thread's weighted picks and phase placements.
        pub(super) static WARMUP_VISITS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }

    fn sequence(rr: &mut RoundRobin, eligible: &[bool], picks: usize) -> Vec<usize> {
        let idle = vec![0; eligible.len()];
        (0..picks)
            .map(|_| pick_with(rr, CLIENT, eligible, &idle).unwrap())
            .collect()
    }

    #[test]
    fn equal_weights_rotate_exactly() {
        let mut rr = RoundRobin::new(&[1, 1, 1], 0);
        assert_eq!(sequence(&mut rr, &[true; 3], 6), [0, 1, 2, 0, 1, 2]);
        assert_eq!(counts(&mut rr, 3, 300), [100, 100, 100]);
    }

    #[test]
    fn equal_weights_above_one_also_rotate() {
        let mut rr = RoundRobin::new(&[4, 4, 4], 0);
        assert_eq!(sequence(&mut rr, &[true; 3], 6), [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn rotation_skips_ineligible() {
        let mut rr = RoundRobin::new(&[1, 1, 1], 0);
        let eligible = [true, false, true];
        assert_eq!(sequence(&mut rr, &eligible, 4), [0, 2, 0, 2]);

        let mut rr = RoundRobin::new(&[1, 1, 1], 0);
        let mut counts = [0; 3];
        for i in sequence(&mut rr, &eligible, 300) {
            counts[i] += 1;
        }
        assert_eq!(counts, [150, 0, 150]);
    }

    #[test]
    fn rotation_resumes_in_order_when_a_backend_returns() {
        let mut rr = RoundRobin::new(&[1, 1, 1, 1], 0);
        assert_eq!(sequence(&mut rr, &[true, false, true, true], 2), [0, 2]);
        assert_eq!(sequence(&mut rr, &[true; 4], 5), [3, 0, 1, 2, 3]);
    }

    #[test]
    fn smooth_weights_follow_nginx_sequence() {
        let mut rr = RoundRobin::new(&[5, 1, 1], 0);
        let cycle = [0, 0, 1, 0, 2, 0, 0];
        for _ in 0..3 {
            assert_eq!(sequence(&mut rr, &[true; 3], 7), cycle);
        }
    }

    #[test]
    fn smooth_weights_are_exactly_proportional_per_cycle() {
        let mut rr = RoundRobin::new(&[5, 1, 1], 0);
        assert_eq!(counts(&mut rr, 3, 7_000), [5_000, 1_000, 1_000]);

        let mut rr = RoundRobin::new(&[1, 2, 3], 0);
        let got = counts(&mut rr, 3, 60_000);
        assert_eq!(got, [10_000, 20_000, 30_000]);
        assert_proportional(&got, &[1, 2, 3], 0.0);
    }

    #[test]
    fn smooth_weights_skip_ineligible() {
        let mut rr = RoundRobin::new(&[5, 1, 1], 0);
        let seq = sequence(&mut rr, &[false, true, true], 6);
        assert_eq!(seq, [1, 2, 1, 2, 1, 2]);
        // Proportions recover once the heavy backend is back.
        assert_eq!(counts(&mut rr, 3, 7_000), [5_000, 1_000, 1_000]);
    }

    #[test]
    fn seed_shifts_the_phase_only() {
        for seed in 0..4u64 {
            let mut rr = RoundRobin::new(&[1, 1, 1], seed);
            let first = pick_with(&mut rr, CLIENT, &[true; 3], &[0; 3]);
            assert_eq!(first, Some(seed as usize % 3));
        }
        let base = sequence(&mut RoundRobin::new(&[5, 1, 1], 0), &[true; 3], 20);
        for seed in 1..7 {
            let shifted = sequence(&mut RoundRobin::new(&[5, 1, 1], seed), &[true; 3], 10);
            assert_eq!(shifted, base[seed as usize..seed as usize + 10]);
        }
    }

    #[test]
    fn extreme_weights_and_seeds_do_not_panic() {
        let mut rr = RoundRobin::new(&[u32::MAX, 1, u32::MAX], u64::MAX);
        let got = counts(&mut rr, 3, 1_000);
        assert_eq!(got.iter().sum::<usize>(), 1_000);
        assert_eq!(got[1], 0);
    }

    #[test]
    fn a_long_cycle_is_entered_without_stepping_through_it() {
        // 200 backends weighted 1..=200: a cycle of 20,100 picks, each
        // visiting every backend. Stepping a worker's phase pick by pick
        // (up to 65,536 picks before, 65 million visits with 1,000
        // backends) stalls its worker, and a rebuild repeats every 200 ms
        // while a backend ramps up.
        let weights: Vec<u32> = (1..=200).collect();
        WARMUP_VISITS.with(|v| v.set(0));
        let mut rr = RoundRobin::new(&weights, 0x9e37_79b9_0000_0007);
        let visits = WARMUP_VISITS.with(|v| v.get());
        assert!(
            visits <= MAX_PHASE_WORK.max(10 * 200),
            "{visits} backend visits to build"
        );
        // The scores keep the rotation's invariant and bounds.
        assert_eq!(rr.current.iter().sum::<i64>(), 0);
        let total: i64 = rr.weights.iter().sum();
        assert!(rr.current.iter().all(|c| c.abs() < total));
        // And it still hands out turns in proportion to the weights.
        let got = counts(&mut rr, 200, 20_100);
        for (i, &c) in got.iter().enumerate() {
            assert!(
                c.abs_diff(i + 1) <= 1,
                "backend {i} got {c} turns, weight {}",
                i + 1
            );
        }
    }

    #[test]
    fn gcd_reduces_the_cycle() {
        assert_eq!(RoundRobin::new(&[10, 20, 30], 0).cycle_len(), 6);
        assert_eq!(RoundRobin::new(&[5, 1, 1], 0).cycle_len(), 7);
    }
}
