//! End to end, as root: the real agent serves HTTPRoutes on loopback in front of real HTTP echo
//! backends, with real sockets on both sides: matching and precedence, filters, weights, the
//! spec's error statuses, and a reload that changes routes without dropping the listener.

mod support;

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use support::{Agent, ConfigDir};
use testbed::TempBpffs;

/// A free loopback port (bound, then released).
/// A port on 127.0.0.1 that refuses connections for as long as the returned socket lives: bound
/// but not listening. A port merely found free could be taken meanwhile by a backend of a test
/// running in parallel, which would then answer for the "dead" endpoint.
fn refusing_port() -> (socket2::Socket, u16) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let port = socket.local_addr().unwrap().as_socket().unwrap().port();
    (socket, port)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An HTTP/1.1 echo backend on 127.0.0.1: answers with what it received, as JSON. `delay`
/// makes it slow (for timeouts).
fn echo_backend(name: &'static str, delay: Duration) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
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
                            tokio::time::sleep(delay).await;
                            let headers: serde_json::Map<String, serde_json::Value> = req
                                .headers()
                                .iter()
                                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").into()))
                                .collect();
                            let body = serde_json::json!({
                                "backend": name,
                                "method": req.method().as_str(),
                                "path": req.uri().path_and_query().map(|p| p.to_string()),
                                "headers": headers,
                            });
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                http_body_util::Full::new(bytes::Bytes::from(body.to_string())),
                            ))
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
    });
    port
}

/// A raw HTTP/1.1 request; returns (status, headers lower-cased, body).
fn request(
    port: u16,
    method: &str,
    host: &str,
    path: &str,
    extra: &[(&str, &str)],
) -> (u16, Vec<(String, String)>, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

fn service(name: &str, ports: &[u16]) -> String {
    let eps: String = ports
        .iter()
        .map(|p| format!("---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-{p}, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nports: [{{name: http, port: {p}}}]\nendpoints: [{{addresses: [127.0.0.1], conditions: {{ready: true}}}}]\n"))
        .collect();
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec: {{ports: [{{name: http, port: 80}}]}}\n{eps}"
    )
}

fn config(http_port: u16, a: u16, b: u16, slow: u16, dead: u16) -> String {
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
  listeners: [{{name: http, protocol: HTTP, port: {http_port}}}]
{}{}{}{}
---
apiVersion: v1
kind: Service
metadata: {{name: empty, namespace: default}}
spec: {{ports: [{{name: http, port: 80}}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: [web.example.com]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /}}}}]
    backendRefs: [{{name: a, port: 80}}]
  - matches: [{{path: {{type: Exact, value: /exact}}}}, {{headers: [{{name: x-canary, value: 'yes'}}]}}]
    backendRefs: [{{name: b, port: 80}}]
  - matches: [{{path: {{type: PathPrefix, value: /old}}}}]
    filters:
    - {{type: RequestRedirect, requestRedirect: {{scheme: https, path: {{type: ReplacePrefixMatch, replacePrefixMatch: /new}}, statusCode: 301}}}}
  - matches: [{{path: {{type: PathPrefix, value: /api}}}}]
    filters:
    - {{type: URLRewrite, urlRewrite: {{hostname: internal.example.com, path: {{type: ReplacePrefixMatch, replacePrefixMatch: /v2}}}}}}
    - {{type: RequestHeaderModifier, requestHeaderModifier: {{set: [{{name: x-added, value: by-gateway}}], remove: [x-secret]}}}}
    - {{type: ResponseHeaderModifier, responseHeaderModifier: {{add: [{{name: x-served-by, value: nodegate}}]}}}}
    backendRefs: [{{name: a, port: 80}}]
  - matches: [{{path: {{type: PathPrefix, value: /split}}}}]
    backendRefs: [{{name: a, port: 80, weight: 3}}, {{name: b, port: 80, weight: 1}}]
  - matches: [{{path: {{type: PathPrefix, value: /zero}}}}]
    backendRefs: [{{name: a, port: 80, weight: 0}}]
  - matches: [{{path: {{type: PathPrefix, value: /missing}}}}]
    backendRefs: [{{name: nonexistent, port: 80}}]
  - matches: [{{path: {{type: PathPrefix, value: /empty}}}}]
    backendRefs: [{{name: empty, port: 80}}]
  - matches: [{{path: {{type: PathPrefix, value: /dead}}}}]
    backendRefs: [{{name: dead, port: 80}}]
  - matches: [{{path: {{type: PathPrefix, value: /slow}}}}]
    timeouts: {{backendRequest: 300ms}}
    backendRefs: [{{name: slow, port: 80}}]
