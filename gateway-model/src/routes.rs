//! Routes of every kind in one shape, and HTTPRoute/GRPCRoute rules compiled into [`HttpRule`]s.
//!
//! The generated Gateway API structs differ per kind but serialise to the same JSON; rules are
//! read through that JSON so one piece of code serves HTTP, gRPC and per-backend filters.

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::{
    compile::{RouteView, created, ns_name},
    http::{
        Backend, Cors, Fallback, Filter, HeaderModifier, HttpRule, Matcher, OrderKey, PathMatch,
        PathModifier, Retry, Timeouts, ValueMatch,
    },
    objects::{Kind, Object, Objects},
    refs::{BackendRef, ParentRef, RefProblem, backend_problem, resolve_backend},
};

/// The rules of a route, by family.
#[derive(Debug)]
pub(crate) enum RouteRules {
    /// HTTPRoute rules as JSON.
    Http(Vec<Value>),
    /// GRPCRoute rules as JSON.
    Grpc(Vec<Value>),
    /// TCP/UDP/TLS routes: the backendRefs of every rule (the spec allows one rule in practice).
    L4(Vec<BackendRef>),
}

/// The version under which each kind's status is written.
pub(crate) fn served_version(kind: Kind) -> &'static str {
    match kind {
        Kind::TCPRoute | Kind::UDPRoute => "v1alpha2",
        _ => "v1",
    }
}

fn json_rules<T: serde::Serialize>(rules: &[T]) -> Vec<Value> {
    rules
        .iter()
        .filter_map(|r| serde_json::to_value(r).ok())
        .collect()
}

fn l4_refs<T: serde::Serialize>(rules: &[T]) -> Vec<BackendRef> {
    json_rules(rules)
        .iter()
        .flat_map(|r| r["backendRefs"].as_array().into_iter().flatten())
        .filter_map(|b| BackendRef::deserialize(b).ok())
        .collect()
}

/// The parentRefs of any route kind in the common shape, field by field (the generated structs
/// have the same fields).
macro_rules! typed_parent_refs {
    ($refs:expr) => {
        $refs
            .iter()
            .flatten()
            .map(|p| ParentRef {
                group: p.group.clone(),
                kind: p.kind.clone(),
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                section_name: p.section_name.clone(),
                port: p.port,
            })
            .collect::<Vec<ParentRef>>()
    };
}

/// One route object in the common shape; None for objects that are not routes.
pub(crate) fn view(o: &Object) -> Option<RouteView> {
    let (kind, meta, parents, hostnames, rules) = match o {
        Object::HTTPRoute(r) => (
            Kind::HTTPRoute,
            &r.metadata,
            typed_parent_refs!(r.spec.parent_refs),
            r.spec.hostnames.clone().unwrap_or_default(),
            RouteRules::Http(json_rules(r.spec.rules.as_deref().unwrap_or_default())),
        ),
        Object::GRPCRoute(r) => (
            Kind::GRPCRoute,
            &r.metadata,
            typed_parent_refs!(r.spec.parent_refs),
            r.spec.hostnames.clone().unwrap_or_default(),
            RouteRules::Grpc(json_rules(r.spec.rules.as_deref().unwrap_or_default())),
        ),
        Object::TLSRoute(r) => (
            Kind::TLSRoute,
            &r.metadata,
            typed_parent_refs!(r.spec.parent_refs),
            r.spec.hostnames.clone(),
            RouteRules::L4(l4_refs(&r.spec.rules)),
        ),
        Object::TCPRoute(r) => (
            Kind::TCPRoute,
            &r.metadata,
            typed_parent_refs!(r.spec.parent_refs),
            Vec::new(),
            RouteRules::L4(l4_refs(&r.spec.rules)),
        ),
        Object::UDPRoute(r) => (
            Kind::UDPRoute,
            &r.metadata,
            typed_parent_refs!(r.spec.parent_refs),
            Vec::new(),
            RouteRules::L4(l4_refs(&r.spec.rules)),
        ),
        _ => return None,
    };
    let (namespace, name) = ns_name(meta);
    let rule_count = match &rules {
        RouteRules::Http(rules) | RouteRules::Grpc(rules) => rules.len(),
        RouteRules::L4(_) => usize::MAX,
    };
    Some(RouteView {
        invalid_rules: invalid_rules(&rules),
        kind,
        namespace,
        name,
        created: created(meta),
        generation: meta.generation,
        parent_refs: parents,
        hostnames,
        rules,
        rule_count,
    })
}

