//! A [`Compiler`] held across changes gives exactly what a fresh `compile` of the same objects
//! gives: model and statuses, after every step of sequences of changes to every kind it reads.

use gateway_model::{
    CompileOptions, Compiled, Compiler, Kind, ObjectKey, Objects, compile, parse::parse_documents,
};

const BASE: &str = "
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: nodegate}
spec: {controllerName: nodegate.io/gateway-controller}
---
apiVersion: v1
kind: Namespace
metadata: {name: team-a, labels: {expose: 'yes'}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: default, creationTimestamp: '2026-01-01T00:00:00Z'}
spec:
  gatewayClassName: nodegate
  listeners:
  - {name: http, protocol: HTTP, port: 80, allowedRoutes: {namespaces: {from: All}}}
  - {name: shop, protocol: HTTP, port: 80, hostname: '*.shop.example', allowedRoutes: {namespaces: {from: Selector, selector: {matchLabels: {expose: 'yes'}}}}}
  - {name: alt, protocol: HTTP, port: 8080}
  - {name: tcp, protocol: TCP, port: 9000, allowedRoutes: {namespaces: {from: All}}}
  - {name: tls, protocol: TLS, port: 443, tls: {mode: Passthrough}, allowedRoutes: {namespaces: {from: All}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: other, namespace: default, creationTimestamp: '2026-01-02T00:00:00Z'}
spec:
  gatewayClassName: nodegate
  listeners:
  - {name: http, protocol: HTTP, port: 80, hostname: other.example}
";

fn service(ns: &str, name: &str, endpoints: usize) -> String {
    let mut s = format!(
        "---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {ns}}}
spec: {{ports: [{{name: http, port: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-a, namespace: {ns}, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{name: http, port: 8080}}]
endpoints:
"
    );
    for e in 0..endpoints {
        s.push_str(&format!(
            "- {{addresses: ['10.0.{}.{e}'], conditions: {{ready: true}}}}\n",
            name.len()
        ));
    }
    s
}

fn http_route(ns: &str, name: &str, host: &str, path: &str, backend: &str) -> String {
    format!(
        "---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: {ns}, creationTimestamp: '2026-01-0{day}T00:00:00Z'}}
spec:
  parentRefs: [{{name: gw, namespace: default}}, {{name: other, namespace: default}}]
  hostnames: [{host}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: {path}}}}}]
    backendRefs: [{{name: {backend}, port: 80, weight: 3}}, {{name: web, namespace: default, port: 80}}]
  - matches: [{{path: {{type: Exact, value: {path}/x}}, headers: [{{name: x-v, value: '1'}}]}}]
    filters: [{{type: RequestMirror, requestMirror: {{backendRef: {{name: {backend}, port: 80}}}}}}]
    backendRefs: [{{name: {backend}, port: 80}}]
",
        day = 1 + name.len() % 8
    )
}

fn grpc_route(ns: &str, name: &str, host: &str) -> String {
    format!(
        "---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: {name}, namespace: {ns}, creationTimestamp: '2025-12-01T00:00:00Z'}}
spec:
  parentRefs: [{{name: gw, namespace: default, sectionName: http}}]
  hostnames: [{host}]
  rules:
  - matches: [{{method: {{service: shop.Cart, method: Get}}}}]
    backendRefs: [{{name: web, namespace: default, port: 80}}]
"
    )
}

