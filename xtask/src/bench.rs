//! `cargo xtask bench`: benchmarks (never tests) run side by side in one topology.
//!
//! `l4` compares, in the client — gateway — backend namespaces: (a) plain kernel forwarding to
//! the backend (the floor), (b) nftables DNAT + SNAT as kube-proxy writes them, (c) haproxy in TCP
//! mode, (d) nodegate in each attach mode. Figures: UDP packets/s delivered to the backend (64-byte
//! payloads, sender at full speed), whole-machine CPU time per delivered packet at a fixed offered
//! rate, and TCP connections/s. `model` runs the model-compile benchmark.

use std::{
    net::{SocketAddr, UdpSocket},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use testbed::{
    GATEWAY_BACKEND_IFACE, GATEWAY_CLIENT_IFACE, GATEWAY_V4, TempBpffs, Topology, backend_v4,
};

/// `cargo xtask bench` options.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// Which benchmark.
    #[arg(default_value = "all", value_parser = ["l4", "model", "all"])]
    which: String,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5)]
    duration: u64,
    /// Where results.json and results.md go.
    #[arg(long, default_value = "bench/results")]
    out: std::path::PathBuf,
}

const UDP_PORT: u16 = 7000;
const TCP_PORT: u16 = 7001;
const HAPROXY_PORT: u16 = 7002;
/// Offered rate for the CPU-per-packet figure.
const FIXED_RATE: u64 = 50_000;

/// One path's figures.
#[derive(Debug, Default, Clone)]
struct Figures {
    udp_pps: Option<f64>,
    cpu_us_per_packet: Option<f64>,
    tcp_cps: Option<f64>,
}

