//! The command line: `gateway-agent run …` and `gateway-agent check …`.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};

/// nodegate: a Gateway API implementation, one agent per node; L4 in XDP/TC, L7 in a hyper proxy.
#[derive(Debug, Parser)]
#[command(name = "gateway-agent", version, about)]
pub struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `gateway_agent=debug`.
    #[arg(long, env = "NODEGATE_LOG", default_value = "info", global = true)]
    pub log: String,
    #[command(subcommand)]
    pub command: Command,
}

/// What the agent does.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: load the data plane and serve the Gateways of our class.
    Run(Box<RunArgs>),
    /// Compile a directory of Gateway API YAML and print every object's status.
    Check(CheckArgs),
}

/// Where the objects come from.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct SourceArgs {
    /// Standalone mode: every *.yaml / *.yml under DIR (multi-document), re-read on change.
    #[arg(long, value_name = "DIR")]
    pub config_dir: Option<PathBuf>,
    /// Cluster mode: watch the Kubernetes API (in-cluster config or kubeconfig).
    #[arg(long)]
    pub kube: bool,
}

/// How the XDP/TC programs are attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AttachMode {
    /// Native (driver) XDP; falls back to generic XDP with a warning where the driver lacks it.
    Xdp,
    /// Generic (skb) XDP.
    XdpGeneric,
    /// TC clsact ingress.
    Tc,
}

/// `gateway-agent run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Interface to attach the L4 programs to (repeatable). `auto`: the node's uplinks, as Cilium
    /// detects them (up, not loopback, a global unicast address, and a default route or, with
    /// --kube, one of the Node's InternalIPs; never veth/CNI/bridge/tunnel interfaces).
    #[arg(long = "interface", value_name = "IFACE")]
    pub interfaces: Vec<String>,
    /// How to attach the programs.
    #[arg(long, value_enum, default_value = "xdp")]
    pub attach: AttachMode,
    /// bpffs directory where maps are pinned (a bpffs is mounted there if none is).
    #[arg(long, default_value = "/sys/fs/bpf/nodegate")]
    pub bpffs: PathBuf,
    /// Address of the admin endpoint (/healthz, /readyz, /metrics, /debug/*).
    #[arg(long, default_value = "127.0.0.1:9901")]
    pub admin_address: SocketAddr,
    /// Address listeners bind to when their Gateway has no spec.addresses.
    #[arg(long, default_value = "0.0.0.0")]
    pub bind_address: std::net::IpAddr,
    /// Source ports the L4 NAT uses towards backends: FIRST-LAST (inclusive; keep it clear of the
    /// kernel's ephemeral ports, net.ipv4.ip_local_port_range), or `auto`: the widest span of
    /// ports from 1024 up that the ephemeral range leaves free (1024-32767 with the kernel's
    /// default 32768-60999).
    #[arg(long, default_value = "auto", value_parser = parse_snat_ports)]
    pub snat_ports: SnatPorts,
    /// Capacity of the L4 connection table (entries; each flow takes two). An LRU: under a flood
    /// the oldest entries go first and the table never grows past this.
    #[arg(long, default_value_t = gateway_common::nat::DEFAULT_FLOWS)]
    pub conntrack_size: u32,
    /// UDP flows idle this long leave the connection table.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub udp_idle_timeout: std::time::Duration,
    /// Open TCP flows idle this long leave the connection table.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub tcp_idle_timeout: std::time::Duration,
    /// Closed TCP flows (RST, or FIN both ways) leave the connection table after this.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub tcp_closed_timeout: std::time::Duration,
    /// TLS passthrough relay: in the kernel with a sockhash splice (default; the ClientHello and
    /// any early data behind it are moved by the kernel too), or always by copying in
    /// userspace. Falls back to userspace, with a warning, when the splice cannot be loaded.
    #[arg(long, value_enum, default_value = "sockmap")]
    pub passthrough_splice: SpliceMode,
    /// Send buffer of each spliced socket, in bytes as SO_SNDBUF takes them (the kernel doubles
    /// it for its bookkeeping), set with SO_SNDBUFFORCE; 0 leaves TCP's autotuning. The kernel's
    /// psock backlog, which writes the redirected bytes, backs off each time a send buffer is
    /// full, and the autotuned size starts at 16 KiB; on loopback the two now measure the same
    /// per CPU-second (bench/README.md), so this mainly bounds how long the backlog waits.
    #[arg(long, default_value_t = 4 << 20)]
    pub passthrough_splice_sndbuf: u32,
    /// On exit, leave the kernel programs attached and the maps pinned for the next agent (which
    /// adopts them), so a restart or upgrade does not reset established L4 connections. Without
    /// it the agent detaches everything and removes its pins.
    #[arg(long)]
    pub keep_on_exit: bool,
    /// On SIGTERM, how long requests in flight get to finish before connections are closed.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub drain_timeout: std::time::Duration,
    /// Log one structured line per proxied request (tracing target `access`).
    #[arg(long)]
    pub access_log: bool,
    /// How often the connection table is swept.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub aging_interval: std::time::Duration,
    /// How long a next hop the XDP program met unresolved (and dropped a packet to) is kept as
    /// a managed neighbour entry, which the kernel resolves at once and keeps resolving, before
    /// it is handed back to the kernel's own aging as an ordinary entry. The L4 backends' next
    /// hops stay managed for as long as they are backends.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub reported_neighbour_hold: std::time::Duration,
    #[command(flatten)]
    pub kube: KubeArgs,
}

