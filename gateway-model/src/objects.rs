//! The input snapshot: every object the sources read, keyed by kind, namespace and name. Sources
//! fill it; only `compile` interprets it.

use std::collections::{BTreeMap, BTreeSet};

use gateway_api::apis::experimental::{
    gatewayclasses::GatewayClass, gateways::Gateway, grpcroutes::GrpcRoute as GRPCRoute,
    httproutes::HttpRoute as HTTPRoute, referencegrants::ReferenceGrant,
    tcproutes::TcpRoute as TCPRoute, tlsroutes::TlsRoute as TLSRoute,
    udproutes::UdpRoute as UDPRoute,
};
use k8s_openapi::{
    api::{
        core::v1::{Namespace, Secret, Service},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

/// The kinds nodegate reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum Kind {
    /// gateway.networking.k8s.io GatewayClass (cluster-scoped).
    GatewayClass,
    /// gateway.networking.k8s.io Gateway.
    Gateway,
    /// gateway.networking.k8s.io HTTPRoute.
    HTTPRoute,
    /// gateway.networking.k8s.io GRPCRoute.
    GRPCRoute,
    /// gateway.networking.k8s.io TLSRoute.
    TLSRoute,
    /// gateway.networking.k8s.io TCPRoute.
    TCPRoute,
    /// gateway.networking.k8s.io UDPRoute.
    UDPRoute,
    /// gateway.networking.k8s.io ReferenceGrant.
    ReferenceGrant,
    /// core/v1 Service.
    Service,
    /// discovery.k8s.io/v1 EndpointSlice.
    EndpointSlice,
    /// core/v1 Namespace (cluster-scoped).
    Namespace,
    /// core/v1 Secret.
    Secret,
}

impl Kind {
    /// The kind's name as Kubernetes spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::GatewayClass => "GatewayClass",
            Kind::Gateway => "Gateway",
            Kind::HTTPRoute => "HTTPRoute",
            Kind::GRPCRoute => "GRPCRoute",
            Kind::TLSRoute => "TLSRoute",
            Kind::TCPRoute => "TCPRoute",
            Kind::UDPRoute => "UDPRoute",
            Kind::ReferenceGrant => "ReferenceGrant",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Namespace => "Namespace",
            Kind::Secret => "Secret",
        }
    }
}

/// One object of a kind nodegate reads.
#[derive(Debug, Clone, PartialEq)]
#[allow(
    clippy::large_enum_variant,
    reason = "objects are built once per read and kept in a map"
)]
pub enum Object {
    /// A GatewayClass.
    GatewayClass(GatewayClass),
    /// A Gateway.
    Gateway(Gateway),
    /// An HTTPRoute.
    HTTPRoute(HTTPRoute),
    /// A GRPCRoute.
    GRPCRoute(GRPCRoute),
    /// A TLSRoute.
    TLSRoute(TLSRoute),
    /// A TCPRoute.
    TCPRoute(TCPRoute),
    /// A UDPRoute.
    UDPRoute(UDPRoute),
    /// A ReferenceGrant.
    ReferenceGrant(ReferenceGrant),
    /// A Service.
    Service(Service),
    /// An EndpointSlice.
    EndpointSlice(EndpointSlice),
    /// A Namespace.
    Namespace(Namespace),
    /// A Secret.
    Secret(Secret),
}

