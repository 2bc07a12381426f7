//! End to end, as root: TLS passthrough steers by SNI to real TLS backends (`openssl s_server`,
//! each with its own certificate) and the client (`openssl s_client`) sees and verifies the
//! backend's own certificate; a wildcard route; no SNI and an unknown SNI are refused.

mod support;

use std::{
    io::Write as _,
    net::{SocketAddr, TcpListener},
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use support::{Agent, ConfigDir};
use testbed::TempBpffs;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A self-signed certificate for `name` in `dir`: (cert path, key path).
fn certificate(dir: &Path, name: &str) -> (String, String) {
    let (cert, key) = testbed::self_signed_certificate(dir, name).expect("certificate");
    (cert.display().to_string(), key.display().to_string())
}

/// `openssl s_server -www` on 127.0.0.1:port, killed on drop.
struct TlsBackend(Child);

impl TlsBackend {
    fn start(port: u16, cert: &str, key: &str) -> Self {
        let child = Command::new("openssl")
            .args([
                "s_server",
                "-accept",
                &format!("127.0.0.1:{port}"),
                "-cert",
                cert,
                "-key",
                key,
                "-www",
                "-quiet",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_server");
        testbed::wait_for(Duration::from_secs(5), "s_server listening", || {
            std::net::TcpStream::connect(("127.0.0.1", port))
                .ok()
                .map(|_| ())
        })
        .unwrap();
        TlsBackend(child)
    }
}

impl Drop for TlsBackend {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Connects through the gateway with `sni` (None: no SNI), verifying against `ca`, sends an
/// HTTP GET over TLS; returns s_client's whole output.
fn client(port: u16, sni: Option<&str>, ca: &str) -> String {
    let mut cmd = Command::new("openssl");
    cmd.args([
        "s_client",
        "-connect",
        &format!("127.0.0.1:{port}"),
        "-CAfile",
        ca,
        "-verify_return_error",
    ]);
    match sni {
        Some(name) => cmd.args(["-servername", name, "-verify_hostname", name]),
        None => cmd.arg("-noservername"),
    };
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let _ = stdin.write_all(b"GET / HTTP/1.0\r\n\r\n");
    // Keep stdin open a moment so the response arrives before s_client sees EOF.
    std::thread::sleep(Duration::from_millis(700));
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn service(name: &str, port: u16) -> String {
    format!(
        "---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec: {{ports: [{{name: tls, port: 443}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-1, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{name: tls, port: {port}}}]
endpoints: [{{addresses: [127.0.0.1]}}]
"
    )
}

fn sni_steers_to_backends_that_terminate_tls_themselves(mode: &str) {
    testbed::require_root("the TLS passthrough end-to-end test (the agent loads its BPF object)")
        .unwrap();
    let dir = ConfigDir::new("tls-certs", &[]).unwrap();
    let (a_cert, a_key) = certificate(dir.path(), "a.example.com");
    let (w_cert, w_key) = certificate(dir.path(), "*.example.com");
    let (a_port, w_port) = (free_port(), free_port());
    let _a = TlsBackend::start(a_port, &a_cert, &a_key);
    let _w = TlsBackend::start(w_port, &w_cert, &w_key);

    let gw_port = free_port();
    let yaml = format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: nodegate}}
spec: {{controllerName: nodegate.io/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: default}}
spec:
  gatewayClassName: nodegate
  listeners: [{{name: tls, protocol: TLS, port: {gw_port}, tls: {{mode: Passthrough}}}}]
{}{}
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TLSRoute
metadata: {{name: a, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: [a.example.com]
  rules: [{{backendRefs: [{{name: a, port: 443}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TLSRoute
metadata: {{name: wild, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: ['*.example.com']
  rules: [{{backendRefs: [{{name: w, port: 443}}]}}]
",
        service("a", a_port),
        service("w", w_port)
    );
    let gw = PassthroughAgent::start("tls", mode, gw_port, &yaml);

    // The exact hostname reaches backend a; the client verifies a's own certificate end to end.
    let out = client(gw_port, Some("a.example.com"), &a_cert);
    assert!(
        out.contains("Verify return code: 0 (ok)"),
        "a's certificate verified:\n{out}"
    );
    assert!(
        out.contains("CN=a.example.com") || out.contains("CN = a.example.com"),
        "{out}"
    );
    assert!(
        out.contains("HTTP/1.0 200 ok"),
        "application data flows both ways:\n{out}"
    );

    // Another name under the wildcard reaches the wildcard backend.
    let out = client(gw_port, Some("b.example.com"), &w_cert);
    assert!(
        out.contains("Verify return code: 0 (ok)"),
        "wildcard backend's certificate:\n{out}"
    );

    // Unknown SNI and no SNI: the connection is closed before any certificate is sent.
    for (sni, why) in [(Some("x.other.org"), "unknown SNI"), (None, "no SNI")] {
        let out = client(gw_port, sni, &a_cert);
        assert!(
            out.contains("no peer certificate available") && !out.contains("BEGIN CERTIFICATE"),
            "{why} refused before the handshake:\n{out}"
        );
    }
    if mode == "sockmap" {
        assert!(
            splice_bytes(&gw.agent) > 0,
            "the backends' answers went through the kernel splice"
        );
    }
}

#[test]
fn sni_steering_sockmap() {
    sni_steers_to_backends_that_terminate_tls_themselves("sockmap");
}

#[test]
fn sni_steering_userspace() {
    sni_steers_to_backends_that_terminate_tls_themselves("userspace");
}

/// Bytes counted by the splice program, from the pinned per-CPU map.
fn splice_bytes(agent: &Agent) -> u64 {
    support::pinned_map_entries(&agent.bpffs, "SPLICE_STATS")
        .unwrap()
        .iter()
        .flat_map(|e| {
            e["formatted"]["values"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .map(|c| c["value"]["bytes"].as_u64().unwrap_or(0))
        .sum()
}

const BLOCK: usize = 64 * 1024;
/// Blocks in 1 GiB.
const GIB_BLOCKS: u64 = (1 << 30) / BLOCK as u64;

/// Block `i` of a deterministic stream.
fn block(i: u64, buf: &mut [u8]) {
    for (j, chunk) in buf.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&(i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ j as u64).to_le_bytes());
    }
}

/// Writes `blocks` blocks of the stream.
fn send_stream(mut w: impl std::io::Write, blocks: u64) {
    let mut buf = vec![0u8; BLOCK];
    for i in 0..blocks {
        block(i, &mut buf);
        w.write_all(&buf).unwrap();
    }
}

/// Reads blocks `from..to` of the stream and checks every byte.
fn check_stream(mut r: impl std::io::Read, from: u64, to: u64) -> bool {
    let (mut got, mut want) = (vec![0u8; BLOCK], vec![0u8; BLOCK]);
    for i in from..to {
        if r.read_exact(&mut got).is_err() {
            return false;
        }
        block(i, &mut want);
        if got != want {
            return false;
        }
    }
    true
}

/// A backend on 127.0.0.1 for one connection: it reads the `hello_len` bytes of the relayed
/// ClientHello, then hands the connection to `serve` (on its own thread). Returns its port.
fn one_connection_backend(
    hello_len: usize,
    serve: impl FnOnce(std::net::TcpStream) + Send + 'static,
) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut hello = vec![0u8; hello_len];
        std::io::Read::read_exact(&mut s, &mut hello).unwrap();
        serve(s);
    });
    port
}

/// A backend that reads the hello, then streams `blocks` blocks back while checking `blocks`
/// blocks from the client; reports the check on `tx`.
fn bulk_backend(hello_len: usize, blocks: u64, tx: std::sync::mpsc::Sender<bool>) -> u16 {
    one_connection_backend(hello_len, move |s| {
        let w = s.try_clone().unwrap();
        let writer = std::thread::spawn(move || send_stream(w, blocks));
        let ok = check_stream(&s, 0, blocks);
        writer.join().unwrap();
        let _ = tx.send(ok);
    })
}

fn passthrough_config(gw_port: u16, backend_port: u16) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: nodegate}}
spec: {{controllerName: nodegate.io/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: default}}
spec:
  gatewayClassName: nodegate
  listeners: [{{name: tls, protocol: TLS, port: {gw_port}, tls: {{mode: Passthrough}}}}]
{}
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TLSRoute
metadata: {{name: bulk, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: [bulk.example.com]
  rules: [{{backendRefs: [{{name: bulk, port: 443}}]}}]
",
        service("bulk", backend_port)
    )
}

/// An agent serving TLS passthrough ([`passthrough_config`], or the test's own config), relaying
/// in one mode. Fields drop in order: the agent stops before its bpffs and config go.
struct PassthroughAgent {
    agent: Agent,
    _bpffs: TempBpffs,
    config: ConfigDir,
    /// The TLS passthrough listener's port on 127.0.0.1.
    port: u16,
}

impl PassthroughAgent {
    /// An agent serving `yaml`, whose TLS listener is on `port`, relaying in `mode`.
    fn start(tag: &str, mode: &str, port: u16, yaml: &str) -> Self {
        let config = ConfigDir::new(&format!("{tag}-{mode}"), &[("all.yaml", yaml)]).unwrap();
        let bpffs = TempBpffs::mount(tag).unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let agent = Agent::start_local_with(
            &bpffs,
            config.path(),
            admin,
            &["--passthrough-splice", mode],
        )
        .expect("agent starts");
        PassthroughAgent {
            agent,
            _bpffs: bpffs,
            config,
            port,
        }
    }
}

/// An agent serving [`passthrough_config`] towards `backend_port` on a fresh listener port.
fn passthrough_agent(tag: &str, mode: &str, backend_port: u16) -> PassthroughAgent {
    let port = free_port();
    PassthroughAgent::start(tag, mode, port, &passthrough_config(port, backend_port))
}

/// How the bulk client talks.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Client {
    /// As TLS does: after its ClientHello the client waits for the server's first flight.
    TakesTurns,
    /// The client streams right behind its ClientHello (early data).
    EarlyData,
}

/// `blocks` blocks each way through one passthrough connection arrive intact; then 1,000
/// concurrent connections open and close and leave no map entry or fd behind.
fn bulk_and_churn(mode: &str, talk: Client, blocks: u64) {
    testbed::require_root("the TLS passthrough end-to-end test").unwrap();
    let hello = testbed::tls_client_hello("bulk.example.com");
    let (tx, rx) = std::sync::mpsc::channel();
    let backend_port = bulk_backend(hello.len(), blocks, tx);
    let gw = passthrough_agent("bulk", mode, backend_port);

    let mut s = std::net::TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    s.write_all(&hello).unwrap();
    let first = if talk == Client::TakesTurns {
        assert!(
            check_stream(&s, 0, 1),
            "the server's first bytes arrive ({mode})"
        );
        1
    } else {
        0
    };
    let w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || send_stream(w, blocks));
    assert!(
        check_stream(&s, first, blocks),
        "{blocks} blocks from the backend arrived intact ({mode}, {talk:?})"
    );
    writer.join().unwrap();
    assert!(
        rx.recv().unwrap(),
        "{blocks} blocks from the client arrived intact ({mode}, {talk:?})"
    );
    drop(s);
    let total = 2 * blocks * BLOCK as u64;
    // Relayed bytes are counted when the connection ends: wait for both sides to have closed.
    let counted = |m: &str, name: &str| {
        testbed::metric_value(m, name, &[("route", "default/bulk")]).unwrap_or(0.0) as u64
    };
    let (metrics, user, spliced) = testbed::wait_for(
        Duration::from_secs(10),
        "the connection's bytes counted",
        || {
            let m = gw.agent.metrics().ok()?;
            let user = counted(&m, "nodegate_passthrough_bytes_total");
            let spliced = counted(&m, "nodegate_passthrough_spliced_bytes_total");
            (user + spliced >= total).then_some((m, user, spliced))
        },
    )
    .unwrap_or_else(|e| panic!("{e}:\n{}", gw.agent.metrics().unwrap_or_default()));
    match (mode, talk) {
        // The hello, early data and every later byte move in the kernel, whether the client
        // waited for the server or streamed right behind its hello.
        ("sockmap", _) => {
            assert!(
                splice_bytes(&gw.agent) >= total,
                "both directions were spliced in the kernel ({talk:?})"
            );
            assert!(
                spliced >= total,
                "/metrics reports the spliced bytes per route:\n{metrics}"
            );
            assert_eq!(user, 0, "no byte crossed userspace:\n{metrics}");
        }
        _ => assert!(
            user >= total && spliced == 0,
            "relayed in userspace and counted:\n{metrics}"
        ),
    }

    // Churn: 1,000 concurrent connections to a backend that accepts and closes.
    let churn = TcpListener::bind("127.0.0.1:0").unwrap();
    let churn_port = churn.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in churn.incoming().flatten() {
            drop(c);
        }
    });
    std::fs::write(
        gw.config.path().join("all.yaml"),
        passthrough_config(gw.port, churn_port),
    )
    .unwrap();
    let fds = |pid: u32| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let pid = gw.agent.pid().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let baseline = fds(pid);
    let conns: Vec<_> = (0..1000)
        .map(|_| {
            let mut c = std::net::TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
            c.write_all(&hello).unwrap();
            c
        })
        .collect();
    for mut c in conns {
        let mut buf = [0u8; 16];
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = std::io::Read::read(&mut c, &mut buf); // EOF once the backend closed
    }
    testbed::wait_for(Duration::from_secs(10), "fds back to the baseline", || {
        (fds(pid) <= baseline + 2).then_some(())
    })
    .expect("no fd leaked");
    if mode == "sockmap" {
        testbed::wait_for(Duration::from_secs(10), "SPLICE_PEERS empty", || {
            support::pinned_map_entries(&gw.agent.bpffs, "SPLICE_PEERS")
                .ok()?
                .is_empty()
                .then_some(())
        })
        .expect("no map entry leaked");
    }
}

/// 1 GiB each way with the default splice: every byte after the ClientHello moves in the kernel.
#[test]
fn bulk_and_churn_sockmap() {
    bulk_and_churn("sockmap", Client::TakesTurns, GIB_BLOCKS);
}

/// A client streaming right behind its hello under the splice mode: the bytes queued behind the
/// hello when the pair is spliced go through the kernel too, in order.
#[test]
fn early_data_is_kept_in_order_sockmap() {
    bulk_and_churn("sockmap", Client::EarlyData, GIB_BLOCKS / 8);
}

/// 1 GiB each way through the userspace relay, the client streaming right away.
#[test]
fn bulk_and_churn_userspace() {
    bulk_and_churn("userspace", Client::EarlyData, GIB_BLOCKS);
}

/// A backend that reads the hello, says `hi`, reads the client's stream to EOF (checking every
/// block), answers with the number of bytes it got and closes.
fn half_close_backend(hello_len: usize) -> u16 {
    one_connection_backend(hello_len, |mut s| {
        use std::io::Read as _;
        s.write_all(b"hi").unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        let blocks = (got.len() / BLOCK) as u64;
        let intact = got.len() % BLOCK == 0 && check_stream(&got[..], 0, blocks);
        s.write_all(format!("{} {intact}", got.len()).as_bytes())
            .unwrap();
    })
}

/// The client's FIN reaches the backend only after every byte before it, and the backend's
/// answer and FIN come back through the half-closed connection.
fn half_close_is_passed_on(mode: &str) {
    testbed::require_root("the TLS passthrough end-to-end test").unwrap();
    let hello = testbed::tls_client_hello("bulk.example.com");
    let backend_port = half_close_backend(hello.len());
    let gw = passthrough_agent("halfclose", mode, backend_port);
    let mut s = std::net::TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(&hello).unwrap();
    let mut hi = [0u8; 2];
    std::io::Read::read_exact(&mut s, &mut hi).unwrap();
    assert_eq!(&hi, b"hi");
    const BLOCKS: u64 = 128; // 8 MiB
    send_stream(&s, BLOCKS);
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut s, &mut answer).unwrap();
    assert_eq!(
        answer,
        format!("{} true", BLOCKS * BLOCK as u64),
        "every byte before the FIN reached the backend intact, and its answer came back ({mode})"
    );
}

#[test]
fn half_close_is_passed_on_sockmap() {
    half_close_is_passed_on("sockmap");
}

#[test]
fn half_close_is_passed_on_userspace() {
    half_close_is_passed_on("userspace");
}

/// A backend that reads the hello, says `hi` and then resets the connection (SO_LINGER 0).
fn resetting_backend(hello_len: usize) -> u16 {
    one_connection_backend(hello_len, |mut s| {
        s.write_all(b"hi").unwrap();
        std::thread::sleep(Duration::from_millis(200));
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(s);
    })
}

/// A backend's reset reaches the client as a reset, not as an orderly close.
fn reset_is_passed_on(mode: &str) {
    testbed::require_root("the TLS passthrough end-to-end test").unwrap();
    let hello = testbed::tls_client_hello("bulk.example.com");
    let backend_port = resetting_backend(hello.len());
    let gw = passthrough_agent("reset", mode, backend_port);
    let mut s = std::net::TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&hello).unwrap();
    let mut hi = [0u8; 2];
    std::io::Read::read_exact(&mut s, &mut hi).unwrap();
    assert_eq!(&hi, b"hi");
    let mut rest = Vec::new();
    let err = std::io::Read::read_to_end(&mut s, &mut rest)
        .expect_err("the connection ends with an error, not EOF");
    assert_eq!(
        err.kind(),
        std::io::ErrorKind::ConnectionReset,
        "the backend's reset reached the client ({mode})"
    );
}

#[test]
fn reset_is_passed_on_sockmap() {
    reset_is_passed_on("sockmap");
}

#[test]
fn reset_is_passed_on_userspace() {
    reset_is_passed_on("userspace");
}
