//! Client-IP affinity by weighted rendezvous hashing (highest random weight).
//!
//! Every eligible backend gets a score from a stable hash of (client IP,
//! backend id); the highest score wins. Weights enter as `w / -ln(u)` with `u`
//! the hash mapped into (0, 1), which makes backend `i` win with probability
//! `w_i / Σw` (the scores are reciprocals of independent exponentials with
//! rates `w_i`).
//!
//! Invariants:
//! - The mapping depends only on the client IP, the ids and the weights: not
//!   on the worker's seed, the process, or past picks. Every worker, and every
//!   restart, sends a client to the same backend.
//! - Removing a backend from the eligible set moves only the clients that were
//!   on it (the maximum over a subset that still holds the old winner is that
//!   winner), and restoring it moves exactly those back. About `1/N` of
//!   clients move, with no ring or table to rebuild.
//! - The hash is implemented here with fixed constants, never std's
//!   `RandomState`/`DefaultHasher`, whose output differs between processes.

use std::net::IpAddr;

use super::{mix64, normalized, Balancer, PickContext};

/// Domain separation between client keys and backend keys, so a backend id
/// that happens to equal a client's bits does not cancel out in `key ^ id`.
const BACKEND_SALT: u64 = 0x2545_f491_4f6c_dd1d;
const BYTES_SEED: u64 = 0x6a09_e667_f3bc_c909;

/// Weighted rendezvous-hash balancer.
#[derive(Clone, Debug)]
pub struct Rendezvous {
    weights: Vec<f64>,
    /// Pre-mixed per-backend keys; by default from the backend's index.
    keys: Vec<u64>,
    /// With equal weights the raw hash ranks backends the same as the
    /// weighted score, so the logarithm can be skipped.
    uniform: bool,
}

impl Rendezvous {
    /// A rendezvous balancer keyed by backend index, so a client's backend is
    /// stable as long as the backend list keeps its order. `_seed` is ignored
    /// on purpose: the mapping must be the same on every worker.
    pub fn new(weights: &[u32], _seed: u64) -> Self {
        let ids: Vec<u64> = (0..weights.len() as u64).collect();
        Self::with_ids(weights, &ids)
    }

    /// A rendezvous balancer keyed by caller-chosen backend ids, e.g.
    /// [`hash_bytes`] of each backend's address, so that reordering, adding or
    /// removing backends in the config moves only the clients of the backends
    /// that changed. Backends beyond the end of `ids` use their index.
    pub fn with_ids(weights: &[u32], ids: &[u64]) -> Self {
        let weights = normalized(weights);
        let uniform = weights.windows(2).all(|w| w[0] == w[1]);
        let keys = (0..weights.len())
            .map(|i| mix64(ids.get(i).copied().unwrap_or(i as u64) ^ BACKEND_SALT))
            .collect();
        Rendezvous {
            weights: weights.into_iter().map(f64::from).collect(),
            keys,
            uniform,
        }
    }
}

impl Balancer for Rendezvous {
    fn pick(&mut self, ctx: &PickContext<'_>) -> Option<usize> {
        let client = client_key(ctx.client);
        let mut best: Option<(usize, f64)> = None;
        for (i, (&key, &w)) in self.keys.iter().zip(&self.weights).enumerate() {
            if !(ctx.eligible)(i) {
                continue;
            }
            let h = score_hash(client, key);
            let score = if self.uniform {
                // Monotone in `h`, like `w / -ln(u)` is for a fixed `w`.
                h as f64
            } else {
                w / -unit_interval(h).ln()
            };
            // Strict `>`: on an (astronomically rare) tie the lower index wins,
            // the same on every worker.
            if best.is_none_or(|(_, top)| score > top) {
                best = Some((i, score));
            }
        }
        best.map(|(i, _)| i)
    }
}

/// A stable 64-bit hash of `bytes`, the same in every process and build.
/// Useful to derive backend ids for [`Rendezvous::with_ids`] from addresses.
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    // The length goes in first so inputs that differ only by trailing zero
    // bytes (which the zero-padded last chunk would otherwise equate) differ.
    let mut h = mix64(BYTES_SEED ^ bytes.len() as u64);
    for chunk in bytes.chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        h = mix64(h ^ u64::from_le_bytes(word));
    }
    h
}

