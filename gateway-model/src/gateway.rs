//! Gateways of our class and their listeners: validation, conflicts, TLS certificates, and which
//! routes a listener allows.

use std::{collections::BTreeMap, net::IpAddr};

use gateway_api::apis::experimental::gateways::{
    Gateway, GatewayListeners, GatewayListenersAllowedRoutesNamespacesFrom,
    GatewayListenersAllowedRoutesNamespacesSelector, GatewayListenersTlsMode,
};
use k8s_openapi::ByteString;

use crate::{
    model::Certificate,
    objects::{Kind, Object, Objects, name_of, namespace_of},
    refs::{GATEWAY_GROUP, RefFrom, RefTo, reference_permitted},
    status::Condition,
};

/// A listener protocol nodegate serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// Plain HTTP (HTTP/1.1 and h2c).
    Http,
    /// HTTP over terminated TLS.
    Https,
    /// TLS passthrough, steered by SNI.
    Tls,
    /// TCP, in the kernel.
    Tcp,
    /// UDP, in the kernel.
    Udp,
}

impl Protocol {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "HTTP" => Protocol::Http,
            "HTTPS" => Protocol::Https,
            "TLS" => Protocol::Tls,
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
            _ => return None,
        })
    }

    /// The route kinds a listener of this protocol can serve.
    pub fn route_kinds(self) -> &'static [Kind] {
        match self {
            Protocol::Http | Protocol::Https => &[Kind::HTTPRoute, Kind::GRPCRoute],
            Protocol::Tls => &[Kind::TLSRoute],
            Protocol::Tcp => &[Kind::TCPRoute],
            Protocol::Udp => &[Kind::UDPRoute],
        }
    }

    /// (transport, class): listeners of one class may share a port (distinguished by hostname);
    /// different classes on one transport conflict. HTTPS (terminated) and TLS (passthrough)
    /// differ: the spec lets an implementation that "cannot mix HTTPS and generic TLS listens on
    /// the same port" call them incompatible, and nodegate serves them from different planes.
    pub fn class(self) -> (&'static str, &'static str) {
        match self {
            Protocol::Http => ("tcp", "http"),
            Protocol::Https => ("tcp", "https"),
            Protocol::Tls => ("tcp", "tls"),
            Protocol::Tcp => ("tcp", "tcp"),
            Protocol::Udp => ("udp", "udp"),
        }
    }
}

/// Which namespaces a listener takes routes from.
#[derive(Debug, Clone)]
pub enum AllowedNamespaces {
    /// The Gateway's own.
    Same,
    /// Any.
    All,
    /// Namespaces whose labels match.
    Selector(GatewayListenersAllowedRoutesNamespacesSelector),
}

