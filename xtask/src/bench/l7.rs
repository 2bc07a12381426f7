//! `bench l7`: one route (`/` to one backend) through three proxies, side by side, in a
//! loopback-only namespace: nodegate's proxy (an HTTPRoute; the agent on `run --config-dir`
//! without `--interface`), nginx (`proxy_pass` with upstream keepalive) and haproxy (http mode,
//! keep-alive and `http-reuse always` to the server). The backend is nginx returning a 64-byte
//! body over HTTP/1.1 keep-alive.
//!
//! Each proxy gets one core: nginx `worker_processes 1`, haproxy `nbthread 1`, the agent
//! `TOKIO_WORKER_THREADS=1` (it has no worker-thread flag) — all pinned with taskset to
//! [`GATEWAY_CPU`](super::GATEWAY_CPU). wrk (HTTP/1.1) and h2load (h2c, prior knowledge) run on
//! [`LOAD_CPU`](super::LOAD_CPU), with the backend.
//!
//! Figures: req/s and p50/p99/p99.9 latency (wrk's histogram, through a `done()` script), h2c
//! req/s, proxy CPU µs per request (utime+stime of every proxy process over the window; utime
//! alone is its userspace share, the rest is the kernel's TCP work charged to the proxy) and the
//! req/s one proxy CPU second buys, idle RSS (VmRSS before any load) and peak RSS (VmHWM after).

use std::{net::SocketAddr, path::Path, time::Duration};

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

const BACKEND_PORT: u16 = 18080;
const NGINX_PORT: u16 = 18081;
const NGINX_H2C_PORT: u16 = 18091;
const HAPROXY_PORT: u16 = 18082;
const HAPROXY_H2C_PORT: u16 = 18092;
const NODEGATE_PORT: u16 = 18083;
/// wrk's concurrent connections.
const CONNECTIONS: u32 = 64;
/// h2load's connections and streams per connection.
const H2_CONNECTIONS: u32 = 16;
const H2_STREAMS: u32 = 10;

const COLUMNS: &[Column] = &[
    Column {
        key: "rps",
        label: "HTTP/1.1 req/s",
        digits: 0,
    },
    Column {
        key: "p50_us",
        label: "p50 µs",
        digits: 0,
    },
    Column {
        key: "p99_us",
        label: "p99 µs",
        digits: 0,
    },
    Column {
        key: "p999_us",
        label: "p99.9 µs",
        digits: 0,
    },
    Column {
        key: "cpu_us_per_req",
        label: "proxy CPU µs/req",
        digits: 2,
    },
    Column {
        key: "user_us_per_req",
        label: "of which user µs/req",
        digits: 2,
    },
    Column {
        key: "rps_per_cpu_s",
        label: "req per proxy CPU-s",
        digits: 0,
    },
    Column {
        key: "rps_per_cpu_s_vs_nginx",
        label: "× nginx req per proxy CPU-s",
        digits: 2,
    },
    Column {
        key: "p99_us_vs_nginx",
        label: "p99 ÷ nginx's",
        digits: 2,
    },
    Column {
        key: "h2c_rps",
        label: "h2c req/s",
        digits: 0,
    },
    Column {
        key: "h2c_cpu_us_per_req",
        label: "h2c proxy CPU µs/req",
        digits: 2,
    },
    Column {
        key: "idle_rss_mib",
        label: "idle RSS MiB",
        digits: 1,
    },
    Column {
        key: "peak_rss_mib",
        label: "peak RSS MiB",
        digits: 1,
    },
];

/// A proxy under test: where it serves HTTP/1.1 and h2c.
struct Proxy {
    name: &'static str,
    h1: u16,
    h2c: u16,
}

