//! `cargo xtask demo`: the agent on the embedded default (examples/standalone) in a client —
//! gateway — backend network-namespace topology, with real traffic and a report of what happened.
//! Everything it creates is removed at the end, on failure and on Ctrl-C.

use std::{
    net::{SocketAddr, TcpStream},
    process::{Child, Command, Stdio},
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, bail};
use testbed::{GATEWAY_CLIENT_IFACE, GATEWAY_V4, GATEWAY_V6, TempBpffs, Topology};

/// `cargo xtask demo` options.
#[derive(clap::Args)]
pub struct DemoArgs {
    /// How the agent attaches its programs.
    #[arg(long, default_value = "xdp", value_parser = ["xdp", "xdp-generic", "tc"])]
    attach: String,
    /// Build the agent with the release profile.
    #[arg(long)]
    release: bool,
    /// Agent log filter.
    #[arg(long, default_value = "info")]
    log: String,
}

/// The admin endpoint inside the gateway namespace.
const ADMIN: &str = "127.0.0.1:9901";

/// The agent's pid, for the Ctrl-C handler.
static AGENT_PID: AtomicU32 = AtomicU32::new(0);
/// Helper processes (TLS backends), for the Ctrl-C handler.
static HELPERS: Mutex<Vec<u32>> = Mutex::new(Vec::new());
/// The topology's namespace prefix, for the Ctrl-C handler.
static PREFIX: Mutex<String> = Mutex::new(String::new());

/// Runs the demo.
pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    testbed::require_root(
        "`cargo xtask demo` (it loads BPF programs and builds network namespaces)",
    )?;
    crate::packages::ensure(crate::packages::TEST_TOOLS)?;
    let agent_bin = crate::build_agent(args.release)?;
    let config_dir = crate::workspace_root().join("examples/standalone");

    ctrlc::set_handler(|| {
        eprintln!("\nxtask demo: interrupted, tearing down");
        let pid = AGENT_PID.load(Ordering::SeqCst);
        if pid != 0 {
            kill_agent(pid);
        }
        if let Ok(helpers) = HELPERS.lock() {
            for pid in helpers.iter() {
                kill_agent(*pid);
            }
        }
        if let Ok(prefix) = PREFIX.lock()
            && !prefix.is_empty()
        {
            testbed::remove_namespaces(&prefix);
        }
        std::process::exit(130);
    })
    .context("installing the Ctrl-C handler")?;

    let topo = Topology::create("demo", 2)?;
    *PREFIX.lock().unwrap_or_else(|e| e.into_inner()) = topo.prefix().to_string();
    let bpffs = TempBpffs::mount("demo")?;
    // HTTP backends in the backend namespace, where examples/standalone's EndpointSlices point.
    testbed::http_echo_server(&topo.backend, "10.90.2.2:8080".parse()?, "web-v1")?;
    testbed::http_echo_server(&topo.backend, "10.90.2.3:8080".parse()?, "web-v2")?;
    // TCP and UDP backends of the TCPRoute (80/20) and the UDPRoute.
    testbed::tcp_echo_server(&topo.backend, "10.90.2.2:9000".parse()?, "echo-a")?;
    testbed::tcp_echo_server(&topo.backend, "10.90.2.3:9000".parse()?, "echo-b")?;
    testbed::udp_echo_server(&topo.backend, "10.90.2.2:5353".parse()?, "dns")?;
    // The same over IPv6 (examples/standalone's IPv6 EndpointSlices).
    testbed::tcp_echo_server(&topo.backend, "[fd00:90:2::2]:9000".parse()?, "echo-a")?;
    testbed::tcp_echo_server(&topo.backend, "[fd00:90:2::3]:9000".parse()?, "echo-b")?;
    testbed::udp_echo_server(&topo.backend, "[fd00:90:2::2]:5353".parse()?, "dns")?;
    // gRPC (h2c) backends of the GRPCRoute.
    topo.backend
        .run(|| testbed::grpc::backend_on("10.90.2.2:50051".parse().unwrap(), "echo"))?;
    topo.backend
        .run(|| testbed::grpc::backend_on("10.90.2.3:50051".parse().unwrap(), "health"))?;
    // TLS backends for the passthrough listener, each with its own certificate.
    let tls = TlsBackends::start(&topo)?;
    println!(
        "== topology: client {} — gateway {} ({}) — backends in {}",
        topo.client.name, topo.gateway.name, GATEWAY_CLIENT_IFACE, topo.backend.name
    );

    let others = nodegate_programs()?;
    let mut agent = Agent::start(&topo, &agent_bin, &config_dir, bpffs.path(), args)?;
    let result = drive(&topo, bpffs.path()).and_then(|()| tls.check(&topo));
    let stopped = agent.stop();
    let detached = check_detached(&others);
    result.and(stopped).and(detached)?;
    println!("== done: agent stopped, programs detached, namespaces removed");
    Ok(())
}