/// Runs the benchmarks.
pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.out)?;
    let mut json = serde_json_lite::Object::default();
    let mut md = String::new();
    if args.which == "l4" || args.which == "all" {
        let results = l4(args)?;
        md.push_str(&l4_table(&results, args.duration));
        for (path, f) in &results {
            json.push(path, f);
        }
    }
    if args.which == "model" || args.which == "all" {
        let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(crate::workspace_root())
            .args(["bench", "-q", "-p", "gateway-model", "--bench", "compile"])
            .output()
            .context("running the model benchmark")?;
        if !out.status.success() {
            bail!(
                "model benchmark failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let lines = String::from_utf8_lossy(&out.stdout).to_string();
        md.push_str("\n### Model compile (10,000 HTTPRoutes, 50,000 endpoints)\n\n```\n");
        md.push_str(&lines);
        md.push_str("```\n");
        json.raw(
            "model",
            &format!(
                "[{}]",
                lines
                    .lines()
                    .filter(|l| l.starts_with('{'))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        );
    }
    std::fs::write(args.out.join("results.json"), json.finish())?;
    std::fs::write(args.out.join("results.md"), &md)?;
    println!("{md}");
    println!("written: {}/results.json, results.md", args.out.display());
    Ok(())
}

fn l4(args: &BenchArgs) -> anyhow::Result<Vec<(String, Figures)>> {
    testbed::require_root(
        "`cargo xtask bench l4` (it builds network namespaces and loads BPF programs)",
    )?;
    crate::packages::ensure(&[
        ("ip", "iproute2"),
        ("ethtool", "ethtool"),
        ("nft", "nftables"),
        ("haproxy", "haproxy"),
    ])?;
    let agent = crate::build_agent(true)?;
    let topo = Topology::create("bench", 1)?;
    let backend = SocketAddr::new(backend_v4(0).into(), UDP_PORT);
    let received = udp_sink(&topo, backend)?;
    tcp_sink(&topo, SocketAddr::new(backend_v4(0).into(), TCP_PORT))?;
    let window = Duration::from_secs(args.duration);
    let mut results = Vec::new();

    let vip_udp = SocketAddr::new(GATEWAY_V4.into(), UDP_PORT);
    let vip_tcp = SocketAddr::new(GATEWAY_V4.into(), TCP_PORT);

    eprintln!("bench: plain forwarding");
    results.push((
        "plain forwarding (floor)".into(),
        measure(
            &topo,
            &received,
            backend,
            Some(SocketAddr::new(backend_v4(0).into(), TCP_PORT)),
            window,
        )?,
    ));

    eprintln!("bench: nftables DNAT+SNAT");
    let nft = format!(
        "table ip nodegate_bench {{
  chain pre {{ type nat hook prerouting priority dstnat; ip daddr {GATEWAY_V4} udp dport {UDP_PORT} dnat to {b}:{UDP_PORT}; ip daddr {GATEWAY_V4} tcp dport {TCP_PORT} dnat to {b}:{TCP_PORT}; }}
  chain post {{ type nat hook postrouting priority srcnat; ip daddr {b} masquerade; }}
}}",
        b = backend_v4(0)
    );
    nft_apply(&topo, &nft)?;
    results.push((
        "nftables DNAT+SNAT".into(),
        measure(&topo, &received, vip_udp, Some(vip_tcp), window)?,
    ));
    topo.gateway
        .exec("nft", &["delete", "table", "ip", "nodegate_bench"])?;

    eprintln!("bench: haproxy (TCP mode)");
    let cfg =
        std::env::temp_dir().join(format!("nodegate-bench-haproxy-{}.cfg", std::process::id()));
    std::fs::write(
        &cfg,
        format!(
            "global\n  maxconn 4096\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\nlisten l4\n  bind {GATEWAY_V4}:{HAPROXY_PORT}\n  server b {}:{TCP_PORT}\n",
            backend_v4(0)
        ),
    )?;
    let mut haproxy = topo
        .gateway
        .command("haproxy")
        .args(["-f"])
        .arg(&cfg)
        .args(["-db"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(500));
    let f = Figures {
        tcp_cps: Some(tcp_cps(
            &topo,
            SocketAddr::new(GATEWAY_V4.into(), HAPROXY_PORT),
            window,
        )?),
        ..Figures::default()
    };
    results.push(("haproxy (TCP mode)".into(), f));
    let _ = haproxy.kill();
    let _ = haproxy.wait();

    for mode in ["xdp", "xdp-generic", "tc"] {
        eprintln!("bench: nodegate {mode}");
        let bpffs = TempBpffs::mount("bench")?;
        let dir =
            std::env::temp_dir().join(format!("nodegate-bench-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("bench.yaml"), bench_config())?;
        let mut child = start_agent(&topo, &agent, &dir, bpffs.path(), mode)?;
        let figures = measure(&topo, &received, vip_udp, Some(vip_tcp), window);
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&dir);
        results.push((format!("nodegate {mode}"), figures?));
    }
    Ok(results)
}

fn nft_apply(topo: &Topology, rules: &str) -> anyhow::Result<()> {
    let mut child = topo
        .gateway
        .command("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .spawn()?;
    use std::io::Write as _;
    child
        .stdin
        .take()
        .context("nft stdin")?
        .write_all(rules.as_bytes())?;
    if !child.wait()?.success() {
        bail!("nft -f failed");
    }
    Ok(())
}

fn bench_config() -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: nodegate}}
spec: {{controllerName: nodegate.io/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: bench, namespace: default}}
spec:
  gatewayClassName: nodegate
  addresses: [{{type: IPAddress, value: {GATEWAY_V4}}}]
  listeners:
  - {{name: udp, protocol: UDP, port: {UDP_PORT}}}
  - {{name: tcp, protocol: TCP, port: {TCP_PORT}}}
---
apiVersion: v1
kind: Service
metadata: {{name: sink, namespace: default}}
spec: {{ports: [{{name: udp, port: {UDP_PORT}, protocol: UDP}}, {{name: tcp, port: {TCP_PORT}, protocol: TCP}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: sink-1, namespace: default, labels: {{kubernetes.io/service-name: sink}}}}
addressType: IPv4
ports: [{{name: udp, port: {UDP_PORT}, protocol: UDP}}, {{name: tcp, port: {TCP_PORT}, protocol: TCP}}]
endpoints: [{{addresses: ['{b}']}}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: UDPRoute
metadata: {{name: udp, namespace: default}}
spec:
  parentRefs: [{{name: bench, sectionName: udp}}]
  rules: [{{backendRefs: [{{name: sink, port: {UDP_PORT}}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {{name: tcp, namespace: default}}
spec:
  parentRefs: [{{name: bench, sectionName: tcp}}]
  rules: [{{backendRefs: [{{name: sink, port: {TCP_PORT}}}]}}]
",
        b = backend_v4(0)
    )
}

fn start_agent(
    topo: &Topology,
    bin: &std::path::Path,
    dir: &std::path::Path,
    bpffs: &std::path::Path,
    mode: &str,
) -> anyhow::Result<Child> {
    let child = topo
        .gateway
        .command(bin)
        .args(["--log", "warn", "run", "--config-dir"])
        .arg(dir)
        .args([
            "--interface",
            GATEWAY_CLIENT_IFACE,
            "--interface",
            GATEWAY_BACKEND_IFACE,
            "--attach",
            mode,
            "--bpffs",
        ])
        .arg(bpffs)
        .args(["--admin-address", "127.0.0.1:9901"])
        .stdin(Stdio::null())
        .spawn()?;
    let gw = topo.gateway.clone();
    testbed::wait_for(Duration::from_secs(20), "the agent", || {
        let gw = gw.clone();
        gw.run(|| testbed::http_get("127.0.0.1:9901".parse().unwrap(), "/readyz"))
            .ok()
            .and_then(Result::ok)
            .filter(|(s, _)| *s == 200)
    })?;
    Ok(child)
}

/// A UDP receiver in the backend namespace counting datagrams.
fn udp_sink(topo: &Topology, addr: SocketAddr) -> anyhow::Result<Arc<AtomicU64>> {
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    topo.backend.spawn(move || {
        let sock = UdpSocket::bind(addr).expect("bind sink");
        let _ = tx.send(());
        let mut buf = [0u8; 2048];
        while sock.recv(&mut buf).is_ok() {
            c.fetch_add(1, Ordering::Relaxed);
        }
    })?;
    rx.recv()?;
    Ok(count)
}

/// A TCP server in the backend namespace that accepts and closes.
fn tcp_sink(topo: &Topology, addr: SocketAddr) -> anyhow::Result<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    topo.backend.spawn(move || {
        let listener = std::net::TcpListener::bind(addr).expect("bind tcp sink");
        let _ = tx.send(());
        for s in listener.incoming() {
            drop(s);
        }
    })?;
    rx.recv()?;
    Ok(())
}

/// Busy jiffies and total jiffies of the whole machine, from /proc/stat.
fn cpu_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    let total: u64 = fields.iter().take(8).sum();
    (total - idle, total)
}

/// Sends 64-byte datagrams from the client namespace for `window` (at `rate` per second, or as
/// fast as possible); returns how many the backend received and the busy CPU seconds.
fn udp_run(
    topo: &Topology,
    received: &AtomicU64,
    target: SocketAddr,
    window: Duration,
    rate: Option<u64>,
) -> anyhow::Result<(u64, f64)> {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let before = received.load(Ordering::Relaxed);
    let (busy0, _) = cpu_jiffies();
    let sender = {
        let ns = topo.client.clone();
        std::thread::spawn(move || {
            ns.run(move || {
                let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
                sock.connect(target).unwrap();
                let payload = [0x5au8; 64];
                let start = Instant::now();
                let mut sent: u64 = 0;
                while !s.load(Ordering::Relaxed) {
                    if let Some(r) = rate {
                        let due = (start.elapsed().as_secs_f64() * r as f64) as u64;
                        if sent >= due {
                            std::thread::sleep(Duration::from_micros(200));
                            continue;
                        }
                    }
                    let _ = sock.send(&payload);
                    sent += 1;
                }
            })
        })
    };
    std::thread::sleep(window);
    stop.store(true, Ordering::Relaxed);
    let _ = sender.join();
    std::thread::sleep(Duration::from_millis(100));
    let (busy1, _) = cpu_jiffies();
    let ticks = 100.0; // USER_HZ
    Ok((
        received.load(Ordering::Relaxed) - before,
        (busy1 - busy0) as f64 / ticks,
    ))
}

/// TCP connections per second (connect, then close) from the client namespace.
fn tcp_cps(topo: &Topology, target: SocketAddr, window: Duration) -> anyhow::Result<f64> {
    let n = topo.client.run(move || {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < window {
            if std::net::TcpStream::connect_timeout(&target, Duration::from_secs(1)).is_ok() {
                n += 1;
            }
        }
        n
    })?;
    Ok(n as f64 / window.as_secs_f64())
}

fn measure(
    topo: &Topology,
    received: &AtomicU64,
    udp: SocketAddr,
    tcp: Option<SocketAddr>,
    window: Duration,
) -> anyhow::Result<Figures> {
    // Warm up (neighbour entries, conntrack, caches).
    udp_run(topo, received, udp, Duration::from_millis(300), None)?;
    let (got, _) = udp_run(topo, received, udp, window, None)?;
    let (got_fixed, cpu) = udp_run(topo, received, udp, window, Some(FIXED_RATE))?;
    let cps = match tcp {
        Some(t) => Some(tcp_cps(topo, t, window)?),
        None => None,
    };
    Ok(Figures {
        udp_pps: Some(got as f64 / window.as_secs_f64()),
        cpu_us_per_packet: (got_fixed > 0).then(|| cpu * 1e6 / got_fixed as f64),
        tcp_cps: cps,
    })
}

fn l4_table(results: &[(String, Figures)], duration: u64) -> String {
    let mut md = format!(
        "### L4 (`cargo xtask bench l4 --duration {duration}`)\n\n| path | UDP pps delivered (64 B, full speed) | CPU µs per delivered packet at {FIXED_RATE} pps | TCP connections/s |\n|---|---|---|---|\n"
    );
    let fmt =
        |v: Option<f64>, digits: usize| v.map_or("–".to_string(), |v| format!("{v:.digits$}"));
    for (path, f) in results {
        md.push_str(&format!(
            "| {path} | {} | {} | {} |\n",
            fmt(f.udp_pps, 0),
            fmt(f.cpu_us_per_packet, 2),
            fmt(f.tcp_cps, 0)
        ));
    }
    md
}

/// A tiny JSON writer (the xtask has no serde): enough for results.json.
mod serde_json_lite {
    use super::Figures;

    /// An object under construction.
    #[derive(Default)]
    pub struct Object(Vec<String>);

    fn num(v: Option<f64>) -> String {
        v.map_or("null".into(), |v| format!("{v:.3}"))
    }

    impl Object {
        /// Adds a path's figures.
        pub fn push(&mut self, path: &str, f: &Figures) {
            self.0.push(format!(
                "{:?}: {{\"udp_pps\": {}, \"cpu_us_per_packet\": {}, \"tcp_cps\": {}}}",
                path,
                num(f.udp_pps),
                num(f.cpu_us_per_packet),
                num(f.tcp_cps)
            ));
        }

        /// Adds already-encoded JSON.
        pub fn raw(&mut self, key: &str, json: &str) {
            self.0.push(format!("{key:?}: {json}"));
        }

        /// The document.
        pub fn finish(self) -> String {
            format!("{{\n  {}\n}}\n", self.0.join(",\n  "))
        }
    }
}