",
        service("a", &[a]),
        service("b", &[b]),
        service("slow", &[slow]),
        service("dead", &[dead]),
    )
}

#[test]
fn http_routes_filters_weights_and_errors() {
    testbed::require_root("the L7 end-to-end test (the agent loads its BPF object)").unwrap();
    let (a, b) = (
        echo_backend("a", Duration::ZERO),
        echo_backend("b", Duration::ZERO),
    );
    let slow = echo_backend("slow", Duration::from_secs(2));
    let (_dead_socket, dead) = refusing_port();
    let http_port = free_port();
    let bpffs = TempBpffs::mount("l7").unwrap();
    let dir = ConfigDir::new("l7", &[("all.yaml", &config(http_port, a, b, slow, dead))]).unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let agent = Agent::start_local(&bpffs, dir.path(), admin).expect("agent starts");
    let host = "web.example.com";

    // Matching: prefix, exact over prefix, header match, and no route for another host.
    let (st, _, body) = request(http_port, "GET", host, "/anything?q=1", &[]);
    assert_eq!(
        (st, json(&body)["backend"].as_str().unwrap()),
        (200, "a"),
        "{body}"
    );
    assert_eq!(json(&body)["path"], "/anything?q=1");
    let (_, _, body) = request(http_port, "GET", host, "/exact", &[]);
    assert_eq!(json(&body)["backend"], "b", "exact path over prefix");
    let (_, _, body) = request(http_port, "GET", host, "/other", &[("X-Canary", "yes")]);
    assert_eq!(
        json(&body)["backend"],
        "b",
        "header match over a bare prefix"
    );
    let (st, _, _) = request(http_port, "GET", "other.example.org", "/", &[]);
    assert_eq!(st, 404, "no route for this host");

    // Forwarding headers set as users expect.
    let (_, _, body) = request(
        http_port,
        "GET",
        host,
        "/fwd",
        &[("X-Forwarded-For", "192.0.2.1")],
    );
    let headers = &json(&body)["headers"];
    assert_eq!(headers["x-forwarded-for"], "192.0.2.1, 127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(headers["host"], host, "Host is kept");

    // RequestRedirect.
    let (st, h, _) = request(http_port, "GET", host, "/old/page?x=1", &[]);
    assert_eq!(st, 301);
    assert_eq!(
        header(&h, "location"),
        Some("https://web.example.com/new/page?x=1")
    );

    // URLRewrite and header modifiers.
    let (st, h, body) = request(http_port, "GET", host, "/api/users", &[("X-Secret", "s")]);
    assert_eq!(st, 200);
    let v = json(&body);
    assert_eq!(v["path"], "/v2/users");
    assert_eq!(v["headers"]["host"], "internal.example.com");
    assert_eq!(v["headers"]["x-added"], "by-gateway");
    assert!(v["headers"].get("x-secret").is_none(), "removed header");
    assert_eq!(header(&h, "x-served-by"), Some("nodegate"));

    // Weights 3:1 over 200 requests.
    let mut to_a = 0;
    for _ in 0..200 {
        let (_, _, body) = request(http_port, "GET", host, "/split", &[]);
        if json(&body)["backend"] == "a" {
            to_a += 1;
        }
    }
    assert!(
        (120..=180).contains(&to_a),
        "3:1 split, got {to_a}/200 to a"
    );

    // The spec's error statuses.
    for (path, want, why) in [
        ("/zero", 500, "all backendRefs weighted 0"),
        ("/missing", 500, "backendRef to a missing Service"),
        ("/empty", 503, "a Service with no ready endpoint"),
        ("/dead", 502, "an endpoint that refuses connections"),
        ("/slow", 504, "timeouts.backendRequest exceeded"),
    ] {
        let (st, _, body) = request(http_port, "GET", host, path, &[]);
        assert_eq!(st, want, "{why}: {body}");
    }

    // gRPC clients get grpc-status instead of an HTTP error.
    let (st, h, _) = request(
        http_port,
        "POST",
        host,
        "/empty",
        &[("Content-Type", "application/grpc")],
    );
    assert_eq!(
        (st, header(&h, "grpc-status")),
        (200, Some("14")),
        "UNAVAILABLE as a trailers-only response"
    );

    // Per-route and per-backend counts, latency histograms, and the access log.
    let m = agent.metrics().unwrap();
    let served = testbed::metric_value(
        &m,
        "nodegate_http_requests_total",
        &[
            ("route", "HTTPRoute default/web"),
            ("backend", "default/a:80"),
            ("code", "200"),
        ],
    )
    .unwrap_or(0.0);
    assert!(
        served >= 5.0,
        "requests to backend a counted: {served}\n{m}"
    );
    let not_found = testbed::metric_value(
        &m,
        "nodegate_http_requests_total",
        &[("route", "none"), ("code", "404")],
    );
    assert_eq!(not_found, Some(1.0), "the unrouted request counted once");
    assert!(
        m.contains("nodegate_http_request_duration_seconds_bucket{"),
        "latency histogram exported"
    );
    assert!(
        agent.log().contains("path=\"/exact\""),
        "access log line per request"
    );

    // Reload: a new route appears on the same listener without a restart.
    let extra = "---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: added, namespace: default}
spec:
  parentRefs: [{name: gw}]
  hostnames: [added.example.com]
  rules: [{backendRefs: [{name: b, port: 80}]}]
";
    std::fs::write(dir.path().join("added.yaml"), extra).unwrap();
    testbed::wait_for(Duration::from_secs(10), "the added route", || {
        let (st, _, body) = request(http_port, "GET", "added.example.com", "/", &[]);
        (st == 200 && json(&body)["backend"] == "b").then_some(())
    })
    .expect("reloaded route served");
    drop(agent);
}

/// A self-signed certificate for `name`: (cert PEM path, key PEM path).
fn certificate(dir: &std::path::Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    testbed::self_signed_certificate(dir, name).expect("certificate")
}

/// A kubernetes.io/tls Secret holding the PEM files.
fn tls_secret(name: &str, cert: &std::path::Path, key: &std::path::Path) -> String {
    let indent = |p: &std::path::Path| {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    };
    format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: default}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
        indent(cert),
        indent(key)
    )
}

