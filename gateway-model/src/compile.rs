//! `compile`: objects in, model and statuses out.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use serde_json::{Value, json};

use crate::{
    gateway::{GatewayState, Protocol, gateway_state},
    hostname,
    http::HttpRule,
    model::{
        HttpListener, L4Listener, L4Protocol, Model, PassthroughListener, SniRoute, VirtualHost,
        WeightedEndpoint,
    },
    objects::{Kind, Object, Objects, name_of, namespace_of},
    refs::{BackendRef, GATEWAY_GROUP, ParentRef, RefProblem, normalize, resolve_backend},
    routes::{self, RouteRules},
    status::{Condition, ObjectStatus, conditions_json},
};

/// The controller name nodegate answers for.
pub const CONTROLLER_NAME: &str = "nodegate.io/gateway-controller";

/// Inputs to `compile` besides the objects.
#[derive(Debug, Clone)]
pub struct CompileOptions {
    /// GatewayClasses with this controllerName are ours.
    pub controller_name: String,
    /// Where listeners bind when their Gateway has no spec.addresses.
    pub default_bind_address: IpAddr,
    /// lastTransitionTime stamped on conditions (compile has no clock).
    pub transition_time: String,
}

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions {
            controller_name: CONTROLLER_NAME.into(),
            default_bind_address: IpAddr::from([0, 0, 0, 0]),
            transition_time: "1970-01-01T00:00:00Z".into(),
        }
    }
}

/// The result of a compile.
#[derive(Debug, Clone, Default)]
pub struct Compiled {
    /// The model.
    pub model: Model,
    /// `.status` of every Gateway API object of ours, in kind/namespace/name order.
    pub statuses: Vec<ObjectStatus>,
}

/// A route in the common shape.
pub(crate) struct RouteView {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    pub created: String,
    pub generation: Option<i64>,
    pub parent_refs: Vec<ParentRef>,
    pub hostnames: Vec<String>,
    pub rules: RouteRules,
}

