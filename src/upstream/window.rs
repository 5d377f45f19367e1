//! A sliding count of two kinds of events (say, successes and failures)
//! over a time window: ten buckets, each a tenth of the window, updated with
//! atomics only. Used by the circuit breaker's failure ratio and the retry
//! budget.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

const BUCKETS: u64 = 10;

#[derive(Default)]
struct Bucket {
    /// Which bucket period (`now_ms / bucket_ms`) the counts belong to.
    period: AtomicU64,
    a: AtomicU32,
    b: AtomicU32,
}

#[derive(Default)]
pub struct Window {
    bucket_ms: AtomicU64,
    buckets: [Bucket; BUCKETS as usize],
}

impl Window {
    /// Counts `a` and `b` events at `now_ms`, in a window of `window_ms`.
    pub fn add(&self, now_ms: u64, window_ms: u64, a: u32, b: u32) {
        let bucket = self.bucket_for(now_ms, window_ms);
        bucket.a.fetch_add(a, Ordering::Relaxed);
        bucket.b.fetch_add(b, Ordering::Relaxed);
    }

    /// The `(a, b)` totals over the window ending at `now_ms`.
    pub fn totals(&self, now_ms: u64, window_ms: u64) -> (u64, u64) {
        let bucket_ms = bucket_ms(window_ms);
        if self.bucket_ms.load(Ordering::Relaxed) != bucket_ms {
            return (0, 0);
        }
        let current = now_ms / bucket_ms;
        let mut totals = (0u64, 0u64);
        for bucket in &self.buckets {
            let period = bucket.period.load(Ordering::Acquire);
            if current.saturating_sub(period) < BUCKETS {
                totals.0 += u64::from(bucket.a.load(Ordering::Relaxed));
                totals.1 += u64::from(bucket.b.load(Ordering::Relaxed));
            }
        }
        totals
    }

    /// Forgets everything counted so far.
    pub fn clear(&self) {
        for bucket in &self.buckets {
            bucket.a.store(0, Ordering::Relaxed);
            bucket.b.store(0, Ordering::Relaxed);
        }
    }

    fn bucket_for(&self, now_ms: u64, window_ms: u64) -> &Bucket {
        let bucket_ms = bucket_ms(window_ms);
        if self.bucket_ms.swap(bucket_ms, Ordering::Relaxed) != bucket_ms {
            // The window's length changed (a reload): old buckets mean
            // something else now.
            self.clear();
        }
        let period = now_ms / bucket_ms;
        let bucket = &self.buckets[(period % BUCKETS) as usize];
        let seen = bucket.period.load(Ordering::Acquire);
        if seen != period
            && bucket
                .period
                .compare_exchange(seen, period, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // Recycled from ten periods ago. A count racing this reset may
            // be lost; the window is a statistic, not a ledger.
            bucket.a.store(0, Ordering::Relaxed);
            bucket.b.store(0, Ordering::Relaxed);
        }
        bucket
    }
}

fn bucket_ms(window_ms: u64) -> u64 {
    (window_ms / BUCKETS).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_slide_out_of_the_window() {
        let w = Window::default();
        w.add(0, 1000, 1, 0);
        w.add(150, 1000, 0, 2);
        assert_eq!(w.totals(200, 1000), (1, 2));
        // At 1050 the bucket of t=0 (period 0) is out; period 1 is still in.
        assert_eq!(w.totals(1050, 1000), (0, 2));
        assert_eq!(w.totals(1200, 1000), (0, 0));
        // A recycled bucket (period 10 reuses period 0's) starts from zero.
        w.add(1000, 1000, 5, 0);
        assert_eq!(w.totals(1000, 1000), (5, 2));
    }
}