/// Runs the L7 benchmark and returns its section.
pub fn run(ctx: &Ctx) -> anyhow::Result<Section> {
    testbed::require_root("`cargo xtask bench l7` (network namespace, CPU pinning)")?;
    crate::packages::ensure(super::PEER_TOOLS)?;
    let lo = LoopNs::create("l7")?;
    let ns = &lo.ns;
    let script = peers::scratch("wrk")?;
    std::fs::write(script.join("report.lua"), WRK_SCRIPT)?;
    let body = "x".repeat(63) + "\n";
    let mut backend = peers::nginx(
        ns,
        LOAD_CPU,
        "backend",
        &format!(
            "  server {{\n    listen 127.0.0.1:{BACKEND_PORT} backlog=4096;\n    \
             location / {{ default_type text/plain; return 200 \"{body}\"; }}\n  }}"
        ),
    )?;
    peers::wait_listening(&mut backend, ns, local(BACKEND_PORT))?;

    let proxies = [
        Proxy {
            name: "nodegate",
            h1: NODEGATE_PORT,
            h2c: NODEGATE_PORT,
        },
        Proxy {
            name: "nginx",
            h1: NGINX_PORT,
            h2c: NGINX_H2C_PORT,
        },
        Proxy {
            name: "haproxy",
            h1: HAPROXY_PORT,
            h2c: HAPROXY_H2C_PORT,
        },
    ];
    // Every proxy runs for the whole benchmark (an idle proxy costs nothing), and each round
    // measures each of them once, so the host's slow drifts reach all three alike.
    let bpffs = TempBpffs::mount("bench-l7")?;
    let mut running = Vec::with_capacity(proxies.len());
    for p in &proxies {
        let config = peers::scratch(&format!("l7-config-{}", p.name))?;
        let mut peer = start_proxy(ctx, ns, p, &bpffs, &config)?;
        peers::wait_listening(&mut peer, ns, local(p.h1))?;
        peers::wait_listening(&mut peer, ns, local(p.h2c))?;
        running.push((p, peer, config));
    }
    // Let nginx fork its worker before the process lists are taken.
    std::thread::sleep(Duration::from_millis(300));
    let mut samples: Vec<Samples> = running
        .iter()
        .map(|(p, peer, _)| {
            let mut s = Samples::default();
            s.push("idle_rss_mib", sys::memory_mib(&peer.pids(), "VmRSS"));
            if p.name == "nodegate" {
                s.note("the agent has no worker-thread flag: TOKIO_WORKER_THREADS=1 and taskset pin it to one core");
            }
            s
        })
        .collect();
    if !ctx.warmup().is_zero() {
        for (p, _, _) in &running {
            wrk(ns, p.h1, ctx.warmup(), &script)?;
        }
    }
    let nginx = running
        .iter()
        .position(|(p, _, _)| p.name == "nginx")
        .context("nginx is a proxy")?;
    for round in 0..ctx.runs() {
        let mut this = Vec::with_capacity(running.len());
        for (p, peer, _) in &running {
            eprintln!("bench l7: round {}/{}: {}", round + 1, ctx.runs(), p.name);
            this.push(measure(ctx, ns, p, peer, &script, round)?);
        }
        let against = [
            ("rps_per_cpu_s", nginx, "nginx"),
            ("p99_us", nginx, "nginx"),
        ];
        add_round(&mut samples, this, &against);
    }
    let rows = running
        .into_iter()
        .zip(samples)
        .map(|((p, peer, config), mut s)| {
            s.push("peak_rss_mib", sys::memory_mib(&peer.pids(), "VmHWM"));
            drop(peer);
            let _ = std::fs::remove_dir_all(&config);
            s.into_row(p.name)
        })
        .collect();
    drop(backend);
    let _ = std::fs::remove_dir_all(&script);
    Ok(Section {
        key: "l7",
        title: "L7 HTTP proxy".into(),
        about: format!(
            "Loopback namespace; one route `/` to one nginx backend (64-byte body, keep-alive) on \
             CPU {LOAD_CPU} with the load generators. Each proxy: one worker pinned to CPU \
             {GATEWAY_CPU}. wrk -t1 -c{CONNECTIONS} (HTTP/1.1 keep-alive) for req/s and latency; \
             h2load -t1 -c{H2_CONNECTIONS} -m{H2_STREAMS} (h2c). The load side shares a core with \
             the backend, so req/s may be bound by the load side; `req per proxy CPU-s` (requests \
             over the proxy's utime+stime) is the per-core figure. The three proxies run side by \
             side and each of the {} rounds measures each once, so slow drifts of the host reach \
             all three; the `nginx` columns divide by nginx's figure of the same round (the \
             goal: at least 1.2 req per CPU-s, p99 at most 1). Windows of {} s{}.",
            ctx.runs(),
            ctx.window().as_secs(),
            if ctx.warmup().is_zero() {
                ", no warm-up (smoke)".to_string()
            } else {
                format!(", after a {} s warm-up", ctx.warmup().as_secs())
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

fn start_proxy(
    ctx: &Ctx,
    ns: &Netns,
    p: &Proxy,
    bpffs: &TempBpffs,
    config: &Path,
) -> anyhow::Result<Peer> {
    match p.name {
        "nodegate" => {
            std::fs::write(config.join("l7.yaml"), nodegate_config())?;
            peers::agent(
                ns,
                GATEWAY_CPU,
                &ctx.agent,
                config,
                "127.0.0.1:9901".parse()?,
                &[
                    "--bind-address",
                    "127.0.0.1",
                    "--bpffs",
                    &bpffs.path().display().to_string(),
                ],
                &[("TOKIO_WORKER_THREADS", "1")],
            )
        }
        "nginx" => peers::nginx(
            ns,
            GATEWAY_CPU,
            "proxy",
            &format!(
                "  upstream be {{ server 127.0.0.1:{BACKEND_PORT}; keepalive 128; }}\n  \
                 server {{\n    listen 127.0.0.1:{NGINX_PORT} backlog=4096;\n    \
                 listen 127.0.0.1:{NGINX_H2C_PORT} http2 backlog=4096;\n    \
                 location / {{ proxy_pass http://be; proxy_http_version 1.1; \
                 proxy_set_header Connection \"\"; }}\n  }}"
            ),
        ),
        "haproxy" => peers::haproxy(
            ns,
            GATEWAY_CPU,
            "l7",
            &format!(
                "defaults\n  mode http\n  option http-keep-alive\n  http-reuse always\n  \
                 timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\n\
                 frontend fe\n  bind 127.0.0.1:{HAPROXY_PORT}\n  \
                 bind 127.0.0.1:{HAPROXY_H2C_PORT} proto h2\n  default_backend be\n\n\
                 backend be\n  server b 127.0.0.1:{BACKEND_PORT}\n"
            ),
        ),
        other => bail!("unknown proxy {other}"),
    }
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
  listeners: [{{name: http, protocol: HTTP, port: {NODEGATE_PORT}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: be, namespace: default}}
spec: {{ports: [{{name: http, port: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: be-1, namespace: default, labels: {{kubernetes.io/service-name: be}}}}
addressType: IPv4
ports: [{{name: http, port: {BACKEND_PORT}}}]
endpoints: [{{addresses: [127.0.0.1]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: bench, namespace: default}}
spec:
  parentRefs: [{{name: bench}}]
  rules: [{{matches: [{{path: {{type: PathPrefix, value: /}}}}], backendRefs: [{{name: be, port: 80}}]}}]
"
    )
}

/// One round of one proxy: wrk, then h2load, with the proxy's CPU time over each window. perf
/// records nodegate's wrk window of round 0 when `--flamegraph` is on.
fn measure(
    ctx: &Ctx,
    ns: &Netns,
    p: &Proxy,
    peer: &Peer,
    script: &Path,
    round: usize,
) -> anyhow::Result<Samples> {
    let mut s = Samples::default();
    let pids = peer.pids();
    let window = ctx.window();
    let session = match &ctx.flame {
        Some(rec) if round == 0 && p.name == "nodegate" => {
            Some(rec.start("l7-nodegate", peer.pid())?)
        }
        _ => None,
    };
    let cpu = sys::CpuWindow::start(&pids);
    let w = wrk(ns, p.h1, window, script)?;
    let spent = cpu.end(&pids);
    let (proxy_cpu, proxy_user) = (spent.process, spent.user);
    if let (Some(session), Some(rec)) = (session, &ctx.flame) {
        rec.finish(session)?;
        s.note("run 1 was recorded by perf (999 Hz, agent and system-wide)");
    }
    if w.errors > 0 {
        s.note(format!(
            "wrk counted {} errors in run {}",
            w.errors,
            round + 1
        ));
    }
    s.push("rps", Some(w.requests as f64 / w.seconds));
    s.push("p50_us", Some(w.p50_us));
    s.push("p99_us", Some(w.p99_us));
    s.push("p999_us", Some(w.p999_us));
    s.push(
        "cpu_us_per_req",
        (w.requests > 0).then(|| proxy_cpu * 1e6 / w.requests as f64),
    );
    s.push(
        "user_us_per_req",
        (w.requests > 0).then(|| proxy_user * 1e6 / w.requests as f64),
    );
    s.push(
        "rps_per_cpu_s",
        (proxy_cpu > 0.0).then(|| w.requests as f64 / proxy_cpu),
    );
    let cpu = sys::CpuWindow::start(&pids);
    match h2load(ns, p.h2c, window) {
        Ok((done, rps)) => {
            let proxy_cpu = cpu.end(&pids).process;
            s.push("h2c_rps", Some(rps));
            s.push(
                "h2c_cpu_us_per_req",
                (done > 0).then(|| proxy_cpu * 1e6 / done as f64),
            );
        }
        Err(e) => s.note(format!("h2load failed: {e:#}")),
    }
    Ok(s)
}

/// Prints one machine-readable line at the end of a wrk run (latencies in µs).
const WRK_SCRIPT: &str = r#"done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("NGBENCH %d %d %d %d %d %d\n", summary.requests, summary.duration,
    e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
"#;

/// One wrk run's figures.
struct Wrk {
    requests: u64,
    seconds: f64,
    errors: u64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
}

fn wrk(ns: &Netns, port: u16, window: Duration, script: &Path) -> anyhow::Result<Wrk> {
    let out = peers::pinned(ns, LOAD_CPU, "wrk")
        .args(["-t1", &format!("-c{CONNECTIONS}")])
        .arg(format!("-d{}s", window.as_secs().max(1)))
        .arg("--latency")
        .arg("-s")
        .arg(script.join("report.lua"))
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("NGBENCH "))
        .with_context(|| {
            format!(
                "wrk printed no result: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    let v: Vec<f64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() != 6 {
        bail!("unexpected wrk result line: {line}");
    }
    Ok(Wrk {
        requests: v[0] as u64,
        seconds: (v[1] / 1e6).max(1e-3),
        errors: v[2] as u64,
        p50_us: v[3],
        p99_us: v[4],
        p999_us: v[5],
    })
}

/// h2load over h2c (prior knowledge) for `window`: (requests done, req/s).
fn h2load(ns: &Netns, port: u16, window: Duration) -> anyhow::Result<(u64, f64)> {
    let out = peers::pinned(ns, LOAD_CPU, "h2load")
        .args([
            "-t1",
            &format!("-c{H2_CONNECTIONS}"),
            &format!("-m{H2_STREAMS}"),
        ])
        .args(["-D", &window.as_secs().max(1).to_string()])
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .context("running h2load")?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_h2load(&text).with_context(|| format!("h2load output: {text}"))
}

/// `finished in 1.00s, 12345.67 req/s, …` and `requests: N total, N started, N done, N
/// succeeded, …` → (succeeded, req/s). Fails when most requests failed.
fn parse_h2load(text: &str) -> anyhow::Result<(u64, f64)> {
    let rps = text
        .lines()
        .find_map(|l| {
            let rest = l.strip_prefix("finished in ")?;
            rest.split(", ")
                .nth(1)?
                .strip_suffix(" req/s")?
                .parse::<f64>()
                .ok()
        })
        .context("no `finished in` line")?;
    let counts = text
        .lines()
        .find_map(|l| l.strip_prefix("requests: "))
        .context("no `requests:` line")?;
    let field = |name: &str| {
        counts
            .split(", ")
            .find_map(|f| f.strip_suffix(name)?.trim().parse::<u64>().ok())
    };
    let done = field(" done").unwrap_or(0);
    let ok = field(" succeeded").unwrap_or(0);
    if done == 0 || ok * 2 < done {
        bail!("{ok} of {done} requests succeeded");
    }
    Ok((ok, rps * ok as f64 / done as f64))
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_h2load() {
        let out = "finished in 1.00s, 20000.00 req/s, 2.00MB/s\n\
                   requests: 20000 total, 20100 started, 20000 done, 20000 succeeded, 0 failed, 0 errored, 0 timeout\n";
        assert_eq!(super::parse_h2load(out).unwrap(), (20000, 20000.0));
        assert!(super::parse_h2load("requests: 10 total, 10 started, 10 done, 0 succeeded, 10 failed\nfinished in 1.00s, 10.00 req/s, 0B/s\n").is_err());
    }
}
