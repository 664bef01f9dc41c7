//! Hashing and bucketing: how a user key becomes a position, bit for bit the same on every host.
//!
//! Everything here is integer math on `u64`, which wasm32, wasm64 and every native target
//! compute identically, so the Envoy filter, the Worker and the native CLI agree on every user.

use core::hash::Hasher;
use fnv::FnvHasher;

/// Separates the salt from the key. Salts are validated UTF-8 text, which never contains the
/// byte 0xff, so `(salt, key)` pairs cannot collide by shifting bytes from one into the other.
const SALT_END: u8 = 0xff;
/// Separates the key from a candidate name (version or variant) in rendezvous hashing.
/// Names are validated ASCII, so this byte cannot appear in them either.
const KEY_END: u8 = 0xfe;

/// The number of buckets a percentage is measured in: one bucket is 1/1,000,000 of the users.
pub const BUCKETS: u64 = 1_000_000;

/// An FNV-1a state that has already absorbed a salt, computed once at config time so that a
/// request only hashes its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SaltState(u64);

impl SaltState {
    /// Absorbs `domain` (which keeps rollouts and flags of the same name apart) and `salt`.
    pub(crate) fn new(domain: &str, salt: &str) -> SaltState {
        let mut hasher = FnvHasher::default();
        hasher.write(domain.as_bytes());
        hasher.write(&[0]);
        hasher.write(salt.as_bytes());
        hasher.write(&[SALT_END]);
        SaltState(hasher.finish())
    }

    /// The FNV-1a state after the salt and `key`; feed it to [`bucket`] or [`rendezvous`].
    pub(crate) fn with_key(self, key: &[u8]) -> KeyState {
        // `FnvHasher::finish` returns the running state and `with_key` resumes from one, so
        // a state can be stored as a plain `u64` and continued later.
        let mut hasher = FnvHasher::with_key(self.0);
        hasher.write(key);
        KeyState(hasher.finish())
    }
}

/// The FNV-1a state after salt and key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KeyState(u64);

/// The murmur3 64-bit finalizer: a bijection on `u64` in which every input bit flips each
/// output bit with probability close to 1/2.
///
/// FNV-1a alone is not enough for sequential ids. Its last step multiplies by the FNV prime,
/// and a multiplication only carries a change upward: `user-1` and `user-2` differ in the
/// low bits of the last byte, so their hashes share long runs of bits and map to neighbouring
/// or patterned buckets. The finalizer mixes high bits back down and low bits up, so ids that
/// differ in one character land in unrelated buckets.
fn finalize(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^= x >> 33;
    x
}

/// Maps a key to a bucket in `0..BUCKETS`.
///
/// The mapping takes the high bits through a multiply-shift, `(h * BUCKETS) >> 64`, rather
/// than `h % BUCKETS`. Because the finalized hash is uniform over all 2^64 values, each
/// bucket receives either floor or ceil of 2^64 / 10^6 hash values: the largest relative
/// difference between two buckets is 10^6 / 2^64, about 5e-14, far below anything a
/// split could show. A modulo would give the same bound but uses the low bits, which is
/// the half of an FNV hash that mixes worst if the finalizer were ever dropped.
pub(crate) fn bucket(state: KeyState) -> u32 {
    let hash = finalize(state.0);
    // The product is below 2^64 * 10^6 < 2^84, so the shifted result is below 10^6.
    ((u128::from(hash) * u128::from(BUCKETS)) >> 64) as u32
}

/// `-log2(p)` in fixed point with [`LOG_FRAC_BITS`] fraction bits, where
/// `p = (hash + 1) / 2^64` is uniform on (0, 1].
///
/// Integer only, so every host computes the same value. The integer part is the position of
/// the leading one; the fraction bits come from repeated squaring of the mantissa (each
/// squaring doubles the logarithm, so the carry out of [1, 2) is the next bit). The mantissa
/// keeps 31 bits, so every product fits a `u64`.
fn neg_log2(hash: u64) -> u64 {
    const ONE: u64 = 1 << 31;
    if hash == u64::MAX {
        return 0; // p == 1
    }
    let v = hash + 1;
    let exp = 63 - u64::from(v.leading_zeros());
    let mut mantissa = if exp >= 31 {
        v >> (exp - 31)
    } else {
        v << (31 - exp)
    };
    let mut frac = 0u64;
    for _ in 0..LOG_FRAC_BITS {
        mantissa = (mantissa * mantissa) >> 31;
        frac <<= 1;
        if mantissa >= 2 * ONE {
            mantissa >>= 1;
            frac |= 1;
        }
    }
    let log2_v = (exp << LOG_FRAC_BITS) | frac;
    (64 << LOG_FRAC_BITS) - log2_v
}

/// Fraction bits of [`neg_log2`]: 24 bits put the error of each logarithm near 1e-7, which
/// moves a split by far less than the 1/1,000,000 resolution of weights.
const LOG_FRAC_BITS: u32 = 24;

