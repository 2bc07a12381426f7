//! `results.json` (one serde_json document) and `results.md` (Markdown tables, median and
//! min–max per cell), both headed by the command line that made them.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Serialize;

use super::stats::Row;

/// A column of a section's table: which metric, its heading, and how many decimals.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Column {
    /// Metric key in each row.
    pub key: &'static str,
    /// Table heading (with the unit).
    pub label: &'static str,
    /// Decimals shown.
    pub digits: usize,
}

/// One benchmark's results.
#[derive(Debug, Serialize)]
pub struct Section {
    /// `l4`, `l7`, `tls`, `model`.
    pub key: &'static str,
    /// Heading of the Markdown section.
    pub title: String,
    /// What was measured and how (Markdown, printed above the table).
    pub about: String,
    /// The table's columns.
    #[serde(skip)]
    pub columns: Vec<Column>,
    /// One row per peer.
    pub rows: Vec<Row>,
    /// Sections without peers (the model benchmark) carry raw records here.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub records: Vec<serde_json::Value>,
}

/// The whole report.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The command line that made it.
    pub command: String,
    /// When (UTC, RFC 3339).
    pub date: String,
    /// Host facts that matter for reading the numbers.
    pub host: Host,
    /// One per benchmark run.
    pub sections: Vec<Section>,
    /// Flame-graph SVGs written.
    pub flamegraphs: Vec<PathBuf>,
}

/// Host facts.
#[derive(Debug, Serialize)]
pub struct Host {
    /// `uname -r`.
    pub kernel: String,
    /// Online CPUs.
    pub cpus: usize,
    /// Load average at the start (1 min), to tell a quiet machine from a busy one.
    pub loadavg_1m: f64,
}

impl Report {
    /// An empty report for `command`.
    pub fn new(command: String) -> Self {
        let date = testbed::sh("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"])
            .map(|d| d.trim().to_string())
            .unwrap_or_default();
        let kernel = testbed::sh("uname", &["-r"])
            .map(|d| d.trim().to_string())
            .unwrap_or_default();
        let loadavg_1m = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        Report {
            command,
            date,
            host: Host {
                kernel,
                cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
                loadavg_1m,
            },
            sections: Vec::new(),
            flamegraphs: Vec::new(),
        }
    }

    /// Adds a benchmark's section.
    pub fn push(&mut self, section: Section) {
        self.sections.push(section);
    }

    /// Writes `results.json` and `results.md` into `dir` and prints the Markdown.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        let json = serde_json::to_string_pretty(self)?;
        std::fs::write(dir.join("results.json"), json + "\n").context("writing results.json")?;
        let md = self.markdown();
        std::fs::write(dir.join("results.md"), &md).context("writing results.md")?;
        println!("{md}");
        println!(
            "written: {}/results.json, {}/results.md",
            dir.display(),
            dir.display()
        );
        Ok(())
    }

    /// The Markdown report.
    pub fn markdown(&self) -> String {
        let mut md = format!(
            "# nodegate benchmarks\n\nCommand: `{}`\n\nDate: {} — kernel {}, {} CPUs, load average \
             {:.2} at the start. Cells are `median (min–max)` over the runs.\n",
            self.command, self.date, self.host.kernel, self.host.cpus, self.host.loadavg_1m
        );
        for s in &self.sections {
            md.push_str(&format!("\n## {}\n\n{}\n", s.title, s.about));
            if !s.rows.is_empty() {
                md.push('\n');
                md.push_str(&table(&s.columns, &s.rows));
            }
            for r in &s.rows {
                for n in &r.notes {
                    md.push_str(&format!("\n- {}: {n}", r.path));
                }
            }
            md.push('\n');
        }
        if !self.flamegraphs.is_empty() {
            md.push_str("\n## Flame graphs\n\n");
            for f in &self.flamegraphs {
                md.push_str(&format!("- `{}`\n", f.display()));
            }
        }
        md
    }
}

/// A Markdown table: one row per peer, `median (min–max)` per cell, `–` where a peer has no value.
pub fn table(columns: &[Column], rows: &[Row]) -> String {
    let mut md = String::from("| path |");
    for c in columns {
        md.push_str(&format!(" {} |", c.label));
    }
    md.push_str("\n|---|");
    md.push_str(&"---|".repeat(columns.len()));
    md.push('\n');
    for r in rows {
        md.push_str(&format!("| {} |", r.path));
        for c in columns {
            let cell = r.metrics.get(c.key).map_or("–".to_string(), |s| {
                let d = c.digits;
                if s.runs.len() == 1 {
                    format!("{:.d$}", s.median)
                } else {
                    format!("{:.d$} ({:.d$}–{:.d$})", s.median, s.min, s.max)
                }
            });
            md.push_str(&format!(" {cell} |"));
        }
        md.push('\n');
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::stats::Samples;

    #[test]
    fn cells_show_median_and_spread() {
        let mut s = Samples::default();
        for v in [1.0, 3.0, 2.0] {
            s.push("x", Some(v));
        }
        let cols = [
            Column {
                key: "x",
                label: "X",
                digits: 1,
            },
            Column {
                key: "y",
                label: "Y",
                digits: 0,
            },
        ];
        let t = table(&cols, &[s.into_row("p")]);
        assert!(t.contains("| p | 2.0 (1.0–3.0) | – |"), "{t}");
    }
}
