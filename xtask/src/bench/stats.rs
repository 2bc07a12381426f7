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

    /// The last value recorded for `key` (for a single run's samples: that run's value).
    pub fn last(&self, key: &str) -> Option<f64> {
        self.values.get(key).and_then(|v| v.last().copied())
    }

    /// Appends `other`'s values and notes: one round of a benchmark that interleaves its peers
    /// (every peer once per round), so the host's slow drifts reach every peer alike.
    pub fn extend(&mut self, other: Samples) {
        for (k, v) in other.values {
            self.values.entry(k).or_default().extend(v);
        }
        for n in other.notes {
            self.note(n);
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

/// `a / b` when both are known and `b` is positive: a peer's figure against another's measured
/// in the same round.
fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    Some(a? / b.filter(|b| *b > 0.0)?)
}

/// Adds one round of an interleaved benchmark to `all` (one `Samples` per peer, in `round`'s
/// order), first recording each peer's ratio to a reference peer of the same round: for each
/// `(key, by, name)` in `against`, `key` divided by peer `by`'s `key`, as `<key>_vs_<name>`.
pub fn add_round(all: &mut [Samples], mut round: Vec<Samples>, against: &[(&str, usize, &str)]) {
    let references: Vec<Option<f64>> = against
        .iter()
        .map(|(key, by, _)| round.get(*by).and_then(|r| r.last(key)))
        .collect();
    for s in &mut round {
        for ((key, _, name), reference) in against.iter().zip(&references) {
            s.push(&format!("{key}_vs_{name}"), ratio(s.last(key), *reference));
        }
    }
    for (all, one) in all.iter_mut().zip(round) {
        all.extend(one);
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
    fn rounds_extend_and_pair() {
        // Two peers, two rounds; peer 1 is the reference.
        let mut all = vec![Samples::default(), Samples::default()];
        for (a, b) in [(2.0, 1.0), (9.0, 3.0)] {
            let round = Vec::from([a, b].map(|v| {
                let mut one = Samples::default();
                one.push("x", Some(v));
                one.note("same note");
                assert_eq!(one.last("x"), Some(v));
                one
            }));
            add_round(&mut all, round, &[("x", 1, "ref"), ("missing", 1, "ref")]);
        }
        let [a, b] = <[Samples; 2]>::try_from(all)
            .ok()
            .unwrap()
            .map(|s| s.into_row("p"));
        assert_eq!(a.metrics["x"].runs, vec![2.0, 9.0]);
        assert_eq!(a.metrics["x_vs_ref"].runs, vec![2.0, 3.0]);
        assert_eq!(b.metrics["x_vs_ref"].runs, vec![1.0, 1.0]);
        assert!(!a.metrics.contains_key("missing_vs_ref"));
        assert_eq!(a.notes, vec!["same note".to_string()]);
        assert_eq!(ratio(Some(3.0), Some(2.0)), Some(1.5));
        assert_eq!(ratio(Some(3.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(2.0)), None);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let mut l: Vec<Duration> = (1..=1000).map(Duration::from_micros).collect();
        let [p50, p99, p999] = percentiles(&mut l).unwrap();
        assert_eq!((p50, p99, p999), (500.0, 990.0, 999.0));
    }
}