/// Cluster-mode settings (`run --kube`).
#[derive(Debug, Args)]
pub struct KubeArgs {
    /// This node's name: the status-writer Lease identity and the Events' reportingInstance.
    /// Defaults to the host name.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Namespace of the status-writer Lease (the agent's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "nodegate-system")]
    pub lease_namespace: String,
    /// leaseDurationSeconds of the status-writer Lease: the holder renews every third of it, and
    /// another agent takes over once the holder has not renewed for this long.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub lease_duration: std::time::Duration,
    /// Never write statuses or Events (watch only), whatever the Lease says.
    #[arg(long)]
    pub no_status: bool,
    /// Label selector of the agent's own Pods (in --lease-namespace): Gateways without
    /// spec.addresses report the addresses of the Nodes where one of them is Ready (every Node's
    /// if the Pods cannot be listed).
    #[arg(long, default_value = "app.kubernetes.io/name=nodegate")]
    pub agent_selector: String,
    /// Prefer endpoints on this node: when a Service has ready endpoints whose EndpointSlice
    /// nodeName is this node, only those are used.
    #[arg(long)]
    pub prefer_local_endpoints: bool,
    /// Testing: the API server's URL, used without credentials (e.g. `kubectl proxy`'s). Without
    /// it: the in-cluster config, else the kubeconfig (KUBECONFIG, ~/.kube/config).
    #[arg(long, hide = true, value_name = "URL")]
    pub kube_api: Option<String>,
    /// How often a kind the API server does not serve (CRD not installed) is tried again.
    #[arg(long, hide = true, default_value = "60s", value_parser = humantime::parse_duration)]
    pub kube_missing_retry: std::time::Duration,
    /// Longest pause between watch retries (exponential backoff from 200ms).
    #[arg(long, hide = true, default_value = "30s", value_parser = humantime::parse_duration)]
    pub kube_max_backoff: std::time::Duration,
}

/// `--snat-ports`: a range given on the command line, or one derived from the kernel's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnatPorts {
    /// The widest span from 1024 up outside net.ipv4.ip_local_port_range (see
    /// `dataplane::snat_ports`).
    Auto,
    /// FIRST-LAST, inclusive.
    Range(u16, u16),
}

fn parse_snat_ports(s: &str) -> Result<SnatPorts, String> {
    if s == "auto" {
        return Ok(SnatPorts::Auto);
    }
    parse_port_range(s).map(|(a, b)| SnatPorts::Range(a, b))
}

fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or("expected FIRST-LAST (e.g. 1024-32767) or auto")?;
    let (a, b): (u16, u16) = (
        a.parse().map_err(|e| format!("{e}"))?,
        b.parse().map_err(|e| format!("{e}"))?,
    );
    if a == 0 || b <= a {
        return Err("the range must be non-empty and start above 0".into());
    }
    Ok((a, b))
}

/// How TLS passthrough moves bytes once a backend is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SpliceMode {
    /// In the kernel: both sockets in a sockhash, an SK_SKB verdict program redirects.
    Sockmap,
    /// A userspace copy loop.
    Userspace,
}

/// Output format of `check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// A YAML list.
    Yaml,
    /// A JSON array.
    Json,
}

/// `gateway-agent check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Directory of Gateway API YAML (as for `run --config-dir`).
    #[arg(long, value_name = "DIR")]
    pub config_dir: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "yaml")]
    pub output: OutputFormat,
    /// Address listeners bind to when their Gateway has no spec.addresses.
    #[arg(long, default_value = "0.0.0.0")]
    pub bind_address: std::net::IpAddr,
}