/// `openssl s_client` through the gateway: verifies the certificate for `sni` against `ca`,
/// offers `alpn`, sends an HTTP/1.1 GET; returns everything it printed.
fn tls_client(port: u16, sni: &str, ca: &std::path::Path, alpn: &str) -> String {
    let mut child = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-servername",
            sni,
            "-verify_hostname",
            sni,
        ])
        .arg("-CAfile")
        .arg(ca)
        .args(["-verify_return_error", "-alpn", alpn])
        // For HTTP/1.1 keep reading after our request until the server closes; for h2 only the
        // handshake (ALPN) is looked at, and s_client quits at the end of its input.
        .args(if alpn == "http/1.1" {
            &["-ign_eof"][..]
        } else {
            &[][..]
        })
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    if alpn == "http/1.1" {
        let _ = stdin.write_all(
            format!("GET /tls HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n").as_bytes(),
        );
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn https_terminates_tls_with_the_certificate_chosen_by_sni() {
    testbed::require_root("the HTTPS end-to-end test (the agent loads its BPF object)").unwrap();
    let a = echo_backend("a", Duration::ZERO);
    let certs = ConfigDir::new("https-certs", &[]).unwrap();
    let (a_crt, a_key) = certificate(certs.path(), "a.example.com");
    let (b_crt, b_key) = certificate(certs.path(), "b.example.com");
    let (https_port, http_port) = (free_port(), free_port());
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
  listeners:
  - {{name: a, protocol: HTTPS, port: {https_port}, hostname: a.example.com, tls: {{certificateRefs: [{{name: a-cert}}]}}}}
  - {{name: b, protocol: HTTPS, port: {https_port}, hostname: b.example.com, tls: {{certificateRefs: [{{name: b-cert}}]}}}}
  - {{name: plain, protocol: HTTP, port: {http_port}}}
{}{}{}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: secure, namespace: default}}
spec:
  parentRefs: [{{name: gw, sectionName: a}}, {{name: gw, sectionName: b}}]
  rules: [{{backendRefs: [{{name: a, port: 80}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: upgrade, namespace: default}}
spec:
  parentRefs: [{{name: gw, sectionName: plain}}]
  rules:
  - filters: [{{type: RequestRedirect, requestRedirect: {{scheme: https, port: {https_port}, statusCode: 301}}}}]
",
        service("a", &[a]),
        tls_secret("a-cert", &a_crt, &a_key),
        tls_secret("b-cert", &b_crt, &b_key),
    );
    let dir = ConfigDir::new("https", &[("all.yaml", &yaml)]).unwrap();
    let bpffs = TempBpffs::mount("https").unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let _agent = Agent::start_local(&bpffs, dir.path(), admin).expect("agent starts");

    for (sni, ca) in [("a.example.com", &a_crt), ("b.example.com", &b_crt)] {
        let out = tls_client(https_port, sni, ca, "http/1.1");
        assert!(
            out.contains("Verify return code: 0 (ok)"),
            "{sni}: its own certificate verifies:\n{out}"
        );
        assert!(
            out.contains("HTTP/1.1 200"),
            "{sni}: request served over TLS:\n{out}"
        );
        assert!(
            out.contains("\"x-forwarded-proto\":\"https\""),
            "{sni}: X-Forwarded-Proto https:\n{out}"
        );
    }
    // The wrong certificate does not verify for the other name.
    let out = tls_client(https_port, "b.example.com", &a_crt, "http/1.1");
    assert!(
        !out.contains("Verify return code: 0 (ok)"),
        "b is not served a's certificate:\n{out}"
    );
    // HTTP/2 is negotiated by ALPN.
    let out = tls_client(https_port, "a.example.com", &a_crt, "h2");
    assert!(out.contains("ALPN protocol: h2"), "h2 via ALPN:\n{out}");
    // HTTP → HTTPS redirect.
    let (st, h, _) = request(http_port, "GET", "a.example.com", "/login?next=/", &[]);
    assert_eq!(st, 301);
    assert_eq!(
        header(&h, "location"),
        Some(format!("https://a.example.com:{https_port}/login?next=/").as_str())
    );
}

/// SIGTERM stops accepting but lets the request in flight finish.
#[test]
fn sigterm_drains_requests_in_flight() {
    testbed::require_root("the L7 end-to-end test (the agent loads its BPF object)").unwrap();
    let slow = echo_backend("slow", Duration::from_millis(1500));
    let http_port = free_port();
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
  listeners: [{{name: http, protocol: HTTP, port: {http_port}}}]
{}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: slow, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules: [{{backendRefs: [{{name: slow, port: 80}}]}}]
",
        service("slow", &[slow])
    );
    let dir = ConfigDir::new("drain", &[("all.yaml", &yaml)]).unwrap();
    let bpffs = TempBpffs::mount("drain").unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut agent = Agent::start_local(&bpffs, dir.path(), admin).expect("agent starts");
    let in_flight = std::thread::spawn(move || request(http_port, "GET", "x", "/in-flight", &[]));
    std::thread::sleep(Duration::from_millis(400));
    agent.stop_async_term().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        TcpStream::connect(("127.0.0.1", http_port)).is_err(),
        "no new connection is accepted while draining"
    );
    let (status, _, body) = in_flight.join().unwrap();
    assert_eq!(status, 200, "the request in flight finished: {body}");
    assert_eq!(json(&body)["backend"], "slow");
    agent.wait_exit().expect("clean exit after the drain");
}

