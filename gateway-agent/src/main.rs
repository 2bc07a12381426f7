//! gateway-agent: nodegate's per-node daemon.

mod admin;
mod bridge;
mod check;
mod cli;
mod dataplane;
mod metrics;
mod passthrough;
mod proxy;
mod snapshot;
mod sockets;
mod source;

use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser as _;
use gateway_model::CompileOptions;
use tokio::sync::{Mutex, watch};
use tracing_subscriber::EnvFilter;

use crate::{snapshot::Snapshot, source::file::ConfigDir};

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
        cli::Command::Check(args) => check::run(&args),
    }
}

/// The compile options both `run` and `check` use.
pub fn compile_options(bind_address: std::net::IpAddr) -> CompileOptions {
    CompileOptions {
        default_bind_address: bind_address,
        transition_time: humantime::format_rfc3339_seconds(std::time::SystemTime::now())
            .to_string(),
        ..CompileOptions::default()
    }
}

async fn run(args: cli::RunArgs) -> anyhow::Result<()> {
    let Some(dir) = args.source.config_dir.clone() else {
        anyhow::bail!("--kube is not available yet (issue 8); use --config-dir");
    };
    let mut config = ConfigDir::default();
    let reading = config.read(&dir)?;
    log_file_errors(&reading.errors);
    let first = Arc::new(Snapshot::compile(
        1,
        reading,
        &compile_options(args.bind_address),
    ));
    let (snapshots, mut updates) = watch::channel(first.clone());

    let dataplane = Arc::new(Mutex::new(
        dataplane::Dataplane::start(&dataplane::Options {
            interfaces: args.interfaces.clone(),
            attach: args.attach,
            bpffs: args.bpffs.clone(),
            snat_ports: args.snat_ports,
            conntrack_size: args.conntrack_size,
        })
        .await?,
    ));
    dataplane
        .lock()
        .await
        .apply(&bridge::l4_listeners(&first.model))
        .context("programming the first model")?;

    // Consumer: the data plane follows every new snapshot; a failed apply keeps the last good maps.
    let dp = dataplane.clone();
    let dataplane_task = tokio::spawn(async move {
        while updates.changed().await.is_ok() {
            let snap = updates.borrow_and_update().clone();
            if let Err(e) = dp.lock().await.apply(&bridge::l4_listeners(&snap.model)) {
                tracing::error!(generation = snap.generation, error = %format!("{e:#}"),
                    "data plane update failed; keeping the previous maps");
            } else {
                tracing::info!(generation = snap.generation, "data plane updated");
            }
        }
    });

    // Connection-table aging.
    let timeouts = dataplane::Timeouts {
        udp_idle: args.udp_idle_timeout,
        tcp_idle: args.tcp_idle_timeout,
        tcp_closed: args.tcp_closed_timeout,
    };
    let (dp, interval) = (dataplane.clone(), args.aging_interval);
    let aging_task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        loop {
            tick.tick().await;
            match dp.lock().await.age_flows(timeouts) {
                Ok(0) => {}
                Ok(n) => tracing::debug!(removed = n, "aged connection-table entries"),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "connection-table sweep failed")
                }
            }
        }
    });

    // Consumer: the L7 proxy swaps routes and reconciles its listener sockets.
    let proxy = Arc::new(proxy::Proxy::new(args.access_log));
    for e in proxy.apply(first.model.clone()).await {
        tracing::error!(error = %format!("{e:#}"), "L7 listener not serving");
    }
    let splicer = match args.passthrough_splice {
        cli::SpliceMode::Sockmap => match dataplane.lock().await.splicer() {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "sockmap splice unavailable; TLS passthrough relays in userspace");
                None
            }
        },
        cli::SpliceMode::Userspace => None,
    };
    let passthrough = Arc::new(passthrough::Passthrough::new(splicer));
    for e in passthrough.apply(first.model.clone()).await {
        tracing::error!(error = %format!("{e:#}"), "TLS passthrough listener not serving");
    }
    let mut proxy_updates = snapshots.subscribe();
    let (px, pt) = (proxy.clone(), passthrough.clone());
    let proxy_task = tokio::spawn(async move {
        while proxy_updates.changed().await.is_ok() {
            let snap = proxy_updates.borrow_and_update().clone();
            let mut errors = px.apply(snap.model.clone()).await;
            errors.extend(pt.apply(snap.model.clone()).await);
            for e in errors {
                tracing::error!(generation = snap.generation, error = %format!("{e:#}"), "listener not serving");
            }
        }
    });

    // Source: re-read and recompile on every (debounced) change under the directory.
    let admin_snapshots = snapshots.subscribe();
    let (_watcher, mut changes) = source::file::watch(&dir)?;
    let bind_address = args.bind_address;
    let source_task = tokio::spawn(async move {
        let mut generation = 1;
        while changes.recv().await.is_some() {
            match config.read(&dir) {
                Ok(reading) => {
                    log_file_errors(&reading.errors);
                    generation += 1;
                    let snap =
                        Snapshot::compile(generation, reading, &compile_options(bind_address));
                    tracing::info!(generation, "configuration reloaded");
                    let _ = snapshots.send(Arc::new(snap));
                }
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "reading the config directory failed; keeping the last model")
                }
            }
        }
    });

    let admin = admin::serve(
        args.admin_address,
        dataplane.clone(),
        admin_snapshots,
        vec![Arc::new(proxy.metrics()), Arc::new(passthrough.metrics())],
    )
    .await?;
    tracing::info!(admin = %args.admin_address, "agent ready");
    shutdown_signal().await;
    tracing::info!("shutting down");
    source_task.abort();
    dataplane_task.abort();
    proxy_task.abort();
    aging_task.abort();
    proxy.shutdown(args.drain_timeout).await;
    passthrough.shutdown().await;
    admin.abort();
    if args.keep_on_exit {
        dataplane.lock().await.keep_running();
    } else {
        dataplane.lock().await.shutdown();
    }
    Ok(())
}

fn log_file_errors(errors: &[source::file::FileError]) {
    for e in errors {
        tracing::error!(file = %e.path.display(), line = ?e.line, "{}", e.message);
    }
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
