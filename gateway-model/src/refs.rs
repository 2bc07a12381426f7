//! References between objects: parentRefs and backendRefs in one shape for every route kind,
//! ReferenceGrant checks, and Service → EndpointSlice resolution as kube-proxy does it.

use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::{Service, ServicePort};
use serde::{Deserialize, Serialize};

use crate::objects::{Kind, Object, Objects, name_of, namespace_of};

/// The API group of the Gateway API kinds.
pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// A parentRef, whichever route kind it came from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ParentRef {
    /// Defaults to gateway.networking.k8s.io.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Defaults to Gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Defaults to the route's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The Gateway's name.
    pub name: String,
    /// A listener name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    /// A listener port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
}

/// A backendRef (or a mirror's backendRef), whichever route kind it came from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendRef {
    /// "" (core) by default.
    #[serde(default)]
    pub group: Option<String>,
    /// Service by default.
    #[serde(default)]
    pub kind: Option<String>,
    /// Defaults to the route's namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    /// The Service's name.
    pub name: String,
    /// The Service port (required for Services).
    #[serde(default)]
    pub port: Option<i32>,
    /// Relative weight, 1 by default.
    #[serde(default)]
    pub weight: Option<i32>,
}

/// Converts any generated ref struct into the common shape (their serialised fields agree).
pub fn normalize<T: Serialize, U: for<'de> Deserialize<'de>>(v: &T) -> Option<U> {
    serde_json::to_value(v)
        .ok()
        .and_then(|j| serde_json::from_value(j).ok())
}

/// Why a backendRef did not resolve, with the spec's ResolvedRefs reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefProblem {
    /// `BackendNotFound`, `InvalidKind` or `RefNotPermitted`.
    pub reason: &'static str,
    /// Detail.
    pub message: String,
}

/// A backendRef resolved to a Service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedService {
    /// `namespace/name:port`.
    pub name: String,
    /// Ready endpoints (kube-proxy's choice: ready ones, else serving-and-terminating ones).
    pub endpoints: std::sync::Arc<Vec<SocketAddr>>,
    /// appProtocol says HTTP/2 cleartext.
    pub h2c: bool,
}

/// The referring side of a reference.
pub struct RefFrom<'a> {
    /// API group of the referring kind.
    pub group: &'a str,
    /// Referring kind.
    pub kind: &'a str,
    /// Its namespace.
    pub namespace: &'a str,
}

/// The referred-to side of a reference.
pub struct RefTo<'a> {
    /// API group ("" for core).
    pub group: &'a str,
    /// Kind.
    pub kind: &'a str,
    /// Namespace.
    pub namespace: &'a str,
    /// Name.
    pub name: &'a str,
}

/// Whether a reference is allowed: same-namespace references always are; "ReferenceGrant is
/// required for cross-namespace references" — one in the target namespace naming the referring
/// group/kind/namespace and the target group/kind (and name, if it gives one).
pub fn reference_permitted(objects: &Objects, from: &RefFrom<'_>, to: &RefTo<'_>) -> bool {
    if from.namespace == to.namespace {
        return true;
    }
    objects.of_kind(Kind::ReferenceGrant).any(|o| {
        let Object::ReferenceGrant(g) = o else {
            return false;
        };
        namespace_of(&g.metadata) == to.namespace
            && g.spec.from.iter().any(|f| {
                f.group == from.group && f.kind == from.kind && f.namespace == from.namespace
            })
            && g.spec.to.iter().any(|t| {
                t.group == to.group
                    && t.kind == to.kind
                    && t.name.as_deref().is_none_or(|n| n == to.name)
            })
    })
}

/// Resolves a backendRef of a route of kind `route_kind` in `route_ns`.
pub fn resolve_backend(
    objects: &Objects,
    route_kind: &str,
    route_ns: &str,
    r: &BackendRef,
) -> Result<ResolvedService, RefProblem> {
    let (ns, port, spec_port, svc) = check_backend(objects, route_kind, route_ns, r)?;
    let h2c = matches!(
        spec_port.app_protocol.as_deref(),
        Some("kubernetes.io/h2c" | "h2c")
    );
    Ok(ResolvedService {
        name: format!("{ns}/{}:{port}", r.name),
        endpoints: objects.cached_endpoints(
            (
                ns.to_string(),
                r.name.clone(),
                spec_port.name.clone().unwrap_or_default(),
            ),
            || endpoints(objects, svc, spec_port.name.as_deref()),
        ),
        h2c,
    })
}