/// Sends traffic and reports what the data plane saw.
fn drive(topo: &Topology, bpffs: &std::path::Path) -> anyhow::Result<()> {
    let before = metrics(topo)?;
    println!("== listeners the agent programmed (from examples/standalone):");
    let listeners = listener_lines(&before);
    if listeners.is_empty() {
        bail!("the agent programmed no listener from examples/standalone");
    }
    for l in &listeners {
        println!("   {l}");
    }

    println!("== traffic from the client namespace");
    let sent = topo.client.run(send_traffic)??;
    for line in &sent {
        println!("   {line}");
    }

    let after = metrics(topo)?;
    println!("== per-listener counters at /metrics (packets seen by the kernel program):");
    for l in listener_lines(&after) {
        println!("   {l}");
    }
    let total =
        |e: &str| testbed::metric_value(e, "nodegate_listener_packets_total", &[]).unwrap_or(0.0);
    let rose = total(&after) > total(&before);
    println!(
        "== bpftool map dump pinned {}/LISTENER_STATS (first entries):",
        bpffs.display()
    );
    let dump = testbed::sh(
        "bpftool",
        &[
            "map",
            "dump",
            "pinned",
            &bpffs.join("LISTENER_STATS").to_string_lossy(),
        ],
    )?;
    for line in dump.lines().take(24) {
        println!("   {line}");
    }
    if !rose {
        bail!("no listener counter rose while traffic flowed");
    }
    l4_section(topo)?;
    http_section(topo)?;
    grpc_section(topo)
}

/// GRPCRoute traffic: two services on two backends, over h2c.
fn grpc_section(topo: &Topology) -> anyhow::Result<()> {
    println!("== GRPCRoute default/grpc on {GATEWAY_V4}:50051 (h2c)");
    let gw = SocketAddr::new(GATEWAY_V4.into(), 50051);
    for path in [
        "/echo.Echo/Say",
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
    ] {
        let (status, reply) = topo
            .client
            .run(move || testbed::grpc::call_addr(gw, path))?;
        println!(
            "   {path} -> grpc-status {} {reply:?}",
            status.as_deref().unwrap_or("-")
        );
        let expected = match path {
            "/echo.Echo/Say" => status.as_deref() == Some("0") && reply.starts_with("echo "),
            "/grpc.health.v1.Health/Check" => {
                status.as_deref() == Some("0") && reply.starts_with("health ")
            }
            _ => status.as_deref() == Some("12"),
        };
        if !expected {
            bail!("gRPC routing did not behave as configured for {path}");
        }
    }
    Ok(())
}

