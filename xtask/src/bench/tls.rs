//! `bench tls`: TLS passthrough relay throughput, side by side, in a loopback-only namespace:
//! the client straight to the backend (the floor: what the load itself costs), nodegate
//! `--passthrough-splice sockmap` (sockhash + SK_SKB verdict: the bytes never reach the agent),
//! the same with `--passthrough-splice-sndbuf 0` (TCP's send-buffer autotuning), nodegate
//! `--passthrough-splice userspace` (a copy loop in the agent) and haproxy in TCP mode routing on
//! `req.ssl_sni` (`tcp-request inspect-delay` + `content accept if { req.ssl_hello_type 1 }`).
//!
//! Per run one connection: the client sends a ClientHello with SNI `bulk.example.com`, the
//! backend reads it and answers first, then both sides stream 64 KiB writes at full speed.
//! Figures over the window: MiB/s relayed (both directions summed), CPU seconds per GiB of the
//! gateway process (utime+stime), of the whole machine (/proc/stat busy time — sockmap's work
//! happens in softirq and kworkers, outside the agent) and of the load, gateway and kernel
//! threads only (other tenants left out), and that last figure over the floor's: what the
//! gateway added per GiB.

use std::{
    io::{Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, bail};
use testbed::{Netns, TempBpffs};

use super::{
    Ctx, GATEWAY_CPU, LOAD_CPU,
    loopns::LoopNs,
    peers::{self, Peer},
    report::{Column, Section},
    stats::{Samples, add_round},
    sys,
};

const BACKEND_PORT: u16 = 19443;
const GATEWAY_PORT: u16 = 19001;
const SNI: &str = "bulk.example.com";
const BLOCK: usize = 64 * 1024;
const GREETING: &[u8] = b"HELLO";
const GIB: f64 = (1u64 << 30) as f64;
/// nodegate's splice with `--passthrough-splice-sndbuf 0`: the spliced sockets keep TCP's
/// send-buffer autotuning, to show what the default buffer buys.
const AUTOTUNED: &str = "nodegate sockmap, autotuned sndbuf";
/// The row of the client talking to the backend directly: what the load itself costs.
const FLOOR: &str = "direct, no gateway (floor)";

const COLUMNS: &[Column] = &[
    Column {
        key: "mib_per_s",
        label: "MiB/s (both directions)",
        digits: 0,
    },
    Column {
        key: "gateway_cpu_s_per_gib",
        label: "gateway process CPU-s/GiB",
        digits: 3,
    },
    Column {
        key: "machine_cpu_s_per_gib",
        label: "machine CPU-s/GiB",
        digits: 3,
    },
    Column {
        key: "own_cpu_s_per_gib",
        label: "load+gateway+kernel threads CPU-s/GiB",
        digits: 3,
    },
    Column {
        key: "gib_per_machine_cpu_s",
        label: "GiB per machine CPU-s",
        digits: 3,
    },
    Column {
        key: "gib_per_own_cpu_s",
        label: "GiB per load+gateway+kernel-thread CPU-s",
        digits: 3,
    },
    Column {
        key: "gateway_added_cpu_s_per_gib",
        label: "CPU-s/GiB over the floor",
        digits: 3,
    },
    Column {
        key: "gib_per_gateway_added_cpu_s",
        label: "GiB per CPU-s over the floor",
        digits: 2,
    },
    Column {
        key: "gib_per_own_cpu_s_vs_haproxy",
        label: "× haproxy per load+gateway+kernel-thread CPU-s",
        digits: 2,
    },
    Column {
        key: "gib_per_gateway_added_cpu_s_vs_haproxy",
        label: "× haproxy per CPU-s over the floor",
        digits: 2,
    },
    Column {
        key: "peak_rss_mib",
        label: "gateway peak RSS MiB",
        digits: 1,
    },
];

/// Every path, in the order each round measures them.
const PATHS: &[&str] = &[
    FLOOR,
    "nodegate sockmap",
    AUTOTUNED,
    "nodegate userspace",
    HAPROXY,
];
/// The row the goal compares against.
const HAPROXY: &str = "haproxy";

/// Runs the TLS passthrough benchmark and returns its section. The paths are interleaved: each
/// round measures every path once (a fresh gateway each time), so a host that slows down for a
/// minute slows every path alike, and the ratios to haproxy are taken within a round.
pub fn run(ctx: &Ctx) -> anyhow::Result<Section> {
    testbed::require_root("`cargo xtask bench tls` (network namespace, BPF programs)")?;
    crate::packages::ensure(super::PEER_TOOLS)?;
    let lo = LoopNs::create("tls")?;
    let ns = &lo.ns;
    let hello = testbed::tls_client_hello(SNI);
    start_backend(ns, hello.len())?;
    let mut samples: Vec<Samples> = PATHS.iter().map(|_| Samples::default()).collect();
    for round in 0..ctx.runs() {
        let mut this: Vec<Samples> = Vec::with_capacity(PATHS.len());
        for &peer in PATHS {
            eprintln!("bench tls: round {}/{}: {peer}", round + 1, ctx.runs());
            let floor_own = this.first().and_then(|f| f.last("own_cpu_s_per_gib"));
            let s = if peer == FLOOR {
                measure(ctx, ns, peer, None, &hello, round, None)?
            } else {
                let bpffs = TempBpffs::mount("bench-tls")?;
                let config = peers::scratch("tls-config")?;
                let mut gw = start_gateway(ctx, ns, peer, &bpffs, &config)?;
                peers::wait_listening(&mut gw, ns, local(GATEWAY_PORT))?;
                let s = measure(ctx, ns, peer, Some(&gw), &hello, round, floor_own);
                drop(gw);
                let _ = std::fs::remove_dir_all(&config);
                s?
            };
            this.push(s);
        }
        let haproxy = PATHS
            .iter()
            .position(|p| *p == HAPROXY)
            .expect("haproxy is a path");
        let against = [
            ("gib_per_own_cpu_s", haproxy, "haproxy"),
            ("gib_per_gateway_added_cpu_s", haproxy, "haproxy"),
        ];
        add_round(&mut samples, this, &against);
    }
    let rows = PATHS
        .iter()
        .zip(samples)
        .map(|(peer, s)| s.into_row(*peer))
        .collect();
    Ok(Section {
        key: "tls",
        title: "TLS passthrough".into(),
        about: format!(
            "Loopback namespace; one connection per run: ClientHello with SNI `{SNI}`, the \
             backend answers first, then both sides stream 64 KiB writes. Client and backend \
             (4 threads) on CPU {LOAD_CPU}, the gateway process on CPU {GATEWAY_CPU}. On \
             loopback the sockmap redirect runs in the sender's softirq, i.e. on CPU \
             {LOAD_CPU}: its throughput shares that core with the load, so the per-CPU-second \
             figure is the fair comparison. Machine CPU is /proc/stat busy time of the whole machine \
             (it includes anything else running, e.g. other builds); `load+gateway+kernel \
             threads` is the utime+stime of the load generator, the gateway and every \
             `kworker`/`ksoftirqd` thread (sockmap's `sk_psock_backlog` runs in kworkers; with \
             tick-based accounting the loopback softirqs are charged to the task they \
             interrupted), which leaves other tenants out. The floor row connects the client straight \
             to the backend; `over the floor` subtracts its load+kernel-thread CPU-s/GiB from \
             a path's: the CPU the gateway added per GiB, against the floor of the same round. \
             The paths are interleaved: each of the {} rounds measures every path once, in \
             the table's order, so slow drifts of the host reach all of them; `× haproxy` \
             columns divide a path's GiB per CPU-s by haproxy's of the same round (the goal: \
             1.5 for the sockmap path). Windows of {} s{}.",
            ctx.runs(),
            ctx.window().as_secs(),
            if ctx.warmup().is_zero() {
                ", no warm-up (smoke)".to_string()
            } else {
                format!(
                    ", each after a {} s warm-up on its connection",
                    ctx.warmup().as_secs()
                )
            }
        ),
        columns: COLUMNS.to_vec(),
        rows,
        records: Vec::new(),
    })
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn start_gateway(
    ctx: &Ctx,
    ns: &Netns,
    peer: &str,
    bpffs: &TempBpffs,
    config: &std::path::Path,
) -> anyhow::Result<Peer> {
    if peer == "haproxy" {
        return peers::haproxy(
            ns,
            GATEWAY_CPU,
            "tls",
            &format!(
                "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  \
                 timeout server 60s\n\nfrontend tls\n  bind 127.0.0.1:{GATEWAY_PORT}\n  \
                 tcp-request inspect-delay 5s\n  \
                 tcp-request content accept if {{ req.ssl_hello_type 1 }}\n  \
                 use_backend bulk if {{ req.ssl_sni -i {SNI} }}\n\n\
                 backend bulk\n  server b 127.0.0.1:{BACKEND_PORT}\n"
            ),
        );
    }
    let (mode, sndbuf) = match peer {
        AUTOTUNED => ("sockmap", "0"),
        _ => (
            peer.strip_prefix("nodegate ").context("peer name")?,
            "4194304",
        ),
    };
    std::fs::write(config.join("tls.yaml"), nodegate_config())?;
    peers::agent(
        ns,
        GATEWAY_CPU,
        &ctx.agent,
        config,
        "127.0.0.1:9901".parse()?,
        &[
            "--bind-address",
            "127.0.0.1",
            "--passthrough-splice",
            mode,
            "--passthrough-splice-sndbuf",
            sndbuf,
            "--bpffs",
            &bpffs.path().display().to_string(),
        ],
        &[("TOKIO_WORKER_THREADS", "1")],
    )
}

fn nodegate_config() -> String {
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
  listeners: [{{name: tls, protocol: TLS, port: {GATEWAY_PORT}, tls: {{mode: Passthrough}}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: bulk, namespace: default}}
spec: {{ports: [{{name: tls, port: 443}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: bulk-1, namespace: default, labels: {{kubernetes.io/service-name: bulk}}}}
addressType: IPv4
ports: [{{name: tls, port: {BACKEND_PORT}}}]
endpoints: [{{addresses: [127.0.0.1]}}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TLSRoute
metadata: {{name: bulk, namespace: default}}
spec:
  parentRefs: [{{name: bench}}]
  hostnames: [{SNI}]
  rules: [{{backendRefs: [{{name: bulk, port: 443}}]}}]
"
    )
}

/// Bytes each side has received so far, shared by the backend and the client.
struct Counters {
    backend_rx: AtomicU64,
    client_rx: AtomicU64,
}

static COUNTERS: Counters = Counters {
    backend_rx: AtomicU64::new(0),
    client_rx: AtomicU64::new(0),
};

fn total_bytes() -> u64 {
    COUNTERS.backend_rx.load(Ordering::Relaxed) + COUNTERS.client_rx.load(Ordering::Relaxed)
}

/// The backend: for each connection, read the hello, answer, then stream back while reading.
fn start_backend(ns: &Netns, hello_len: usize) -> anyhow::Result<()> {
    let (tx, rx) = std::sync::mpsc::channel::<std::io::Result<()>>();
    ns.spawn(move || {
        sys::pin_current_thread(LOAD_CPU);
        let listener = match TcpListener::bind(local(BACKEND_PORT)) {
            Ok(l) => l,
            Err(e) => return drop(tx.send(Err(e))),
        };
        let _ = tx.send(Ok(()));
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                sys::pin_current_thread(LOAD_CPU);
                let mut s = conn;
                let mut hello = vec![0u8; hello_len];
                if s.read_exact(&mut hello).is_err() || s.write_all(GREETING).is_err() {
                    return;
                }
                stream_both_ways(s, &COUNTERS.backend_rx);
            });
        }
    })?;
    rx.recv()?.context("binding the TLS bulk backend")
}

/// Writes 64 KiB blocks on a clone of `s` until it fails, while reading into `rx`.
fn stream_both_ways(s: TcpStream, rx: &'static AtomicU64) {
    if let Ok(mut w) = s.try_clone() {
        std::thread::spawn(move || {
            sys::pin_current_thread(LOAD_CPU);
            let buf = vec![0x17u8; BLOCK];
            while w.write_all(&buf).is_ok() {}
        });
    }
    let mut r = s;
    let mut buf = vec![0u8; BLOCK];
    while let Ok(n) = r.read(&mut buf) {
        if n == 0 {
            break;
        }
        rx.fetch_add(n as u64, Ordering::Relaxed);
    }
    let _ = r.shutdown(Shutdown::Both);
}

/// Whether run 1 of `peer` is recorded for flame graphs (nodegate's two relay modes).
fn flamed(peer: &str) -> bool {
    peer.starts_with("nodegate") && peer != AUTOTUNED
}

/// One run of one path: a connection with hello, greeting, warm-up, then the measured window.
/// Through `gw`, or straight to the backend without one (the floor). `floor_own` (this round's
/// floor load+kernel-thread CPU-s/GiB) turns this path's figure into what the gateway added.
/// perf records the nodegate paths of round 0 when `--flamegraph` is on.
fn measure(
    ctx: &Ctx,
    ns: &Netns,
    peer: &str,
    gw: Option<&Peer>,
    hello: &[u8],
    round: usize,
    floor_own: Option<f64>,
) -> anyhow::Result<Samples> {
    let mut s = Samples::default();
    let pids = gw.map(Peer::pids).unwrap_or_default();
    let port = if gw.is_some() {
        GATEWAY_PORT
    } else {
        BACKEND_PORT
    };
    let window = ctx.window();
    {
        let hello = hello.to_vec();
        let client = ns.run(move || -> anyhow::Result<TcpStream> {
            sys::pin_current_thread(LOAD_CPU);
            let mut c = TcpStream::connect_timeout(&local(port), Duration::from_secs(5))?;
            c.set_read_timeout(Some(Duration::from_secs(5)))?;
            c.write_all(&hello)?;
            let mut greeting = [0u8; GREETING.len()];
            c.read_exact(&mut greeting)
                .context("no answer from the backend through the gateway")?;
            if greeting != GREETING {
                bail!("unexpected greeting {greeting:?}");
            }
            c.set_read_timeout(None)?;
            Ok(c)
        })??;
        let done = Arc::new(AtomicBool::new(false));
        let reader = {
            let c = client.try_clone()?;
            let done = done.clone();
            std::thread::spawn(move || {
                sys::pin_current_thread(LOAD_CPU);
                stream_both_ways(c, &COUNTERS.client_rx);
                done.store(true, Ordering::Relaxed);
            })
        };
        std::thread::sleep(ctx.warmup().max(Duration::from_millis(200)));
        let session = match (&ctx.flame, gw) {
            (Some(rec), Some(gw)) if round == 0 && flamed(peer) => {
                Some(rec.start(&format!("tls-{}", peer.replace(' ', "-")), gw.pid())?)
            }
            _ => None,
        };
        let mut own_pids = pids.clone();
        own_pids.push(std::process::id());
        let (bytes0, cpu) = (total_bytes(), sys::CpuWindow::start(&pids));
        let (own0, kernel0) = (sys::cpu_seconds(&own_pids), sys::kernel_thread_seconds());
        std::thread::sleep(window);
        let spent = cpu.end(&pids);
        let (gw_cpu, machine_cpu) = (spent.process, spent.machine);
        let own_cpu = sys::cpu_seconds(&own_pids) - own0 + sys::kernel_thread_seconds() - kernel0;
        let bytes = total_bytes() - bytes0;
        if let (Some(session), Some(rec)) = (session, &ctx.flame) {
            rec.finish(session)?;
        }
        let stalled = done.load(Ordering::Relaxed);
        let _ = client.shutdown(Shutdown::Both);
        let _ = reader.join();
        if bytes == 0 || stalled {
            s.note(format!(
                "run {}: the stream ended early ({bytes} bytes)",
                round + 1
            ));
        }
        let gib = bytes as f64 / GIB;
        s.push(
            "mib_per_s",
            Some(bytes as f64 / 1048576.0 / window.as_secs_f64()),
        );
        s.push("gateway_cpu_s_per_gib", (gib > 0.0).then(|| gw_cpu / gib));
        s.push(
            "machine_cpu_s_per_gib",
            (gib > 0.0).then(|| machine_cpu / gib),
        );
        s.push("own_cpu_s_per_gib", (gib > 0.0).then(|| own_cpu / gib));
        s.push(
            "gib_per_machine_cpu_s",
            (machine_cpu > 0.0).then(|| gib / machine_cpu),
        );
        s.push("gib_per_own_cpu_s", (own_cpu > 0.0).then(|| gib / own_cpu));
        if let Some(floor) = floor_own.filter(|_| gib > 0.0) {
            let added = own_cpu / gib - floor;
            s.push("gateway_added_cpu_s_per_gib", Some(added));
            s.push(
                "gib_per_gateway_added_cpu_s",
                (added > 0.0).then(|| 1.0 / added),
            );
        }
    }
    if gw.is_some() {
        s.push("peak_rss_mib", sys::memory_mib(&pids, "VmHWM"));
    }
    if ctx.flame.is_some() && flamed(peer) {
        s.note("run 1 was recorded by perf (999 Hz, agent and system-wide)");
    }
    Ok(s)
}
