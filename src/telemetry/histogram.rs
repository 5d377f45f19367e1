//! `portcullis_request_duration_seconds`: a Prometheus histogram with
//! fixed buckets, counted with relaxed atomic adds.
//!
//! metrics-exporter-prometheus keeps every histogram sample until an upkeep
//! drains them into buckets. At 60k requests/s that is 300k samples per
//! 5 s upkeep: a 1.2 ms stall of the event loop each time (perf), and the
//! samples' memory in between. Here a sample is two additions, and
//! rendering only reads the counters.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds of the buckets, in nanoseconds, ascending: 0.5 ms … 30 s.
const BOUNDS_NANOS: [u64; 15] = [
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    30_000_000_000,
];

/// One route's request durations.
#[derive(Default)]
pub struct DurationHistogram {
    /// Per bucket, not cumulative: `counts[i]` holds the durations above
    /// bound `i - 1` and at most bound `i`; the last slot, those above
    /// every bound. The total count is their sum.
    counts: [AtomicU64; BOUNDS_NANOS.len() + 1],
    sum_nanos: AtomicU64,
}

impl DurationHistogram {
    pub fn record(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        // Most requests land in the first buckets: a forward scan beats a
        // binary search here.
        let bucket = BOUNDS_NANOS
            .iter()
            .position(|&bound| nanos <= bound)
            .unwrap_or(BOUNDS_NANOS.len());
        self.counts[bucket].fetch_add(1, Relaxed);
        self.sum_nanos.fetch_add(nanos, Relaxed);
    }

    /// Appends this histogram's series, labelled `route="..."`, in the
    /// Prometheus text format.
    fn render_series(&self, name: &str, route: &str, out: &mut String) {
        let route = escape_label(route);
        let mut cumulative = 0u64;
        for (count, bound) in self.counts.iter().zip(BOUNDS_NANOS) {
            cumulative += count.load(Relaxed);
            // In seconds, as the shortest decimal that reads back: "0.0005", "1".
            let le = bound as f64 / 1e9;
            let _ = writeln!(
                out,
                "{name}_bucket{{route=\"{route}\",le=\"{le}\"}} {cumulative}"
            );
        }
        cumulative += self.counts[BOUNDS_NANOS.len()].load(Relaxed);
        let sum = self.sum_nanos.load(Relaxed) as f64 / 1e9;
        let _ = writeln!(
            out,
            "{name}_bucket{{route=\"{route}\",le=\"+Inf\"}} {cumulative}"
        );
        let _ = writeln!(out, "{name}_sum{{route=\"{route}\"}} {sum}");
        let _ = writeln!(out, "{name}_count{{route=\"{route}\"}} {cumulative}");
    }
}

/// Appends the family `name` with one series per route.
pub fn render_family<'a>(
    name: &str,
    routes: impl IntoIterator<Item = (&'a str, &'a DurationHistogram)>,
    out: &mut String,
) {
    let _ = writeln!(out, "# TYPE {name} histogram");
    for (route, histogram) in routes {
        histogram.render_series(name, route, out);
    }
    out.push('\n');
}

/// A label value as the text format wants it: `\`, `"` and newlines escaped.
fn escape_label(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.contains(['\\', '"', '\n']) {
        return value.into();
    }
    let mut escaped = String::with_capacity(value.len() + 2);
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c => escaped.push(c),
        }
    }
    escaped.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_labelled_in_seconds() {
        let mut out = String::new();
        render_family("d", [("r", &DurationHistogram::default())], &mut out);
        let labels: Vec<&str> = out
            .lines()
            .filter_map(|l| l.split_once("le=\"")?.1.split_once('"'))
            .map(|(le, _)| le)
            .collect();
        assert_eq!(
            labels,
            [
                "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25",
                "0.5", "1", "2.5", "5", "10", "30", "+Inf"
            ]
        );
        assert!(BOUNDS_NANOS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn durations_fall_in_the_bucket_whose_bound_they_do_not_exceed() {
        let h = DurationHistogram::default();
        h.record(Duration::from_micros(500)); // exactly 0.5 ms: le="0.0005"
        h.record(Duration::from_nanos(500_001)); // just above: le="0.001"
        h.record(Duration::from_millis(7)); // le="0.01"
        h.record(Duration::from_secs(31)); // above every bound: +Inf only
        let mut out = String::new();
        render_family("d", [("r", &h)], &mut out);
        let series = |le: &str| {
            let key = format!("d_bucket{{route=\"r\",le=\"{le}\"}} ");
            let line = out.lines().find(|l| l.starts_with(&key)).unwrap();
            line[key.len()..].parse::<u64>().unwrap()
        };
        assert_eq!(series("0.0005"), 1);
        assert_eq!(series("0.001"), 2);
        assert_eq!(series("0.005"), 2);
        assert_eq!(series("0.01"), 3);
        assert_eq!(series("30"), 3);
        assert_eq!(series("+Inf"), 4);
        assert!(out.starts_with("# TYPE d histogram\n"), "{out}");
        assert!(out.contains("\nd_count{route=\"r\"} 4\n"), "{out}");
        assert!(out.contains("\nd_sum{route=\"r\"} 31.008000001\n"), "{out}");
    }

    #[test]
    fn route_names_are_escaped() {
        let h = DurationHistogram::default();
        let mut out = String::new();
        render_family("d", [("a\"b\\c\nd", &h)], &mut out);
        assert!(
            out.contains("d_count{route=\"a\\\"b\\\\c\\nd\"} 0\n"),
            "{out}"
        );
    }
}
