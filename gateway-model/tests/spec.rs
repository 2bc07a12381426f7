//! The model's rules, table by table, each case named after the spec sentence it comes from.

use gateway_model::{
    CompileOptions, Compiled, Objects, compile,
    http::{Fallback, RequestView},
    model::L4Protocol,
    parse::parse_documents,
};
use serde_json::Value;

const CLASS: &str = "
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: nodegate}
spec: {controllerName: nodegate.io/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: other}
spec: {controllerName: example.com/other}
";

fn objects(yaml: &str) -> Objects {
    let mut objects = Objects::default();
    for (i, text) in [CLASS, yaml].iter().enumerate() {
        for r in parse_documents(&format!("doc{i}"), text) {
            objects.insert(r.unwrap_or_else(|e| panic!("{e}")));
        }
    }
    objects
}

fn compiled(yaml: &str) -> Compiled {
    compile(&objects(yaml), &CompileOptions::default())
}

fn status<'a>(c: &'a Compiled, kind: &str, ns: &str, name: &str) -> &'a Value {
    &c.statuses
        .iter()
        .find(|s| s.kind == kind && s.namespace == ns && s.name == name)
        .unwrap_or_else(|| panic!("no status for {kind} {ns}/{name}: {:#?}", c.statuses))
        .status
}

/// (status, reason) of condition `ty` in a conditions array.
fn cond(conditions: &Value, ty: &str) -> (String, String) {
    let c = conditions
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == ty)
        .unwrap_or_else(|| panic!("no {ty} condition in {conditions}"));
    (
        c["status"].as_str().unwrap().into(),
        c["reason"].as_str().unwrap().into(),
    )
}

fn listener<'a>(c: &'a Compiled, gw: &str, name: &str) -> &'a Value {
    status(c, "Gateway", "default", gw)["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == name)
        .unwrap()
}

fn parent_cond(c: &Compiled, kind: &str, ns: &str, name: &str, ty: &str) -> (String, String) {
    cond(&status(c, kind, ns, name)["parents"][0]["conditions"], ty)
}