/// A listener after validation.
#[derive(Debug, Clone)]
pub struct ListenerState {
    /// Listener name.
    pub name: String,
    /// Port.
    pub port: u16,
    /// The protocol, if supported.
    pub protocol: Option<Protocol>,
    /// The protocol as written.
    pub protocol_name: String,
    /// Hostname, lower case.
    pub hostname: Option<String>,
    /// Route kinds accepted (after allowedRoutes.kinds).
    pub kinds: Vec<Kind>,
    /// Namespaces accepted.
    pub namespaces: AllowedNamespaces,
    /// Certificates (HTTPS).
    pub certificates: Vec<Certificate>,
    /// Accepted condition problem: (reason, message).
    pub not_accepted: Option<(&'static str, String)>,
    /// ResolvedRefs problem.
    pub unresolved: Option<(&'static str, String)>,
    /// Conflicted reason.
    pub conflict: Option<(&'static str, String)>,
    /// Routes attached (for status).
    pub attached_routes: u32,
}

/// The listener is Accepted=False with this reason when it conflicts (as the conformance suite
/// expects: Accepted, Programmed and Conflicted all carry the conflict's reason).
const CONFLICT_REASONS: [&str; 2] = ["HostnameConflict", "ProtocolConflict"];

impl ListenerState {
    /// Whether routes may attach and the data plane may serve it.
    pub fn programmable(&self) -> bool {
        self.protocol.is_some()
            && self.not_accepted.is_none()
            && self.conflict.is_none()
            && self
                .unresolved
                .as_ref()
                .is_none_or(|(r, _)| *r == "InvalidRouteKinds")
    }
}

/// A Gateway of our class after validation.
#[derive(Debug, Clone)]
pub struct GatewayState {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// metadata.generation.
    pub generation: Option<i64>,
    /// metadata.creationTimestamp (RFC 3339, "" when unset): the older Gateway keeps a
    /// contested socket.
    pub created: String,
    /// Where its listeners bind.
    pub addresses: Vec<IpAddr>,
    /// An address problem: (reason, message).
    pub address_problem: Option<(&'static str, String)>,
    /// Its listeners, in spec order.
    pub listeners: Vec<ListenerState>,
}

impl GatewayState {
    /// `namespace/name`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Validates a Gateway of our class.
pub fn gateway_state(objects: &Objects, gw: &Gateway, default_bind: IpAddr) -> GatewayState {
    let namespace = namespace_of(&gw.metadata).to_string();
    let mut address_problem = None;
    let mut addresses = Vec::new();
    for a in gw.spec.addresses.iter().flatten() {
        let ty = a.r#type.as_deref().unwrap_or("IPAddress");
        match (ty, a.value.as_deref().map(str::parse::<IpAddr>)) {
            ("IPAddress", Some(Ok(ip))) => addresses.push(ip),
            _ => {
                address_problem = Some((
                    "UnsupportedAddress",
                    format!("address {:?} of type {ty} is not an IP address", a.value),
                ))
            }
        }
    }
    if addresses.is_empty() {
        addresses.push(default_bind);
    }
    let mut listeners: Vec<ListenerState> = gw
        .spec
        .listeners
        .iter()
        .map(|l| listener_state(objects, &namespace, l))
        .collect();
    mark_conflicts(&mut listeners);
    GatewayState {
        name: name_of(&gw.metadata).to_string(),
        namespace,
        generation: gw.metadata.generation,
        created: crate::compile::created(&gw.metadata),
        addresses,
        address_problem,
        listeners,
    }
}

fn listener_state(objects: &Objects, gw_ns: &str, l: &GatewayListeners) -> ListenerState {
    let protocol = Protocol::parse(&l.protocol);
    let mut state = ListenerState {
        name: l.name.clone(),
        port: u16::try_from(l.port).unwrap_or(0),
        protocol,
        protocol_name: l.protocol.clone(),
        hostname: l.hostname.as_ref().map(|h| h.to_ascii_lowercase()),
        kinds: protocol
            .map(|p| p.route_kinds().to_vec())
            .unwrap_or_default(),
        namespaces: AllowedNamespaces::Same,
        certificates: Vec::new(),
        not_accepted: None,
        unresolved: None,
        conflict: None,
        attached_routes: 0,
    };
    let Some(protocol) = protocol else {
        state.not_accepted = Some((
            "UnsupportedProtocol",
            format!("protocol {} is not supported", l.protocol),
        ));
        return state;
    };
    if state.port == 0 {
        state.not_accepted = Some((
            "PortUnavailable",
            format!("port {} is out of range", l.port),
        ));
    }
    if let Some(allowed) = &l.allowed_routes {
        if let Some(kinds) = &allowed.kinds {
            let mut accepted = Vec::new();
            for k in kinds {
                let group = k.group.as_deref().unwrap_or(GATEWAY_GROUP);
                match protocol
                    .route_kinds()
                    .iter()
                    .find(|s| s.as_str() == k.kind && group == GATEWAY_GROUP)
                {
                    Some(kind) => accepted.push(*kind),
                    None => {
                        state.unresolved = Some((
                            "InvalidRouteKinds",
                            format!(
                                "route kind {group}/{} is not supported on a {} listener",
                                k.kind, l.protocol
                            ),
                        ))
                    }
                }
            }
            state.kinds = accepted;
        }
        if let Some(ns) = &allowed.namespaces {
            state.namespaces = match (&ns.from, &ns.selector) {
                (Some(GatewayListenersAllowedRoutesNamespacesFrom::All), _) => {
                    AllowedNamespaces::All
                }
                (Some(GatewayListenersAllowedRoutesNamespacesFrom::Selector), Some(sel)) => {
                    AllowedNamespaces::Selector(sel.clone())
                }
                (Some(GatewayListenersAllowedRoutesNamespacesFrom::Selector), None) => {
                    state.not_accepted = Some((
                        "Invalid",
                        "namespaces.from is Selector but no selector is given".into(),
                    ));
                    AllowedNamespaces::Same
                }
                _ => AllowedNamespaces::Same,
            };
        }
    }
    let mode = l.tls.as_ref().and_then(|t| t.mode.clone());
    match protocol {
        Protocol::Https => {
            if matches!(mode, Some(GatewayListenersTlsMode::Passthrough)) {
                // CEL: "tls mode must be Terminate for protocol HTTPS".
                state.not_accepted = Some((
                    "UnsupportedValue",
                    "tls mode must be Terminate for protocol HTTPS".into(),
                ));
            }
            resolve_certificates(objects, gw_ns, l, &mut state);
        }
        // Conformance (TLSRouteListenerTerminateNotSupported): "a Gateway Listener with TLS mode
        // Terminate MUST have Accepted=False with Reason=UnsupportedValue".
        Protocol::Tls if !matches!(mode, Some(GatewayListenersTlsMode::Passthrough)) => {
            state.not_accepted = Some((
                "UnsupportedValue",
                "TLS listeners are served in Passthrough mode only".into(),
            ));
        }
        Protocol::Http | Protocol::Tcp | Protocol::Udp if l.tls.is_some() => {
            state.not_accepted = Some((
                "UnsupportedValue",
                "tls must not be specified for protocols ['HTTP', 'TCP', 'UDP']".into(),
            ));
        }
        Protocol::Tcp | Protocol::Udp if state.hostname.is_some() => {
            state.not_accepted = Some((
                "UnsupportedValue",
                "hostname must not be specified for protocols ['TCP', 'UDP']".into(),
            ));
        }
        _ => {}
    }
    state
}

/// Resolves an HTTPS listener's certificateRefs to kubernetes.io/tls Secrets.
fn resolve_certificates(
    objects: &Objects,
    gw_ns: &str,
    l: &GatewayListeners,
    state: &mut ListenerState,
) {
    let refs = l
        .tls
        .as_ref()
        .and_then(|t| t.certificate_refs.clone())
        .unwrap_or_default();
    if refs.is_empty() {
        state.unresolved = Some((
            "InvalidCertificateRef",
            "an HTTPS listener needs a certificateRef".into(),
        ));
        return;
    }
    for r in refs {
        let group = r.group.as_deref().unwrap_or("");
        let kind = r.kind.as_deref().unwrap_or("Secret");
        let ns = r.namespace.as_deref().unwrap_or(gw_ns);
        if !(group.is_empty() || group == "core") || kind != "Secret" {
            state.unresolved = Some((
                "InvalidCertificateRef",
                format!("certificateRef {group}/{kind} is not a Secret"),
            ));
            continue;
        }
        let from = RefFrom {
            group: GATEWAY_GROUP,
            kind: "Gateway",
            namespace: gw_ns,
        };
        let to = RefTo {
            group: "",
            kind: "Secret",
            namespace: ns,
            name: &r.name,
        };
        if !reference_permitted(objects, &from, &to) {
            state.unresolved = Some((
                "RefNotPermitted",
                format!(
                    "no ReferenceGrant in {ns} allows Gateways from {gw_ns} to use Secret {}",
                    r.name
                ),
            ));
            continue;
        }
        let secret = match objects.get(Kind::Secret, ns, &r.name) {
            Some(Object::Secret(s)) => s,
            _ => {
                state.unresolved = Some((
                    "InvalidCertificateRef",
                    format!("Secret {ns}/{} not found", r.name),
                ));
                continue;
            }
        };
        let field = |k: &str| -> Option<Vec<u8>> {
            secret
                .data
                .as_ref()
                .and_then(|d| d.get(k))
                .map(|ByteString(b)| b.clone())
                .or_else(|| {
                    secret
                        .string_data
                        .as_ref()
                        .and_then(|d| d.get(k))
                        .map(|s| s.as_bytes().to_vec())
                })
        };
        match (field("tls.crt"), field("tls.key")) {
            (Some(cert), Some(key)) if looks_like_pem(&cert) && looks_like_pem(&key) => {
                state.certificates.push(Certificate {
                    secret: format!("{ns}/{}", r.name),
                    hostname: state.hostname.clone(),
                    cert_pem: cert,
                    key_pem: key,
                })
            }
            _ => {
                state.unresolved = Some((
                    "InvalidCertificateRef",
                    format!("Secret {ns}/{} has no PEM tls.crt and tls.key", r.name),
                ))
            }
        }
    }
}

fn looks_like_pem(b: &[u8]) -> bool {
    String::from_utf8_lossy(b).contains("-----BEGIN ")
}

/// "Conflicted: ... HostnameConflict: two or more Listeners have the same port and hostname;
/// ProtocolConflict: two or more Listeners have the same port but incompatible protocols."
fn mark_conflicts(listeners: &mut [ListenerState]) {
    let mut by_port: BTreeMap<(u16, &'static str), Vec<usize>> = BTreeMap::new();
    for (i, l) in listeners.iter().enumerate() {
        if let Some(p) = l.protocol {
            by_port.entry((l.port, p.class().0)).or_default().push(i);
        }
    }
    let mut conflicts = Vec::new();
    for ((port, _), idx) in by_port {
        for &i in &idx {
            for &j in &idx {
                if i == j {
                    continue;
                }
                let (a, b) = (&listeners[i], &listeners[j]);
                let (ca, cb) = (
                    a.protocol.map(|p| p.class().1),
                    b.protocol.map(|p| p.class().1),
                );
                if ca != cb {
                    conflicts.push((
                        i,
                        "ProtocolConflict",
                        format!(
                            "port {port} is also used by listener {} with protocol {}",
                            b.name, b.protocol_name
                        ),
                    ));
                } else if a.hostname == b.hostname {
                    conflicts.push((
                        i,
                        "HostnameConflict",
                        format!("listener {} has the same port {port} and hostname", b.name),
                    ));
                }
            }
        }
    }
    for (i, reason, message) in conflicts {
        // Protocol conflicts take precedence over hostname conflicts.
        let l = &mut listeners[i];
        if l.conflict
            .as_ref()
            .is_none_or(|(r, _)| *r == "HostnameConflict")
        {
            l.conflict = Some((reason, message));
        }
    }
}

impl ListenerState {
    /// Whether a route of `kind` in `route_ns` may attach (allowedRoutes kinds and namespaces).
    pub fn allows(&self, objects: &Objects, gw_ns: &str, kind: Kind, route_ns: &str) -> bool {
        self.kinds.contains(&kind)
            && match &self.namespaces {
                AllowedNamespaces::All => true,
                AllowedNamespaces::Same => route_ns == gw_ns,
                AllowedNamespaces::Selector(sel) => {
                    let mut labels = match objects.get(Kind::Namespace, "", route_ns) {
                        Some(Object::Namespace(ns)) => {
                            ns.metadata.labels.clone().unwrap_or_default()
                        }
                        _ => BTreeMap::new(),
                    };
                    // The API server sets this label on every Namespace (immutable), so
                    // selectors on it work even when the Namespace object is not in the input.
                    labels.insert("kubernetes.io/metadata.name".into(), route_ns.to_string());
                    selector_matches(sel, &labels)
                }
            }
    }

    /// The listener's conditions, as the spec names them.
    pub fn conditions(&self) -> Vec<Condition> {
        let mut out = Vec::new();
        out.push(match (&self.not_accepted, &self.conflict) {
            (Some((r, m)), _) | (None, Some((r, m))) => Condition::fail("Accepted", r, m.clone()),
            (None, None) => Condition::ok("Accepted", "Accepted", "listener accepted"),
        });
        out.push(match &self.conflict {
            None => Condition::fail("Conflicted", "NoConflicts", "no conflicts"),
            Some((r, m)) => Condition {
                type_: "Conflicted",
                status: true,
                reason: r,
                message: m.clone(),
            },
        });
        out.push(match &self.unresolved {
            None => Condition::ok("ResolvedRefs", "ResolvedRefs", "references resolved"),
            Some((r, m)) => Condition::fail("ResolvedRefs", r, m.clone()),
        });
        out.push(match &self.conflict {
            _ if self.programmable() => {
                Condition::ok("Programmed", "Programmed", "listener programmed")
            }
            Some((r, m)) if CONFLICT_REASONS.contains(r) => {
                Condition::fail("Programmed", r, m.clone())
            }
            _ => Condition::fail(
                "Programmed",
                "Invalid",
                "listener is not valid; see the other conditions",
            ),
        });
        out
    }
}

/// A label selector: every matchLabels pair and every matchExpression must hold.
pub fn selector_matches(
    sel: &GatewayListenersAllowedRoutesNamespacesSelector,
    labels: &BTreeMap<String, String>,
) -> bool {
    sel.match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v))
        && sel.match_expressions.iter().flatten().all(|e| {
            let values = e.values.clone().unwrap_or_default();
            match e.operator.as_str() {
                "In" => labels.get(&e.key).is_some_and(|v| values.contains(v)),
                "NotIn" => labels.get(&e.key).is_none_or(|v| !values.contains(v)),
                "Exists" => labels.contains_key(&e.key),
                "DoesNotExist" => !labels.contains_key(&e.key),
                _ => false,
            }
        })
}

/// One listener's claim on a bound socket, across every Gateway of ours on this node.
struct SocketClaim {
    ip: IpAddr,
    port: u16,
    transport: &'static str,
    class: &'static str,
    hostname: Option<String>,
    gateway: String,
}

/// Every Gateway of ours binds on this one node, so listeners of different Gateways can contend
/// for a socket. The older Gateway (creationTimestamp, then namespace/name, the spec's usual
/// tie-break) keeps it. A later listener on the same address and port is `ProtocolConflict` when
/// its protocol differs, `HostnameConflict` when the hostname is the same (TCP and UDP listeners
/// have none, so they never share); listeners of one protocol with distinct hostnames share the
/// socket, as listeners of one Gateway do. A wildcard bind (0.0.0.0 or ::) and a specific
/// address on the same port cannot both be bound, so the later one is `PortUnavailable`.
pub fn mark_socket_conflicts(gateways: &mut [GatewayState]) {
    let mut order: Vec<usize> = (0..gateways.len()).collect();
    order.sort_by(|&a, &b| {
        let (a, b) = (&gateways[a], &gateways[b]);
        (&a.created, &a.namespace, &a.name).cmp(&(&b.created, &b.namespace, &b.name))
    });
    let mut claims: Vec<SocketClaim> = Vec::new();
    for gi in order {
        let id = gateways[gi].id();
        let addresses = gateways[gi].addresses.clone();
        let mut mine = Vec::new();
        for l in gateways[gi].listeners.iter_mut() {
            let Some(protocol) = l.protocol else { continue };
            if l.not_accepted.is_some() || l.conflict.is_some() {
                continue;
            }
            let (transport, class) = protocol.class();
            for &ip in &addresses {
                for c in claims
                    .iter()
                    .filter(|c| c.port == l.port && c.transport == transport && c.gateway != id)
                {
                    if c.ip == ip {
                        if c.class != class {
                            l.conflict = Some((
                                "ProtocolConflict",
                                format!(
                                    "{ip} port {} is served by Gateway {} with another protocol",
                                    l.port, c.gateway
                                ),
                            ));
                        } else if matches!(class, "tcp" | "udp") || c.hostname == l.hostname {
                            l.conflict.get_or_insert((
                                "HostnameConflict",
                                format!(
                                    "{ip} port {} with the same hostname is served by Gateway {}",
                                    l.port, c.gateway
                                ),
                            ));
                        }
                    } else if c.ip.is_unspecified() || ip.is_unspecified() {
                        l.not_accepted.get_or_insert((
                            "PortUnavailable",
                            format!(
                                "{ip} port {} overlaps {} bound by Gateway {}",
                                l.port, c.ip, c.gateway
                            ),
                        ));
                    }
                }
            }
            if l.conflict.is_none() && l.not_accepted.is_none() {
                for &ip in &addresses {
                    mine.push(SocketClaim {
                        ip,
                        port: l.port,
                        transport,
                        class,
                        hostname: l.hostname.clone(),
                        gateway: id.clone(),
                    });
                }
            }
        }
        claims.extend(mine);
    }
}
