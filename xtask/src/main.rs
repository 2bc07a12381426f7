//! `cargo xtask`: nodegate's build, run, test, demo and set-up tasks.

mod bench;
mod demo;
mod packages;
#[allow(
    dead_code,
    reason = "shared with gateway-agent's build.rs, which uses all of it"
)]
mod toolchain;

use std::process::{Command, ExitCode};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "nodegate's developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building needs (nightly rust-src, bpf-linker against the nightly's LLVM) and
    /// the system tools the tests and demo use (iproute2, ethtool, bpftool).
    Setup,
    /// Build the agent (and, through its build.rs, the eBPF programs).
    Build {
        /// Build with the release profile.
        #[arg(long)]
        release: bool,
    },
    /// Build, then run the agent with the given arguments (e.g. `run --config-dir examples/standalone`).
    Run {
        /// Build with the release profile.
        #[arg(long)]
        release: bool,
        /// Arguments for `gateway-agent`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run every test, privileged end-to-end tests included (needs root).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The main job on the embedded default: a client/gateway/backend netns topology, the agent on
    /// examples/standalone, real traffic, a report, and a full teardown (needs root).
    Demo(demo::DemoArgs),
    /// Benchmarks (not tests): L4, L7, TLS passthrough and the model compile, each with its peers
    /// side by side in one run; optional flame graphs.
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.task {
        Task::Setup => {
            setup_toolchain()?;
            packages::ensure(packages::TEST_TOOLS)
        }
        Task::Build { release } => build_agent(release).map(|_| ()),
        Task::Run { release, args } => {
            let agent = build_agent(release)?;
            let status = Command::new(&agent).args(&args).status()?;
            if !status.success() {
                bail!("gateway-agent exited with {status}");
            }
            Ok(())
        }
        Task::Test { args } => test(&args),
        Task::Demo(args) => demo::run(&args),
        Task::Bench(args) => bench::run(&args),
    }
}

/// Installs rust-src and bpf-linker for the nightly if missing.
pub fn setup_toolchain() -> anyhow::Result<()> {
    toolchain::ensure_ebpf_toolchain(&mut |msg| eprintln!("xtask: {msg}"))
        .map_err(|e| anyhow::anyhow!(e))
}

/// The workspace root (xtask's manifest lives one level below it).
pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits inside the workspace")
        .to_path_buf()
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// Builds gateway-agent and returns the path of its binary.
pub fn build_agent(release: bool) -> anyhow::Result<std::path::PathBuf> {
    setup_toolchain()?;
    let mut cmd = cargo();
    cmd.args(["build", "--package", "gateway-agent"]);
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().context("running cargo build")?;
    if !status.success() {
        bail!("cargo build -p gateway-agent failed");
    }
    let profile = if release { "release" } else { "debug" };
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    Ok(target_dir.join(profile).join("gateway-agent"))
}

fn test(args: &[String]) -> anyhow::Result<()> {
    testbed::require_root(
        "`cargo xtask test` (its end-to-end tests load BPF programs and build network namespaces)",
    )?;
    setup_toolchain()?;
    packages::ensure(packages::TEST_TOOLS)?;
    let status = cargo()
        .args(["test", "--workspace", "--exclude", "gateway-ebpf"])
        .args(args)
        .status()
        .context("running cargo test")?;
    if !status.success() {
        bail!("tests failed");
    }
    Ok(())
}
