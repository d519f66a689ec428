//! Power of two random choices: draw two distinct eligible backends by
//! weighted random, keep the one with fewer active connections per unit of
//! weight.
//!
//! Compared with least-conn it tolerates stale or racing counts: many workers
//! reading the same counts do not all pile onto the single least-loaded
//! backend, because each only compares its own random pair. Compared with
//! plain random it still steers away from overloaded backends (the most
//! loaded one is never chosen while another is eligible). With one eligible
//! backend that backend is the answer.

use super::{less_loaded, Balancer, PickContext, Rng, WeightedSampler};

/// Power-of-two-choices balancer.
#[derive(Clone, Debug)]
pub struct P2c {
    sampler: WeightedSampler,
    rng: Rng,
}

impl P2c {
    /// A power-of-two-choices balancer over backends with these weights (0
    /// counts as 1), drawing from a generator seeded with `seed`.
    pub fn new(weights: &[u32], seed: u64) -> Self {
        P2c {
            sampler: WeightedSampler::new(weights),
            rng: Rng::new(seed),
        }
    }
}

impl Balancer for P2c {
    fn pick(&mut self, ctx: &PickContext<'_>) -> Option<usize> {
        let a = self.sampler.sample(&mut self.rng, ctx.eligible)?;
        let Some(b) = self
            .sampler
            .sample(&mut self.rng, |i| i != a && (ctx.eligible)(i))
        else {
            return Some(a);
        };
        let (wa, wb) = (self.sampler.weight(a), self.sampler.weight(b));
        // `a` and `b` are already in random order, so keeping `a` on a tie is fair.
        if less_loaded((ctx.active)(b), wb, (ctx.active)(a), wa) {
            Some(b)
        } else {
            Some(a)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::balance::test_support::{assert_proportional, counts, pick_with, CLIENT};

    fn tally(p: &mut P2c, eligible: &[bool], active: &[usize], k: usize) -> Vec<usize> {
        let mut got = vec![0; eligible.len()];
        for _ in 0..k {
            got[pick_with(p, CLIENT, eligible, active).unwrap()] += 1;
        }
        got
    }

    #[test]
    fn prefers_the_less_loaded_of_two() {
        let mut p = P2c::new(&[1, 1], 1);
        assert_eq!(tally(&mut p, &[true; 2], &[10, 0], 1_000), [0, 1_000]);
    }

    #[test]
    fn never_picks_the_most_loaded_and_favours_the_least() {
        // Backend 0 wins every pair it is in (2 of 3 pairs), backend 1 wins
        // only the pair {1, 2}, backend 2 never wins.
        let mut p = P2c::new(&[1, 1, 1], 2);
        let got = tally(&mut p, &[true; 3], &[0, 5, 10], 30_000);
        assert_eq!(got[2], 0);
        assert_proportional(&got, &[2, 1, 0], 0.01);
    }

    #[test]
    fn compares_load_per_weight() {
        // 9/3 = 3 beats 4/1 = 4.
        let mut p = P2c::new(&[1, 3], 3);
        assert_eq!(tally(&mut p, &[true; 2], &[4, 9], 500), [0, 500]);
    }

    #[test]
    fn equal_loads_follow_weights() {
        // On ties the first draw wins, and the first draw is weighted random.
        let mut p = P2c::new(&[1, 2, 3], 4);
        let got = counts(&mut p, 3, 60_000);
        assert_proportional(&got, &[1, 2, 3], 0.01);
    }

    #[test]
    fn one_eligible_is_returned_whatever_its_load() {
        let mut p = P2c::new(&[1, 1, 1], 5);
        let got = tally(&mut p, &[false, false, true], &[0, 0, 1_000], 100);
        assert_eq!(got, [0, 0, 100]);
    }
}
