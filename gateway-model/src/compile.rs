//! `compile`: objects in, model and statuses out.

use std::net::IpAddr;

use serde_json::{Value, json};

use crate::{
    attach::ParentOutcome,
    gateway::GatewayState,
    model::Model,
    objects::{Kind, Object, Objects, name_of, namespace_of},
    refs::{GATEWAY_GROUP, ParentRef, RefProblem},
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
#[derive(Debug)]
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
    /// How many rules the route has (`usize::MAX` for TCP/UDP/TLS routes); kept when a cached
    /// view drops the JSON of its rules.
    pub rule_count: usize,
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

/// Compiles every object into the model and the statuses. The same as one
/// [`Compiler::update`](crate::Compiler::update) of a new [`Compiler`](crate::Compiler); hold a
/// `Compiler` instead to recompile cheaply after a few objects changed.
pub fn compile(objects: &Objects, opts: &CompileOptions) -> Compiled {
    let mut compiler = crate::Compiler::one_shot(opts.clone());
    compiler.update(objects);
    compiler.into_compiled()
}

/// GatewayClass statuses and the names of our classes.
pub(crate) fn class_statuses(
    objects: &Objects,
    opts: &CompileOptions,
) -> (Vec<ObjectStatus>, Vec<String>) {
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
    (statuses, our_classes)
}

/// The last per-parent status entry built, with what it was built from: routes that share a
/// parentRef, outcome, ResolvedRefs problem, dropped rules and generation (most routes of a
/// snapshot) get a copy instead of serialising the same JSON again.
#[derive(Debug, Default)]
pub(crate) struct StatusMemo {
    last: Option<(ParentOutcomeKey, Value)>,
}

#[derive(Debug)]
struct ParentOutcomeKey {
    parent_ref: ParentRef,
    accepted: Result<(), (&'static str, String)>,
    problem: Option<RefProblem>,
    invalid_rules: Vec<(usize, routes::RuleProblem)>,
    generation: Option<i64>,
}

impl ParentOutcomeKey {
    fn matches(&self, r: &RouteView, o: &ParentOutcome, problem: &Option<RefProblem>) -> bool {
        self.generation == r.generation
            && self.parent_ref == o.parent_ref
            && self.accepted == o.accepted
            && self.problem == *problem
            && self.invalid_rules == r.invalid_rules
    }
}

/// The status of a route with at least one parentRef of ours.
pub(crate) fn route_status(
    r: &RouteView,
    outcomes: &[ParentOutcome],
    problem: &Option<RefProblem>,
    opts: &CompileOptions,
    memo: &mut StatusMemo,
) -> ObjectStatus {
    let time = opts.transition_time.as_str();
    let parent = |o: &ParentOutcome| {
        let resolved = match problem {
            None => Condition::ok("ResolvedRefs", "ResolvedRefs", "all references resolved"),
            Some(p) => Condition::fail("ResolvedRefs", p.reason, p.message.clone()),
        };
        let mut conditions = vec![
            match &o.accepted {
                Ok(()) => Condition::ok("Accepted", "Accepted", "route accepted"),
                Err((reason, message)) => Condition::fail("Accepted", reason, message.clone()),
            },
            resolved,
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
    };
    let parents: Vec<Value> = outcomes
        .iter()
        .map(|o| {
            if let Some((key, v)) = &memo.last
                && key.matches(r, o, problem)
            {
                return v.clone();
            }
            let v = parent(o);
            let key = ParentOutcomeKey {
                parent_ref: o.parent_ref.clone(),
                accepted: o.accepted.clone(),
                problem: problem.clone(),
                invalid_rules: r.invalid_rules.clone(),
                generation: r.generation,
            };
            memo.last = Some((key, v.clone()));
            v
        })
        .collect();
    let mut status = serde_json::Map::new();
    status.insert("parents".into(), Value::Array(parents));
    ObjectStatus {
        api_version: format!("{GATEWAY_GROUP}/{}", routes::served_version(r.kind)),
        kind: r.kind.as_str().into(),
        namespace: r.namespace.clone(),
        name: r.name.clone(),
        status: Value::Object(status),
    }
}

/// A Gateway's status.
pub(crate) fn gateway_status(g: &GatewayState, time: &str) -> ObjectStatus {
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

/// metadata.creationTimestamp as RFC 3339 ("" when unset, which sorts oldest).
pub(crate) fn created(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    let Some(t) = meta.creation_timestamp.as_ref() else {
        return String::new();
    };
    // What `Time` serialises to (`%Y-%m-%dT%H:%M:%SZ`), without going through its formatter
    // for the years that format pads to four digits.
    let d = k8s_openapi::jiff::tz::Offset::UTC.to_datetime(t.0);
    if (0..=9999).contains(&d.year()) {
        return format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            d.year(),
            d.month(),
            d.day(),
            d.hour(),
            d.minute(),
            d.second()
        );
    }
    serde_json::to_value(t)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Shorthand used by `routes`.
pub(crate) fn ns_name(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> (String, String) {
    (namespace_of(meta).to_string(), name_of(meta).to_string())
}
