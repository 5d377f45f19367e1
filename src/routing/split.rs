//! Weighted split across a route's upstreams (pipeline step 3, `choose
//! upstream`). Weights are relative; a weight of 0 drains that side.
//!
//! A sticky split maps a client key's 64-bit hash onto the same cumulative
//! weight ranges a random draw uses, scaled to the total: a key stays on its
//! side while the weights stay, and when a later target's weight grows (a
//! canary going from 5 to 10) the boundary before it moves down, so keys
//! only move from the earlier side to the later one, never back.

use std::sync::Arc;

use crate::client_key::KeySource;
use crate::error::Reject;
use crate::snapshot::Route;
use crate::upstream::{balance, Upstream};

/// Step 3: the upstream for this request. A tester's override header wins
/// on routes that allow it (naming any upstream of the split, drained ones
/// included; an unknown name is a 400); then the sticky key's hash; then a
/// random draw by weight (also for requests without the sticky key).
pub fn choose(route: &Route, keys: &KeySource<'_>) -> Result<Arc<Upstream>, Reject> {
    if let Some(header) = &route.override_header {
        if let Some(wanted) = keys.headers.get(header) {
            return route
                .pinnable
                .iter()
                .find(|u| u.name.as_bytes() == wanted.as_bytes())
                .cloned()
                .ok_or(Reject::BadRequest {
                    reason: "the override header names no upstream of this route's split",
                });
        }
    }
    let sticky = route
        .sticky
        .as_ref()
        .and_then(|k| k.read(keys))
        .map(|k| balance::hash_bytes(k.as_bytes()));
    let picked = match sticky {
        Some(hash) => route.split.pick_sticky(hash),
        None => route.split.pick(),
    };
    picked.cloned().ok_or(Reject::NoRoute)
}

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

    /// Picks the target for a client key's hash (see the module docs).
    pub fn pick_sticky(&self, hash: u64) -> Option<&T> {
        let draw = (u128::from(hash) * u128::from(self.total)) >> 64;
        self.pick_at(u64::try_from(draw).unwrap_or(u64::MAX))
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
    fn sticky_picks_stay_put_and_a_growing_canary_only_takes_keys() {
        let keys: Vec<u64> = (0..10_000u64)
            .map(|k| crate::upstream::balance::hash_bytes(&k.to_le_bytes()))
            .collect();
        let before = Split::new([(95, "stable"), (5, "canary")]);
        let after = Split::new([(90, "stable"), (10, "canary")]);
        let (mut on_canary, mut moved) = (0, 0);
        for &k in &keys {
            let (b, a) = (
                before.pick_sticky(k).unwrap(),
                after.pick_sticky(k).unwrap(),
            );
            assert_eq!(
                before.pick_sticky(k),
                Some(b),
                "the same key, the same side"
            );
            assert!(
                !(*b == "canary" && *a == "stable"),
                "a canary key went back"
            );
            on_canary += usize::from(*b == "canary");
            moved += usize::from(b != a);
        }
        // 5% ± 4σ (σ ≈ 22 of 10,000), and 5% more moved over.
        assert!((413..=587).contains(&on_canary), "{on_canary}");
        assert!((413..=587).contains(&moved), "{moved}");
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