/// TCPRoute and UDPRoute traffic forwarded by the kernel program, over IPv4 and IPv6.
fn l4_section(topo: &Topology) -> anyhow::Result<()> {
    println!("== TCPRoute default/echo (80/20) and UDPRoute default/dns, forwarded in the kernel");
    for ip in [
        std::net::IpAddr::V4(GATEWAY_V4),
        std::net::IpAddr::V6(GATEWAY_V6),
    ] {
        let lines = topo.client.run(move || l4_traffic(ip))??;
        for l in lines {
            println!("   {l}");
        }
    }
    // The IPv6 flows went through the kernel program's NAT, not the gateway's stack: the
    // per-backend counters of the IPv6 backends rose.
    let m = metrics(topo)?;
    for backend in ["[fd00:90:2::2]:9000", "[fd00:90:2::2]:5353"] {
        let sent = testbed::metric_value(
            &m,
            "nodegate_backend_packets_total",
            &[("backend", backend), ("direction", "to_backend")],
        )
        .unwrap_or(0.0);
        println!("   packets the kernel program forwarded to {backend}: {sent}");
        if sent == 0.0 {
            bail!("no IPv6 packet reached backend {backend} through the kernel program");
        }
    }
    Ok(())
}

/// Runs in the client namespace: 100 TCP connections with an echo round trip each and one UDP
/// request/response to the L4 listeners on `ip`; fails unless the 80/20 split and the reply hold.
fn l4_traffic(ip: std::net::IpAddr) -> anyhow::Result<Vec<String>> {
    let tcp = SocketAddr::new(ip, 9000);
    let mut split = std::collections::BTreeMap::new();
    for _ in 0..100 {
        *split.entry(testbed::tcp_hello(tcp)?).or_insert(0) += 1;
    }
    let mut out = vec![format!(
        "100 TCP connections to {tcp}, each with an echo round trip: {split:?}"
    )];
    let udp = SocketAddr::new(ip, 5353);
    let reply = testbed::udp_request(udp, b"query example.com")?;
    out.push(format!(
        "UDP request to {udp} -> {:?}",
        String::from_utf8_lossy(&reply)
    ));
    let a = split.get("echo-a").copied().unwrap_or(0);
    if !(60..=95).contains(&a) || !reply.starts_with(b"dns:") {
        bail!("L4 forwarding did not behave as configured: {out:?}");
    }
    Ok(out)
}

/// HTTPRoute traffic through the L7 proxy: a weighted split, a header match, a redirect, a rewrite.
fn http_section(topo: &Topology) -> anyhow::Result<()> {
    println!("== HTTPRoute default/web through the L7 proxy (http://{GATEWAY_V4}/)");
    let lines = topo.client.run(|| -> anyhow::Result<Vec<String>> {
        let gw = SocketAddr::new(GATEWAY_V4.into(), 80);
        let mut out = Vec::new();
        let mut split = std::collections::BTreeMap::new();
        for _ in 0..100 {
            let (status, _, body) = testbed::http_request(gw, "GET", "/", &[])?;
            *split
                .entry(format!("{status} {}", body.trim()))
                .or_insert(0) += 1;
        }
        out.push(format!("100 x GET /: {split:?} (weights 90/10)"));
        let (status, _, body) = testbed::http_request(gw, "GET", "/", &[("x-version", "2")])?;
        out.push(format!(
            "GET / with x-version: 2 -> {status} {}",
            body.trim()
        ));
        let (status, headers, _) = testbed::http_request(gw, "GET", "/old/page", &[])?;
        let location = headers
            .iter()
            .find(|(k, _)| k == "location")
            .map(|(_, v)| v.as_str())
            .unwrap_or("-");
        out.push(format!("GET /old/page -> {status} Location: {location}"));
        let (status, _, body) = testbed::http_request(gw, "GET", "/api/users", &[])?;
        out.push(format!("GET /api/users -> {status} {}", body.trim()));
        // The listener binds the IPv4 wildcard, served dual-stack.
        let gw6 = SocketAddr::new(GATEWAY_V6.into(), 80);
        let (status6, _, body6) = testbed::http_request(gw6, "GET", "/", &[])?;
        out.push(format!(
            "GET http://[{GATEWAY_V6}]/ (IPv6) -> {status6} {}",
            body6.trim()
        ));
        let ok = split.keys().any(|k| k.contains("web-v1"))
            && status == 200
            && body.contains("path=/v2/users")
            && status6 == 200
            && body6.contains("backend=web-");
        if !ok {
            bail!("HTTP routing did not behave as configured: {out:?}");
        }
        Ok(out)
    })??;
    for l in lines {
        println!("   {l}");
    }
    Ok(())
}