/// Why a backendRef does not resolve, if it does not: [`resolve_backend`]'s error without
/// building the resolved Service.
pub(crate) fn backend_problem(
    objects: &Objects,
    route_kind: &str,
    route_ns: &str,
    r: &BackendRef,
) -> Option<RefProblem> {
    check_backend(objects, route_kind, route_ns, r).err()
}

/// The checks of [`resolve_backend`]: (namespace, port, Service port, Service).
fn check_backend<'a>(
    objects: &'a Objects,
    route_kind: &str,
    route_ns: &'a str,
    r: &'a BackendRef,
) -> Result<(&'a str, i32, &'a ServicePort, &'a Service), RefProblem> {
    let group = r.group.as_deref().unwrap_or("");
    let kind = r.kind.as_deref().unwrap_or("Service");
    if !(group.is_empty() || group == "core") || kind != "Service" {
        return Err(RefProblem {
            reason: "InvalidKind",
            message: format!("backendRef kind {group}/{kind} is not supported; only Service is"),
        });
    }
    let ns = r.namespace.as_deref().unwrap_or(route_ns);
    let from = RefFrom {
        group: GATEWAY_GROUP,
        kind: route_kind,
        namespace: route_ns,
    };
    let to = RefTo {
        group: "",
        kind: "Service",
        namespace: ns,
        name: &r.name,
    };
    if !reference_permitted(objects, &from, &to) {
        return Err(RefProblem {
            reason: "RefNotPermitted",
            message: format!(
                "no ReferenceGrant in {ns} allows {route_kind}s from {route_ns} to refer to Service {}",
                r.name
            ),
        });
    }
    let Some(Object::Service(svc)) = objects.get(Kind::Service, ns, &r.name) else {
        return Err(RefProblem {
            reason: "BackendNotFound",
            message: format!("Service {ns}/{} not found", r.name),
        });
    };
    let Some(port) = r.port else {
        return Err(RefProblem {
            reason: "BackendNotFound",
            message: format!("backendRef to Service {ns}/{} has no port", r.name),
        });
    };
    let spec_port = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .and_then(|ports| ports.iter().find(|p| p.port == port))
        .ok_or_else(|| RefProblem {
            reason: "BackendNotFound",
            message: format!("Service {ns}/{} has no port {port}", r.name),
        })?;
    Ok((ns, port, spec_port, svc))
}

/// The endpoints of one Service port: EndpointSlices labelled with the Service's name, their port
/// with the same name as the Service port ("" when unnamed), as kube-proxy matches them. Ready
/// endpoints are used; when none is ready, serving endpoints that are terminating are (kube-proxy's
/// graceful termination fallback).
pub fn endpoints(objects: &Objects, svc: &Service, port_name: Option<&str>) -> Vec<SocketAddr> {
    let ns = namespace_of(&svc.metadata);
    let name = name_of(&svc.metadata);
    let preferred = objects.preferred_node();
    // (address, on the preferred node)
    let mut ready = Vec::new();
    let mut terminating = Vec::new();
    for slice in objects.endpoint_slices(ns, name) {
        let Some(port) = slice.ports.as_ref().and_then(|ports| {
            ports
                .iter()
                .find(|p| p.name.as_deref().unwrap_or("") == port_name.unwrap_or(""))
        }) else {
            continue;
        };
        let Some(port) = port.port.and_then(|p| u16::try_from(p).ok()) else {
            continue;
        };
        for ep in slice.endpoints.iter().flatten() {
            let c = ep.conditions.as_ref();
            // "ready ... nil should be interpreted as true"; serving likewise; terminating nil = false.
            let is_ready = c.and_then(|c| c.ready).unwrap_or(true);
            let serving = c.and_then(|c| c.serving).unwrap_or(is_ready);
            let is_terminating = c.and_then(|c| c.terminating).unwrap_or(false);
            let local = preferred.is_some() && ep.node_name.as_deref() == preferred;
            for a in &ep.addresses {
                let Ok(ip) = a.parse::<IpAddr>() else {
                    continue;
                };
                let addr = SocketAddr::new(ip, port);
                if is_ready && !is_terminating {
                    ready.push((addr, local));
                } else if serving && is_terminating {
                    terminating.push((addr, local));
                }
            }
        }
    }
    let chosen = if ready.is_empty() { terminating } else { ready };
    let any_local = chosen.iter().any(|(_, local)| *local);
    let mut out: Vec<SocketAddr> = chosen
        .into_iter()
        .filter(|(_, local)| *local || !any_local)
        .map(|(a, _)| a)
        .collect();
    out.sort();
    out.dedup();
    out
}