/// A backend answering `status_for(n)` to its n-th request (0-based) after `delay`, recording
/// every path it saw.
fn scripted_backend(
    delay: Duration,
    status_for: fn(usize) -> u16,
) -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let record = seen.clone();
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
                let record = record.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let record = record.clone();
                            async move {
                                let n = {
                                    let mut seen = record.lock().unwrap();
                                    seen.push(req.uri().path().to_string());
                                    seen.len() - 1
                                };
                                tokio::time::sleep(delay).await;
                                let mut resp = hyper::Response::new(http_body_util::Full::new(
                                    bytes::Bytes::from("scripted"),
                                ));
                                *resp.status_mut() =
                                    hyper::StatusCode::from_u16(status_for(n)).unwrap();
                                Ok::<_, std::convert::Infallible>(resp)
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
    });
    (port, seen)
}

#[test]
fn mirror_cors_and_retries() {
    testbed::require_root("the L7 end-to-end test (the agent loads its BPF object)").unwrap();
    let primary = echo_backend("primary", Duration::ZERO);
    // The mirror is slow: the client must not wait for it.
    let (mirror, mirrored) = scripted_backend(Duration::from_secs(2), |_| 200);
    // Every other request fails with 503.
    let (flaky, flaky_seen) =
        scripted_backend(Duration::ZERO, |n| if n % 2 == 0 { 503 } else { 200 });
    let http_port = free_port();
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
  listeners: [{{name: http, protocol: HTTP, port: {http_port}}}]
{}{}{}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /mirrored}}}}]
    filters: [{{type: RequestMirror, requestMirror: {{backendRef: {{name: mirror, port: 80}}}}}}]
    backendRefs: [{{name: primary, port: 80}}]
  - matches: [{{path: {{type: PathPrefix, value: /cors}}}}]
    filters:
    - type: CORS
      cors: {{allowOrigins: ['https://app.example.com'], allowMethods: [GET, PUT], allowHeaders: [x-token], exposeHeaders: [x-trace], maxAge: 600}}
    backendRefs: [{{name: primary, port: 80}}]
  - matches: [{{path: {{type: PathPrefix, value: /flaky}}}}]
    retry: {{codes: [503], attempts: 2}}
    backendRefs: [{{name: flaky, port: 80}}]