/// The route kinds, in the order their objects (and statuses) come.
pub(crate) const ROUTE_KINDS: [Kind; 5] = [
    Kind::HTTPRoute,
    Kind::GRPCRoute,
    Kind::TLSRoute,
    Kind::TCPRoute,
    Kind::UDPRoute,
];

/// Every Service (namespace, name) a route's rules may refer to: backendRefs of every rule,
/// valid or not, and mirror backendRefs. A superset is fine: it only decides which routes are
/// recompiled when a Service or EndpointSlice changes.
pub(crate) fn service_deps(r: &RouteView) -> Vec<(String, String)> {
    fn walk(v: &Value, ns: &str, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    let mut add = |b: &Value| {
                        if let Some(name) = b["name"].as_str() {
                            let ns = b["namespace"].as_str().unwrap_or(ns);
                            out.push((ns.to_string(), name.to_string()));
                        }
                    };
                    match (k.as_str(), v) {
                        ("backendRefs", Value::Array(refs)) => refs.iter().for_each(&mut add),
                        ("backendRef", b @ Value::Object(_)) => add(b),
                        _ => {}
                    }
                    walk(v, ns, out);
                }
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, ns, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    match &r.rules {
        RouteRules::L4(refs) => out.extend(refs.iter().map(|b| {
            (
                b.namespace.clone().unwrap_or_else(|| r.namespace.clone()),
                b.name.clone(),
            )
        })),
        RouteRules::Http(rules) | RouteRules::Grpc(rules) => {
            rules.iter().for_each(|v| walk(v, &r.namespace, &mut out));
        }
    }
    out.sort();
    out.dedup();
    out
}

fn s(v: &Value) -> Option<String> {
    v.as_str().map(str::to_string)
}