impl RouteView {
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// (gateway index, listener index).
type ListenerIdx = (usize, usize);
/// A route's claim on an L4 listener: (creationTimestamp, namespace/name, route index).
type Claim = (String, String, usize);
/// HTTP listeners by socket, with their rules by hostname pattern.
type HttpSockets = BTreeMap<SocketAddr, (HttpListener, BTreeMap<Option<String>, Vec<HttpRule>>)>;

/// The outcome of one parentRef.
struct ParentOutcome {
    parent_ref: ParentRef,
    accepted: Result<(), (&'static str, String)>,
    /// (gateway index, listener index) the route attached to.
    attached: Vec<(usize, usize)>,
}

/// Compiles every object into the model and the statuses.
pub fn compile(objects: &Objects, opts: &CompileOptions) -> Compiled {
    let time = opts.transition_time.as_str();
    let mut statuses = Vec::new();

    // GatewayClasses: ours are those naming our controller.
    let mut our_classes = Vec::new();
    for o in objects.of_kind(Kind::GatewayClass) {
        let Object::GatewayClass(gc) = o else {
            continue;
        };
        if gc.spec.controller_name != opts.controller_name {
            continue;
        }
        let name = name_of(&gc.metadata).to_string();
        let accepted = match &gc.spec.parameters_ref {
            None => Condition::ok("Accepted", "Accepted", "accepted by nodegate"),
            Some(p) => Condition::fail(
                "Accepted",
                "InvalidParameters",
                format!("parametersRef {}/{} is not supported", p.kind, p.name),
            ),
        };
        statuses.push(ObjectStatus {
            api_version: format!("{GATEWAY_GROUP}/v1"),
            kind: "GatewayClass".into(),
            namespace: String::new(),
            name: name.clone(),
            status: json!({ "conditions": conditions_json(&[accepted], gc.metadata.generation, time) }),
        });
        our_classes.push(name);
    }

    // Gateways of our classes.
    let mut gateways: Vec<GatewayState> = Vec::new();
    for o in objects.of_kind(Kind::Gateway) {
        let Object::Gateway(gw) = o else { continue };
        if our_classes.contains(&gw.spec.gateway_class_name) {
            gateways.push(gateway_state(objects, gw, opts.default_bind_address));
        }
    }

    // Routes of every kind, attached to listeners.
    let routes = routes::collect(objects);
    let mut outcomes: Vec<Vec<ParentOutcome>> = routes
        .iter()
        .map(|r| attach(objects, &gateways, r))
        .collect();
    oldest_l4_route_wins(&gateways, &routes, &mut outcomes);
    for outcome in outcomes.iter().flatten() {
        for &(g, l) in &outcome.attached {
            gateways[g].listeners[l].attached_routes += 1;
        }
    }

    // The model.
    let mut model = Model::default();
    let mut rule_problems: Vec<Option<RefProblem>> = vec![None; routes.len()];
    build_l4(
        objects,
        &gateways,
        &routes,
        &outcomes,
        &mut model,
        &mut rule_problems,
    );
    build_http(
        objects,
        &gateways,
        &routes,
        &outcomes,
        &mut model,
        &mut rule_problems,
    );
    build_passthrough(
        objects,
        &gateways,
        &routes,
        &outcomes,
        &mut model,
        &mut rule_problems,
    );
    // Routes whose rules never reached a listener still report unresolved references.
    for (i, r) in routes.iter().enumerate() {
        let compiled_somewhere = outcomes[i].iter().any(|o| !o.attached.is_empty());
        if rule_problems[i].is_none() && !compiled_somewhere {
            rule_problems[i] = routes::first_ref_problem(objects, r);
        }
    }

    // Gateway statuses.
    for g in &gateways {
        statuses.push(gateway_status(g, time));
    }
    // Route statuses.
    for (i, r) in routes.iter().enumerate() {
        if outcomes[i].is_empty() {
            continue;
        }
        let resolved = match &rule_problems[i] {
            None => Condition::ok("ResolvedRefs", "ResolvedRefs", "all references resolved"),
            Some(p) => Condition::fail("ResolvedRefs", p.reason, p.message.clone()),
        };
        let parents: Vec<Value> = outcomes[i]
            .iter()
            .map(|o| {
                let accepted = match &o.accepted {
                    Ok(()) => Condition::ok("Accepted", "Accepted", "route accepted"),
                    Err((reason, message)) => Condition::fail("Accepted", reason, message.clone()),
                };
                json!({
                    "parentRef": o.parent_ref,
                    "controllerName": opts.controller_name,
                    "conditions": conditions_json(&[accepted, resolved.clone()], r.generation, time),
                })
            })
            .collect();
        statuses.push(ObjectStatus {
            api_version: format!("{GATEWAY_GROUP}/{}", routes::served_version(r.kind)),
            kind: r.kind.as_str().into(),
            namespace: r.namespace.clone(),
            name: r.name.clone(),
            status: json!({ "parents": parents }),
        });
    }
    Compiled { model, statuses }
}

/// Attaches a route to the listeners its parentRefs select, as the spec orders the checks.
fn attach(objects: &Objects, gateways: &[GatewayState], r: &RouteView) -> Vec<ParentOutcome> {
    let mut out = Vec::new();
    for pr in &r.parent_refs {
        let group = pr.group.as_deref().unwrap_or(GATEWAY_GROUP);
        let kind = pr.kind.as_deref().unwrap_or("Gateway");
        if group != GATEWAY_GROUP || kind != "Gateway" {
            continue;
        }
        let ns = pr.namespace.as_deref().unwrap_or(&r.namespace);
        let Some(gi) = gateways
            .iter()
            .position(|g| g.namespace == ns && g.name == pr.name)
        else {
            // Not a Gateway of ours: another controller's business.
            continue;
        };
        let g = &gateways[gi];
        let selected: Vec<usize> = g
            .listeners
            .iter()
            .enumerate()
            .filter(|(_, l)| pr.section_name.as_deref().is_none_or(|s| s == l.name))
            .filter(|(_, l)| pr.port.is_none_or(|p| i32::from(l.port) == p))
            .map(|(i, _)| i)
            .collect();
        let mut outcome = ParentOutcome {
            parent_ref: pr.clone(),
            accepted: Ok(()),
            attached: Vec::new(),
        };
        if selected.is_empty() {
            outcome.accepted = Err((
                "NoMatchingParent",
                format!(
                    "Gateway {} has no listener matching sectionName {:?} port {:?}",
                    g.id(),
                    pr.section_name,
                    pr.port
                ),
            ));
            out.push(outcome);
            continue;
        }
        let allowed: Vec<usize> = selected
            .into_iter()
            .filter(|&i| g.listeners[i].allows(objects, &g.namespace, r.kind, &r.namespace))
            .collect();
        if allowed.is_empty() {
            outcome.accepted = Err((
                "NotAllowedByListeners",
                format!(
                    "no listener of Gateway {} allows {} from namespace {}",
                    g.id(),
                    r.kind.as_str(),
                    r.namespace
                ),
            ));
            out.push(outcome);
            continue;
        }
        let with_hosts: Vec<usize> =
            if matches!(r.kind, Kind::HTTPRoute | Kind::GRPCRoute | Kind::TLSRoute) {
                allowed
                    .into_iter()
                    .filter(|&i| {
                        hostname::intersect(g.listeners[i].hostname.as_deref(), &r.hostnames)
                            .is_some()
                    })
                    .collect()
            } else {
                allowed
            };
        if with_hosts.is_empty() {
            outcome.accepted = Err((
                "NoMatchingListenerHostname",
                format!(
                    "no hostname of the route intersects a listener hostname of Gateway {}",
                    g.id()
                ),
            ));
            out.push(outcome);
            continue;
        }
        if let Some(problem) = routes::unsupported_value(r) {
            outcome.accepted = Err(("UnsupportedValue", problem));
            out.push(outcome);
            continue;
        }
        outcome.attached = with_hosts
            .into_iter()
            .filter(|&i| g.listeners[i].programmable())
            .map(|i| (gi, i))
            .collect();
        out.push(outcome);
    }
    out
}

/// TCP and UDP listeners serve one route: "the oldest Route based on creation timestamp", then
/// `namespace/name` alphabetical. The others lose the listener; a parentRef left with no
/// listener is not accepted.
fn oldest_l4_route_wins(
    gateways: &[GatewayState],
    routes: &[RouteView],
    outcomes: &mut [Vec<ParentOutcome>],
) {
    let mut claims: BTreeMap<ListenerIdx, Vec<Claim>> = BTreeMap::new();
    for (ri, outs) in outcomes.iter().enumerate() {
        let r = &routes[ri];
        if !matches!(r.kind, Kind::TCPRoute | Kind::UDPRoute) {
            continue;
        }
        for o in outs {
            for &gl in &o.attached {
                claims
                    .entry(gl)
                    .or_default()
                    .push((r.created.clone(), r.id(), ri));
            }
        }
    }
    for ((g, l), mut routes_here) in claims {
        routes_here.sort();
        let winner = routes_here[0].1.clone();
        for (_, id, ri) in routes_here.into_iter().skip(1) {
            for o in outcomes[ri].iter_mut() {
                o.attached.retain(|&gl| gl != (g, l));
                if o.attached.is_empty() && o.accepted.is_ok() {
                    o.accepted = Err((
                        "NotAllowedByListeners",
                        format!(
                            "listener {} of Gateway {} already serves the older route {winner}; {id} is not attached",
                            gateways[g].listeners[l].name,
                            gateways[g].id()
                        ),
                    ));
                }
            }
        }
    }
}

fn sockets(g: &GatewayState, port: u16) -> Vec<SocketAddr> {
    g.addresses
        .iter()
        .map(|a| SocketAddr::new(*a, port))
        .collect()
}

fn listener_name(g: &GatewayState, l: usize) -> String {
    format!("{}/{}", g.id(), g.listeners[l].name)
}

/// The routes attached to (g, l), in route order.
fn attached_to<'a>(
    routes: &'a [RouteView],
    outcomes: &[Vec<ParentOutcome>],
    g: usize,
    l: usize,
) -> Vec<(usize, &'a RouteView)> {
    routes
        .iter()
        .enumerate()
        .filter(|(i, _)| outcomes[*i].iter().any(|o| o.attached.contains(&(g, l))))
        .collect()
}

/// Spreads backendRef weights over endpoints: each endpoint gets weight × 1000 / endpoints.
pub(crate) fn weighted_endpoints(
    objects: &Objects,
    r: &RouteView,
    refs: &[BackendRef],
    problem: &mut Option<RefProblem>,
) -> Vec<WeightedEndpoint> {
    let mut out = Vec::new();
    for br in refs {
        let weight = u32::try_from(br.weight.unwrap_or(1)).unwrap_or(0);
        match resolve_backend(objects, r.kind.as_str(), &r.namespace, br) {
            Ok(svc) => {
                if weight == 0 || svc.endpoints.is_empty() {
                    continue;
                }
                let n = u32::try_from(svc.endpoints.len()).unwrap_or(u32::MAX);
                let each = (weight.saturating_mul(1000) / n).max(1);
                for &address in svc.endpoints.iter() {
                    out.push(WeightedEndpoint {
                        address,
                        weight: each,
                        backend: svc.name.clone(),
                    });
                }
            }
            Err(p) => {
                problem.get_or_insert(p);
            }
        }
    }
    out
}

fn build_l4(
    objects: &Objects,
    gateways: &[GatewayState],
    routes: &[RouteView],
    outcomes: &[Vec<ParentOutcome>],
    model: &mut Model,
    problems: &mut [Option<RefProblem>],
) {
    let mut seen = Vec::new();
    for (gi, g) in gateways.iter().enumerate() {
        for (li, l) in g.listeners.iter().enumerate() {
            let protocol = match l.protocol {
                Some(Protocol::Tcp) if l.programmable() => L4Protocol::Tcp,
                Some(Protocol::Udp) if l.programmable() => L4Protocol::Udp,
                _ => continue,
            };
            let route = attached_to(routes, outcomes, gi, li).into_iter().next();
            let mut backends = Vec::new();
            if let Some((ri, r)) = route
                && let RouteRules::L4(refs) = &r.rules
            {
                backends = weighted_endpoints(objects, r, refs, &mut problems[ri]);
            }
            for address in sockets(g, l.port) {
                // The first Gateway to claim a socket keeps it.
                if seen.contains(&(address, protocol)) {
                    continue;
                }
                seen.push((address, protocol));
                model.l4.push(L4Listener {
                    name: listener_name(g, li),
                    address,
                    protocol,
                    route: route.map(|(_, r)| format!("{} {}", r.kind.as_str(), r.id())),
                    backends: backends.clone(),
                });
            }
        }
    }
}

fn build_http(
    objects: &Objects,
    gateways: &[GatewayState],
    routes: &[RouteView],
    outcomes: &[Vec<ParentOutcome>],
    model: &mut Model,
    problems: &mut [Option<RefProblem>],
) {
    let mut by_socket: HttpSockets = BTreeMap::new();
    for (gi, g) in gateways.iter().enumerate() {
        for (li, l) in g.listeners.iter().enumerate() {
            let tls = match l.protocol {
                Some(Protocol::Http) if l.programmable() => false,
                Some(Protocol::Https) if l.programmable() => true,
                _ => continue,
            };
            let attached = attached_to(routes, outcomes, gi, li);
            for address in sockets(g, l.port) {
                let (listener, hosts) = by_socket.entry(address).or_insert_with(|| {
                    (
                        HttpListener {
                            names: Vec::new(),
                            address,
                            tls: tls.then(Vec::new),
                            hosts: Vec::new(),
                            exact_hosts: Default::default(),
                        },
                        BTreeMap::new(),
                    )
                });
                listener.names.push(listener_name(g, li));
                if let Some(certs) = listener.tls.as_mut() {
                    certs.extend(l.certificates.iter().cloned());
                }
                // Without any route, the listener's own hostname still gets a (404) virtual host.
                hosts.entry(l.hostname.clone()).or_default();
                for (ri, r) in &attached {
                    let Some(patterns) = hostname::intersect(l.hostname.as_deref(), &r.hostnames)
                    else {
                        continue;
                    };
                    let rules = routes::http_rules(objects, r, &mut problems[*ri]);
                    for p in patterns {
                        hosts.entry(p).or_default().extend(rules.iter().cloned());
                    }
                }
            }
        }
    }
    for (_, (mut listener, hosts)) in by_socket {
        let mut hosts: Vec<VirtualHost> = hosts
            .into_iter()
            .map(|(hostname, mut rules)| {
                rules.sort_by(|a, b| crate::http::precedence(&a.order, &b.order));
                VirtualHost { hostname, rules }
            })
            .collect();
        hosts.sort_by_key(|h| hostname::order_key(&h.hostname));
        listener.exact_hosts = hosts
            .iter()
            .enumerate()
            .filter_map(|(i, h)| {
                h.hostname
                    .as_ref()
                    .filter(|n| !n.starts_with("*."))
                    .map(|n| (n.clone(), i))
            })
            .collect();
        listener.hosts = hosts;
        model.http.push(listener);
    }
}

fn build_passthrough(
    objects: &Objects,
    gateways: &[GatewayState],
    routes: &[RouteView],
    outcomes: &[Vec<ParentOutcome>],
    model: &mut Model,
    problems: &mut [Option<RefProblem>],
) {
    let mut by_socket: BTreeMap<SocketAddr, PassthroughListener> = BTreeMap::new();
    for (gi, g) in gateways.iter().enumerate() {
        for (li, l) in g.listeners.iter().enumerate() {
            if l.protocol != Some(Protocol::Tls) || !l.programmable() {
                continue;
            }
            let attached = attached_to(routes, outcomes, gi, li);
            for address in sockets(g, l.port) {
                let listener = by_socket
                    .entry(address)
                    .or_insert_with(|| PassthroughListener {
                        names: Vec::new(),
                        address,
                        routes: Vec::new(),
                    });
                listener.names.push(listener_name(g, li));
                for (ri, r) in &attached {
                    let RouteRules::L4(refs) = &r.rules else {
                        continue;
                    };
                    let Some(patterns) = hostname::intersect(l.hostname.as_deref(), &r.hostnames)
                    else {
                        continue;
                    };
                    let backends = weighted_endpoints(objects, r, refs, &mut problems[*ri]);
                    for hostname in patterns {
                        if listener.routes.iter().any(|x| x.hostname == hostname) {
                            continue; // an older route already holds this hostname
                        }
                        listener.routes.push(SniRoute {
                            hostname,
                            route: r.id(),
                            backends: backends.clone(),
                        });
                    }
                }
            }
        }
    }
    for (_, mut l) in by_socket {
        l.routes.sort_by_key(|r| hostname::order_key(&r.hostname));
        model.passthrough.push(l);
    }
}

fn gateway_status(g: &GatewayState, time: &str) -> ObjectStatus {
    let valid = g.listeners.iter().filter(|l| l.programmable()).count();
    let accepted = match (&g.address_problem, valid, g.listeners.len()) {
        (Some((r, m)), _, _) => Condition::fail("Accepted", r, m.clone()),
        (None, v, n) if v == n => Condition::ok("Accepted", "Accepted", "accepted by nodegate"),
        (None, 0, _) => Condition::fail("Accepted", "ListenersNotValid", "no listener is valid"),
        (None, _, _) => Condition::ok(
            "Accepted",
            "ListenersNotValid",
            "some listeners are not valid",
        ),
    };
    let programmed = if g.address_problem.is_none() && valid > 0 {
        Condition::ok(
            "Programmed",
            "Programmed",
            "listeners programmed on this node",
        )
    } else {
        Condition::fail("Programmed", "Invalid", "nothing could be programmed")
    };
    let listeners: Vec<Value> = g
        .listeners
        .iter()
        .map(|l| {
            json!({
                "name": l.name,
                "supportedKinds": l.kinds.iter().map(|k| json!({"group": GATEWAY_GROUP, "kind": k.as_str()})).collect::<Vec<_>>(),
                "attachedRoutes": l.attached_routes,
                "conditions": conditions_json(&l.conditions(), g.generation, time),
            })
        })
        .collect();
    let addresses: Vec<Value> = g
        .addresses
        .iter()
        .map(|a| json!({"type": "IPAddress", "value": a.to_string()}))
        .collect();
    ObjectStatus {
        api_version: format!("{GATEWAY_GROUP}/v1"),
        kind: "Gateway".into(),
        namespace: g.namespace.clone(),
        name: g.name.clone(),
        status: json!({
            "addresses": addresses,
            "conditions": conditions_json(&[accepted, programmed], g.generation, time),
            "listeners": listeners,
        }),
    }
}

/// Normalises `x` into the parentRef shape (used by `routes`).
pub(crate) fn parent_refs<T: serde::Serialize>(refs: Option<&Vec<T>>) -> Vec<ParentRef> {
    refs.into_iter().flatten().filter_map(normalize).collect()
}

/// metadata.creationTimestamp as RFC 3339 ("" when unset, which sorts oldest).
pub(crate) fn created(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    meta.creation_timestamp
        .as_ref()
        .and_then(|t| serde_json::to_value(t).ok())
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Shorthand used by `routes`.
pub(crate) fn ns_name(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> (String, String) {
    (namespace_of(meta).to_string(), name_of(meta).to_string())
}