",
        service("primary", &[primary]),
        service("mirror", &[mirror]),
        service("flaky", &[flaky]),
    );
    let dir = ConfigDir::new("mirror", &[("all.yaml", &yaml)]).unwrap();
    let bpffs = TempBpffs::mount("mirror").unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let _agent = Agent::start_local(&bpffs, dir.path(), admin).expect("agent starts");

    // RequestMirror: the client's answer comes from the primary at once; the copy arrives too.
    let started = std::time::Instant::now();
    let (st, _, body) = request(http_port, "GET", "h", "/mirrored/x", &[]);
    assert_eq!(
        (st, json(&body)["backend"].as_str().unwrap()),
        (200, "primary")
    );
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "the slow mirror did not delay the client"
    );
    testbed::wait_for(Duration::from_secs(5), "the mirrored copy", || {
        mirrored
            .lock()
            .unwrap()
            .contains(&"/mirrored/x".to_string())
            .then_some(())
    })
    .expect("mirror received a copy");

    // CORS: preflight answered by the gateway, responses decorated for allowed origins only.
    let (st, h, _) = request(
        http_port,
        "OPTIONS",
        "h",
        "/cors",
        &[
            ("Origin", "https://app.example.com"),
            ("Access-Control-Request-Method", "PUT"),
        ],
    );
    assert_eq!(st, 204);
    assert_eq!(
        header(&h, "access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(header(&h, "access-control-allow-methods"), Some("GET, PUT"));
    assert_eq!(header(&h, "access-control-max-age"), Some("600"));
    let (st, h, _) = request(
        http_port,
        "GET",
        "h",
        "/cors",
        &[("Origin", "https://app.example.com")],
    );
    assert_eq!(st, 200);
    assert_eq!(header(&h, "access-control-expose-headers"), Some("x-trace"));
    let (_, h, _) = request(
        http_port,
        "GET",
        "h",
        "/cors",
        &[("Origin", "https://evil.example.net")],
    );
    assert_eq!(
        header(&h, "access-control-allow-origin"),
        None,
        "other origins get no CORS headers"
    );

    // Retries: every other backend answer is a 503; with retries on 503 every client request succeeds.
    for i in 0..6 {
        let (st, _, _) = request(http_port, "GET", "h", &format!("/flaky/{i}"), &[]);
        assert_eq!(st, 200, "request {i} retried past the 503");
    }
    assert!(
        flaky_seen.lock().unwrap().len() >= 9,
        "the backend saw the retries"
    );
}

/// Raw bytes in, raw bytes out (for malformed requests).
fn raw(port: u16, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).to_string()
}

