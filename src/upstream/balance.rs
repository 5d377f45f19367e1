//! Endpoint choice within an upstream (`balance:`). Round robin is a cursor
//! modulo the endpoint count (in `Upstream::pick`); least requests is here.

/// Index of the endpoint with the fewest requests in flight. The scan starts
/// at `cursor` so that ties rotate instead of all landing on the first
/// endpoint. `endpoints` must not be empty.
pub fn least_requests<E>(endpoints: &[E], cursor: usize, load: impl Fn(&E) -> usize) -> usize {
    let n = endpoints.len();
    let mut best = cursor % n;
    let mut best_load = load(&endpoints[best]);
    for step in 1..n {
        let i = (cursor + step) % n;
        let l = load(&endpoints[i]);
        if l < best_load {
            best = i;
            best_load = l;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_least_loaded_and_rotates_ties() {
        assert_eq!(least_requests(&[3, 1, 2], 0, |l| *l), 1);
        assert_eq!(least_requests(&[0, 0, 0], 0, |l| *l), 0);
        assert_eq!(least_requests(&[0, 0, 0], 1, |l| *l), 1);
        assert_eq!(least_requests(&[0, 0, 0], 5, |l| *l), 2);
    }
}
