//! Weighted split across a route's upstreams (pipeline step 4, `choose
//! backend`). Weights are relative; a weight of 0 drains that side.

/// A route's targets with their cumulative weights.
#[derive(Debug)]
pub struct Split<T> {
    /// (cumulative weight upper bound, target), ascending.
    targets: Vec<(u64, T)>,
    total: u64,
}

impl<T> Split<T> {
    /// `weighted` must hold at least one weight above 0 (config validation
    /// guarantees it); zero-weight targets are never picked.
    pub fn new(weighted: impl IntoIterator<Item = (u32, T)>) -> Self {
        let mut total = 0u64;
        let mut targets = Vec::new();
        for (w, t) in weighted {
            if w > 0 {
                total += u64::from(w);
                targets.push((total, t));
            }
        }
        Split { targets, total }
    }

    /// Picks a target for a draw in `0..total`.
    pub fn pick_at(&self, draw: u64) -> Option<&T> {
        let i = self.targets.partition_point(|(upper, _)| *upper <= draw);
        self.targets.get(i).map(|(_, t)| t)
    }

    /// Picks a target at random by weight.
    pub fn pick(&self) -> Option<&T> {
        match self.targets.len() {
            0 => None,
            1 => Some(&self.targets[0].1),
            _ => self.pick_at(fastrand::u64(0..self.total)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_map_onto_weight_ranges() {
        let s = Split::new([(90, "a"), (0, "drained"), (10, "b")]);
        assert_eq!(s.pick_at(0), Some(&"a"));
        assert_eq!(s.pick_at(89), Some(&"a"));
        assert_eq!(s.pick_at(90), Some(&"b"));
        assert_eq!(s.pick_at(99), Some(&"b"));
        assert_eq!(s.pick_at(100), None);
    }

    #[test]
    fn random_picks_follow_weights() {
        fastrand::seed(7);
        let s = Split::new([(90, 0usize), (10, 1usize)]);
        let mut counts = [0u32; 2];
        for _ in 0..100_000 {
            counts[*s.pick().unwrap()] += 1;
        }
        // 10% ± 1% (the standard deviation is about 0.1%).
        assert!((9_000..11_000).contains(&counts[1]), "{counts:?}");
    }
}
