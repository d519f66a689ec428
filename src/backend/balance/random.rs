//! Weighted random: each eligible backend is chosen with probability
//! proportional to its weight among the eligible ones.
//!
//! It keeps no state about past choices, so it needs no coordination between
//! workers and cannot be thrown into lockstep by them; the price is variance
//! that round-robin does not have. Randomness comes from a per-worker seeded
//! generator, so a given seed gives a reproducible sequence.

use super::{Balancer, PickContext, Rng, WeightedSampler};

/// Weighted random balancer.
#[derive(Clone, Debug)]
pub struct WeightedRandom {
    sampler: WeightedSampler,
    rng: Rng,
}

impl WeightedRandom {
    /// A weighted random balancer over backends with these weights (0 counts
    /// as 1), drawing from a generator seeded with `seed`.
    pub fn new(weights: &[u32], seed: u64) -> Self {
        WeightedRandom {
            sampler: WeightedSampler::new(weights),
            rng: Rng::new(seed),
        }
    }
}

impl Balancer for WeightedRandom {
    fn pick(&mut self, ctx: &PickContext<'_>) -> Option<usize> {
        self.sampler.sample(&mut self.rng, ctx.eligible)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::balance::test_support::{assert_proportional, counts, pick_with, CLIENT};

    #[test]
    fn shares_follow_weights() {
        let mut r = WeightedRandom::new(&[1, 2, 3], 1234);
        let got = counts(&mut r, 3, 60_000);
        assert_proportional(&got, &[1, 2, 3], 0.01);
    }

    #[test]
    fn equal_weights_are_uniform() {
        let mut r = WeightedRandom::new(&[1; 4], 5);
        let got = counts(&mut r, 4, 40_000);
        assert_proportional(&got, &[1; 4], 0.01);
    }

    #[test]
    fn shares_renormalise_over_eligible() {
        let mut r = WeightedRandom::new(&[1, 2, 3], 77);
        let mut got = [0usize; 3];
        for _ in 0..40_000 {
            let i = pick_with(&mut r, CLIENT, &[true, false, true], &[0; 3]).unwrap();
            got[i] += 1;
        }
        assert_eq!(got[1], 0);
        assert_proportional(&[got[0], got[2]], &[1, 3], 0.01);
    }

    #[test]
    fn same_seed_same_sequence() {
        let mut a = WeightedRandom::new(&[1, 2, 3], 9);
        let mut b = WeightedRandom::new(&[1, 2, 3], 9);
        let mut c = WeightedRandom::new(&[1, 2, 3], 10);
        let sa: Vec<_> = (0..50)
            .map(|_| pick_with(&mut a, CLIENT, &[true; 3], &[0; 3]))
            .collect();
        let sb: Vec<_> = (0..50)
            .map(|_| pick_with(&mut b, CLIENT, &[true; 3], &[0; 3]))
            .collect();
        let sc: Vec<_> = (0..50)
            .map(|_| pick_with(&mut c, CLIENT, &[true; 3], &[0; 3]))
            .collect();
        assert_eq!(sa, sb);
        assert_ne!(sa, sc);
    }

    #[test]
    fn single_eligible_is_always_chosen() {
        let mut r = WeightedRandom::new(&[100, 1, 100], 3);
        for _ in 0..100 {
            let got = pick_with(&mut r, CLIENT, &[false, true, false], &[0; 3]);
            assert_eq!(got, Some(1));
        }
    }
}