impl Object {
    /// The object's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Object::GatewayClass(_) => Kind::GatewayClass,
            Object::Gateway(_) => Kind::Gateway,
            Object::HTTPRoute(_) => Kind::HTTPRoute,
            Object::GRPCRoute(_) => Kind::GRPCRoute,
            Object::TLSRoute(_) => Kind::TLSRoute,
            Object::TCPRoute(_) => Kind::TCPRoute,
            Object::UDPRoute(_) => Kind::UDPRoute,
            Object::ReferenceGrant(_) => Kind::ReferenceGrant,
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::Namespace(_) => Kind::Namespace,
            Object::Secret(_) => Kind::Secret,
        }
    }

    /// The object's metadata.
    pub fn meta(&self) -> &ObjectMeta {
        match self {
            Object::GatewayClass(o) => &o.metadata,
            Object::Gateway(o) => &o.metadata,
            Object::HTTPRoute(o) => &o.metadata,
            Object::GRPCRoute(o) => &o.metadata,
            Object::TLSRoute(o) => &o.metadata,
            Object::TCPRoute(o) => &o.metadata,
            Object::UDPRoute(o) => &o.metadata,
            Object::ReferenceGrant(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::EndpointSlice(o) => &o.metadata,
            Object::Namespace(o) => &o.metadata,
            Object::Secret(o) => &o.metadata,
        }
    }

    /// (kind, namespace, name); cluster-scoped kinds have an empty namespace.
    pub fn key(&self) -> ObjectKey {
        let meta = self.meta();
        let cluster_scoped = matches!(self.kind(), Kind::GatewayClass | Kind::Namespace);
        ObjectKey {
            kind: self.kind(),
            namespace: if cluster_scoped {
                String::new()
            } else {
                meta.namespace.clone().unwrap_or_else(|| "default".into())
            },
            name: meta.name.clone().unwrap_or_default(),
        }
    }
}

/// Identifies an object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct ObjectKey {
    /// Its kind.
    pub kind: Kind,
    /// Its namespace ("" for cluster-scoped kinds).
    pub namespace: String,
    /// Its name.
    pub name: String,
}

/// A snapshot of every input object.
#[derive(Debug, Clone, Default)]
pub struct Objects {
    /// Shared so a [`crate::Compiler`] can keep what it compiled and recognise an unchanged
    /// object by pointer.
    map: BTreeMap<ObjectKey, std::sync::Arc<Object>>,
    /// (namespace, `kubernetes.io/service-name` label) → EndpointSlice names: kept on every
    /// insert and remove so resolving a Service's endpoints never scans every slice.
    slices_by_service: BTreeMap<(String, String), BTreeSet<String>>,
    /// (namespace, service, port name) → resolved endpoints, filled by compiles and cleared when a
    /// Service or EndpointSlice changes: a compile after a route-only change reuses it.
    endpoint_cache: EndpointCache,
    /// Endpoints on this node are preferred (see [`Objects::set_preferred_node`]).
    preferred_node: Option<String>,
}

/// Memoised endpoint lists; shared lists so every rule using a Service holds one copy.
#[derive(Debug, Default)]
pub(crate) struct EndpointCache(
    std::sync::Mutex<std::collections::HashMap<EndpointKey, Endpoints>>,
);

/// (namespace, service, port name).
pub(crate) type EndpointKey = (String, String, String);
/// A shared list of endpoints.
pub(crate) type Endpoints = std::sync::Arc<Vec<std::net::SocketAddr>>;

impl Clone for EndpointCache {
    fn clone(&self) -> Self {
        EndpointCache::default()
    }
}

/// The Service an EndpointSlice belongs to, by its `kubernetes.io/service-name` label.
fn slice_owner(object: &Object) -> Option<(String, String)> {
    let Object::EndpointSlice(slice) = object else {
        return None;
    };
    let service = slice
        .metadata
        .labels
        .as_ref()?
        .get("kubernetes.io/service-name")?;
    Some((namespace_of(&slice.metadata).to_string(), service.clone()))
}

impl Objects {
    /// Adds or replaces an object; an object without a namespace is put in `default`.
    pub fn insert(&mut self, object: Object) {
        let key = object.key();
        self.invalidate(key.kind);
        if let Some(owner) = slice_owner(&object) {
            self.slices_by_service
                .entry(owner)
                .or_default()
                .insert(key.name.clone());
        }
        if let Some(old) = self.map.insert(key.clone(), std::sync::Arc::new(object)) {
            self.unindex(&key, &old);
        }
    }

    /// Prefer endpoints on `node`: when a Service port has usable endpoints whose EndpointSlice
    /// `nodeName` is `node`, only those are used (cluster mode's `--prefer-local-endpoints`).
    /// `None` (the default) uses every endpoint.
    pub fn set_preferred_node(&mut self, node: Option<String>) {
        self.preferred_node = node;
        if let Ok(cache) = self.endpoint_cache.0.get_mut() {
            cache.clear();
        }
    }

