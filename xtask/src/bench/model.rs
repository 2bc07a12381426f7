//! The model-compile benchmark: `cargo bench -p gateway-model --bench compile` (10,000
//! HTTPRoutes over 1,000 Services with 50,000 endpoints), run `--runs` times; each
//! `{"name", "millis", "peak_rss_mb"}` line it prints becomes a row.

use std::process::Command;

use anyhow::{Context as _, bail};

use super::{
    report::{Column, Section},
    stats::Samples,
};

const COLUMNS: &[Column] = &[
    Column {
        key: "millis",
        label: "time ms",
        digits: 1,
    },
    Column {
        key: "peak_rss_mb",
        label: "peak RSS of the process MB (cumulative)",
        digits: 1,
    },
];

/// Runs the model benchmark `runs` times (in the dev profile when `smoke`) and returns its
/// section.
pub fn run(runs: usize, smoke: bool) -> anyhow::Result<Section> {
    let mut records = Vec::new();
    let mut rows: Vec<(String, Samples)> = Vec::new();
    for run in 0..runs.max(1) {
        eprintln!("bench: model compile, run {}", run + 1);
        let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(crate::workspace_root())
            .args(["bench", "-q", "-p", "gateway-model", "--bench", "compile"])
            // Smoke mode reuses the dev build the tests made instead of a release build.
            .args(if smoke {
                &["--profile", "dev"][..]
            } else {
                &[]
            })
            .output()
            .context("running the model benchmark")?;
        if !out.status.success() {
            bail!(
                "model benchmark failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line.trim()) else {
                continue;
            };
            let Some(name) = v["name"].as_str().map(str::to_string) else {
                continue;
            };
            let i = match rows.iter().position(|(n, _)| *n == name) {
                Some(i) => i,
                None => {
                    rows.push((name.clone(), Samples::default()));
                    rows.len() - 1
                }
            };
            for c in COLUMNS {
                rows[i].1.push(c.key, v[c.key].as_f64());
            }
            records.push(v);
        }
    }
    if records.is_empty() {
        bail!("the model benchmark printed no result lines");
    }
    Ok(Section {
        key: "model",
        title: "Model compile (10,000 HTTPRoutes, 50,000 endpoints)".into(),
        about: format!(
            "`cargo bench -p gateway-model --bench compile`, {} profile; steps run in order in \
             one process, so peak RSS is the process's high-water mark so far.",
            if smoke { "dev (smoke)" } else { "release" }
        ),
        columns: COLUMNS.to_vec(),
        rows: rows.into_iter().map(|(n, s)| s.into_row(n)).collect(),
        records,
    })
}
