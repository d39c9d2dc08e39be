//! Summaries of measured samples: quantiles, medians across runs, spread.

use std::time::Duration;

/// One measured run of a fixed count.
#[derive(Debug, Clone)]
pub struct Run {
    /// Completed operations.
    pub count: usize,
    /// Wall time for all of them.
    pub elapsed: Duration,
    /// Per-operation latencies, sorted.
    pub latencies: Vec<Duration>,
}

impl Run {
    /// A run from unsorted latencies.
    pub fn new(count: usize, elapsed: Duration, mut latencies: Vec<Duration>) -> Self {
        latencies.sort();
        Self {
            count,
            elapsed,
            latencies,
        }
    }

    /// Operations per second.
    pub fn rate(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }

    /// The `q` quantile (0..=1) of the latencies, nearest rank.
    pub fn quantile(&self, q: f64) -> Duration {
        quantile(&self.latencies, q)
    }
}

pub use scalectl::load::quantile;

/// The median and the (min, max) spread of values across runs.
pub fn median_spread(values: &[f64]) -> (f64, f64, f64) {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    let mid = v.len() / 2;
    let median = if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    };
    (median, v[0], v[v.len() - 1])
}

/// A quantile from a Prometheus histogram's cumulative buckets (as
/// `histogram_quantile` computes it: linear within the bucket).
pub fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> f64 {
    let Some(&(_, total)) = buckets.last() else {
        return 0.0;
    };
    if total <= 0.0 {
        return 0.0;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(bound, count) in buckets {
        if count >= rank {
            if bound.is_infinite() {
                return lower.0;
            }
            let in_bucket = count - lower.1;
            let fraction = if in_bucket > 0.0 {
                (rank - lower.1) / in_bucket
            } else {
                0.0
            };
            return lower.0 + (bound - lower.0) * fraction;
        }
        lower = (bound, count);
    }
    lower.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_medians() {
        let run = Run::new(
            4,
            Duration::from_secs(2),
            (1..=4).rev().map(Duration::from_millis).collect(),
        );
        assert_eq!(run.rate(), 2.0);
        assert_eq!(run.quantile(0.5), Duration::from_millis(2));
        assert_eq!(run.quantile(0.99), Duration::from_millis(4));
        assert_eq!(median_spread(&[3.0, 1.0, 2.0]), (2.0, 1.0, 3.0));
        assert_eq!(median_spread(&[4.0, 1.0]), (2.5, 1.0, 4.0));
    }

    #[test]
    fn histogram_quantile_interpolates_like_prometheus() {
        // 100 observations: 50 under 1 ms, all under 2 ms.
        let buckets = [(0.001, 50.0), (0.002, 100.0), (f64::INFINITY, 100.0)];
        assert!((histogram_quantile(0.5, &buckets) - 0.001).abs() < 1e-12);
        assert!((histogram_quantile(0.75, &buckets) - 0.0015).abs() < 1e-12);
        assert!((histogram_quantile(0.99, &buckets) - 0.00198).abs() < 1e-9);
    }
}