    /// The node whose endpoints are preferred, if any.
    pub fn preferred_node(&self) -> Option<&str> {
        self.preferred_node.as_deref()
    }

    /// Removes an object.
    pub fn remove(&mut self, key: &ObjectKey) -> Option<Object> {
        let old = self.map.remove(key)?;
        self.invalidate(key.kind);
        self.unindex(key, &old);
        Some(std::sync::Arc::unwrap_or_clone(old))
    }

    fn invalidate(&mut self, kind: Kind) {
        if matches!(kind, Kind::Service | Kind::EndpointSlice)
            && let Ok(cache) = self.endpoint_cache.0.get_mut()
        {
            cache.clear();
        }
    }

    /// The endpoints of `namespace/service` port `port_name`, computed by `compute` once per
    /// snapshot of Services and EndpointSlices.
    pub(crate) fn cached_endpoints(
        &self,
        key: (String, String, String),
        compute: impl FnOnce() -> Vec<std::net::SocketAddr>,
    ) -> std::sync::Arc<Vec<std::net::SocketAddr>> {
        if let Ok(cache) = self.endpoint_cache.0.lock()
            && let Some(hit) = cache.get(&key)
        {
            return hit.clone();
        }
        let value = std::sync::Arc::new(compute());
        if let Ok(mut cache) = self.endpoint_cache.0.lock() {
            cache.insert(key, value.clone());
        }
        value
    }

    /// Drops `old`'s index entry unless the object now stored under `key` still has it.
    fn unindex(&mut self, key: &ObjectKey, old: &Object) {
        let Some(owner) = slice_owner(old) else {
            return;
        };
        let still = self
            .map
            .get(key)
            .and_then(|o| slice_owner(o))
            .is_some_and(|o| o == owner);
        if !still && let Some(names) = self.slices_by_service.get_mut(&owner) {
            names.remove(&key.name);
            if names.is_empty() {
                self.slices_by_service.remove(&owner);
            }
        }
    }

    /// The EndpointSlices labelled as belonging to Service `namespace/service`.
    pub fn endpoint_slices(
        &self,
        namespace: &str,
        service: &str,
    ) -> impl Iterator<Item = &k8s_openapi::api::discovery::v1::EndpointSlice> {
        self.slices_by_service
            .get(&(namespace.to_string(), service.to_string()))
            .into_iter()
            .flatten()
            .filter_map(
                move |name| match self.get(Kind::EndpointSlice, namespace, name) {
                    Some(Object::EndpointSlice(s)) => Some(s),
                    _ => None,
                },
            )
    }

    /// Looks an object up.
    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<&Object> {
        self.map
            .get(&ObjectKey {
                kind,
                namespace: namespace.to_string(),
                name: name.to_string(),
            })
            .map(|o| &**o)
    }

    /// How many objects there are.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Every object, in key order.
    pub fn iter(&self) -> impl Iterator<Item = &Object> {
        self.map.values().map(|o| &**o)
    }

    /// Every object of one kind, in (namespace, name) order.
    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &Object> {
        self.of_kind_shared(kind).map(|(_, v)| &**v)
    }

    /// Every object of one kind with its key, as the shared values the map holds.
    pub(crate) fn of_kind_shared(
        &self,
        kind: Kind,
    ) -> impl Iterator<Item = (&ObjectKey, &std::sync::Arc<Object>)> {
        self.map
            .range(
                ObjectKey {
                    kind,
                    namespace: String::new(),
                    name: String::new(),
                }..,
            )
            .take_while(move |(k, _)| k.kind == kind)
    }
}

/// The namespace of an object's metadata, `default` when unset.
pub fn namespace_of(meta: &ObjectMeta) -> &str {
    meta.namespace.as_deref().unwrap_or("default")
}

/// The name of an object's metadata.
pub fn name_of(meta: &ObjectMeta) -> &str {
    meta.name.as_deref().unwrap_or_default()
}