/// Why one rule is invalid: (the spec's reason, message). An invalid rule is dropped; a route
/// whose rules are all invalid is not accepted.
pub(crate) type RuleProblem = (&'static str, String);

/// The invalid rules of a route, by index. The spec: "All valid rules within a Route attached to
/// this Listener should be implemented. Invalid Route rules can be ignored (sometimes that will
/// mean the full Route)." Besides what nodegate cannot serve, this re-checks the CRD's CEL rules,
/// which standalone YAML never passed through an API server.
pub(crate) fn invalid_rules(rules: &RouteRules) -> Vec<(usize, RuleProblem)> {
    let (rules, grpc) = match rules {
        RouteRules::Http(rules) => (rules, false),
        RouteRules::Grpc(rules) => (rules, true),
        RouteRules::L4(_) => return Vec::new(),
    };
    rules
        .iter()
        .enumerate()
        .filter_map(|(i, rule)| rule_problem(rule, grpc).map(|p| (i, p)))
        .collect()
}

fn rule_problem(rule: &Value, grpc: bool) -> Option<RuleProblem> {
    let unsupported = |m: String| Some(("UnsupportedValue", m));
    let matches: Vec<&Value> = rule["matches"].as_array().into_iter().flatten().collect();
    for m in &matches {
        if let Err(e) = matcher(m, grpc) {
            return unsupported(e);
        }
    }
    let rule_filters: Vec<&Value> = rule["filters"].as_array().into_iter().flatten().collect();
    let backends: Vec<&Value> = rule["backendRefs"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    let has = |filters: &[&Value], ty: &str| filters.iter().filter(|f| f["type"] == ty).count();
    // "This reason is used with the Accepted condition when there are incompatible filters
    // present on a route rule (for example if the URLRewrite and RequestRedirect are both present
    // on an HTTPRoute)."
    if has(&rule_filters, "RequestRedirect") > 0 && has(&rule_filters, "URLRewrite") > 0 {
        return Some((
            "IncompatibleFilters",
            "RequestRedirect and URLRewrite cannot be used together".into(),
        ));
    }
    // CEL: "RequestRedirect filter must not be used together with backendRefs".
    if has(&rule_filters, "RequestRedirect") > 0 && !backends.is_empty() {
        return Some((
            "IncompatibleFilters",
            "RequestRedirect filter must not be used together with backendRefs".into(),
        ));
    }
    let mut all_filters = vec![rule_filters.clone()];
    all_filters.extend(
        backends
            .iter()
            .map(|b| b["filters"].as_array().into_iter().flatten().collect()),
    );
    // "ReplacePrefixMatch is only compatible with a PathPrefix HTTPRouteMatch. Using any other
    // HTTPRouteMatch type on the same HTTPRouteRule will result in the implementation setting
    // the Accepted Condition for the Route to status: False." (CEL: exactly one PathPrefix match.)
    let one_prefix = matches.len() == 1 && matches[0]["path"]["type"] == "PathPrefix";
    for filters in &all_filters {
        for ty in [
            "RequestHeaderModifier",
            "ResponseHeaderModifier",
            "RequestRedirect",
            "URLRewrite",
            "CORS",
        ] {
            if has(filters, ty) > 1 {
                return unsupported(format!("{ty} filter cannot be repeated"));
            }
        }
        for f in filters {
            for key in ["requestRedirect", "urlRewrite"] {
                if f[key]["path"]["type"] == "ReplacePrefixMatch" && !grpc && !one_prefix {
                    return unsupported(format!(
                        "{key}.path.replacePrefixMatch needs exactly one PathPrefix match"
                    ));
                }
            }
            let mirror = &f["requestMirror"];
            if !mirror["percent"].is_null() && !mirror["fraction"].is_null() {
                return unsupported(
                    "Only one of percent or fraction may be specified in HTTPRequestMirrorFilter"
                        .into(),
                );
            }
            if f["type"] == "RequestMirror" && mirror["backendRef"].is_null() {
                return unsupported("RequestMirror needs a backendRef".into());
            }
        }
    }
    let mut parsed = [None, None];
    for (slot, key) in ["request", "backendRequest"].into_iter().enumerate() {
        if let Some(d) = rule["timeouts"][key].as_str() {
            match parse_duration(d) {
                Some(d) => parsed[slot] = Some(d),
                None => {
                    return unsupported(format!(
                        "timeouts.{key} {d:?} is not a Gateway API duration"
                    ));
                }
            }
        }
    }
    // CEL: "backendRequest timeout cannot be longer than request timeout" (0s disables it).
    if let [Some(request), Some(backend)] = parsed
        && !request.is_zero()
        && backend > request
    {
        return unsupported("backendRequest timeout cannot be longer than request timeout".into());
    }
    if let Some(b) = rule["retry"]["backoff"].as_str()
        && parse_duration(b).is_none()
    {
        return unsupported(format!("retry.backoff {b:?} is not a Gateway API duration"));
    }
    None
}

/// Whether a filter is an ExtensionRef, which nodegate cannot resolve: "If a reference to a custom
/// filter type cannot be resolved, the filter MUST NOT be skipped. Instead, requests that would
/// have been processed by that filter MUST receive a HTTP error response."
fn is_extension_ref(f: &Value) -> bool {
    f["type"] == "ExtensionRef"
}

fn extension_ref_problem(f: &Value) -> RefProblem {
    let e = &f["extensionRef"];
    RefProblem {
        reason: "InvalidKind",
        message: format!(
            "ExtensionRef filter {}/{} {} is not supported by nodegate",
            e["group"].as_str().unwrap_or_default(),
            e["kind"].as_str().unwrap_or_default(),
            e["name"].as_str().unwrap_or_default()
        ),
    }
}

/// Gateway API durations: `^([0-9]{1,5}(h|m|s|ms)){1,4}$`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let d: gateway_api::duration::Duration = s.parse().ok()?;
    Some(Duration::from_millis(u64::try_from(d.as_millis()).ok()?))
}

fn value_match(v: &Value) -> Result<(String, ValueMatch), String> {
    let name = s(&v["name"]).ok_or("match without a name")?;
    let value = s(&v["value"]).unwrap_or_default();
    let m = match v["type"].as_str().unwrap_or("Exact") {
        "Exact" => ValueMatch::Exact(value),
        "RegularExpression" => ValueMatch::Regex(
            regex::Regex::new(&value)
                .map_err(|e| format!("invalid regular expression {value:?}: {e}"))?,
        ),
        other => return Err(format!("match type {other} is not supported")),
    };
    Ok((name, m))
}

/// Compiles one HTTPRouteMatch (or GRPCRouteMatch) into a [`Matcher`] and its precedence fields.
fn matcher(m: &Value, grpc: bool) -> Result<(Matcher, u8, usize), String> {
    let (path, kind, len) = if grpc {
        grpc_path(&m["method"])?
    } else {
        let ty = m["path"]["type"].as_str().unwrap_or("PathPrefix");
        let value = m["path"]["value"].as_str().unwrap_or("/").to_string();
        let len = value.len();
        match ty {
            "Exact" => (PathMatch::Exact(value), 0, len),
            "PathPrefix" => (PathMatch::Prefix(value), 1, len),
            "RegularExpression" => (
                PathMatch::Regex(
                    regex::Regex::new(&value)
                        .map_err(|e| format!("invalid path regular expression {value:?}: {e}"))?,
                ),
                2,
                len,
            ),
            other => return Err(format!("path match type {other} is not supported")),
        }
    };
    let mut headers = Vec::new();
    for h in m["headers"].as_array().into_iter().flatten() {
        let (name, v) = value_match(h)?;
        headers.push((name.to_ascii_lowercase(), v));
    }
    let mut query = Vec::new();
    for q in m["queryParams"].as_array().into_iter().flatten() {
        query.push(value_match(q)?);
    }
    Ok((
        Matcher {
            path,
            headers,
            query,
            method: s(&m["method"]).filter(|_| !grpc),
        },
        kind,
        len,
    ))
}

/// GRPCRoute method matches as HTTP/2 paths `/{service}/{method}`.
fn grpc_path(method: &Value) -> Result<(PathMatch, u8, usize), String> {
    let service = s(&method["service"]);
    let name = s(&method["method"]);
    let len = service.as_deref().map_or(0, str::len) + name.as_deref().map_or(0, str::len);
    match method["type"].as_str().unwrap_or("Exact") {
        "Exact" => Ok(match (service, name) {
            (Some(svc), Some(m)) => (PathMatch::Exact(format!("/{svc}/{m}")), 0, len),
            (Some(svc), None) => (PathMatch::Prefix(format!("/{svc}")), 1, len),
            (None, Some(m)) => (
                PathMatch::Regex(
                    regex::Regex::new(&format!("/[^/]+/{}", regex::escape(&m)))
                        .map_err(|e| e.to_string())?,
                ),
                2,
                len,
            ),
            (None, None) => (PathMatch::Prefix("/".into()), 1, 0),
        }),
        "RegularExpression" => {
            let svc = service.unwrap_or_else(|| "[^/]+".into());
            let m = name.unwrap_or_else(|| "[^/]+".into());
            let re = regex::Regex::new(&format!("/(?:{svc})/(?:{m})"))
                .map_err(|e| format!("invalid gRPC method regular expression: {e}"))?;
            Ok((PathMatch::Regex(re), 2, len))
        }
        other => Err(format!("gRPC method match type {other} is not supported")),
    }
}

fn header_modifier(v: &Value) -> HeaderModifier {
    let pairs = |key: &str| {
        v[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| Some((s(&p["name"])?, s(&p["value"]).unwrap_or_default())))
            .collect()
    };
    HeaderModifier {
        set: pairs("set"),
        add: pairs("add"),
        remove: v["remove"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(s)
            .collect(),
    }
}

fn path_modifier(v: &Value) -> Option<PathModifier> {
    match v["type"].as_str()? {
        "ReplaceFullPath" => Some(PathModifier::ReplaceFullPath(
            s(&v["replaceFullPath"]).unwrap_or_default(),
        )),
        "ReplacePrefixMatch" => Some(PathModifier::ReplacePrefixMatch(
            s(&v["replacePrefixMatch"]).unwrap_or_default(),
        )),
        _ => None,
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().into_iter().flatten().filter_map(s).collect()
}

/// A typed filter; None for ExtensionRef (handled by the caller) and rules already refused.
fn filter(
    objects: &Objects,
    r: &RouteView,
    f: &Value,
    problem: &mut Option<RefProblem>,
) -> Option<Filter> {
    Some(match f["type"].as_str()? {
        "RequestHeaderModifier" => {
            Filter::RequestHeaderModifier(header_modifier(&f["requestHeaderModifier"]))
        }
        "ResponseHeaderModifier" => {
            Filter::ResponseHeaderModifier(header_modifier(&f["responseHeaderModifier"]))
        }
        "RequestRedirect" => {
            let v = &f["requestRedirect"];
            Filter::RequestRedirect {
                scheme: s(&v["scheme"]),
                hostname: s(&v["hostname"]),
                port: v["port"].as_u64().and_then(|p| u16::try_from(p).ok()),
                path: path_modifier(&v["path"]),
                status: v["statusCode"]
                    .as_u64()
                    .and_then(|c| u16::try_from(c).ok())
                    .unwrap_or(302),
            }
        }
        "URLRewrite" => {
            let v = &f["urlRewrite"];
            Filter::UrlRewrite {
                hostname: s(&v["hostname"]),
                path: path_modifier(&v["path"]),
            }
        }
        "RequestMirror" => {
            let v = &f["requestMirror"];
            let br = BackendRef::deserialize(&v["backendRef"]).ok()?;
            let percent = if let Some(p) = v["percent"].as_f64() {
                p
            } else if let Some(n) = v["fraction"]["numerator"].as_f64() {
                100.0 * n
                    / v["fraction"]["denominator"]
                        .as_f64()
                        .unwrap_or(100.0)
                        .max(1.0)
            } else {
                100.0
            };
            Filter::RequestMirror {
                backend: backend(objects, r, &br, Vec::new(), problem),
                percent,
            }
        }
        "CORS" => {
            let v = &f["cors"];
            Filter::Cors(Cors {
                allow_origins: strings(&v["allowOrigins"]),
                allow_methods: strings(&v["allowMethods"]),
                allow_headers: strings(&v["allowHeaders"]),
                expose_headers: strings(&v["exposeHeaders"]),
                allow_credentials: v["allowCredentials"].as_bool().unwrap_or(false),
                max_age: v["maxAge"].as_u64().and_then(|m| u32::try_from(m).ok()),
            })
        }
        _ => return None,
    })
}

fn backend(
    objects: &Objects,
    r: &RouteView,
    br: &BackendRef,
    filters: Vec<Filter>,
    problem: &mut Option<RefProblem>,
) -> Backend {
    let weight = u32::try_from(br.weight.unwrap_or(1)).unwrap_or(0);
    match resolve_backend(objects, r.kind.as_str(), &r.namespace, br) {
        Ok(svc) => Backend {
            name: svc.name,
            weight,
            endpoints: svc.endpoints,
            h2c: svc.h2c || r.kind == Kind::GRPCRoute,
            filters,
            resolved: true,
        },
        Err(p) => {
            let name = format!(
                "{}/{}",
                br.namespace.as_deref().unwrap_or(&r.namespace),
                br.name
            );
            problem.get_or_insert(p);
            Backend {
                name,
                weight,
                endpoints: Default::default(),
                h2c: false,
                filters,
                resolved: false,
            }
        }
    }
}

/// The first unresolved backendRef of a route, for its ResolvedRefs condition.
pub(crate) fn first_ref_problem(objects: &Objects, r: &RouteView) -> Option<RefProblem> {
    let refs: Vec<BackendRef> = match &r.rules {
        RouteRules::L4(refs) => refs.clone(),
        RouteRules::Http(rules) | RouteRules::Grpc(rules) => rules
            .iter()
            .flat_map(|rule| rule["backendRefs"].as_array().into_iter().flatten())
            .filter_map(|b| BackendRef::deserialize(b).ok())
            .collect(),
    };
    let extension = match &r.rules {
        RouteRules::L4(_) => None,
        RouteRules::Http(rules) | RouteRules::Grpc(rules) => rules
            .iter()
            .flat_map(|rule| {
                let own = rule["filters"].as_array().into_iter().flatten();
                let per_backend = rule["backendRefs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|b| b["filters"].as_array().into_iter().flatten());
                own.chain(per_backend)
            })
            .find(|f| is_extension_ref(f))
            .map(extension_ref_problem),
    };
    refs.iter()
        .find_map(|br| backend_problem(objects, r.kind.as_str(), &r.namespace, br))
        .or(extension)
}

/// The HTTP rules of an HTTPRoute or GRPCRoute: one per (rule, match).
pub(crate) fn http_rules(
    objects: &Objects,
    r: &RouteView,
    problem: &mut Option<RefProblem>,
) -> Vec<HttpRule> {
    let (rules, grpc) = match &r.rules {
        RouteRules::Http(rules) => (rules, false),
        RouteRules::Grpc(rules) => (rules, true),
        RouteRules::L4(_) => return Vec::new(),
    };
    let mut out = Vec::new();
    for (ri, rule) in rules.iter().enumerate() {
        if r.invalid_rules.iter().any(|(i, _)| *i == ri) {
            continue; // dropped: the route is PartiallyInvalid (or not accepted at all)
        }
        let raw_filters: Vec<&Value> = rule["filters"].as_array().into_iter().flatten().collect();
        let mut extension = raw_filters.iter().find(|f| is_extension_ref(f)).copied();
        let filters: Vec<Filter> = if let Some(f) = extension {
            problem.get_or_insert(extension_ref_problem(f));
            Vec::new() // the rule answers 500: its filters must not half-run
        } else {
            raw_filters
                .iter()
                .filter_map(|f| filter(objects, r, f, problem))
                .collect()
        };
        let backends: Vec<Backend> = rule["backendRefs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|b| {
                let br = BackendRef::deserialize(b).ok()?;
                let raw: Vec<&Value> = b["filters"].as_array().into_iter().flatten().collect();
                let own: Vec<Filter> = raw
                    .iter()
                    .filter_map(|f| filter(objects, r, f, problem))
                    .collect();
                let mut backend = backend(objects, r, &br, own, problem);
                if let Some(f) = raw.iter().find(|f| is_extension_ref(f)) {
                    // Requests picked for this backend get a 500, in proportion to its weight.
                    problem.get_or_insert(extension_ref_problem(f));
                    backend.resolved = false;
                }
                Some(backend)
            })
            .collect();
        let redirects = filters
            .iter()
            .any(|f| matches!(f, Filter::RequestRedirect { .. }));
        let usable = backends.iter().any(|b| b.weight > 0 && b.resolved);
        let fallback = if extension.take().is_some() {
            Fallback::InternalError
        } else if usable || redirects {
            Fallback::Forward
        } else {
            Fallback::InternalError
        };
        let timeouts = Timeouts {
            request: rule["timeouts"]["request"]
                .as_str()
                .and_then(parse_duration)
                .filter(|d| !d.is_zero()),
            backend_request: rule["timeouts"]["backendRequest"]
                .as_str()
                .and_then(parse_duration)
                .filter(|d| !d.is_zero()),
        };
        let retry = rule.get("retry").filter(|v| !v.is_null()).map(|v| Retry {
            codes: v["codes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c.as_u64())
                .filter_map(|c| u16::try_from(c).ok())
                .collect(),
            attempts: v["attempts"]
                .as_u64()
                .and_then(|a| u32::try_from(a).ok())
                .unwrap_or(1),
            backoff: v["backoff"].as_str().and_then(parse_duration),
        });
        let default_match = [serde_json::json!({})];
        let matches = rule["matches"]
            .as_array()
            .map(Vec::as_slice)
            .filter(|m| !m.is_empty())
            .unwrap_or(&default_match);
        let route = format!("{} {}", r.kind.as_str(), r.id());
        let route_name = r.id();
        for (mi, m) in matches.iter().enumerate() {
            let Ok((matcher, path_kind, path_len)) = matcher(m, grpc) else {
                continue;
            };
            out.push(HttpRule {
                route: route.clone(),
                rule: ri,
                order: OrderKey {
                    path_kind,
                    path_len,
                    has_method: matcher.method.is_some(),
                    headers: matcher.headers.len(),
                    query: matcher.query.len(),
                    created: r.created.clone(),
                    route_name: route_name.clone(),
                    position: (ri, mi),
                },
                matcher,
                filters: filters.clone(),
                backends: backends.clone(),
                fallback,
                timeouts,
                retry: retry.clone(),
                grpc,
            });
        }
    }
    out
}
