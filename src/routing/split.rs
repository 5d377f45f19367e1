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

/// Step 3: the upstream for this request and its index in the route's
/// split. A tester's override header wins on routes that allow it (naming
/// any upstream of the split, drained ones included; an unknown name is a
/// 400); then the sticky key's hash; then a random draw by weight (also for
/// requests without the sticky key). Entries the canary guard drained are
/// left out of both.
pub fn choose(route: &Route, keys: &KeySource<'_>) -> Result<(usize, Arc<Upstream>), Reject> {
    if let Some(header) = &route.override_header {
        if let Some(wanted) = keys.headers.get(header) {
            return route
                .pinnable
                .iter()
                .enumerate()
                .find(|(_, u)| u.name.as_bytes() == wanted.as_bytes())
                .map(|(i, u)| (i, u.clone()))
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
    let drained = route.guard.as_ref().map_or(0, |g| g.tripped());
    route
        .split
        .pick(sticky, drained)
        .map(|(i, u)| (i, u.clone()))
        .ok_or(Reject::NoRoute)
}

/// A route's targets with their cumulative weights.
#[derive(Debug)]
pub struct Split<T> {
    /// Ascending by `upper`; zero weights left out.
    targets: Vec<Target<T>>,
    total: u64,
}

#[derive(Debug)]
struct Target<T> {
    /// Cumulative weight up to and including this target.
    upper: u64,
    weight: u64,
    /// Position in the config's split (zero weights counted).
    index: usize,
    value: T,
}

impl<T> Split<T> {
    /// `weighted` must hold at least one weight above 0 (config validation
    /// guarantees it); zero-weight targets are never picked.
    pub fn new(weighted: impl IntoIterator<Item = (u32, T)>) -> Self {
        let mut total = 0u64;
        let mut targets = Vec::new();
        for (index, (w, value)) in weighted.into_iter().enumerate() {
            if w > 0 {
                total += u64::from(w);
                targets.push(Target {
                    upper: total,
                    weight: u64::from(w),
                    index,
                    value,
                });
            }
        }
        Split { targets, total }
    }

    /// Picks a target for a draw in `0..total`.
    pub fn pick_at(&self, draw: u64) -> Option<(usize, &T)> {
        let i = self.targets.partition_point(|t| t.upper <= draw);
        self.targets.get(i).map(|t| (t.index, &t.value))
    }

    /// Picks by a client key's hash (see the module docs) or, without one,
    /// at random by weight; never an entry whose bit is set in `drained`.
    pub fn pick(&self, hash: Option<u64>, drained: u64) -> Option<(usize, &T)> {
        if drained != 0 {
            return self.pick_undrained(hash, drained);
        }
        match (hash, self.targets.len()) {
            (_, 0) => None,
            (None, 1) => Some((self.targets[0].index, &self.targets[0].value)),
            (Some(hash), _) => self.pick_at(scale(hash, self.total)),
            (None, _) => self.pick_at(fastrand::u64(0..self.total)),
        }
    }

    /// The same draw over the weights left when `drained` entries are out.
    fn pick_undrained(&self, hash: Option<u64>, drained: u64) -> Option<(usize, &T)> {
        let live = |t: &&Target<T>| drained & bit(t.index) == 0;
        let total: u64 = self.targets.iter().filter(live).map(|t| t.weight).sum();
        if total == 0 {
            return None;
        }
        let mut draw = match hash {
            Some(hash) => scale(hash, total),
            None => fastrand::u64(0..total),
        };
        for t in self.targets.iter().filter(live) {
            if draw < t.weight {
                return Some((t.index, &t.value));
            }
            draw -= t.weight;
        }
        None
    }
}

/// Split entry `index`'s bit in a `drained` mask; entries past the 64th
/// have none (0), so they are never drained.
pub fn bit(index: usize) -> u64 {
    u32::try_from(index)
        .ok()
        .and_then(|i| 1u64.checked_shl(i))
        .unwrap_or(0)
}

/// A 64-bit hash scaled onto `0..total`, keeping order: a key's place
/// among the weights moves only as the boundaries do.
fn scale(hash: u64, total: u64) -> u64 {
    let draw = (u128::from(hash) * u128::from(total)) >> 64;
    u64::try_from(draw).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_map_onto_weight_ranges() {
        let s = Split::new([(90, "a"), (0, "drained"), (10, "b")]);
        assert_eq!(s.pick_at(0), Some((0, &"a")));
        assert_eq!(s.pick_at(89), Some((0, &"a")));
        assert_eq!(s.pick_at(90), Some((2, &"b")));
        assert_eq!(s.pick_at(99), Some((2, &"b")));
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
                before.pick(Some(k), 0).unwrap().1,
                after.pick(Some(k), 0).unwrap().1,
            );
            assert_eq!(
                before.pick(Some(k), 0).unwrap().1,
                b,
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
            counts[*s.pick(None, 0).unwrap().1] += 1;
        }
        // 10% ± 1% (the standard deviation is about 0.1%).
        assert!((9_000..11_000).contains(&counts[1]), "{counts:?}");
    }
}

#[cfg(test)]
mod drained_tests {
    use super::*;

    #[test]
    fn drained_entries_get_nothing_and_sticky_keys_elsewhere_stay() {
        let s = Split::new([(80, "stable"), (10, "canary"), (10, "beta")]);
        let drained = 0b10; // the canary
        for k in 0..10_000u64 {
            let hash = crate::upstream::balance::hash_bytes(&k.to_le_bytes());
            let (_, before) = s.pick(Some(hash), 0).unwrap();
            let (i, after) = s.pick(Some(hash), drained).unwrap();
            assert_ne!(i, 1);
            assert_ne!(*after, "canary");
            if *before != "canary" {
                // Only the drained entry's keys move.
                assert_eq!(after, before);
            }
            assert_ne!(s.pick(None, drained).unwrap().0, 1);
        }
        assert_eq!(s.pick(None, 0b111), None);
    }
}
