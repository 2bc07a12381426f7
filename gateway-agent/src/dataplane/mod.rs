//! The kernel side of the agent: loads nodegate's eBPF object, attaches its programs to the chosen
//! interfaces, pins its maps under `--bpffs`, and keeps the maps in step with the model.

mod aging;
mod attach;
mod batch;
mod bpffs;
mod ifaddrs;
mod listeners;
mod maglev;
mod neighbours;
mod services;
mod snat_ports;
mod splice;
mod stats;
mod unresolved;

use std::path::PathBuf;

use anyhow::Context as _;
use aya::{Ebpf, EbpfLoader};
use gateway_common::map_names;

pub use aging::Timeouts;
pub use attach::Attachment;
pub use listeners::{ListenerEntry, Transport};
pub use neighbours::{Neighbours, REFRESH as NEIGHBOUR_REFRESH};

/// How often the agent reads the next hops the XDP program reported unresolved: the delay
/// before the kernel starts resolving one, well inside a TCP sender's first retransmit (1 s
/// for a SYN or SYN-ACK, 200 ms at least for data).
pub const UNRESOLVED_POLL: std::time::Duration = std::time::Duration::from_millis(100);
pub use splice::{Spliced, Splicer};
pub use stats::DataplaneStats;

use crate::cli::AttachMode;

/// The eBPF object built by build.rs (aya-build) for bpfel-unknown-none.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gateway-ebpf"));

/// Where links left for the next agent are pinned, under `--bpffs`.
const LINKS_DIR: &str = "links";

/// Every map the agent pins, by its name in the object.
const PINNED_MAPS: [&str; 14] = [
    map_names::LISTENERS,
    map_names::LISTENER_STATS,
    map_names::DROP_STATS,
    map_names::SERVICES,
    map_names::MAGLEV_RINGS,
    map_names::BACKENDS,
    map_names::FLOWS,
    map_names::IFADDRS,
    map_names::NAT_CONFIG,
    map_names::UNRESOLVED_HOPS,
    map_names::BACKEND_STATS,
    map_names::SPLICE_SOCKS,
    map_names::SPLICE_PEERS,
    map_names::SPLICE_STATS,
];

/// How the data plane is set up.
#[derive(Debug, Clone)]
pub struct Options {
    /// Interfaces to attach to.
    pub interfaces: Vec<String>,
    /// Attach mode requested on the command line.
    pub attach: AttachMode,
    /// bpffs directory for pins.
    pub bpffs: PathBuf,
    /// Source ports for SNAT (`--snat-ports`).
    pub snat_ports: crate::cli::SnatPorts,
    /// Capacity of the connection table.
    pub conntrack_size: u32,
}

/// The loaded object, its attachments and pins. Dropping it detaches the programs.
pub struct Dataplane {
    ebpf: Ebpf,
    attachments: Vec<Attachment>,
    bpffs: PathBuf,
    listeners: listeners::ListenerTable,
    services: services::ServiceTable,
    logger: Option<tokio::task::JoinHandle<()>>,
    /// Set by [`Dataplane::keep_running`]: nothing is detached or unpinned afterwards.
    left_running: bool,
}

