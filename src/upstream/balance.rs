//! Endpoint choice within an upstream (`balance:`), over the endpoints a
//! caller accepts (healthy, and for a retry not tried yet):
//!
//! - `round_robin`: a shared cursor; unacceptable endpoints are skipped.
//! - `least_requests`: power of two random choices, the one with fewer
//!   requests in flight wins (Mitzenmacher; what Envoy and linkerd do).
//! - `hash:<key>`: rendezvous (highest random weight) hashing: each
//!   endpoint scores `mix(key, endpoint)`, the highest wins. Removing one of
//!   N endpoints moves only the keys it held (about 1/N); a request without
//!   the key falls back to round robin.
//!
//! Nothing here allocates; an upstream has few endpoints, so linear scans
//! are cheaper than any index.

/// Round robin from `cursor`: the first acceptable endpoint.
pub fn round_robin(n: usize, cursor: usize, ok: impl Fn(usize) -> bool) -> Option<usize> {
    (0..n).map(|step| (cursor + step) % n).find(|&i| ok(i))
}

/// Power of two choices by `load`.
pub fn least_requests(
    n: usize,
    ok: impl Fn(usize) -> bool,
    load: impl Fn(usize) -> usize,
) -> Option<usize> {
    if n == 0 {
        return None;
    }
    let a = fastrand::usize(..n);
    let b = if n > 1 {
        (a + 1 + fastrand::usize(..n - 1)) % n
    } else {
        a
    };
    match (ok(a), ok(b)) {
        (true, true) => Some(if load(b) < load(a) { b } else { a }),
        (true, false) => Some(a),
        (false, true) => Some(b),
        (false, false) => round_robin(n, a, ok),
    }
}

/// Rendezvous hashing: the acceptable endpoint with the highest score for
/// `key`; `seed(i)` is a hash of endpoint `i`'s address.
pub fn rendezvous(
    n: usize,
    seed: impl Fn(usize) -> u64,
    key: u64,
    ok: impl Fn(usize) -> bool,
) -> Option<usize> {
    (0..n)
        .filter(|&i| ok(i))
        .max_by_key(|&i| mix(key ^ seed(i)))
}

/// A 64-bit finalizer (splitmix64): every input bit moves every output bit.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A stable 64-bit hash of `bytes` (FNV-1a, then mixed): the same on every
/// gateway instance and across restarts, so keys land alike everywhere.
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    mix(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_skips_what_is_not_acceptable() {
        assert_eq!(round_robin(3, 0, |_| true), Some(0));
        assert_eq!(round_robin(3, 4, |_| true), Some(1));
        assert_eq!(round_robin(3, 1, |i| i != 1), Some(2));
        assert_eq!(round_robin(3, 0, |_| false), None);
    }

    #[test]
    fn least_requests_prefers_the_less_loaded_of_two() {
        let loads = [5, 0, 5];
        let picks: Vec<usize> = (0..300)
            .filter_map(|_| least_requests(3, |_| true, |i| loads[i]))
            .collect();
        let to_idle = picks.iter().filter(|&&i| i == 1).count();
        // Endpoint 1 wins whenever it is one of the two: 2/3 of the time.
        assert!(to_idle > 150, "{to_idle}");
        assert_eq!(least_requests(3, |i| i == 2, |i| loads[i]), Some(2));
        assert_eq!(least_requests(1, |_| true, |_| 0), Some(0));
        assert_eq!(least_requests(2, |_| false, |_| 0), None);
    }

    #[test]
    fn rendezvous_moves_only_the_removed_endpoints_keys() {
        let seeds: Vec<u64> = (0..4)
            .map(|i| hash_bytes(format!("10.0.0.{i}:80").as_bytes()))
            .collect();
        let keys: Vec<u64> = (0..4000)
            .map(|k| hash_bytes(format!("user-{k}").as_bytes()))
            .collect();
        let before: Vec<usize> = keys
            .iter()
            .map(|&k| rendezvous(4, |i| seeds[i], k, |_| true).unwrap())
            .collect();
        let after: Vec<usize> = keys
            .iter()
            .map(|&k| rendezvous(4, |i| seeds[i], k, |i| i != 3).unwrap())
            .collect();
        let mut moved = 0;
        for (b, a) in before.iter().zip(&after) {
            if b != a {
                assert_eq!(*b, 3, "only keys of the removed endpoint move");
                moved += 1;
            }
        }
        // About 1/4 of the keys were on endpoint 3.
        assert!((800..1200).contains(&moved), "{moved}");
        for e in 0..4 {
            let share = before.iter().filter(|&&b| b == e).count();
            assert!((800..1200).contains(&share), "endpoint {e}: {share}");
        }
    }
}
