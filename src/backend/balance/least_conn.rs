//! Least connections: the eligible backend with the fewest active connections
//! per unit of weight.
//!
//! Loads are compared as `active_i * w_j < active_j * w_i` in integers, so the
//! choice is exact and float-free. Ties are common (every idle backend has
//! load 0, and a burst of accepts on one worker sees the same counts), so the
//! scan starts just after the previous choice: equal loads then rotate instead
//! of all landing on backend 0. The counts come from [`PickContext::active`]
//! and span all workers; this balancer keeps nothing but the rotation point.

use super::{less_loaded, normalized, Balancer, PickContext};

/// Least-connections balancer with rotating tie-breaks.
#[derive(Clone, Debug)]
pub struct LeastConn {
    weights: Vec<u32>,
    /// Where the next scan starts, i.e. who wins the next tie.
    next: usize,
}

impl LeastConn {
    /// A least-connections balancer over backends with these weights (0
    /// counts as 1). `seed` picks where tie rotation starts, so idle workers
    /// do not all break their first tie towards backend 0.
    pub fn new(weights: &[u32], seed: u64) -> Self {
        let weights = normalized(weights);
        let next = if weights.is_empty() {
            0
        } else {
            (seed % weights.len() as u64) as usize
        };
        LeastConn { weights, next }
    }
}

impl Balancer for LeastConn {
    fn pick(&mut self, ctx: &PickContext<'_>) -> Option<usize> {
        let n = self.weights.len();
        let start = self.next.min(n);
        let mut best: Option<(usize, usize)> = None;
        for i in (start..n).chain(0..start) {
            if !(ctx.eligible)(i) {
                continue;
            }
            let active = (ctx.active)(i);
            // Strict: on a tie the earlier in scan order, i.e. the next in rotation, wins.
            let better = best.is_none_or(|(b, b_active)| {
                less_loaded(active, self.weights[i], b_active, self.weights[b])
            });
            if better {
                best = Some((i, active));
            }
        }
        let (b, _) = best?;
        self.next = if b + 1 == n { 0 } else { b + 1 };
        Some(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::balance::test_support::{pick_with, CLIENT};

    fn picks(lc: &mut LeastConn, eligible: &[bool], active: &[usize], k: usize) -> Vec<usize> {
        (0..k)
            .map(|_| pick_with(lc, CLIENT, eligible, active).unwrap())
            .collect()
    }

    #[test]
    fn picks_the_least_loaded() {
        let mut lc = LeastConn::new(&[1, 1, 1, 1], 0);
        assert_eq!(picks(&mut lc, &[true; 4], &[3, 1, 2, 5], 5), [1; 5]);
    }

    #[test]
    fn ignores_an_ineligible_minimum() {
        let mut lc = LeastConn::new(&[1, 1, 1, 1], 0);
        let eligible = [true, false, true, true];
        assert_eq!(picks(&mut lc, &eligible, &[3, 0, 2, 5], 3), [2; 3]);
    }

    #[test]
    fn divides_by_weight() {
        // 3/2 = 1.5 beats 2/1 = 2, although 3 > 2.
        let mut lc = LeastConn::new(&[1, 2], 0);
        assert_eq!(picks(&mut lc, &[true; 2], &[2, 3], 3), [1; 3]);
        // 4/2 == 2/1: a tie, so it rotates.
        assert_eq!(picks(&mut lc, &[true; 2], &[2, 4], 4), [0, 1, 0, 1]);
    }

    #[test]
    fn spreads_ties_by_rotation() {
        let mut lc = LeastConn::new(&[1, 1, 1], 0);
        assert_eq!(picks(&mut lc, &[true; 3], &[0; 3], 6), [0, 1, 2, 0, 1, 2]);
        // Only the tied minimum rotates.
        assert_eq!(picks(&mut lc, &[true; 3], &[5, 0, 0], 4), [1, 2, 1, 2]);
    }

    #[test]
    fn converges_to_weighted_shares_when_loads_are_fed_back() {
        let weights = [1, 2, 3];
        let mut lc = LeastConn::new(&weights, 0);
        let mut active = [0usize; 3];
        for _ in 0..600 {
            let i = pick_with(&mut lc, CLIENT, &[true; 3], &active).unwrap();
            active[i] += 1;
        }
        assert_eq!(active, [100, 200, 300]);
    }

    #[test]
    fn seed_sets_the_first_tie_winner() {
        for seed in 0..6u64 {
            let mut lc = LeastConn::new(&[1, 1, 1], seed);
            let first = pick_with(&mut lc, CLIENT, &[true; 3], &[0; 3]);
            assert_eq!(first, Some(seed as usize % 3));
        }
    }

    #[test]
    fn huge_counts_do_not_overflow() {
        let mut lc = LeastConn::new(&[u32::MAX, 1], 0);
        let got = pick_with(&mut lc, CLIENT, &[true; 2], &[usize::MAX, usize::MAX - 1]);
        assert_eq!(got, Some(0));
    }
}