impl Dataplane {
    /// Loads the object, attaches to every interface and pins the maps.
    pub async fn start(opts: &Options) -> anyhow::Result<Self> {
        raise_memlock_limit();
        bpffs::ensure_mounted(&opts.bpffs)?;
        let kernel_log_level = kernel_log_level();
        // Maps a previous agent left pinned (see --keep-on-exit) are reused as they are, so
        // established flows, counters and the live rings carry over; missing ones are created
        // and pinned.
        let adopting = opts.bpffs.join(map_names::LISTENERS).exists();
        let mut loader = EbpfLoader::new();
        loader
            .override_global("AYA_LOG_LEVEL", &kernel_log_level, false)
            .map_max_entries(map_names::FLOWS, opts.conntrack_size);
        for name in PINNED_MAPS {
            loader.map_pin_path(name, opts.bpffs.join(name));
        }
        let mut ebpf = loader
            .load(EBPF_OBJECT)
            .context("loading the eBPF object")?;
        let (listener_table, service_table) = if adopting {
            tracing::info!(bpffs = %opts.bpffs.display(), "adopting the maps a previous agent left pinned");
            (
                listeners::ListenerTable::adopt(&mut ebpf)?,
                services::ServiceTable::adopt(&mut ebpf)?,
            )
        } else {
            Default::default()
        };
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(forward_kernel_logs(logger)?),
            Err(e) => {
                tracing::warn!(error = %e, "kernel log forwarding unavailable");
                None
            }
        };
        {
            let mut cfg: aya::maps::Array<_, gateway_common::nat::NatConfig> =
                aya::maps::Array::try_from(
                    ebpf.map_mut(map_names::NAT_CONFIG)
                        .context("NAT_CONFIG map missing")?,
                )?;
            let (port_min, port_max) = snat_ports::resolve(opts.snat_ports)?;
            tracing::info!(first = port_min, last = port_max, "SNAT ports");
            cfg.set(0, gateway_common::nat::NatConfig { port_min, port_max }, 0)?;
        }
        ifaddrs::sync(&mut ebpf)?;
        let attachments = attach::attach_all(
            &mut ebpf,
            &opts.interfaces,
            opts.attach,
            &opts.bpffs.join(LINKS_DIR),
        )?;
        tracing::info!(bpffs = %opts.bpffs.display(), maps = ?PINNED_MAPS, "maps pinned");
        Ok(Self {
            ebpf,
            attachments,
            bpffs: opts.bpffs.clone(),
            listeners: listener_table,
            services: service_table,
            logger,
            left_running: false,
        })
    }

    /// Makes the maps serve `entries`: `LISTENERS` (diffed: untouched keys are not rewritten),
    /// then the services, rings and backends of the listeners that have backends, and the
    /// interface addresses used for SNAT.
    pub fn apply(&mut self, entries: &[ListenerEntry]) -> anyhow::Result<()> {
        self.listeners.sync(&mut self.ebpf, entries)?;
        let wanted: std::collections::BTreeMap<u32, Vec<(std::net::SocketAddr, u32)>> = self
            .listeners
            .entries()
            .map(|(id, e)| (id, e.backends.clone()))
            .collect();
        ifaddrs::sync(&mut self.ebpf)?;
        self.services.sync(&mut self.ebpf, &wanted)
    }

    /// Reads every counter, summed over CPUs.
    pub fn stats(&self) -> anyhow::Result<DataplaneStats> {
        stats::read(
            &self.ebpf,
            self.listeners.entries(),
            self.services.backends(),
        )
    }

    /// The in-kernel splice for TLS passthrough (loads and attaches its program).
    pub fn splicer(&mut self) -> anyhow::Result<Splicer> {
        Splicer::new(&mut self.ebpf)
    }

    /// Removes flows idle past their timeout from the connection table.
    pub fn age_flows(&mut self, timeouts: Timeouts) -> anyhow::Result<usize> {
        aging::sweep(&mut self.ebpf, aging::monotonic_ns(), timeouts)
    }

    /// Takes the next hops the XDP program reported unresolved since the last call:
    /// (egress ifindex, hop address).
    pub fn take_unresolved_hops(&mut self) -> anyhow::Result<Vec<(u32, std::net::IpAddr)>> {
        unresolved::take(&mut self.ebpf)
    }

    /// What the programs are attached to, and how.
    pub fn attachments(&self) -> &[Attachment] {
        &self.attachments
    }

    /// Detaches every program and removes the pins.
    pub fn shutdown(&mut self) {
        if self.left_running {
            return;
        }
        for a in self.attachments.drain(..) {
            tracing::info!(interface = %a.interface, mode = %a.mode, "detaching");
            a.detach(&mut self.ebpf);
        }
        for name in PINNED_MAPS {
            let _ = std::fs::remove_file(self.bpffs.join(name));
        }
        self.stop_logger();
    }

    /// Exits leaving the data plane running for the next agent: links pinned under
    /// `--bpffs/links`, maps left pinned. Established flows keep flowing meanwhile.
    pub fn keep_running(&mut self) {
        let links_dir = self.bpffs.join(LINKS_DIR);
        for a in self.attachments.drain(..) {
            a.keep(&mut self.ebpf, &links_dir);
        }
        self.left_running = true;
        self.stop_logger();
    }

    fn stop_logger(&mut self) {
        if let Some(logger) = self.logger.take() {
            logger.abort();
        }
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; lift it so loading never fails on it.
fn raise_memlock_limit() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit with a valid pointer to an initialised struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        tracing::debug!("setrlimit(RLIMIT_MEMLOCK) failed; relying on memcg accounting");
    }
}

/// The kernel programs log at the level the agent's own filter enables (aya-log's levels: error=1 … trace=5).
fn kernel_log_level() -> u8 {
    use tracing::level_filters::LevelFilter;
    match LevelFilter::current() {
        LevelFilter::OFF => 0,
        LevelFilter::ERROR => 1,
        LevelFilter::WARN => 2,
        LevelFilter::INFO => 3,
        LevelFilter::DEBUG => 4,
        _ => 5,
    }
}

/// Drains aya-log's ring buffer whenever it is readable; records go through `log` into tracing.
fn forward_kernel_logs(
    logger: aya_log::EbpfLogger<&'static dyn log::Log>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    // SAFETY: the ring buffer's fd is owned by `logger`, which the AsyncFd owns until it is dropped.
    let mut fd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    }
    .map_err(|e| anyhow::anyhow!("polling the kernel log ring buffer: {e}"))?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    }))
}
