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
mod uplinks;

use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser as _;
use gateway_model::{CompileOptions, Compiler};
use tokio::sync::{Mutex, mpsc, watch};
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
            rt.block_on(run(*args))
        }
        cli::Command::Check(args) => check::run(&args),
    }
}

/// The compile options both `run` and `check` use.
pub fn compile_options(bind_address: std::net::IpAddr) -> CompileOptions {
    CompileOptions {
        default_bind_address: bind_address,
        transition_time: snapshot::now_rfc3339(),
        ..CompileOptions::default()
    }
}

async fn run(args: cli::RunArgs) -> anyhow::Result<()> {
    let mut source = Source::start(&args).await?;
    let first_reading = source.take_first();
    log_file_errors(&first_reading.errors);
    let mut compiler = Compiler::new(compile_options(args.bind_address));
    let first = Arc::new(Snapshot::compile(1, first_reading, &mut compiler));
    let (snapshots, mut updates) = watch::channel(first.clone());

    let node_ips = match &source {
        Source::Kube(k) if args.interfaces.iter().any(|i| i == uplinks::AUTO) => {
            k.node_internal_ips().await
        }
        _ => Vec::new(),
    };
    let interfaces = uplinks::resolve(&args.interfaces, &node_ips).context("--interface auto")?;
    let dataplane = Arc::new(Mutex::new(
        dataplane::Dataplane::start(&dataplane::Options {
            interfaces,
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

    // Consumer: managed neighbour entries for the L4 backends' next hops, first for the first
    // model (before the agent says ready), then on every model and every refresh; and for the
    // next hops the XDP program reports unresolved, as soon as they are reported.
    let mut neighbours = dataplane::Neighbours::new(args.reported_neighbour_hold)?;
    neighbours
        .ensure(bridge::l4_backend_addrs(&first.model))
        .await;
    let mut neighbour_updates = snapshots.subscribe();
    let dp = dataplane.clone();
    let neighbour_task = tokio::spawn(async move {
        let mut refresh = tokio::time::interval(dataplane::NEIGHBOUR_REFRESH);
        refresh.tick().await;
        let mut reports = tokio::time::interval(dataplane::UNRESOLVED_POLL);
        reports.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                changed = neighbour_updates.changed() => if changed.is_err() { return },
                _ = refresh.tick() => {}
                _ = reports.tick() => {
                    let hops = dp.lock().await.take_unresolved_hops();
                    let now = std::time::Instant::now();
                    match hops {
                        Ok(hops) if hops.is_empty() => {}
                        Ok(hops) => neighbours.adopt_reported(hops, now).await,
                        Err(e) => tracing::warn!(error = %format!("{e:#}"), "reading unresolved next hops"),
                    }
                    neighbours.release_expired(now).await;
                    continue;
                }
            }
            let model = neighbour_updates.borrow_and_update().model.clone();
            neighbours.ensure(bridge::l4_backend_addrs(&model)).await;
        }
    });

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
            Ok(s) => Some(s.with_send_buffer(args.passthrough_splice_sndbuf)),
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

    // Source: recompile on every (debounced) change of the directory or the cluster.
    let admin_snapshots = snapshots.subscribe();
    if let Source::Kube(kube) = &mut source {
        kube.write_statuses(snapshots.subscribe());
    }
    let mut readings = source.readings();
    let source_task = tokio::spawn(async move {
        let mut generation = 1;
        while let Some(reading) = readings.recv().await {
            log_file_errors(&reading.errors);
            generation += 1;
            let snap = Snapshot::compile(generation, reading, &mut compiler);
            tracing::info!(generation, "configuration reloaded");
            let _ = snapshots.send(Arc::new(snap));
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
    source.shutdown().await;
    source_task.abort();
    drop(source);
    dataplane_task.abort();
    neighbour_task.abort();
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

/// Where the objects come from: a directory or the cluster.
enum Source {
    /// `--config-dir`: re-read on change; `watcher` must be kept alive.
    File {
        first: Option<source::file::Reading>,
        readings: Option<mpsc::Receiver<source::file::Reading>>,
        _watcher: notify::RecommendedWatcher,
    },
    /// `--kube`.
    Kube(Box<source::kube::KubeSource>),
}

impl Source {
    /// Reads the first configuration and starts following changes.
    async fn start(args: &cli::RunArgs) -> anyhow::Result<Self> {
        let Some(dir) = args.source.config_dir.clone() else {
            let k = &args.kube;
            let node_name = match &k.node_name {
                Some(n) => n.clone(),
                None => hostname().context("no --node-name / NODE_NAME and no host name")?,
            };
            let opts = source::kube::KubeOptions {
                api: k.kube_api.clone(),
                node_name,
                lease_namespace: k.lease_namespace.clone(),
                lease_name: "nodegate-status-writer".into(),
                lease_duration: k.lease_duration,
                missing_retry: k.kube_missing_retry,
                max_backoff: k.kube_max_backoff,
                write_status: !k.no_status,
                prefer_local_endpoints: k.prefer_local_endpoints,
                agent_selector: k.agent_selector.clone(),
            };
            return Ok(Source::Kube(Box::new(
                source::kube::KubeSource::start(opts).await?,
            )));
        };
        let mut config = ConfigDir::default();
        let first = config.read(&dir)?;
        let (watcher, mut changes) = source::file::watch(&dir)?;
        let (tx, readings) = mpsc::channel(1);
        tokio::spawn(async move {
            while changes.recv().await.is_some() {
                match config.read(&dir) {
                    Ok(reading) => {
                        if tx.send(reading).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %format!("{e:#}"), "reading the config directory failed; keeping the last model")
                    }
                }
            }
        });
        Ok(Source::File {
            first: Some(first),
            readings: Some(readings),
            _watcher: watcher,
        })
    }

    /// Clean shutdown of the source (the cluster source releases its Lease).
    async fn shutdown(&mut self) {
        if let Source::Kube(k) = self {
            k.shutdown().await;
        }
    }

    /// The first reading (once).
    fn take_first(&mut self) -> source::file::Reading {
        match self {
            Source::File { first, .. } => first.take().expect("first reading taken once"),
            Source::Kube(k) => k.take_first(),
        }
    }

    /// The later readings (once).
    fn readings(&mut self) -> mpsc::Receiver<source::file::Reading> {
        match self {
            Source::File { readings, .. } => readings.take().expect("readings taken once"),
            Source::Kube(k) => k.take_readings(),
        }
    }
}

/// The host name (the Lease identity when no node name is given).
fn hostname() -> anyhow::Result<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it on success.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
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