/// Weighted rendezvous hashing: picks one of `candidates` (name, weight) for a key, with
/// probability `weight / sum(weights)`. Returns `None` when every weight is 0.
///
/// Each candidate gets its own uniform draw `u_i` from the key and its name, and the score
/// `weight_i / -ln(u_i)`; the highest score wins. `-ln(u_i) / weight_i` is exponentially
/// distributed with rate `weight_i`, and the smallest of independent exponentials is the one
/// with rate `weight_i` with probability `weight_i / sum`: the split matches the weights.
///
/// This is what gives minimal movement. Raising one weight raises only that candidate's
/// score, so a user can only move into it; lowering it lowers only its score, so a user can
/// only leave it; every other pair of scores keeps its order, so no user moves between
/// two other candidates. Contiguous bucket ranges, as Envoy's and Istio's weighted clusters
/// use, shift every boundary after the changed one instead.
///
/// Scores are compared without division: `w_i / L_i > w_j / L_j` as `w_i * L_j > w_j * L_i`,
/// with `L` from [`neg_log2`] (log base 2 scales every score alike, so the order is the same).
/// Weights are at most 2^32 and `L` at most 2^30, so the products fit a `u64`.
/// Ties go to the earlier candidate.
pub(crate) fn rendezvous<'n>(
    state: KeyState,
    candidates: impl Iterator<Item = (&'n str, u32)>,
) -> Option<usize> {
    let mut best: Option<(usize, u64, u64)> = None; // (index, weight, L)
    for (idx, (name, weight)) in candidates.enumerate() {
        if weight == 0 {
            continue;
        }
        let mut hasher = FnvHasher::with_key(state.0);
        hasher.write(&[KEY_END]);
        hasher.write(name.as_bytes());
        let l = neg_log2(finalize(hasher.finish()));
        let weight = u64::from(weight);
        match best {
            Some((_, best_weight, best_l)) if weight * best_l <= best_weight * l => {}
            _ => best = Some((idx, weight, l)),
        }
    }
    best.map(|(idx, _, _)| idx)
}

/// Maps host-supplied entropy (for users without a key) to a key state, so that the same
/// weighted choice applies without a user key.
pub(crate) fn entropy_state(salt: SaltState, entropy: u64) -> KeyState {
    salt.with_key(&entropy.to_le_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neg_log2_matches_float_log_closely() {
        // The float reference is only used here, natively, to check the integer version.
        let scale = (1u64 << LOG_FRAC_BITS) as f64;
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..10_000 {
            x = finalize(x.wrapping_add(0x9e37_79b9_7f4a_7c15));
            let exact = -(((x as f64) + 1.0) / 18_446_744_073_709_551_616.0).log2();
            let got = neg_log2(x) as f64 / scale;
            assert!((exact - got).abs() < 1e-6, "x={x} exact={exact} got={got}");
        }
        assert_eq!(neg_log2(0), 64 << LOG_FRAC_BITS);
        assert_eq!(neg_log2(u64::MAX), 0);
        assert_eq!(neg_log2((1 << 63) - 1), 1 << LOG_FRAC_BITS);
    }

    /// The inverse of [`finalize`], so a test can hand [`bucket`] a state whose finalized
    /// hash it chooses. Each xor-shift by 33 is its own inverse on 64 bits; each multiplier is
    /// odd, and its inverse mod 2^64 comes from Newton's iteration (each step doubles the
    /// correct low bits, so 6 steps reach 64).
    fn unfinalize(mut x: u64) -> u64 {
        let inverse = |c: u64| {
            let mut inv = c;
            for _ in 0..6 {
                inv = inv.wrapping_mul(2u64.wrapping_sub(c.wrapping_mul(inv)));
            }
            inv
        };
        x ^= x >> 33;
        x = x.wrapping_mul(inverse(0xc4ce_b9fe_1a85_ec53));
        x ^= x >> 33;
        x = x.wrapping_mul(inverse(0xff51_afd7_ed55_8ccd));
        x ^= x >> 33;
        x
    }

    #[test]
    fn bucket_maps_the_finalized_hash_onto_equal_ranges() {
        // Bucket b holds the hashes h with b <= h * 10^6 / 2^64 < b + 1. With
        // 2^64 / 10^6 = 18_446_744_073_709.55: bucket 1 starts at 18_446_744_073_710, bucket
        // 500_000 at 2^63, and the last one 18_446_744_073_709 below 2^64.
        let cases = [
            (0, 0),
            (18_446_744_073_709, 0),
            (18_446_744_073_710, 1),
            ((1 << 63) - 1, 499_999),
            (1 << 63, 500_000),
            (u64::MAX - 18_446_744_073_709, 999_998),
            (u64::MAX - 18_446_744_073_708, 999_999),
            (u64::MAX, 999_999),
        ];
        for (hash, expected) in cases {
            let state = KeyState(unfinalize(hash));
            assert_eq!(finalize(state.0), hash, "unfinalize is not the inverse");
            assert_eq!(bucket(state), expected, "hash {hash:#x}");
        }
        let state = SaltState::new("flag", "x").with_key(b"k");
        assert!(u64::from(bucket(state)) < BUCKETS);
    }

    #[test]
    fn rendezvous_never_picks_weight_zero() {
        let salt = SaltState::new("rollout", "r");
        for i in 0..1000 {
            let key = format!("user-{i}");
            let pick = rendezvous(
                salt.with_key(key.as_bytes()),
                [("a", 0), ("b", 5), ("c", 0)].into_iter(),
            );
            assert_eq!(pick, Some(1));
        }
        assert_eq!(
            rendezvous(salt.with_key(b"u"), [("a", 0)].into_iter()),
            None
        );
    }

    #[test]
    fn finalize_is_not_identity_on_sequential_fnv_states() {
        // Sequential ids must not land in neighbouring buckets.
        let salt = SaltState::new("flag", "f");
        let b1 = bucket(salt.with_key(b"user-1"));
        let b2 = bucket(salt.with_key(b"user-2"));
        assert!(b1.abs_diff(b2) > 1000, "{b1} {b2}");
    }
}