fn svc(name: &str, ns: &str, port: u16, proto: &str, ips: &[&str]) -> String {
    let eps: Vec<String> = ips
        .iter()
        .map(|ip| format!("- addresses: [\"{ip}\"]\n  conditions: {{ready: true}}"))
        .collect();
    format!(
        "---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {ns}}}
spec:
  ports: [{{name: p, port: {port}, protocol: {proto}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-1
  namespace: {ns}
  labels: {{kubernetes.io/service-name: {name}}}
addressType: IPv4
ports: [{{name: p, port: {port}, protocol: {proto}}}]
endpoints:
{}
",
        eps.join("\n")
    )
}

const GW_HTTP: &str = "
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  gatewayClassName: nodegate
  listeners:
  - {name: http, protocol: HTTP, port: 80}
";

#[test]
fn gateway_class_of_ours_is_accepted_and_others_are_left_alone() {
    let c = compiled(GW_HTTP);
    assert_eq!(
        cond(
            &status(&c, "GatewayClass", "", "nodegate")["conditions"],
            "Accepted"
        )
        .0,
        "True"
    );
    assert!(
        c.statuses.iter().all(|s| s.name != "other"),
        "no status for another controller's class"
    );
    let other = compiled(&GW_HTTP.replace("gatewayClassName: nodegate", "gatewayClassName: other"));
    assert!(
        other.statuses.iter().all(|s| s.kind != "Gateway"),
        "Gateways of other classes get no status"
    );
}

#[test]
fn gateway_and_listener_conditions() {
    let c = compiled(GW_HTTP);
    let gw = status(&c, "Gateway", "default", "gw");
    assert_eq!(
        cond(&gw["conditions"], "Accepted"),
        ("True".into(), "Accepted".into())
    );
    assert_eq!(
        cond(&gw["conditions"], "Programmed"),
        ("True".into(), "Programmed".into())
    );
    let l = listener(&c, "gw", "http");
    for (ty, st, reason) in [
        ("Accepted", "True", "Accepted"),
        ("Programmed", "True", "Programmed"),
        ("ResolvedRefs", "True", "ResolvedRefs"),
        ("Conflicted", "False", "NoConflicts"),
    ] {
        assert_eq!(
            cond(&l["conditions"], ty),
            (st.into(), reason.into()),
            "{ty}"
        );
    }
    let kinds: Vec<&str> = l["supportedKinds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["HTTPRoute", "GRPCRoute"]);
    assert_eq!(l["attachedRoutes"], 0);
    assert_eq!(c.model.http.len(), 1);
    assert_eq!(c.model.http[0].address.to_string(), "0.0.0.0:80");
}

#[test]
fn listener_conflicts_follow_the_spec() {
    // (listeners, listener checked, expected Conflicted status/reason)
    let table = [
        (
            "HostnameConflict: two listeners have the same port and hostname",
            "- {name: a, protocol: HTTP, port: 80, hostname: x.example.com}\n  - {name: b, protocol: HTTP, port: 80, hostname: x.example.com}",
            "a",
            ("True", "HostnameConflict"),
        ),
        (
            "distinct hostnames on one port do not conflict",
            "- {name: a, protocol: HTTP, port: 80, hostname: x.example.com}\n  - {name: b, protocol: HTTP, port: 80, hostname: '*.example.com'}",
            "a",
            ("False", "NoConflicts"),
        ),
        (
            "ProtocolConflict: same port, incompatible protocols",
            "- {name: a, protocol: HTTP, port: 80}\n  - {name: b, protocol: TCP, port: 80}",
            "b",
            ("True", "ProtocolConflict"),
        ),
        (
            "TCP and UDP on one port number are different sockets",
            "- {name: a, protocol: UDP, port: 53}\n  - {name: b, protocol: TCP, port: 53}",
            "a",
            ("False", "NoConflicts"),
        ),
    ];
    for (why, listeners, which, (st, reason)) in table {
        let yaml = format!(
            "
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: default}}
spec:
  gatewayClassName: nodegate
  listeners:
  {listeners}
"
        );
        let c = compiled(&yaml);
        assert_eq!(
            cond(&listener(&c, "gw", which)["conditions"], "Conflicted"),
            (st.into(), reason.into()),
            "{why}"
        );
        if st == "True" {
            assert_eq!(
                cond(&listener(&c, "gw", which)["conditions"], "Programmed").0,
                "False",
                "{why}"
            );
        }
    }
}

#[test]
fn unsupported_protocol_and_route_kinds() {
    let c = compiled(
        "
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  gatewayClassName: nodegate
  listeners:
  - {name: sctp, protocol: SCTP, port: 9}
  - name: http
    protocol: HTTP
    port: 80
    allowedRoutes: {kinds: [{kind: TCPRoute}]}
",
    );
    assert_eq!(
        cond(&listener(&c, "gw", "sctp")["conditions"], "Accepted"),
        ("False".into(), "UnsupportedProtocol".into())
    );
    assert_eq!(
        cond(&listener(&c, "gw", "http")["conditions"], "ResolvedRefs"),
        ("False".into(), "InvalidRouteKinds".into())
    );
    assert_eq!(
        listener(&c, "gw", "http")["supportedKinds"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    let gw = status(&c, "Gateway", "default", "gw");
    assert_eq!(
        cond(&gw["conditions"], "Accepted"),
        ("True".into(), "ListenersNotValid".into())
    );
}

fn http_route(name: &str, ns: &str, extra_spec: &str, rules: &str) -> String {
    format!(
        "---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: {ns}, creationTimestamp: '2026-01-01T00:00:00Z'}}
spec:
  parentRefs: [{{name: gw, namespace: default}}]
{extra_spec}
  rules:
{rules}
"
    )
}

#[test]
fn route_attachment_outcomes() {
    let web = svc("web", "default", 8080, "TCP", &["10.0.0.1"]);
    let gw = "
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  gatewayClassName: nodegate
  listeners:
  - {name: http, protocol: HTTP, port: 80, hostname: '*.example.com'}
";
    let rules = "  - backendRefs: [{name: web, port: 8080}]";
    let table = [
        (
            "Accepted: hostnames intersect",
            http_route(
                "r",
                "default",
                "  hostnames: [a.example.com, a.example.net]",
                rules,
            ),
            ("True", "Accepted"),
        ),
        (
            "NoMatchingListenerHostname: no route hostname matches the listener's",
            http_route("r", "default", "  hostnames: [a.example.net]", rules),
            ("False", "NoMatchingListenerHostname"),
        ),
        (
            "NoMatchingParent: sectionName names no listener",
            http_route("r", "default", "", rules).replace(
                "{name: gw, namespace: default}",
                "{name: gw, namespace: default, sectionName: nope}",
            ),
            ("False", "NoMatchingParent"),
        ),
        (
            "NoMatchingParent: port names no listener",
            http_route("r", "default", "", rules).replace(
                "{name: gw, namespace: default}",
                "{name: gw, namespace: default, port: 81}",
            ),
            ("False", "NoMatchingParent"),
        ),
        (
            "NotAllowedByListeners: allowedRoutes defaults to Same namespace",
            http_route(
                "r",
                "team",
                "",
                "  - backendRefs: [{name: web, port: 8080, namespace: default}]",
            ),
            ("False", "NotAllowedByListeners"),
        ),
    ];
    for (why, route, want) in table {
        let ns = if route.contains("namespace: team") {
            "team"
        } else {
            "default"
        };
        let c = compiled(&format!("{gw}{web}{route}"));
        assert_eq!(
            parent_cond(&c, "HTTPRoute", ns, "r", "Accepted"),
            (want.0.into(), want.1.into()),
            "{why}"
        );
        let attached = listener(&c, "gw", "http")["attachedRoutes"]
            .as_u64()
            .unwrap();
        assert_eq!(
            attached,
            u64::from(want.0 == "True"),
            "{why}: attachedRoutes"
        );
    }
}

#[test]
fn allowed_routes_selector_uses_namespace_labels() {
    let yaml = format!(
        "
apiVersion: v1
kind: Namespace
metadata: {{name: team, labels: {{gateway-access: 'yes'}}}}
---
apiVersion: v1
kind: Namespace
metadata: {{name: other}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: default}}
spec:
  gatewayClassName: nodegate
  listeners:
  - name: http
    protocol: HTTP
    port: 80
    allowedRoutes:
      namespaces:
        from: Selector
        selector: {{matchLabels: {{gateway-access: 'yes'}}}}
{}{}",
        http_route("a", "team", "", "  - backendRefs: []"),
        http_route("b", "other", "", "  - backendRefs: []")
    );
    let c = compiled(&yaml);
    assert_eq!(
        parent_cond(&c, "HTTPRoute", "team", "a", "Accepted").0,
        "True"
    );
    assert_eq!(
        parent_cond(&c, "HTTPRoute", "other", "b", "Accepted"),
        ("False".into(), "NotAllowedByListeners".into())
    );
}

#[test]
fn cross_namespace_backend_refs_need_a_reference_grant() {
    let base = format!(
        "{GW_HTTP}{}{}",
        svc("web", "backends", 8080, "TCP", &["10.0.0.1"]),
        http_route(
            "r",
            "default",
            "",
            "  - backendRefs: [{name: web, namespace: backends, port: 8080}]"
        )
    );
    let c = compiled(&base);
    assert_eq!(
        parent_cond(&c, "HTTPRoute", "default", "r", "ResolvedRefs"),
        ("False".into(), "RefNotPermitted".into())
    );
    let rule = &c.model.http[0].hosts[0].rules[0];
    assert_eq!(
        rule.fallback,
        Fallback::InternalError,
        "an unresolved only backend means 500"
    );

    let grant = "---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: allow, namespace: backends}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: default}]
  to: [{group: '', kind: Service}]
";
    let c = compiled(&format!("{base}{grant}"));
    assert_eq!(
        parent_cond(&c, "HTTPRoute", "default", "r", "ResolvedRefs"),
        ("True".into(), "ResolvedRefs".into())
    );
    assert_eq!(
        c.model.http[0].hosts[0].rules[0].backends[0].endpoints[0].to_string(),
        "10.0.0.1:8080"
    );
}

#[test]
fn backend_ref_problems_have_the_spec_reasons() {
    let table = [
        (
            "BackendNotFound: no such Service",
            "{name: missing, port: 80}",
            "BackendNotFound",
        ),
        (
            "InvalidKind: not a Service",
            "{group: example.com, kind: Bucket, name: b}",
            "InvalidKind",
        ),
    ];
    for (why, backend, reason) in table {
        let c = compiled(&format!(
            "{GW_HTTP}{}",
            http_route("r", "default", "", &format!("  - backendRefs: [{backend}]"))
        ));
        assert_eq!(
            parent_cond(&c, "HTTPRoute", "default", "r", "ResolvedRefs"),
            ("False".into(), reason.into()),
            "{why}"
        );
        assert_eq!(
            parent_cond(&c, "HTTPRoute", "default", "r", "Accepted").0,
            "True",
            "{why}: still accepted"
        );
    }
}

fn view<'a>(
    host: &'a str,
    method: &'a str,
    path: &'a str,
    query: &'a str,
    headers: &'a dyn Fn(&str) -> Vec<String>,
) -> RequestView<'a> {
    RequestView {
        host,
        method,
        path,
        query,
        headers,
    }
}

#[test]
fn http_precedence_across_routes() {
    let web = svc("web", "default", 8080, "TCP", &["10.0.0.1"]);
    let older = "---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: zz-old, namespace: default, creationTimestamp: '2025-01-01T00:00:00Z'}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /tie}}]
    backendRefs: [{name: web, port: 8080}]
";
    let routes = http_route("aa-new", "default", "", "
  - matches: [{path: {type: PathPrefix, value: /tie}}]
    backendRefs: [{name: web, port: 8080}]
  - matches: [{path: {type: Exact, value: /exact}}]
  - matches: [{path: {type: PathPrefix, value: /exact}}]
  - matches: [{path: {type: PathPrefix, value: /a}}]
  - matches: [{path: {type: PathPrefix, value: /a/b}}]
  - matches: [{path: {type: PathPrefix, value: /m}, method: POST}]
  - matches: [{path: {type: PathPrefix, value: /m}, headers: [{name: X-One, value: '1'}, {name: x-two, value: '2'}]}]
  - matches: [{path: {type: PathPrefix, value: /m}, headers: [{name: x-one, value: '1'}]}]
  - matches: [{path: {type: RegularExpression, value: '/re/[0-9]+'}}]
  - matches: [{path: {type: PathPrefix, value: /q}, queryParams: [{name: v, type: RegularExpression, value: '^[ab]$'}]}]
");
    let c = compiled(&format!("{GW_HTTP}{web}{older}{routes}"));
    let l = &c.model.http[0];
    let hdrs = |name: &str| -> Vec<String> {
        match name {
            "x-one" => vec!["1".into()],
            "x-two" => vec!["2".into()],
            _ => vec![],
        }
    };
    let none = |_: &str| -> Vec<String> { vec![] };
    let pick = |method: &str, path: &str, query: &str, h: &dyn Fn(&str) -> Vec<String>| {
        l.route(&view("any.host", method, path, query, h))
            .map(|r| (r.route.clone(), r.rule))
    };
    let new = "HTTPRoute default/aa-new".to_string();
    // Ties across routes: the oldest creationTimestamp wins, whatever the names say.
    assert_eq!(
        pick("GET", "/tie", "", &none),
        Some(("HTTPRoute default/zz-old".into(), 0))
    );
    // Exact path over prefix.
    assert_eq!(pick("GET", "/exact", "", &none), Some((new.clone(), 1)));
    // Longest prefix first; prefixes match on path elements.
    assert_eq!(pick("GET", "/a/b/c", "", &none), Some((new.clone(), 4)));
    assert_eq!(pick("GET", "/a/bc", "", &none), Some((new.clone(), 3)));
    // Method before header count; most headers next.
    assert_eq!(pick("POST", "/m", "", &hdrs), Some((new.clone(), 5)));
    assert_eq!(pick("GET", "/m", "", &hdrs), Some((new.clone(), 6)));
    let one = |n: &str| -> Vec<String> {
        if n == "x-one" {
            vec!["1".into()]
        } else {
            vec![]
        }
    };
    assert_eq!(pick("GET", "/m", "", &one), Some((new.clone(), 7)));
    assert_eq!(pick("GET", "/m", "", &none), None, "no rule matches: 404");
    // Regular expressions match the whole path.
    assert_eq!(pick("GET", "/re/42", "", &none), Some((new.clone(), 8)));
    assert_eq!(pick("GET", "/re/42x", "", &none), None);
    // Query parameters.
    assert_eq!(pick("GET", "/q", "v=a", &none), Some((new.clone(), 9)));
    assert_eq!(pick("GET", "/q", "v=c", &none), None);
}

#[test]
fn hostname_precedence_exact_before_wildcard() {
    let gw = "
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  gatewayClassName: nodegate
  listeners:
  - {name: http, protocol: HTTP, port: 80, allowedRoutes: {namespaces: {from: All}}}
";
    let yaml = format!(
        "{gw}{}{}{}",
        http_route(
            "exact",
            "default",
            "  hostnames: [a.example.com]",
            "  - backendRefs: []"
        ),
        http_route(
            "wild",
            "default",
            "  hostnames: ['*.example.com']",
            "  - backendRefs: []"
        ),
        http_route("any", "default", "", "  - backendRefs: []")
    );
    let c = compiled(&yaml);
    let l = &c.model.http[0];
    let none = |_: &str| -> Vec<String> { vec![] };
    let who = |host: &str| {
        l.route(&view(host, "GET", "/", "", &none))
            .map(|r| r.route.clone())
    };
    assert_eq!(
        who("a.example.com").as_deref(),
        Some("HTTPRoute default/exact")
    );
    assert_eq!(
        who("A.Example.com:8080").as_deref(),
        Some("HTTPRoute default/exact")
    );
    assert_eq!(
        who("b.example.com").as_deref(),
        Some("HTTPRoute default/wild")
    );
    assert_eq!(who("example.org").as_deref(), Some("HTTPRoute default/any"));
}

const GW_L4: &str = "
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  gatewayClassName: nodegate
  addresses: [{type: IPAddress, value: 10.1.1.1}]
  listeners:
  - {name: tcp, protocol: TCP, port: 9000}
  - {name: udp, protocol: UDP, port: 5353}
";

fn tcp_route(name: &str, created: &str, backends: &str) -> String {
    format!(
        "---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {{name: {name}, namespace: default, creationTimestamp: '{created}'}}
spec:
  parentRefs: [{{name: gw, sectionName: tcp}}]
  rules:
  - backendRefs: {backends}
"
    )
}

#[test]
fn tcp_listener_takes_the_oldest_route_and_weights_spread_over_endpoints() {
    let yaml = format!(
        "{GW_L4}{}{}{}{}",
        svc("a", "default", 9000, "TCP", &["10.2.0.1", "10.2.0.2"]),
        svc("b", "default", 9000, "TCP", &["10.2.0.3"]),
        tcp_route("newer", "2026-02-01T00:00:00Z", "[{name: a, port: 9000}]"),
        tcp_route(
            "older",
            "2026-01-01T00:00:00Z",
            "[{name: a, port: 9000, weight: 80}, {name: b, port: 9000, weight: 20}, {name: b, port: 9000, weight: 0}]"
        )
    );
    let c = compiled(&yaml);
    assert_eq!(
        parent_cond(&c, "TCPRoute", "default", "older", "Accepted").0,
        "True"
    );
    // Conformance (TCPRouteMultipleRoutesAttachment): "Both routes report Accepted=True; the
    // newer route is rejected at the listener-attachment level" and the listener reports 2
    // attached routes; "only the oldest route is bound to the listener".
    assert_eq!(
        parent_cond(&c, "TCPRoute", "default", "newer", "Accepted"),
        ("True".into(), "Accepted".into())
    );
    let tcp = c
        .model
        .l4
        .iter()
        .find(|l| l.protocol == L4Protocol::Tcp)
        .unwrap();
    assert_eq!(
        tcp.address.to_string(),
        "10.1.1.1:9000",
        "spec.addresses is where it binds"
    );
    assert_eq!(tcp.route.as_deref(), Some("TCPRoute default/older"));
    let w: Vec<(String, u32)> = tcp
        .backends
        .iter()
        .map(|b| (b.address.to_string(), b.weight))
        .collect();
    // 80 over two endpoints, 20 over one; the weight-0 ref gets nothing.
    assert_eq!(
        w,
        vec![
            ("10.2.0.1:9000".into(), 40_000),
            ("10.2.0.2:9000".into(), 40_000),
            ("10.2.0.3:9000".into(), 20_000)
        ]
    );
    assert_eq!(listener(&c, "gw", "tcp")["attachedRoutes"], 2);
    // A UDP listener with no route still exists (it counts, and has no backends).
    let udp = c
        .model
        .l4
        .iter()
        .find(|l| l.protocol == L4Protocol::Udp)
        .unwrap();
    assert!(udp.backends.is_empty());
}

#[test]
fn endpoints_follow_kube_proxy_readiness() {
    let yaml = format!(
        "{GW_L4}
---
apiVersion: v1
kind: Service
metadata: {{name: s, namespace: default}}
spec: {{ports: [{{name: dns, port: 53, protocol: UDP}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: s-1, namespace: default, labels: {{kubernetes.io/service-name: s}}}}
addressType: IPv4
ports: [{{name: other, port: 1}}, {{name: dns, port: 5353}}]
endpoints:
- {{addresses: [10.3.0.1], conditions: {{ready: true}}}}
- {{addresses: [10.3.0.2], conditions: {{ready: false}}}}
- {{addresses: [10.3.0.3], conditions: {{ready: false, serving: true, terminating: true}}}}
- {{addresses: [10.3.0.4]}}
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: UDPRoute
metadata: {{name: u, namespace: default}}
spec:
  parentRefs: [{{name: gw, sectionName: udp}}]
  rules: [{{backendRefs: [{{name: s, port: 53}}]}}]
"
    );
    let c = compiled(&yaml);
    let udp = c
        .model
        .l4
        .iter()
        .find(|l| l.protocol == L4Protocol::Udp)
        .unwrap();
    let eps: Vec<String> = udp.backends.iter().map(|b| b.address.to_string()).collect();
    // The slice port is matched by name; not-ready and terminating endpoints are left out while a
    // ready one exists; a missing ready condition counts as ready.
    assert_eq!(eps, ["10.3.0.1:5353", "10.3.0.4:5353"]);

    let only_terminating = yaml
        .replace("- {addresses: [10.3.0.1], conditions: {ready: true}}\n", "")
        .replace("- {addresses: [10.3.0.4]}\n", "");
    let c = compiled(&only_terminating);
    let udp = c
        .model
        .l4
        .iter()
        .find(|l| l.protocol == L4Protocol::Udp)
        .unwrap();
    let eps: Vec<String> = udp.backends.iter().map(|b| b.address.to_string()).collect();
    assert_eq!(
        eps,
        ["10.3.0.3:5353"],
        "serving-and-terminating endpoints when none is ready"
    );
}

/// `--prefer-local-endpoints`: ready endpoints on the preferred node win when there are any;
/// otherwise every ready endpoint is used.
#[test]
fn a_preferred_node_keeps_only_its_endpoints_when_it_has_some() {
    let yaml = format!(
        "{GW_L4}
---
apiVersion: v1
kind: Service
metadata: {{name: s, namespace: default}}
spec: {{ports: [{{name: dns, port: 53, protocol: UDP}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: s-1, namespace: default, labels: {{kubernetes.io/service-name: s}}}}
addressType: IPv4
ports: [{{name: dns, port: 5353}}]
endpoints:
- {{addresses: [10.3.0.1], nodeName: node-a}}
- {{addresses: [10.3.0.2], nodeName: node-b}}
- {{addresses: [10.3.0.3], nodeName: node-a, conditions: {{ready: false}}}}
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: UDPRoute
metadata: {{name: u, namespace: default}}
spec:
  parentRefs: [{{name: gw, sectionName: udp}}]
  rules: [{{backendRefs: [{{name: s, port: 53}}]}}]
"
    );
    let eps = |node: Option<&str>| -> Vec<String> {
        let mut o = objects(&yaml);
        o.set_preferred_node(node.map(str::to_string));
        let c = compile(&o, &CompileOptions::default());
        let udp = c
            .model
            .l4
            .iter()
            .find(|l| l.protocol == L4Protocol::Udp)
            .unwrap();
        udp.backends.iter().map(|b| b.address.to_string()).collect()
    };
    assert_eq!(eps(None), ["10.3.0.1:5353", "10.3.0.2:5353"]);
    assert_eq!(
        eps(Some("node-a")),
        ["10.3.0.1:5353"],
        "the local ready endpoint only"
    );
    assert_eq!(eps(Some("node-b")), ["10.3.0.2:5353"]);
    assert_eq!(
        eps(Some("node-c")),
        ["10.3.0.1:5353", "10.3.0.2:5353"],
        "no local endpoint: all of them"
    );
}

#[test]
fn all_zero_weights_mean_500_and_no_ready_endpoints_mean_503() {
    let c = compiled(&format!(
        "{GW_HTTP}{}{}",
        svc("web", "default", 8080, "TCP", &[]),
        http_route(
            "r",
            "default",
            "",
            "  - matches: [{path: {value: /zero}}]\n    backendRefs: [{name: web, port: 8080, weight: 0}]\n  - matches: [{path: {value: /empty}}]\n    backendRefs: [{name: web, port: 8080}]"
        )
    ));
    let rules = &c.model.http[0].hosts[0].rules;
    let zero = rules.iter().find(|r| r.rule == 0).unwrap();
    assert_eq!(zero.fallback, Fallback::InternalError);
    let empty = rules.iter().find(|r| r.rule == 1).unwrap();
    assert_eq!(empty.fallback, Fallback::Forward);
    assert!(
        empty.backends[0].resolved && empty.backends[0].endpoints.is_empty(),
        "resolved but empty: the proxy answers 503"
    );
}

#[test]
fn filters_are_typed_and_extension_refs_rejected() {
    let c = compiled(&format!(
        "{GW_HTTP}{}",
        http_route(
            "r",
            "default",
            "",
            "
  - filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-a, value: '1'}], remove: [x-b]}
    - type: RequestRedirect
      requestRedirect: {scheme: https, statusCode: 301}
    timeouts: {request: 10s, backendRequest: 500ms}"
        )
    ));
    let rule = &c.model.http[0].hosts[0].rules[0];
    assert_eq!(rule.filters.len(), 2);
    assert!(matches!(
        rule.filters[1],
        gateway_model::http::Filter::RequestRedirect { status: 301, .. }
    ));
    assert_eq!(
        rule.timeouts.request,
        Some(std::time::Duration::from_secs(10))
    );
    assert_eq!(
        rule.timeouts.backend_request,
        Some(std::time::Duration::from_millis(500))
    );
    assert_eq!(
        rule.fallback,
        Fallback::Forward,
        "a redirect needs no backend"
    );

    let c = compiled(&format!(
        "{GW_HTTP}{}",
        http_route(
            "r",
            "default",
            "",
            "
  - filters: [{type: ExtensionRef, extensionRef: {group: example.com, kind: Thing, name: t}}]"
        )
    ));
    // "If a reference to a custom filter type cannot be resolved, the filter MUST NOT be
    // skipped. Instead, requests that would have been processed by that filter MUST receive a
    // HTTP error response." The reference is to an unsupported kind: ResolvedRefs InvalidKind.
    assert_eq!(
        parent_cond(&c, "HTTPRoute", "default", "r", "ResolvedRefs"),
        ("False".into(), "InvalidKind".into())
    );
    let rule = &c.model.http[0].hosts[0].rules[0];
    assert_eq!(rule.fallback, Fallback::InternalError);
    assert!(rule.filters.is_empty(), "no filter of the rule half-runs");
    let c = compiled(&format!(
        "{GW_HTTP}{}",
        http_route(
            "r",
            "default",
            "",
            "
  - matches: [{path: {type: RegularExpression, value: '(unclosed'}}]"
        )
    ));
    assert_eq!(
        parent_cond(&c, "HTTPRoute", "default", "r", "Accepted"),
        ("False".into(), "UnsupportedValue".into())
    );
}

#[test]
fn grpc_method_matching() {
    let yaml = format!(
        "{GW_HTTP}{}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: g, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - matches: [{{method: {{service: echo.Echo, method: Say}}}}]
    backendRefs: [{{name: grpc, port: 50051}}]
  - matches: [{{method: {{service: echo.Echo}}}}]
  - matches: [{{method: {{type: RegularExpression, service: 'health\\..*', method: 'Ch.*'}}}}]
",
        svc("grpc", "default", 50051, "TCP", &["10.4.0.1"])
    );
    let c = compiled(&yaml);
    let l = &c.model.http[0];
    let none = |_: &str| -> Vec<String> { vec![] };
    let rule = |path: &str| {
        l.route(&view("h", "POST", path, "", &none))
            .map(|r| (r.rule, r.grpc))
    };
    assert_eq!(
        rule("/echo.Echo/Say"),
        Some((0, true)),
        "exact service and method"
    );
    assert_eq!(rule("/echo.Echo/Other"), Some((1, true)), "service only");
    assert_eq!(
        rule("/health.v1/Check"),
        Some((2, true)),
        "regular expressions"
    );
    assert_eq!(rule("/other.Svc/Say"), None);
    assert!(
        l.hosts[0]
            .rules
            .iter()
            .find(|r| r.rule == 0)
            .unwrap()
            .backends[0]
            .h2c,
        "gRPC backends speak h2c"
    );
}

#[test]
fn tls_passthrough_sni_table() {
    let yaml = format!(
        "
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: default}}
spec:
  gatewayClassName: nodegate
  listeners:
  - {{name: tls, protocol: TLS, port: 443, tls: {{mode: Passthrough}}}}
{}{}
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TLSRoute
metadata: {{name: exact, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: [a.example.com]
  rules: [{{backendRefs: [{{name: a, port: 8443}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TLSRoute
metadata: {{name: wild, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: ['*.example.com']
  rules: [{{backendRefs: [{{name: b, port: 8443}}]}}]
",
        svc("a", "default", 8443, "TCP", &["10.5.0.1"]),
        svc("b", "default", 8443, "TCP", &["10.5.0.2"])
    );
    let c = compiled(&yaml);
    let p = &c.model.passthrough[0];
    assert_eq!(p.route_for("a.example.com").unwrap().route, "default/exact");
    assert_eq!(p.route_for("b.example.com").unwrap().route, "default/wild");
    assert!(
        p.route_for("example.org").is_none(),
        "unknown SNI: no route, the connection is closed"
    );
    assert_eq!(
        parent_cond(&c, "TLSRoute", "default", "wild", "Accepted").0,
        "True"
    );
}

#[test]
fn https_listener_certificates() {
    let gw = "
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  gatewayClassName: nodegate
  listeners:
  - name: https
    protocol: HTTPS
    port: 443
    hostname: a.example.com
    tls: {certificateRefs: [{name: cert}]}
";
    let c = compiled(gw);
    assert_eq!(
        cond(&listener(&c, "gw", "https")["conditions"], "ResolvedRefs"),
        ("False".into(), "InvalidCertificateRef".into())
    );
    assert!(
        c.model.http.is_empty(),
        "an HTTPS listener without its certificate is not programmed"
    );
    let secret = "---
apiVersion: v1
kind: Secret
metadata: {name: cert, namespace: default}
type: kubernetes.io/tls
stringData:
  tls.crt: \"-----BEGIN CERTIFICATE-----\\nMIIB\\n-----END CERTIFICATE-----\\n\"
  tls.key: \"-----BEGIN PRIVATE KEY-----\\nMIIB\\n-----END PRIVATE KEY-----\\n\"
";
    let c = compiled(&format!("{gw}{secret}"));
    assert_eq!(
        cond(&listener(&c, "gw", "https")["conditions"], "ResolvedRefs").0,
        "True"
    );
    let certs = c.model.http[0].tls.as_ref().unwrap();
    assert_eq!(certs[0].hostname.as_deref(), Some("a.example.com"));
}

#[test]
fn parse_errors_name_the_line_and_spare_other_documents() {
    let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: [unclosed\n---\napiVersion: gateway.networking.k8s.io/v1beta1\nkind: HTTPRoute\nmetadata: {name: old-version}\nspec: {}\n---\nkind: Unknown\napiVersion: example.com/v1\nmetadata: {name: x}\n";
    let results = parse_documents("f.yaml", text);
    assert_eq!(results.len(), 3, "the unknown kind is skipped");
    assert!(results[0].is_ok());
    let err = results[1].as_ref().unwrap_err();
    assert_eq!(err.origin, "f.yaml");
    assert!(
        err.line.is_some_and(|l| (5..=9).contains(&l)),
        "line inside the second document: {err}"
    );
    assert!(results[2].is_ok(), "v1beta1 is accepted as the same kind");
}
