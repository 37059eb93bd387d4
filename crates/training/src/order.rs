//! Seeded orders and streams: which sample an epoch visits when, the same on every machine and
//! thread count (ChaCha8 streams keyed by `(seed, epoch, purpose)`).

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

/// A permutation of `0..n` from the seeded stream of `(seed, epoch)` (Fisher-Yates).
pub fn epoch_permutation(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut rng = epoch_rng(seed, epoch, 0);
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

/// The seeded random stream for `(seed, epoch)`; `purpose` (0..16) separates independent uses.
pub fn epoch_rng(seed: u64, epoch: u64, purpose: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(epoch.wrapping_mul(16).wrapping_add(purpose));
    rng
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_is_seeded_and_complete() {
        let a = epoch_permutation(100, 7, 3);
        assert_eq!(a, epoch_permutation(100, 7, 3));
        assert_ne!(a, epoch_permutation(100, 7, 4));
        assert_ne!(a, epoch_permutation(100, 8, 3));
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
    }
}
