//! `compile`: objects in, model and statuses out.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use serde_json::{Value, json};

use crate::{
    attach::{self, ByListener},
    gateway::{self, GatewayState, Protocol, gateway_state},
    hostname,
    http::HttpRule,
    l4,
    model::{HttpListener, Model, VirtualHost},
    objects::{Kind, Object, Objects, name_of, namespace_of},
    refs::{GATEWAY_GROUP, ParentRef, RefProblem, normalize},
    routes::{self, RouteRules},
    status::{Condition, ObjectStatus, conditions_json},
    tls,
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
    /// Rules dropped as invalid, with the spec's reason.
    pub invalid_rules: Vec<(usize, routes::RuleProblem)>,
}

impl RouteView {
    /// `namespace/name`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The spec's tie-break between routes: "The oldest Route based on creation timestamp",
    /// then "the Route appearing first in alphabetical order by {namespace}/{name}".
    pub fn age_key(&self) -> (&str, &str, &str) {
        (&self.created, &self.namespace, &self.name)
    }
}

/// HTTP listeners by socket, with their rules by hostname pattern.
type HttpSockets = BTreeMap<SocketAddr, (HttpListener, BTreeMap<Option<String>, Vec<HttpRule>>)>;

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
    gateway::mark_socket_conflicts(&mut gateways);

    // Routes of every kind, attached to listeners.
    let routes = routes::collect(objects);
    let outcomes = attach::attach_all(objects, &gateways, &routes);
    let attached = attach::by_listener(&routes, &outcomes);
    for (&(g, l), list) in &attached {
        gateways[g].listeners[l].attached_routes = u32::try_from(list.len()).unwrap_or(u32::MAX);
    }

    // The model: only valid listeners are served.
    let mut model = Model::default();
    let mut rule_problems: Vec<Option<RefProblem>> = vec![None; routes.len()];
    l4::build(
        objects,
        &gateways,
        &routes,
        &attached,
        &mut model,
        &mut rule_problems,
    );
    build_http(
        objects,
        &gateways,
        &routes,
        &attached,
        &mut model,
        &mut rule_problems,
    );
    tls::build(
        objects,
        &gateways,
        &routes,
        &attached,
        &mut model,
        &mut rule_problems,
    );
    // Routes not compiled anywhere (not attached, or an L4 route that lost its listener) still
    // report their unresolved references.
    for (i, r) in routes.iter().enumerate() {
        if rule_problems[i].is_none() {
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
                let mut conditions = vec![
                    match &o.accepted {
                        Ok(()) => Condition::ok("Accepted", "Accepted", "route accepted"),
                        Err((reason, message)) => {
                            Condition::fail("Accepted", reason, message.clone())
                        }
                    },
                    resolved.clone(),
                ];
                // "Drop Rule(s): ... The message for this condition MUST start with the prefix
                // 'Dropped Rule' ... the Accepted condition MUST be set to True". "This condition
                // MUST NOT be set if a Route is fully valid, fully invalid, or not accepted."
                if o.accepted.is_ok() && !r.invalid_rules.is_empty() {
                    let (reason, _) = &r.invalid_rules[0].1;
                    let detail: Vec<String> = r
                        .invalid_rules
                        .iter()
                        .map(|(i, (_, m))| format!("rule {i}: {m}"))
                        .collect();
                    conditions.push(Condition {
                        type_: "PartiallyInvalid",
                        status: true,
                        reason,
                        message: format!("Dropped Rule(s): {}", detail.join("; ")),
                    });
                }
                json!({
                    "parentRef": o.parent_ref,
                    "controllerName": opts.controller_name,
                    "conditions": conditions_json(&conditions, r.generation, time),
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

/// HTTP and HTTPS listeners, one [`HttpListener`] per bound socket: Gateway listeners sharing a
/// port are told apart by hostname, so their routes go to per-hostname virtual hosts, each with
/// its rules in the spec's precedence order.
fn build_http(
    objects: &Objects,
    gateways: &[GatewayState],
    routes: &[RouteView],
    attached: &ByListener,
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
            let here = attached
                .get(&(gi, li))
                .map(Vec::as_slice)
                .unwrap_or_default();
            for ip in &g.addresses {
                let address = SocketAddr::new(*ip, l.port);
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
                listener.names.push(format!("{}/{}", g.id(), l.name));
                if let Some(certs) = listener.tls.as_mut() {
                    certs.extend(l.certificates.iter().cloned());
                }
                // Without any route, the listener's own hostname still gets a (404) virtual host.
                hosts.entry(l.hostname.clone()).or_default();
                for &ri in here {
                    let r = &routes[ri];
                    let Some(patterns) = hostname::intersect(l.hostname.as_deref(), &r.hostnames)
                    else {
                        continue;
                    };
                    let rules = routes::http_rules(objects, r, &mut problems[ri]);
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