/// The key of a client. IPv4-mapped IPv6 addresses (what a dual-stack
/// listener reports for IPv4 clients) are folded into IPv4, so a client keeps
/// its backend whichever listener it reached.
fn client_key(ip: IpAddr) -> u64 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => hash_bytes(&v4.octets()),
        IpAddr::V6(v6) => hash_bytes(&v6.octets()),
    }
}

/// The per-(client, backend) hash; the extra round after the xor makes
/// scores of one client under different backends look independent.
fn score_hash(client: u64, backend: u64) -> u64 {
    mix64(mix64(client ^ backend).wrapping_add(BACKEND_SALT))
}

/// Maps a hash into the open interval (0, 1), so the logarithm is finite and
/// strictly negative. 52 bits, not 53: with 53 the top value plus the half
/// step rounds up to exactly 1.0.
fn unit_interval(h: u64) -> f64 {
    const SCALE: f64 = 1.0 / (1u64 << 52) as f64;
    ((h >> 12) as f64 + 0.5) * SCALE
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::balance::test_support::{assert_proportional, pick_with};
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// Distinct, sequential client addresses: the hard case for a weak hash.
    fn clients(k: u32) -> impl Iterator<Item = IpAddr> {
        (0..k).map(|i| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)))
    }

    fn assign(r: &mut Rendezvous, eligible: &[bool], k: u32) -> Vec<usize> {
        let idle = vec![0; eligible.len()];
        clients(k)
            .map(|ip| pick_with(r, ip, eligible, &idle).unwrap())
            .collect()
    }

    #[test]
    fn same_client_same_backend_across_balancers_and_seeds() {
        let mut a = Rendezvous::new(&[1, 2, 3, 1], 1);
        let mut b = Rendezvous::new(&[1, 2, 3, 1], 0xdead_beef);
        let eligible = [true; 4];
        assert_eq!(
            assign(&mut a, &eligible, 2_000),
            assign(&mut b, &eligible, 2_000)
        );
        // Repeated picks on one balancer are stable too.
        assert_eq!(
            assign(&mut a, &eligible, 2_000),
            assign(&mut a, &eligible, 2_000)
        );
        // Same through `build`, where each worker passes its own seed.
        let mut c = crate::backend::balance::build(
            crate::backend::balance::Algorithm::Hash,
            &[1, 2, 3, 1],
            99,
        );
        let ip = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));
        assert_eq!(
            pick_with(c.as_mut(), ip, &eligible, &[0; 4]),
            pick_with(&mut a, ip, &eligible, &[0; 4])
        );
    }

    #[test]
    fn mapping_is_pinned() {
        // Guards against an accidental change of hash, which would reshuffle
        // every client on upgrade.
        assert_eq!(hash_bytes(b""), 0x3564_b439_cd1e_1f16);
        let mut r = Rendezvous::new(&[1, 1, 1, 1, 1], 0);
        let got = assign(&mut r, &[true; 5], 10);
        assert_eq!(got, [0, 1, 1, 1, 2, 1, 2, 1, 3, 0]);
        let mut r = Rendezvous::new(&[1, 2, 3], 0);
        let got = assign(&mut r, &[true; 3], 10);
        assert_eq!(got, [0, 1, 1, 1, 2, 1, 2, 1, 1, 0]);
    }

    #[test]
    fn shares_follow_weights() {
        let mut r = Rendezvous::new(&[1, 2, 3], 0);
        let mut got = vec![0; 3];
        for i in assign(&mut r, &[true; 3], 60_000) {
            got[i] += 1;
        }
        assert_proportional(&got, &[1, 2, 3], 0.01);
    }

    #[test]
    fn equal_weights_spread_evenly() {
        let mut r = Rendezvous::new(&[1; 5], 0);
        let mut got = vec![0; 5];
        for i in assign(&mut r, &[true; 5], 50_000) {
            got[i] += 1;
        }
        assert_proportional(&got, &[1; 5], 0.01);
    }

    #[test]
    fn removing_a_backend_moves_only_its_clients_and_restoring_moves_them_back() {
        let mut r = Rendezvous::new(&[1; 5], 0);
        let before = assign(&mut r, &[true; 5], 10_000);
        let mut without_2 = [true; 5];
        without_2[2] = false;
        let during = assign(&mut r, &without_2, 10_000);

        let mut moved = 0u32;
        for (&b, &d) in before.iter().zip(&during) {
            if b == 2 {
                assert_ne!(d, 2);
                moved += 1;
            } else {
                assert_eq!(b, d, "a client not on the removed backend moved");
            }
        }
        let fraction = f64::from(moved) / 10_000.0;
        assert!((fraction - 0.2).abs() < 0.02, "moved {fraction}");

        // The displaced clients spread over the survivors rather than all
        // landing on one neighbour, as they would on a plain ring.
        let mut landed = [0usize; 5];
        for (&b, &d) in before.iter().zip(&during) {
            if b == 2 {
                landed[d] += 1;
            }
        }
        assert!(landed
            .iter()
            .enumerate()
            .all(|(i, &c)| i == 2 || c > moved as usize / 8));

        assert_eq!(assign(&mut r, &[true; 5], 10_000), before);
    }

    #[test]
    fn weighted_removal_moves_only_its_clients() {
        let mut r = Rendezvous::new(&[1, 2, 3, 4], 0);
        let before = assign(&mut r, &[true; 4], 10_000);
        let during = assign(&mut r, &[true, true, true, false], 10_000);
        for (&b, &d) in before.iter().zip(&during) {
            if b != 3 {
                assert_eq!(b, d);
            }
        }
        assert_eq!(assign(&mut r, &[true; 4], 10_000), before);
    }

    #[test]
    fn ipv4_mapped_ipv6_is_the_same_client() {
        let mut r = Rendezvous::new(&[1; 7], 0);
        for v4 in clients(500) {
            let IpAddr::V4(a) = v4 else { unreachable!() };
            let v6 = IpAddr::V6(a.to_ipv6_mapped());
            assert_eq!(
                pick_with(&mut r, v4, &[true; 7], &[0; 7]),
                pick_with(&mut r, v6, &[true; 7], &[0; 7])
            );
        }
    }

    #[test]
    fn ipv6_clients_spread() {
        let mut r = Rendezvous::new(&[1; 4], 0);
        let mut got = vec![0; 4];
        for i in 0..20_000u128 {
            let ip = IpAddr::V6(Ipv6Addr::from(0x2001_0db8_u128 << 96 | i));
            got[pick_with(&mut r, ip, &[true; 4], &[0; 4]).unwrap()] += 1;
        }
        assert_proportional(&got, &[1; 4], 0.015);
    }

    #[test]
    fn ids_decouple_the_mapping_from_list_order() {
        let ids = [
            hash_bytes(b"10.0.0.1:80"),
            hash_bytes(b"10.0.0.2:80"),
            hash_bytes(b"10.0.0.3:80"),
        ];
        let mut forward = Rendezvous::with_ids(&[1, 2, 3], &ids);
        let mut reversed = Rendezvous::with_ids(&[3, 2, 1], &[ids[2], ids[1], ids[0]]);
        let f = assign(&mut forward, &[true; 3], 3_000);
        let r = assign(&mut reversed, &[true; 3], 3_000);
        for (a, b) in f.iter().zip(&r) {
            assert_eq!(*a, 2 - *b);
        }
    }

    #[test]
    fn hash_bytes_separates_lengths_and_content() {
        assert_ne!(hash_bytes(&[0]), hash_bytes(&[0, 0]));
        assert_ne!(hash_bytes(&[1, 2, 3, 4]), hash_bytes(&[4, 3, 2, 1]));
        assert_ne!(hash_bytes(&[0; 8]), hash_bytes(&[0; 9]));
    }

    #[test]
    fn unit_interval_is_open() {
        for h in [0, 1, u64::MAX, u64::MAX - 1, 1 << 63] {
            let u = unit_interval(h);
            assert!(u > 0.0 && u < 1.0, "{h} -> {u}");
            assert!((-u.ln()).is_finite() && -u.ln() > 0.0);
        }
    }
}