/// The lines of the listener packet counters, for printing.
fn listener_lines(exposition: &str) -> Vec<String> {
    exposition
        .lines()
        .filter(|l| l.starts_with("nodegate_listener_packets_total"))
        .map(str::to_string)
        .collect()
}

fn metrics(topo: &Topology) -> anyhow::Result<String> {
    let admin: SocketAddr = ADMIN.parse()?;
    let (status, body) = topo
        .gateway
        .run(move || testbed::http_get(admin, "/metrics"))??;
    if status != 200 {
        bail!("/metrics answered {status}: {body}");
    }
    Ok(body)
}

/// Runs in the client namespace: UDP datagrams and TCP connection attempts to each example listener.
/// The L7 listener (port 80) only over IPv4: the proxy binds `--bind-address` (0.0.0.0 by
/// default) when a Gateway has no addresses, as examples/standalone's has not.
fn send_traffic() -> anyhow::Result<Vec<String>> {
    let mut report = Vec::new();
    for ip in [
        std::net::IpAddr::V4(GATEWAY_V4),
        std::net::IpAddr::V6(GATEWAY_V6),
    ] {
        let udp = SocketAddr::new(ip, 5353);
        testbed::send_udp(udp, 20, 64)?;
        report.push(format!("udp {udp}: sent 20 datagrams of 64 bytes"));
        let ports: &[u16] = if ip.is_ipv4() { &[9000, 80] } else { &[9000] };
        for &port in ports {
            let tcp = SocketAddr::new(ip, port);
            let outcome = match TcpStream::connect_timeout(&tcp, Duration::from_millis(500)) {
                Ok(_) => "connected".to_string(),
                Err(e) => format!("{e}"),
            };
            report.push(format!("tcp {tcp}: connect: {outcome}"));
        }
    }
    Ok(report)
}

/// `openssl s_server` backends in the backend namespace (a.example.com on 10.90.2.2:8443,
/// b.example.com on 10.90.2.3:8443), killed on drop.
struct TlsBackends {
    dir: std::path::PathBuf,
    children: Vec<Child>,
}

impl TlsBackends {
    fn start(topo: &Topology) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("nodegate-demo-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mut backends = TlsBackends {
            dir,
            children: Vec::new(),
        };
        for (name, addr) in [
            ("a.example.com", "10.90.2.2:8443"),
            ("b.example.com", "10.90.2.3:8443"),
        ] {
            let (cert, key) = testbed::self_signed_certificate(&backends.dir, name)?;
            let child = topo
                .backend
                .command("openssl")
                .args(["s_server", "-accept", addr, "-www", "-quiet", "-cert"])
                .arg(&cert)
                .arg("-key")
                .arg(&key)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting openssl s_server")?;
            if let Ok(mut h) = HELPERS.lock() {
                h.push(child.id());
            }
            backends.children.push(child);
        }
        std::thread::sleep(Duration::from_millis(300));
        Ok(backends)
    }

    /// Connects through the passthrough listener with each SNI and checks that the client
    /// verifies that backend's own certificate.
    fn check(&self, topo: &Topology) -> anyhow::Result<()> {
        println!("== TLSRoute passthrough on {GATEWAY_V4}:443 (backends terminate TLS themselves)");
        for name in ["a.example.com", "b.example.com"] {
            let ca = self.dir.join(format!("{name}.crt"));
            let out = topo
                .client
                .command("openssl")
                .args([
                    "s_client",
                    "-connect",
                    &format!("{GATEWAY_V4}:443"),
                    "-servername",
                    name,
                    "-verify_hostname",
                    name,
                ])
                .arg("-CAfile")
                .arg(&ca)
                .args(["-verify_return_error", "-brief"])
                .stdin(Stdio::null())
                .output()
                .context("running openssl s_client")?;
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let verified = text.contains("Verification: OK");
            let peer = text
                .lines()
                .find(|l| l.contains("Peer certificate"))
                .unwrap_or("")
                .trim()
                .to_string();
            println!(
                "   SNI {name}: {peer}; verified against {name}'s own certificate: {verified}"
            );
            if !verified {
                bail!("TLS passthrough for {name} failed:\n{text}");
            }
        }
        Ok(())
    }
}

