//! The compiled model: what the data planes serve, per bound listener socket. Immutable once
//! built; shared as `Arc<Model>`; serialisable for `/debug/model`.

use std::net::SocketAddr;

use serde::Serialize;

use crate::http::HttpRule;

/// Everything the data planes serve.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Model {
    /// TCP and UDP listeners, served in the kernel.
    pub l4: Vec<L4Listener>,
    /// HTTP and HTTPS listeners, served by the proxy (one entry per bound socket).
    pub http: Vec<HttpListener>,
    /// TLS passthrough listeners, steered by SNI.
    pub passthrough: Vec<PassthroughListener>,
}

/// Transport of an L4 listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum L4Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// One endpoint with its share of traffic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WeightedEndpoint {
    /// Where to send.
    pub address: SocketAddr,
    /// Relative weight (> 0): the backendRef's weight spread over its endpoints.
    pub weight: u32,
    /// `namespace/service:port` it came from, for metrics.
    pub backend: String,
}

/// A TCP or UDP listener socket and the backends of the route it serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct L4Listener {
    /// `namespace/gateway/listener`.
    pub name: String,
    /// Bound address and port.
    pub address: SocketAddr,
    /// TCP or UDP.
    pub protocol: L4Protocol,
    /// `namespace/name` of the attached route, if any.
    pub route: Option<String>,
    /// The endpoints with weights; empty when no route is attached or no backend is usable.
    pub backends: Vec<WeightedEndpoint>,
}

/// A certificate and key for TLS termination, from a `kubernetes.io/tls` Secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Certificate {
    /// `namespace/name` of the Secret.
    pub secret: String,
    /// The listener hostname it serves (None: any SNI).
    pub hostname: Option<String>,
    /// PEM certificate chain.
    #[serde(skip)]
    pub cert_pem: Vec<u8>,
    /// PEM private key.
    #[serde(skip)]
    pub key_pem: Vec<u8>,
}

/// An HTTP or HTTPS listener socket (possibly shared by several Gateway listeners that differ in
/// hostname) and its route table.
#[derive(Debug, Clone, Serialize)]
pub struct HttpListener {
    /// `namespace/gateway/listener` names sharing the socket.
    pub names: Vec<String>,
    /// Bound address and port.
    pub address: SocketAddr,
    /// Certificates when TLS is terminated here (HTTPS), chosen by SNI.
    pub tls: Option<Vec<Certificate>>,
    /// Virtual hosts in match order: exact hostnames, then wildcards longest first, then "any".
    /// Shared (`Arc`) so cloning a model, or recompiling after one route changed, copies
    /// pointers rather than rules.
    pub hosts: Vec<std::sync::Arc<VirtualHost>>,
    /// Exact hostname → index in `hosts`, so a request finds its host in O(1) however many
    /// routes there are; wildcard and catch-all hosts are scanned after it.
    #[serde(skip)]
    pub exact_hosts: std::sync::Arc<std::collections::HashMap<String, usize>>,
}

/// The rules that serve one hostname pattern.
#[derive(Debug, Clone, Serialize)]
pub struct VirtualHost {
    /// `example.com`, `*.example.com`, or None for any host.
    pub hostname: Option<String>,
    /// Rules in the spec's precedence order; the first that matches serves the request.
    pub rules: Vec<HttpRule>,
}

/// A TLS passthrough listener socket and its SNI table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PassthroughListener {
    /// `namespace/gateway/listener`.
    pub names: Vec<String>,
    /// Bound address and port.
    pub address: SocketAddr,
    /// SNI patterns in match order (exact, then wildcards longest first, then any).
    pub routes: Vec<SniRoute>,
}

/// Where connections for one SNI pattern go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SniRoute {
    /// Exact or `*.` wildcard hostname; None matches any SNI.
    pub hostname: Option<String>,
    /// `namespace/name` of the TLSRoute.
    pub route: String,
    /// Endpoints with weights; empty means refuse.
    pub backends: Vec<WeightedEndpoint>,
}

impl Model {
    /// The HTTP/HTTPS listener bound to `socket` (the address the data plane bound, e.g.
    /// `0.0.0.0:80`, not the connection's local address).
    pub fn http_listener(&self, socket: SocketAddr) -> Option<&HttpListener> {
        self.http.iter().find(|l| l.address == socket)
    }

    /// The rule serving one HTTP request on the listener bound to `socket`: the same matching
    /// the proxy runs, so tests and the data plane share one implementation. `headers` returns
    /// every value of a header name (lower case); `query` is the raw query string.
    pub fn route_http<'a>(
        &'a self,
        socket: SocketAddr,
        host: &str,
        method: &str,
        path: &str,
        headers: &dyn Fn(&str) -> Vec<String>,
        query: &str,
    ) -> Option<&'a HttpRule> {
        self.http_listener(socket)?
            .route(&crate::http::RequestView {
                host,
                method,
                path,
                query,
                headers,
            })
    }

    /// The rule serving one gRPC call (`/{service}/{method}` over HTTP/2 POST).
    pub fn route_grpc<'a>(
        &'a self,
        socket: SocketAddr,
        host: &str,
        service: &str,
        method: &str,
        headers: &dyn Fn(&str) -> Vec<String>,
    ) -> Option<&'a HttpRule> {
        let path = format!("/{service}/{method}");
        self.route_http(socket, host, "POST", &path, headers, "")
    }

    /// The TCP or UDP listener bound to `socket`.
    pub fn l4_listener(&self, socket: SocketAddr, protocol: L4Protocol) -> Option<&L4Listener> {
        self.l4
            .iter()
            .find(|l| l.address == socket && l.protocol == protocol)
    }

    /// Where a TLS connection with this SNI goes on the passthrough listener bound to `socket`.
    pub fn route_sni(&self, socket: SocketAddr, sni: &str) -> Option<&SniRoute> {
        self.passthrough
            .iter()
            .find(|l| l.address == socket)?
            .route_for(sni)
    }
}

impl PassthroughListener {
    /// The route for a ClientHello's SNI (exact before wildcard, longest wildcard first).
    pub fn route_for(&self, sni: &str) -> Option<&SniRoute> {
        self.routes.iter().find(|r| match &r.hostname {
            None => true,
            Some(h) => crate::hostname::matches(h, sni),
        })
    }
}

impl HttpListener {
    /// The virtual host serving `host` (the Host header or :authority, port stripped).
    pub fn host_for(&self, host: &str) -> Option<&VirtualHost> {
        let host = strip_port(host).to_ascii_lowercase();
        let host = host.strip_suffix('.').unwrap_or(&host);
        if let Some(&i) = self.exact_hosts.get(host) {
            return self.hosts.get(i).map(|h| &**h);
        }
        let first_pattern = self.exact_hosts.len();
        self.hosts[first_pattern.min(self.hosts.len())..]
            .iter()
            .find(|v| match &v.hostname {
                None => true,
                Some(h) => crate::hostname::matches(h, host),
            })
            .map(|h| &**h)
    }

    /// The first rule that matches the request, in the spec's precedence order.
    pub fn route(&self, req: &crate::http::RequestView<'_>) -> Option<&HttpRule> {
        self.host_for(req.host)?
            .rules
            .iter()
            .find(|r| r.matcher.matches(req))
    }
}

/// `host:port` → `host`; `[v6]:port` → `v6`.
fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    }
}