#[test]
fn smuggled_requests_are_not_served_and_reloads_under_load_drop_nothing() {
    testbed::require_root("the L7 end-to-end test (the agent loads its BPF object)").unwrap();
    let (a, b) = (
        echo_backend("a", Duration::ZERO),
        echo_backend("b", Duration::ZERO),
    );
    let http_port = free_port();
    let config = |backend: &str| {
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
  listeners: [{{name: http, protocol: HTTP, port: {http_port}}}]
{}{}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules: [{{backendRefs: [{{name: {backend}, port: 80}}]}}]
",
            service("a", &[a]),
            service("b", &[b])
        )
    };
    let dir = ConfigDir::new("smuggle", &[("all.yaml", &config("a"))]).unwrap();
    let bpffs = TempBpffs::mount("smuggle").unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let agent = Agent::start_local(&bpffs, dir.path(), admin).expect("agent starts");

    // CL + TE: handled as RFC 9112 section 6.3 allows (Transfer-Encoding wins, then the
    // connection is closed), so the request smuggled behind it is never served.
    let out = raw(
        http_port,
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
    );
    assert!(
        out.contains("connection: close"),
        "the connection is closed after it: {out}"
    );
    assert!(
        !out.contains("/smuggled"),
        "the smuggled request was not served: {out}"
    );
    assert_eq!(
        out.matches("HTTP/1.1 ").count(),
        1,
        "one response only: {out}"
    );
    // Conflicting Content-Length values: 400 too.
    let out = raw(
        http_port,
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    );
    assert!(
        out.starts_with("HTTP/1.1 400"),
        "duplicate Content-Length refused: {out}"
    );

    // Continuous load while the route flips between backends: no request fails.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loaders: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut ok, mut failed) = (0, 0);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let (st, _, _) = request(http_port, "GET", "h", "/load", &[]);
                    if st == 200 { ok += 1 } else { failed += 1 }
                }
                (ok, failed)
            })
        })
        .collect();
    for round in 0..6 {
        std::fs::write(
            dir.path().join("all.yaml"),
            config(if round % 2 == 0 { "b" } else { "a" }),
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(400));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failed) = (0, 0);
    for l in loaders {
        let (o, f) = l.join().unwrap();
        ok += o;
        failed += f;
    }
    assert!(ok > 100, "load ran ({ok} requests)");
    assert_eq!(
        failed, 0,
        "no request failed across six reloads ({ok} succeeded)"
    );
    let (_, body) = agent.get("/debug/status").unwrap();
    assert!(body.contains("\"generation\""), "{body}");
}

