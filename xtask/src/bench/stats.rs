//! Repeated measurements: median and spread per metric, and latency percentiles.

use std::{collections::BTreeMap, time::Duration};

use serde::Serialize;

/// One metric over the runs: median, min, max and every run's value.
#[derive(Debug, Clone, Serialize)]
pub struct Stat {
    /// Median of the runs (mean of the middle two for an even count).
    pub median: f64,
    /// Smallest run.
    pub min: f64,
    /// Largest run.
    pub max: f64,
    /// Every run, in order.
    pub runs: Vec<f64>,
}

impl Stat {
    /// The statistics of `runs` (None when empty).
    pub fn of(runs: &[f64]) -> Option<Stat> {
        if runs.is_empty() {
            return None;
        }
        let mut sorted = runs.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Some(Stat {
            median,
            min: sorted[0],
            max: sorted[n - 1],
            runs: runs.to_vec(),
        })
    }
}

/// One peer's row: its name and the statistics of each metric it has.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// The peer (e.g. `nodegate xdp`, `nginx`).
    pub path: String,
    /// Metric key → statistics.
    pub metrics: BTreeMap<String, Stat>,
    /// Anything a reader must know about this row (e.g. how it was pinned).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// Collects per-run values of a peer's metrics.
#[derive(Debug, Default)]
pub struct Samples {
    values: BTreeMap<String, Vec<f64>>,
    notes: Vec<String>,
}

impl Samples {
    /// Records one run's value of `key` (nothing for None or a non-finite value).
    pub fn push(&mut self, key: &str, value: Option<f64>) {
        if let Some(v) = value.filter(|v| v.is_finite()) {
            self.values.entry(key.to_string()).or_default().push(v);
        }
    }

    /// Records p50/p99/p999 of `latencies` (µs) under `<prefix>_p50_us` etc.
    pub fn push_latency(&mut self, prefix: &str, latencies: &mut [Duration]) {
        if let Some([p50, p99, p999]) = percentiles(latencies) {
            self.push(&format!("{prefix}_p50_us"), Some(p50));
            self.push(&format!("{prefix}_p99_us"), Some(p99));
            self.push(&format!("{prefix}_p999_us"), Some(p999));
        }
    }

    /// Adds a note to the row (once).
    pub fn note(&mut self, note: impl Into<String>) {
        let note = note.into();
        if !self.notes.contains(&note) {
            self.notes.push(note);
        }
    }

    /// The row for `path`.
    pub fn into_row(self, path: impl Into<String>) -> Row {
        Row {
            path: path.into(),
            metrics: self
                .values
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), Stat::of(v)?)))
                .collect(),
            notes: self.notes,
        }
    }
}

/// p50, p99 and p99.9 of `latencies` in microseconds (nearest rank), None when empty.
pub fn percentiles(latencies: &mut [Duration]) -> Option<[f64; 3]> {
    if latencies.is_empty() {
        return None;
    }
    latencies.sort_unstable();
    let at = |q: f64| {
        let rank = ((q * latencies.len() as f64 - 1e-9).ceil() as usize).clamp(1, latencies.len());
        latencies[rank - 1].as_nanos() as f64 / 1000.0
    };
    Some([at(0.50), at(0.99), at(0.999)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_spread() {
        let s = Stat::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Stat::of(&[1.0, 4.0]).unwrap().median, 2.5);
        assert!(Stat::of(&[]).is_none());
    }

    #[test]
    fn nearest_rank_percentiles() {
        let mut l: Vec<Duration> = (1..=1000).map(Duration::from_micros).collect();
        let [p50, p99, p999] = percentiles(&mut l).unwrap();
        assert_eq!((p50, p99, p999), (500.0, 990.0, 999.0));
    }
}
