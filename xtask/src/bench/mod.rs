//! `cargo xtask bench`: benchmarks (never tests). Each benchmark runs its peers side by side in one
//! invocation and reports the median and the spread. L7 and TLS run `--runs` rounds that each
//! measure every peer once (so the host's slow drifts reach every peer alike) and add ratios to
//! the peer their goal names, taken within each round; L4 measures each path `--runs` times in
//! a row.
//!
//! - [`l4`]: plain forwarding, nftables DNAT+SNAT, haproxy (TCP) and nodegate in each attach mode,
//!   in testbed's client — gateway — backend namespaces.
//! - [`l7`]: nodegate's proxy, nginx and haproxy in front of one nginx backend (wrk, h2load).
//! - [`tls`]: TLS passthrough: nodegate's sockmap splice and userspace relay, haproxy `req.ssl_sni`.
//! - [`model`]: the model-compile benchmark (`cargo bench -p gateway-model --bench compile`).
//!
//! The gateway side is pinned to CPU [`GATEWAY_CPU`], load generators to CPU [`LOAD_CPU`].
//! `--flamegraph` records perf profiles of every nodegate window ([`flamegraph`]); [`report`]
//! writes `results.json` and `results.md`.

pub mod flamegraph;
pub mod framegen;
pub mod l4;
pub mod l7;
pub mod loopns;
pub mod model;
pub mod peers;
pub mod report;
pub mod stats;
pub mod sys;
pub mod tls;

use std::{path::PathBuf, process::Command, time::Duration};

use anyhow::{Context as _, bail};

/// CPU the gateway under test (agent, haproxy, nginx proxy) is pinned to.
pub const GATEWAY_CPU: usize = 1;
/// CPU load generators (and, for L7/TLS, the backends) are pinned to.
pub const LOAD_CPU: usize = 0;

/// `cargo xtask bench` options.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Which benchmark (`render`: only draw flame graphs from `--perf-script` files, e.g. the
    /// ones bench/kind/run.sh copies out of a kind node).
    #[arg(default_value = "all", value_parser = ["l4", "l7", "tls", "model", "all", "render"])]
    pub which: String,
    /// Seconds per measured window.
    #[arg(long, default_value_t = 5)]
    pub duration: u64,
    /// Runs per peer; for L7 and TLS, rounds that each measure every peer once (median and
    /// min–max are reported).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Where results.json, results.md and flamegraphs/ go.
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
    /// Record perf profiles (agent and system-wide) during each nodegate window and render SVGs.
    #[arg(long)]
    pub flamegraph: bool,
    /// CI smoke mode: no warm-ups, and the agent in the debug build the tests already made
    /// (numbers are meaningless; it proves the benchmarks run end to end).
    #[arg(long)]
    pub smoke: bool,
    /// With `render`: `perf script` output files to fold and draw into DIR/flamegraphs/.
    #[arg(long = "perf-script", value_name = "FILE")]
    pub perf_scripts: Vec<PathBuf>,
}

/// What every benchmark gets: the options, the agent binary and the flame-graph recorder.
pub struct Ctx {
    /// The command line options.
    pub args: BenchArgs,
    /// The gateway-agent binary to run.
    pub agent: PathBuf,
    /// Flame-graph recorder, when `--flamegraph` is on.
    pub flame: Option<flamegraph::Recorder>,
}

impl Ctx {
    /// The measured window.
    pub fn window(&self) -> Duration {
        Duration::from_secs(self.args.duration.max(1))
    }

    /// The warm-up before the measured runs (none in smoke mode).
    pub fn warmup(&self) -> Duration {
        if self.args.smoke {
            Duration::ZERO
        } else {
            Duration::from_secs(self.args.duration.clamp(1, 2))
        }
    }

    /// Number of measured runs.
    pub fn runs(&self) -> usize {
        self.args.runs.max(1)
    }
}

/// Runs the selected benchmarks and writes the report.
pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    if args.which == "render" {
        return flamegraph::render_scripts(&args.perf_scripts, &args.out.join("flamegraphs"));
    }
    let all = args.which == "all";
    let wants = |b: &str| all || args.which == b;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let command = std::env::args()
        .skip(1)
        .fold("cargo xtask".to_string(), |acc, a| format!("{acc} {a}"));
    let mut report = report::Report::new(command);
    if wants("l4") || wants("l7") || wants("tls") {
        testbed::require_root(
            "`cargo xtask bench` (it builds network namespaces, loads BPF programs and pins CPUs)",
        )?;
        if std::thread::available_parallelism().map_or(1, |n| n.get()) <= GATEWAY_CPU {
            bail!("the benchmarks pin the gateway to CPU {GATEWAY_CPU}: at least 2 CPUs needed");
        }
    }
    let agent = if wants("l4") || wants("l7") || wants("tls") {
        build_agent(args.smoke)?
    } else {
        PathBuf::new()
    };
    let flame = if args.flamegraph {
        Some(flamegraph::Recorder::new(&args.out.join("flamegraphs"))?)
    } else {
        None
    };
    let ctx = Ctx {
        args: args.clone(),
        agent,
        flame,
    };
    if wants("l4") {
        report.push(l4::run(&ctx)?);
    }
    if wants("l7") {
        report.push(l7::run(&ctx)?);
    }
    if wants("tls") {
        report.push(tls::run(&ctx)?);
    }
    if wants("model") {
        report.push(model::run(ctx.runs(), ctx.args.smoke)?);
    }
    if let Some(flame) = &ctx.flame {
        report.flamegraphs = flame.rendered();
    }
    report.write(&args.out)?;
    Ok(())
}

/// Cargo profile the benchmarks build the agent with: release plus line tables, defined on the
/// command line (`--config`) so the workspace manifest stays as it is. Its own target directory
/// (`target/bench-release`) means the frame-pointer RUSTFLAGS never invalidate the release or
/// debug builds.
pub const BENCH_PROFILE: &str = "bench-release";

/// Builds the agent for benchmarks and returns its path: the `bench-release` profile with frame
/// pointers (so perf's `-g` unwinds through nodegate's frames), or the debug build in smoke mode.
pub fn build_agent(smoke: bool) -> anyhow::Result<PathBuf> {
    if smoke {
        return crate::build_agent(false);
    }
    crate::setup_toolchain()?;
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(crate::workspace_root())
        .env("RUSTFLAGS", "-C force-frame-pointers=yes")
        .args(["build", "-p", "gateway-agent", "--profile", BENCH_PROFILE])
        .args(["--config", "profile.bench-release.inherits=\"release\""])
        .args([
            "--config",
            "profile.bench-release.debug=\"line-tables-only\"",
        ])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build -p gateway-agent --profile {BENCH_PROFILE} failed");
    }
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::workspace_root().join("target"));
    Ok(target_dir.join(BENCH_PROFILE).join("gateway-agent"))
}

/// The peers every benchmark may need, installed with apt-get when missing.
pub const PEER_TOOLS: &[crate::packages::Tool] = &[
    ("ip", "iproute2"),
    ("ethtool", "ethtool"),
    ("nft", "nftables"),
    ("haproxy", "haproxy"),
    ("nginx", "nginx"),
    ("wrk", "wrk"),
    ("h2load", "nghttp2-client"),
    ("taskset", "util-linux"),
    ("perf", "linux-perf"),
];
