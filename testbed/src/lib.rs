//! Network-namespace test topologies for nodegate: a client, a gateway and a backend host joined by
//! veth pairs, created by the caller and removed when dropped (and on the next run if a crash left
//! them behind). Shared by `cargo xtask demo`, the end-to-end tests and the benchmarks.
//!
//! ```text
//!  client ns               gateway ns                          backend ns
//!  eth0 10.90.1.2 ─veth─ client0 10.90.1.1 | backend0 10.90.2.1 ─veth─ eth0 10.90.2.2 (+ .3, .4 …)
//!       fd00:90:1::2          fd00:90:1::1 | fd00:90:2::1                fd00:90:2::2 (+ ::3 …)
//! ```
//!
//! Only addresses inside namespaces this crate creates are used. As the project's guide asks, the
//! client and backend ends have TX checksum offload off (so an XDP rewrite sees full checksums) and
//! GRO on (so frames XDP redirects into a veth are accepted).

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context as _, bail};

/// The gateway's address facing the client (where listeners bind in tests and the demo).
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(10, 90, 1, 1);
/// The gateway's IPv6 address facing the client.
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x90, 1, 0, 0, 0, 0, 1);
/// The client's address.
pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(10, 90, 1, 2);
/// The client's IPv6 address.
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x90, 1, 0, 0, 0, 0, 2);
/// The gateway's address facing the backends.
pub const GATEWAY_BACKEND_SIDE_V4: Ipv4Addr = Ipv4Addr::new(10, 90, 2, 1);
/// The gateway's IPv6 address facing the backends.
pub const GATEWAY_BACKEND_SIDE_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x90, 2, 0, 0, 0, 0, 1);
/// The gateway's interface facing the client.
pub const GATEWAY_CLIENT_IFACE: &str = "client0";
/// The gateway's interface facing the backends.
pub const GATEWAY_BACKEND_IFACE: &str = "backend0";

/// IPv4 address of backend `i` (0-based) in the backend namespace: 10.90.2.(2+i).
pub fn backend_v4(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 90, 2, 2 + i)
}

/// IPv6 address of backend `i` (0-based): fd00:90:2::(2+i).
pub fn backend_v6(i: u8) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x90, 2, 0, 0, 0, 0, 2 + u16::from(i))
}

/// Fails with a clear message unless the process runs as root (netns, veth, bpf() need it).
pub fn require_root(what: &str) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "{what} needs root (network namespaces, veth pairs and bpf() need CAP_SYS_ADMIN, \
             CAP_NET_ADMIN and CAP_BPF): run it as root, e.g. `sudo -E cargo xtask test`"
        );
    }
    Ok(())
}

/// Runs a command and fails with its stderr if it does not succeed.
pub fn sh(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program} (is it installed?)"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One network namespace, by name (`/var/run/netns/<name>`).
#[derive(Debug, Clone)]
pub struct Netns {
    /// The name `ip netns` knows it by.
    pub name: String,
}

impl Netns {
    /// A `Command` that runs `program` inside this namespace (`ip netns exec`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `ip <args>` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        sh("ip", &full)
    }

    /// The MAC address of `iface` in this namespace.
    pub fn mac(&self, iface: &str) -> anyhow::Result<String> {
        let out = self.ip(&["-o", "link", "show", iface])?;
        out.split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .map(str::to_string)
            .with_context(|| format!("no MAC address on {iface} in {}", self.name))
    }

    /// Runs `program args` inside the namespace and fails on a non-zero exit.
    pub fn exec(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["netns", "exec", &self.name, program];
        full.extend_from_slice(args);
        sh("ip", &full)
    }

    /// Runs `f` on a thread that has joined this namespace: sockets it creates live there.
    pub fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> anyhow::Result<R> {
        let path = PathBuf::from("/var/run/netns").join(&self.name);
        let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        std::thread::spawn(move || {
            // SAFETY: setns on this thread only, with a namespace fd we own.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(anyhow::anyhow!(
                    "setns: {}",
                    std::io::Error::last_os_error()
                ));
            }
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("thread in netns panicked"))?
    }

    /// Spawns a long-lived thread in the namespace (for servers); it ends with the process.
    pub fn spawn(&self, f: impl FnOnce() + Send + 'static) -> anyhow::Result<()> {
        let path = PathBuf::from("/var/run/netns").join(&self.name);
        let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // SAFETY: setns on this thread only, with a namespace fd we own.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            let _ = tx.send(rc);
            if rc == 0 {
                f();
            }
        });
        match rx.recv()? {
            0 => Ok(()),
            _ => bail!("setns into {} failed", self.name),
        }
    }
}