impl Drop for TlsBackends {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The agent process inside the gateway namespace.
struct Agent {
    child: Option<Child>,
}

impl Agent {
    fn start(
        topo: &Topology,
        bin: &std::path::Path,
        config_dir: &std::path::Path,
        bpffs: &std::path::Path,
        args: &DemoArgs,
    ) -> anyhow::Result<Self> {
        let child = topo
            .gateway
            .command(bin)
            .args(["--log", &args.log, "run", "--config-dir"])
            .arg(config_dir)
            .args([
                "--interface",
                GATEWAY_CLIENT_IFACE,
                "--interface",
                testbed::GATEWAY_BACKEND_IFACE,
                "--attach",
                &args.attach,
                "--bpffs",
            ])
            .arg(bpffs)
            .args(["--admin-address", ADMIN])
            .stdin(Stdio::null())
            .spawn()
            .context("starting gateway-agent")?;
        AGENT_PID.store(child.id(), Ordering::SeqCst);
        let mut agent = Agent { child: Some(child) };
        let admin: SocketAddr = ADMIN.parse()?;
        let gw = topo.gateway.clone();
        let ready = testbed::wait_for(Duration::from_secs(20), "the agent's /readyz", || {
            if let Some(Ok(Some(status))) = agent.child.as_mut().map(|c| c.try_wait()) {
                return Some(Err(anyhow::anyhow!("gateway-agent exited early: {status}")));
            }
            let gw = gw.clone();
            match gw.run(move || testbed::http_get(admin, "/readyz")) {
                Ok(Ok((200, body))) => Some(Ok(body)),
                _ => None,
            }
        });
        match ready {
            Ok(Ok(body)) => {
                println!("== agent ready: {}", body.trim());
                Ok(agent)
            }
            Ok(Err(e)) | Err(e) => {
                let _ = agent.stop();
                Err(e)
            }
        }
    }

    /// SIGTERM, then wait for a clean exit.
    fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let status = child.wait()?;
        AGENT_PID.store(0, Ordering::SeqCst);
        if !status.success() {
            bail!("gateway-agent exited with {status}");
        }
        Ok(())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The nodegate programs loaded now: (id, `bpftool prog show` lines).
fn nodegate_programs() -> anyhow::Result<Vec<(u64, String)>> {
    let json = testbed::sh("bpftool", &["-j", "prog", "show"])?;
    let progs: serde_json::Value =
        serde_json::from_str(&json).context("parsing bpftool's program list")?;
    Ok(progs
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|p| {
            p["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("nodegate_"))
        })
        .filter_map(|p| Some((p["id"].as_u64()?, p.to_string())))
        .collect())
}

/// After SIGTERM none of the demo agent's programs stays loaded: every nodegate program loaded
/// now was already loaded before it started (another agent on this machine, not ours).
fn check_detached(before: &[(u64, String)]) -> anyhow::Result<()> {
    let left: Vec<String> = nodegate_programs()?
        .into_iter()
        .filter(|(id, _)| !before.iter().any(|(b, _)| b == id))
        .map(|(_, p)| p)
        .collect();
    if !left.is_empty() {
        bail!(
            "nodegate programs still loaded after the agent stopped:\n{}",
            left.join("\n")
        );
    }
    Ok(())
}

/// Sends SIGKILL to `pid` (from the Ctrl-C handler: the agent is torn down with its namespace).
fn kill_agent(pid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
}
