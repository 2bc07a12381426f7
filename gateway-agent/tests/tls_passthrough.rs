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
    let file = name.replace('*', "wild");
    let (cert, key) = (
        dir.join(format!("{file}.crt")),
        dir.join(format!("{file}.key")),
    );
    let status = Command::new("openssl")
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
        .stderr(Stdio::null())
        .status()
        .expect("openssl");
    assert!(status.success());
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

#[test]
fn sni_steers_to_backends_that_terminate_tls_themselves() {
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
    let config = ConfigDir::new("tls", &[("all.yaml", &yaml)]).unwrap();
    let bpffs = TempBpffs::mount("tls").unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let _agent = Agent::start_local(&bpffs, config.path(), admin).expect("agent starts");

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
}