/// A client — gateway — backend topology. Dropping it deletes the namespaces (and so the links).
#[derive(Debug)]
pub struct Topology {
    /// The client host.
    pub client: Netns,
    /// The gateway host, where the agent runs.
    pub gateway: Netns,
    /// The backend host; backend `i` answers on [`backend_v4`]`(i)` / [`backend_v6`]`(i)`.
    pub backend: Netns,
    prefix: String,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Topology {
    /// Creates the three namespaces with `backends` backend addresses. `tag` (a few letters) makes
    /// the names recognisable; the process id and a counter make them unique, so tests can run in
    /// parallel.
    pub fn create(tag: &str, backends: u8) -> anyhow::Result<Self> {
        require_root("a network-namespace topology")?;
        let prefix = format!(
            "ng{tag}{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        remove_namespaces(&prefix);
        let topo = Topology {
            client: Netns {
                name: format!("{prefix}-cl"),
            },
            gateway: Netns {
                name: format!("{prefix}-gw"),
            },
            backend: Netns {
                name: format!("{prefix}-be"),
            },
            prefix,
        };
        topo.build(backends)?;
        Ok(topo)
    }

    /// The namespace-name prefix shared by the three namespaces.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn build(&self, backends: u8) -> anyhow::Result<()> {
        for ns in [&self.client, &self.gateway, &self.backend] {
            sh("ip", &["netns", "add", &ns.name])?;
            ns.ip(&["link", "set", "lo", "up"])?;
            // No duplicate address detection: link-local addresses would stay tentative for a
            // second or two after the links come up, and neighbour discovery fails meanwhile.
            for key in ["all", "default"] {
                ns.exec(
                    "sysctl",
                    &["-qw", &format!("net.ipv6.conf.{key}.accept_dad=0")],
                )?;
            }
        }
        sh(
            "ip",
            &[
                "link",
                "add",
                "eth0",
                "netns",
                &self.client.name,
                "type",
                "veth",
                "peer",
                "name",
                GATEWAY_CLIENT_IFACE,
                "netns",
                &self.gateway.name,
            ],
        )?;
        sh(
            "ip",
            &[
                "link",
                "add",
                "eth0",
                "netns",
                &self.backend.name,
                "type",
                "veth",
                "peer",
                "name",
                GATEWAY_BACKEND_IFACE,
                "netns",
                &self.gateway.name,
            ],
        )?;
        let gw = &self.gateway;
        gw.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        gw.exec("sysctl", &["-qw", "net.ipv6.conf.all.forwarding=1"])?;
        let addr = |ns: &Netns, iface: &str, a: &str| {
            if a.contains(':') {
                ns.ip(&["addr", "add", a, "dev", iface, "nodad"])
            } else {
                ns.ip(&["addr", "add", a, "dev", iface])
            }
        };
        addr(gw, GATEWAY_CLIENT_IFACE, &format!("{GATEWAY_V4}/24"))?;
        addr(gw, GATEWAY_CLIENT_IFACE, &format!("{GATEWAY_V6}/64"))?;
        addr(
            gw,
            GATEWAY_BACKEND_IFACE,
            &format!("{GATEWAY_BACKEND_SIDE_V4}/24"),
        )?;
        addr(
            gw,
            GATEWAY_BACKEND_IFACE,
            &format!("{GATEWAY_BACKEND_SIDE_V6}/64"),
        )?;
        addr(&self.client, "eth0", &format!("{CLIENT_V4}/24"))?;
        addr(&self.client, "eth0", &format!("{CLIENT_V6}/64"))?;
        for i in 0..backends.max(1) {
            addr(&self.backend, "eth0", &format!("{}/24", backend_v4(i)))?;
            addr(&self.backend, "eth0", &format!("{}/64", backend_v6(i)))?;
        }
        for (ns, iface) in [
            (&self.client, "eth0"),
            (gw, GATEWAY_CLIENT_IFACE),
            (gw, GATEWAY_BACKEND_IFACE),
            (&self.backend, "eth0"),
        ] {
            ns.ip(&["link", "set", iface, "up"])?;
        }
        // Hosts at the edges behave like real NICs: full checksums on send, GRO on receive.
        for ns in [&self.client, &self.backend] {
            ns.exec("ethtool", &["-K", "eth0", "tx", "off", "gro", "on"])?;
        }
        self.client
            .ip(&["route", "add", "default", "via", &GATEWAY_V4.to_string()])?;
        self.client.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &GATEWAY_V6.to_string(),
        ])?;
        self.backend.ip(&[
            "route",
            "add",
            "default",
            "via",
            &GATEWAY_BACKEND_SIDE_V4.to_string(),
        ])?;
        self.backend.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &GATEWAY_BACKEND_SIDE_V6.to_string(),
        ])?;
        // Permanent neighbour entries at the edges: no address-resolution race right after the
        // links come up. The gateway knows the client's address as a stack that had answered
        // its ARP would; it is left to resolve the backends itself (the agent adds managed
        // entries for them, as bpf_fib_lookup finds no next hop otherwise).
        let client_mac = self.client.mac("eth0")?;
        let gw_client_mac = gw.mac(GATEWAY_CLIENT_IFACE)?;
        let gw_backend_mac = gw.mac(GATEWAY_BACKEND_IFACE)?;
        let neigh = |ns: &Netns, ip: String, mac: &str, dev: &str| {
            ns.ip(&[
                "neigh",
                "replace",
                &ip,
                "lladdr",
                mac,
                "dev",
                dev,
                "nud",
                "permanent",
            ])
        };
        neigh(&self.client, GATEWAY_V4.to_string(), &gw_client_mac, "eth0")?;
        neigh(&self.client, GATEWAY_V6.to_string(), &gw_client_mac, "eth0")?;
        neigh(gw, CLIENT_V4.to_string(), &client_mac, GATEWAY_CLIENT_IFACE)?;
        neigh(gw, CLIENT_V6.to_string(), &client_mac, GATEWAY_CLIENT_IFACE)?;
        neigh(
            &self.backend,
            GATEWAY_BACKEND_SIDE_V4.to_string(),
            &gw_backend_mac,
            "eth0",
        )?;
        neigh(
            &self.backend,
            GATEWAY_BACKEND_SIDE_V6.to_string(),
            &gw_backend_mac,
            "eth0",
        )?;
        Ok(())
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        remove_namespaces(&self.prefix);
    }
}