const L4: &str = "
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {name: db, namespace: default}
spec:
  parentRefs: [{name: gw, sectionName: tcp}]
  rules: [{backendRefs: [{name: web, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TLSRoute
metadata: {name: secure, namespace: team-a}
spec:
  parentRefs: [{name: gw, namespace: default, sectionName: tls}]
  hostnames: [secure.example]
  rules: [{backendRefs: [{name: api, port: 80}]}]
";

const GRANT: &str = "
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: allow-team-a, namespace: default}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: team-a}]
  to: [{group: '', kind: Service}]
";

/// One change applied to the objects.
type Change = Box<dyn Fn(&mut Objects)>;

fn parse_into(objects: &mut Objects, yaml: &str) {
    for o in parse_documents("test.yaml", yaml) {
        objects.insert(o.unwrap_or_else(|e| panic!("{e}")));
    }
}

fn key(kind: Kind, namespace: &str, name: &str) -> ObjectKey {
    ObjectKey {
        kind,
        namespace: namespace.into(),
        name: name.into(),
    }
}

/// Model (its `/debug/model` JSON plus the exact-host indexes, which it skips) and statuses.
fn assert_same(incremental: &Compiled, fresh: &Compiled, step: &str) {
    assert_eq!(
        serde_json::to_value(&incremental.model).unwrap(),
        serde_json::to_value(&fresh.model).unwrap(),
        "model after {step}"
    );
    for (a, b) in incremental.model.http.iter().zip(&fresh.model.http) {
        assert_eq!(a.exact_hosts, b.exact_hosts, "exact hosts after {step}");
    }
    assert_eq!(
        incremental.statuses, fresh.statuses,
        "statuses after {step}"
    );
}

fn base() -> Objects {
    let mut objects = Objects::default();
    parse_into(&mut objects, BASE);
    parse_into(&mut objects, &service("default", "web", 3));
    parse_into(&mut objects, &service("team-a", "api", 2));
    parse_into(&mut objects, &service("team-b", "api", 4));
    parse_into(&mut objects, L4);
    for i in 0..6 {
        let ns = ["team-a", "team-b"][i % 2];
        parse_into(
            &mut objects,
            &http_route(
                ns,
                &format!("r{i}"),
                &format!("h{}.shop.example", i % 3),
                &format!("/p{i}"),
                "api",
            ),
        );
    }
    objects
}

#[test]
fn every_kind_of_change_gives_what_a_fresh_compile_gives() {
    let opts = CompileOptions::default();
    let mut objects = base();
    let mut compiler = Compiler::new(opts.clone());
    let mut check = |objects: &Objects, step: &str| {
        let fresh = compile(objects, &opts);
        assert_same(compiler.update(objects), &fresh, step);
        // A second update without changes reuses everything and still agrees.
        assert_same(compiler.update(objects), &fresh, &format!("{step} (again)"));
    };
    check(&objects, "the first update");
    let first = compile(&objects, &opts);
    assert!(!first.model.http.is_empty() && !first.model.l4.is_empty());
    assert!(!first.model.passthrough.is_empty());

    let steps: Vec<(&str, Change)> = vec![
        (
            "a route added",
            Box::new(|o| {
                parse_into(
                    o,
                    &http_route("team-a", "new", "h1.shop.example", "/new", "api"),
                )
            }),
        ),
        (
            "a route changed (path)",
            Box::new(|o| {
                parse_into(
                    o,
                    &http_route("team-a", "r0", "h0.shop.example", "/moved", "api"),
                )
            }),
        ),
        (
            "a route changed (hostname: new virtual host)",
            Box::new(|o| {
                parse_into(
                    o,
                    &http_route("team-b", "r1", "fresh.shop.example", "/p1", "api"),
                )
            }),
        ),
        (
            "a route changed (backend missing)",
            Box::new(|o| {
                parse_into(
                    o,
                    &http_route("team-a", "r2", "h2.shop.example", "/p2", "nope"),
                )
            }),
        ),
        (
            "a route deleted",
            Box::new(|o| {
                o.remove(&key(Kind::HTTPRoute, "team-b", "r3"));
            }),
        ),
        (
            "the last route of a host deleted",
            Box::new(|o| {
                o.remove(&key(Kind::HTTPRoute, "team-b", "r1"));
            }),
        ),
        (
            "an EndpointSlice changed",
            Box::new(|o| parse_into(o, &service("team-a", "api", 5))),
        ),
        (
            "a Service the routes use removed",
            Box::new(|o| {
                o.remove(&key(Kind::Service, "team-b", "api"));
            }),
        ),
        (
            "a Service added back",
            Box::new(|o| parse_into(o, &service("team-b", "api", 1))),
        ),
        ("a ReferenceGrant added", Box::new(|o| parse_into(o, GRANT))),
        (
            "a ReferenceGrant removed",
            Box::new(|o| {
                o.remove(&key(Kind::ReferenceGrant, "default", "allow-team-a"));
            }),
        ),
        (
            "Namespace labels changed",
            Box::new(|o| {
                parse_into(
                    o,
                    "apiVersion: v1\nkind: Namespace\nmetadata: {name: team-a, labels: {expose: 'no'}}\n",
                )
            }),
        ),
        (
            "a Namespace now selected",
            Box::new(|o| {
                parse_into(
                    o,
                    "apiVersion: v1\nkind: Namespace\nmetadata: {name: team-b, labels: {expose: 'yes'}}\n",
                )
            }),
        ),
        (
            "a Gateway changed (listener hostname)",
            Box::new(|o| {
                parse_into(
                    o,
                    &BASE.replace("hostname: '*.shop.example'", "hostname: h0.shop.example"),
                )
            }),
        ),
        (
            "an older GRPCRoute on an overlapping hostname",
            Box::new(|o| parse_into(o, &grpc_route("team-a", "cart", "h2.shop.example"))),
        ),
        (
            "the overlapping HTTPRoute changed",
            Box::new(|o| {
                parse_into(
                    o,
                    &http_route("team-a", "r2", "h2.shop.example", "/again", "api"),
                )
            }),
        ),
        (
            "the GRPCRoute removed",
            Box::new(|o| {
                o.remove(&key(Kind::GRPCRoute, "team-a", "cart"));
            }),
        ),
        (
            "the TCPRoute's Service changed",
            Box::new(|o| parse_into(o, &service("default", "web", 7))),
        ),
        (
            "a TLSRoute removed",
            Box::new(|o| {
                o.remove(&key(Kind::TLSRoute, "team-a", "secure"));
            }),
        ),
        (
            "a Gateway removed",
            Box::new(|o| {
                o.remove(&key(Kind::Gateway, "default", "other"));
            }),
        ),
        (
            "the GatewayClass removed",
            Box::new(|o| {
                o.remove(&key(Kind::GatewayClass, "", "nodegate"));
            }),
        ),
        ("everything back", Box::new(|o| *o = base())),
    ];
    let mut saw_conflict = false;
    for (step, apply) in &steps {
        apply(&mut objects);
        check(&objects, step);
        let c = compile(&objects, &opts);
        saw_conflict |= c
            .statuses
            .iter()
            .any(|s| s.status.to_string().contains("already serves the older"));
    }
    // The sequence reaches the cross-route paths, not only the easy ones.
    assert!(saw_conflict, "no HTTP/gRPC hostname conflict was exercised");
}

#[test]
fn a_snapshot_read_again_from_scratch_is_recognised_by_content() {
    let opts = CompileOptions::default();
    let mut compiler = Compiler::new(opts.clone());
    compiler.update(&base());
    // New objects (no shared pointers), one route different.
    let mut objects = base();
    parse_into(
        &mut objects,
        &http_route("team-b", "r5", "h2.shop.example", "/other", "api"),
    );
    assert_same(
        compiler.update(&objects),
        &compile(&objects, &opts),
        "a re-read snapshot",
    );
}

/// Many small random-ish changes (a fixed pseudo-random sequence) over routes, Services and
/// EndpointSlices, checked after each one.
#[test]
fn a_long_sequence_of_changes_stays_identical() {
    let opts = CompileOptions::default();
    let mut objects = base();
    let mut compiler = Compiler::new(opts.clone());
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for step in 0..120 {
        let ns = ["team-a", "team-b", "default"][next(3) as usize];
        let name = format!("r{}", next(10));
        match next(6) {
            0 | 1 => parse_into(
                &mut objects,
                &http_route(
                    ns,
                    &name,
                    &format!("h{}.shop.example", next(4)),
                    &format!("/p{}", next(5)),
                    ["api", "web", "gone"][next(3) as usize],
                ),
            ),
            2 => {
                objects.remove(&key(Kind::HTTPRoute, ns, &name));
            }
            3 => parse_into(
                &mut objects,
                &service(ns, ["api", "web"][next(2) as usize], next(4) as usize),
            ),
            4 => parse_into(
                &mut objects,
                &grpc_route(ns, &name, &format!("h{}.shop.example", next(4))),
            ),
            _ => {
                objects.remove(&key(Kind::GRPCRoute, ns, &name));
            }
        }
        assert_same(
            compiler.update(&objects),
            &compile(&objects, &opts),
            &format!("random step {step}"),
        );
    }
}

/// `lastTransitionTime` of each route condition: (route name, time).
fn route_times(compiled: &Compiled) -> Vec<(String, String)> {
    compiled
        .statuses
        .iter()
        .filter(|s| s.kind == "HTTPRoute")
        .flat_map(|s| {
            let conditions = s.status["parents"][0]["conditions"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            conditions.into_iter().map(move |c| {
                (
                    s.name.clone(),
                    c["lastTransitionTime"].as_str().unwrap_or("").to_string(),
                )
            })
        })
        .collect()
}

#[test]
fn a_new_transition_time_stamps_only_the_conditions_computed_again() {
    let mut objects = base();
    let mut compiler = Compiler::new(CompileOptions {
        transition_time: "2026-01-01T00:00:00Z".into(),
        ..CompileOptions::default()
    });
    let before = route_times(compiler.update(&objects));
    assert!(!before.is_empty());
    assert!(before.iter().all(|(_, t)| t == "2026-01-01T00:00:00Z"));

    // r1 now points at a missing Service: it is compiled again; the other routes are not.
    parse_into(
        &mut objects,
        &http_route("team-b", "r1", "h1.shop.example", "/moved", "missing"),
    );
    compiler.set_transition_time("2026-02-02T00:00:00Z");
    let after = route_times(compiler.update(&objects));
    for (route, time) in &after {
        let want = if route == "r1" {
            "2026-02-02T00:00:00Z"
        } else {
            "2026-01-01T00:00:00Z"
        };
        assert_eq!(time, want, "{route}'s conditions");
    }
    assert!(after.iter().any(|(r, _)| r == "r1"));
}