/// A backend that switches protocols to a byte echo on `Upgrade: echo`.
fn upgrade_backend() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
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
                        |mut req: hyper::Request<hyper::body::Incoming>| async move {
                            let on_upgrade = hyper::upgrade::on(&mut req);
                            tokio::spawn(async move {
                                if let Ok(up) = on_upgrade.await {
                                    let mut io = hyper_util::rt::TokioIo::new(up);
                                    let (mut r, mut w) = tokio::io::split(&mut io);
                                    let _ = tokio::io::copy(&mut r, &mut w).await;
                                }
                            });
                            let mut resp =
                                hyper::Response::new(http_body_util::Empty::<bytes::Bytes>::new());
                            *resp.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
                            resp.headers_mut()
                                .insert("upgrade", "echo".parse().unwrap());
                            resp.headers_mut()
                                .insert("connection", "upgrade".parse().unwrap());
                            Ok::<_, std::convert::Infallible>(resp)
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
    });
    port
}

#[test]
fn upgrades_are_tunnelled() {
    testbed::require_root("the L7 end-to-end test (the agent loads its BPF object)").unwrap();
    let backend = upgrade_backend();
    let http_port = free_port();
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
  listeners: [{{name: http, protocol: HTTP, port: {http_port}}}]
{}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: ws, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules: [{{backendRefs: [{{name: ws, port: 80}}]}}]
",
        service("ws", &[backend])
    );
    let dir = ConfigDir::new("upgrade", &[("all.yaml", &yaml)]).unwrap();
    let bpffs = TempBpffs::mount("upgrade").unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let _agent = Agent::start_local(&bpffs, dir.path(), admin).expect("agent starts");

    let mut s = TcpStream::connect(("127.0.0.1", http_port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(
        head.starts_with("http/1.1 101"),
        "switching protocols: {head}"
    );
    assert!(head.contains("upgrade: echo"), "{head}");
    for msg in [&b"hello"[..], b"through the tunnel"] {
        s.write_all(msg).unwrap();
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back).unwrap();
        assert_eq!(back, msg, "bytes echoed through the upgraded connection");
    }
}

#[test]
fn grpc_routes_by_service_over_h2c_with_status_trailers() {
    testbed::require_root("the L7 end-to-end test (the agent loads its BPF object)").unwrap();
    let (echo, health) = (
        testbed::grpc::backend("echo"),
        testbed::grpc::backend("health"),
    );
    let http_port = free_port();
    let grpc_service = |name: &str, port: u16| {
        format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec: {{ports: [{{name: grpc, port: 50051, appProtocol: kubernetes.io/h2c}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-1, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nports: [{{name: grpc, port: {port}}}]\nendpoints: [{{addresses: [127.0.0.1]}}]\n"
        )
    };
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
  listeners: [{{name: grpc, protocol: HTTP, port: {http_port}}}]
{}{}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: grpc, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - matches: [{{method: {{service: echo.Echo}}}}]
    backendRefs: [{{name: echo, port: 50051}}]
  - matches: [{{method: {{service: grpc.health.v1.Health, method: Check}}}}]
    backendRefs: [{{name: health, port: 50051}}]
",
        grpc_service("echo", echo),
        grpc_service("health", health)
    );
    let dir = ConfigDir::new("grpc", &[("all.yaml", &yaml)]).unwrap();
    let bpffs = TempBpffs::mount("grpc").unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let _agent = Agent::start_local(&bpffs, dir.path(), admin).expect("agent starts");

    assert_eq!(
        testbed::grpc::call(http_port, "/echo.Echo/Say"),
        (Some("0".into()), "echo /echo.Echo/Say".into())
    );
    assert_eq!(
        testbed::grpc::call(http_port, "/grpc.health.v1.Health/Check"),
        (
            Some("0".into()),
            "health /grpc.health.v1.Health/Check".into()
        )
    );
    // No matching method: UNIMPLEMENTED as a grpc-status, not an HTTP 404 body.
    assert_eq!(
        testbed::grpc::call(http_port, "/grpc.health.v1.Health/Watch").0,
        Some("12".into())
    );
}