/// Deletes every namespace whose name starts with `prefix` (their veths go with them).
pub fn remove_namespaces(prefix: &str) {
    let Ok(list) = sh("ip", &["netns", "list"]) else {
        return;
    };
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        if !name.is_empty() && name.starts_with(prefix) {
            let _ = sh("ip", &["netns", "delete", name]);
        }
    }
}

/// A bpffs mounted on a fresh directory of the root mount namespace, visible from every `ip netns
/// exec` (which remounts /sys, hiding /sys/fs/bpf). Unmounted and removed on drop.
#[derive(Debug)]
pub struct TempBpffs {
    path: PathBuf,
}

impl TempBpffs {
    /// Mounts a bpffs under the system temp directory.
    pub fn mount(tag: &str) -> anyhow::Result<Self> {
        require_root("mounting a bpffs")?;
        let path = std::env::temp_dir().join(format!(
            "nodegate-bpffs-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path)?;
        sh("mount", &["-t", "bpf", "bpf", &path.to_string_lossy()])?;
        Ok(Self { path })
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempBpffs {
    fn drop(&mut self) {
        let _ = sh("umount", &[&self.path.to_string_lossy()]);
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// Sends `count` UDP datagrams of `payload` bytes from the current thread's namespace to `dst`.
pub fn send_udp(dst: std::net::SocketAddr, count: usize, payload: usize) -> anyhow::Result<()> {
    let bind: std::net::SocketAddr = match dst.ip() {
        IpAddr::V4(_) => "0.0.0.0:0".parse()?,
        IpAddr::V6(_) => "[::]:0".parse()?,
    };
    let sock = std::net::UdpSocket::bind(bind)?;
    let buf = vec![0x42u8; payload];
    for _ in 0..count {
        sock.send_to(&buf, dst)?;
    }
    Ok(())
}

/// A minimal HTTP/1.0 GET from the current thread's namespace: returns (status code, body). For
/// reading the agent's admin endpoint in tests and the demo.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let (status, _, body) = http_request(addr, "GET", path, &[])?;
    Ok((status, body))
}

/// (status code, headers with lower-case names, body).
pub type HttpResponse = (u16, Vec<(String, String)>, String);

/// A minimal HTTP/1.0 request from the current thread's namespace with extra headers; returns
/// (status code, headers with lower-case names, body).
pub fn http_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<HttpResponse> {
    use std::io::{Read as _, Write as _};
    let mut stream =
        std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2))?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    let mut request = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("HTTP response without a header end")?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .context("HTTP response without a status code")?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok((status, headers, body.to_string()))
}

/// Polls `f` every 100 ms until it returns `Some`, for at most `timeout`.
pub fn wait_for<T>(
    timeout: std::time::Duration,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if std::time::Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Sums the samples of a Prometheus metric whose label set contains every `labels` pair.
pub fn metric_value(exposition: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (label_part, value) = match rest.strip_prefix('{') {
            Some(r) => match r.split_once("} ") {
                Some((l, v)) => (l, v),
                None => continue,
            },
            None => match rest.strip_prefix(' ') {
                Some(v) => ("", v),
                None => continue,
            },
        };
        if labels
            .iter()
            .all(|(k, v)| label_part.contains(&format!("{k}=\"{v}\"")))
            && let Ok(v) = value.trim().parse::<f64>()
        {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// Starts an HTTP/1.1 responder on `addr` inside `ns` (a thread per connection, one request per
/// connection, `Connection: close`): it answers `backend=<name> path=<path>` so clients can see
/// where a request landed. For the demo and benchmarks; tests use hyper-based backends.
pub fn http_echo_server(
    ns: &Netns,
    addr: std::net::SocketAddr,
    name: &'static str,
) -> anyhow::Result<()> {
    use std::io::{BufRead as _, BufReader, Write as _};
    let (tx, rx) = std::sync::mpsc::channel();
    ns.spawn(move || {
        let listener = match std::net::TcpListener::bind(addr) {
            Ok(l) => {
                let _ = tx.send(Ok(()));
                l
            }
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(&stream);
                let mut first = String::new();
                if reader.read_line(&mut first).is_err() {
                    return;
                }
                let path = first.split_whitespace().nth(1).unwrap_or("/").to_string();
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let body = format!("backend={name} path={path}\n");
                let _ = write!(
                    &stream,
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    })?;
    rx.recv()?
        .with_context(|| format!("binding the echo server on {addr}"))
}

/// Starts a TCP server on `addr` inside `ns` that greets each connection with `<name>\n` and then
/// echoes what it receives until the client closes.
pub fn tcp_echo_server(
    ns: &Netns,
    addr: std::net::SocketAddr,
    name: &'static str,
) -> anyhow::Result<()> {
    use std::io::{Read as _, Write as _};
    let (tx, rx) = std::sync::mpsc::channel();
    ns.spawn(move || {
        let listener = match std::net::TcpListener::bind(addr) {
            Ok(l) => {
                let _ = tx.send(Ok(()));
                l
            }
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut stream = stream;
                if writeln!(stream, "{name}").is_err() {
                    return;
                }
                let mut buf = [0u8; 16 * 1024];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 || stream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    })?;
    rx.recv()?
        .with_context(|| format!("binding the TCP echo server on {addr}"))
}

/// Starts a UDP server on `addr` inside `ns` answering each datagram with `<name>:` + the datagram.
pub fn udp_echo_server(
    ns: &Netns,
    addr: std::net::SocketAddr,
    name: &'static str,
) -> anyhow::Result<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    ns.spawn(move || {
        let sock = match std::net::UdpSocket::bind(addr) {
            Ok(s) => {
                let _ = tx.send(Ok(()));
                s
            }
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            let mut reply = format!("{name}:").into_bytes();
            reply.extend_from_slice(&buf[..n]);
            let _ = sock.send_to(&reply, from);
        }
    })?;
    rx.recv()?
        .with_context(|| format!("binding the UDP echo server on {addr}"))
}

/// Opens a TCP connection to `addr` from the current thread's namespace, reads the greeting line
/// of a [`tcp_echo_server`], checks one echo round trip, and returns the greeting.
pub fn tcp_hello(addr: std::net::SocketAddr) -> anyhow::Result<String> {
    use std::io::{BufRead as _, BufReader, Write as _};
    let stream = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2))?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(3)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut greeting = String::new();
    reader.read_line(&mut greeting)?;
    (&stream).write_all(b"ping\n")?;
    let mut echo = String::new();
    reader.read_line(&mut echo)?;
    if echo != "ping\n" {
        bail!("echo through {addr} returned {echo:?}");
    }
    Ok(greeting.trim().to_string())
}

/// Sends one UDP datagram to `addr` from the current thread's namespace and waits for the reply.
pub fn udp_request(addr: std::net::SocketAddr, payload: &[u8]) -> anyhow::Result<Vec<u8>> {
    let bind: std::net::SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let sock = std::net::UdpSocket::bind(bind)?;
    sock.set_read_timeout(Some(std::time::Duration::from_secs(2)))?;
    sock.send_to(payload, addr)?;
    let mut buf = [0u8; 2048];
    let (n, _) = sock.recv_from(&mut buf)?;
    Ok(buf[..n].to_vec())
}

/// A minimal gRPC peer over h2c prior knowledge (hyper's HTTP/2), for the tests and the demo:
/// unary calls, length-prefixed messages, `grpc-status` trailers.
pub mod grpc {
    /// A response body of one gRPC message followed by `grpc-status: 0` trailers.
    pub struct GrpcBody {
        frames: std::collections::VecDeque<hyper::body::Frame<bytes::Bytes>>,
    }

    impl hyper::body::Body for GrpcBody {
        type Data = bytes::Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>>
        {
            std::task::Poll::Ready(self.frames.pop_front().map(Ok))
        }
    }

    /// A length-prefixed gRPC message.
    pub fn message(payload: &[u8]) -> bytes::Bytes {
        let mut m = vec![0u8];
        m.extend((payload.len() as u32).to_be_bytes());
        m.extend(payload);
        m.into()
    }

    /// An h2c gRPC backend (in the current thread's namespace) answering every call with `<name> <path>` and grpc-status 0.
    pub fn backend_on(addr: std::net::SocketAddr, name: &'static str) -> u16 {
        let listener = std::net::TcpListener::bind(addr).unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                listener.set_nonblocking(true).unwrap();
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(
                            move |req: hyper::Request<hyper::body::Incoming>| async move {
                                let path = req.uri().path().to_string();
                                let _ = http_body_util::BodyExt::collect(req.into_body()).await;
                                let mut trailers = hyper::HeaderMap::new();
                                trailers.insert("grpc-status", "0".parse().unwrap());
                                let body = GrpcBody {
                                    frames: [
                                        hyper::body::Frame::data(message(
                                            format!("{name} {path}").as_bytes(),
                                        )),
                                        hyper::body::Frame::trailers(trailers),
                                    ]
                                    .into(),
                                };
                                let mut resp = hyper::Response::new(body);
                                resp.headers_mut()
                                    .insert("content-type", "application/grpc".parse().unwrap());
                                Ok::<_, std::convert::Infallible>(resp)
                            },
                        );
                        let _ = hyper::server::conn::http2::Builder::new(
                            hyper_util::rt::TokioExecutor::new(),
                        )
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                    });
                }
            });
        });
        port
    }

    /// One unary gRPC call over h2c prior knowledge: (grpc-status, message payload).
    pub fn call_addr(addr: std::net::SocketAddr, path: &str) -> (Option<String>, String) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let path = path.to_string();
        rt.block_on(async move {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (mut send, conn) = hyper::client::conn::http2::handshake(
                hyper_util::rt::TokioExecutor::new(),
                hyper_util::rt::TokioIo::new(stream),
            )
            .await
            .unwrap();
            tokio::spawn(conn);
            let req = hyper::Request::post(format!("http://grpc.example.com{path}"))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(http_body_util::Full::new(message(b"hi")))
                .unwrap();
            let resp = send.send_request(req).await.unwrap();
            let header_status = resp
                .headers()
                .get("grpc-status")
                .map(|v| v.to_str().unwrap().to_string());
            let collected = http_body_util::BodyExt::collect(resp.into_body())
                .await
                .unwrap();
            let trailer_status = collected
                .trailers()
                .and_then(|t| t.get("grpc-status"))
                .map(|v| v.to_str().unwrap().to_string());
            let data = collected.to_bytes();
            let payload = if data.len() > 5 {
                String::from_utf8_lossy(&data[5..]).to_string()
            } else {
                String::new()
            };
            (trailer_status.or(header_status), payload)
        })
    }

    /// [`backend_on`] on 127.0.0.1 with an ephemeral port.
    pub fn backend(name: &'static str) -> u16 {
        backend_on("127.0.0.1:0".parse().unwrap(), name)
    }

    /// [`call_addr`] to 127.0.0.1:`port`.
    pub fn call(port: u16, path: &str) -> (Option<String>, String) {
        call_addr(std::net::SocketAddr::from(([127, 0, 0, 1], port)), path)
    }
}

