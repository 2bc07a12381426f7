//! gateway-agent: nodegate's per-node daemon.

mod admin;
mod cli;
mod dataplane;
mod metrics;

use anyhow::Context as _;
use clap::Parser as _;
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    let cli = cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&cli.log).context("--log")?)
        .with_target(true)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        cli::Command::Run(args) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(run(args))
        }
        cli::Command::Check(args) => check(args),
    }
}

async fn run(args: cli::RunArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        !args.source.kube,
        "--kube is not implemented yet; use --config-dir"
    );
    let dataplane = std::sync::Arc::new(tokio::sync::Mutex::new(
        dataplane::Dataplane::start(&dataplane::Options {
            interfaces: args.interfaces.clone(),
            attach: args.attach,
            bpffs: args.bpffs.clone(),
        })
        .await?,
    ));
    let admin = admin::serve(args.admin_address, dataplane.clone()).await?;
    tracing::info!(admin = %args.admin_address, "agent ready");
    shutdown_signal().await;
    tracing::info!("shutting down");
    admin.abort();
    dataplane.lock().await.shutdown();
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}

fn check(_args: cli::CheckArgs) -> anyhow::Result<()> {
    anyhow::bail!("check: not implemented yet")
}