/// Makes a self-signed ECDSA certificate for `name` (CN and DNS SAN; `*` allowed) with the
/// `openssl` command, in `dir`; returns (certificate PEM path, key PEM path). For TLS backends
/// and HTTPS listeners in the demo and the tests.
pub fn self_signed_certificate(dir: &Path, name: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
    let file = name.replace('*', "wild");
    let (cert, key) = (
        dir.join(format!("{file}.crt")),
        dir.join(format!("{file}.key")),
    );
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
        ])
        .args([
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            &format!("subjectAltName=DNS:{name}"),
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .context("running openssl (is it installed?)")?;
    if !out.status.success() {
        bail!(
            "openssl req failed for {name}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok((cert, key))
}

/// A minimal TLS ClientHello record for `sni` (TLS 1.2 version fields, one cipher suite, the SNI
/// extension only): what the passthrough tests and benchmark send before streaming bytes.
pub fn tls_client_hello(sni: &str) -> Vec<u8> {
    let mut body = vec![3, 3];
    body.extend([7u8; 32]);
    body.push(0);
    body.extend([0, 2, 0x13, 0x01, 1, 0]);
    let mut entry = vec![0];
    entry.extend((sni.len() as u16).to_be_bytes());
    entry.extend(sni.as_bytes());
    let mut ext = vec![0, 0];
    ext.extend(((entry.len() + 2) as u16).to_be_bytes());
    ext.extend((entry.len() as u16).to_be_bytes());
    ext.extend(entry);
    body.extend((ext.len() as u16).to_be_bytes());
    body.extend(ext);
    let mut hs = vec![1];
    hs.extend(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend(body);
    let mut record = vec![22, 3, 1];
    record.extend((hs.len() as u16).to_be_bytes());
    record.extend(hs);
    record
}
