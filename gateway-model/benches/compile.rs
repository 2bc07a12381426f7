//! Benchmark (not a test): compile 10,000 HTTPRoutes over 1,000 Services with 50,000 endpoints,
//! then recompile after one route changed. Prints one JSON line per measurement:
//! `{"name", "millis", "peak_rss_mb"}`. Run with `cargo bench -p gateway-model --bench compile`.

use std::time::Instant;

use gateway_model::{CompileOptions, Objects, compile, parse::parse_documents};

const ROUTES: usize = 10_000;
const SERVICES: usize = 1_000;
const ENDPOINTS_PER_SERVICE: usize = 50;

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn route_yaml(i: usize, path: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r{i}, namespace: ns{ns}, creationTimestamp: '2026-01-01T00:00:00Z'}}
spec:
  parentRefs: [{{name: gw, namespace: default}}]
  hostnames: [h{i}.example.com]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: {path}}}, headers: [{{name: x-v, value: '1'}}]}}]
    backendRefs: [{{name: s{svc}, port: 80, weight: 90}}, {{name: s{svc2}, port: 80, weight: 10}}]
",
        ns = i % 10,
        svc = i % SERVICES / 10,
        svc2 = (i + 1) % SERVICES / 10,
    )
}

fn build() -> Objects {
    let mut text = String::from(
        "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: nodegate}
spec: {controllerName: nodegate.io/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  gatewayClassName: nodegate
  listeners:
  - {name: http, protocol: HTTP, port: 80, allowedRoutes: {namespaces: {from: All}}}
",
    );
    for ns in 0..10 {
        for s in 0..SERVICES / 10 {
            text.push_str(&format!(
                "---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{s}, namespace: ns{ns}}}\nspec: {{ports: [{{name: http, port: 80}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: s{s}-a, namespace: ns{ns}, labels: {{kubernetes.io/service-name: s{s}}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n"
            ));
            for e in 0..ENDPOINTS_PER_SERVICE {
                text.push_str(&format!(
                    "- {{addresses: ['10.{ns}.{s}.{e}'], conditions: {{ready: true}}}}\n"
                ));
            }
        }
    }
    for i in 0..ROUTES {
        text.push_str("---\n");
        text.push_str(&route_yaml(i, &format!("/p{i}")));
    }
    let mut objects = Objects::default();
    for o in parse_documents("bench", &text) {
        objects.insert(o.expect("bench YAML parses"));
    }
    objects
}

fn report(name: &str, millis: f64) {
    println!(
        "{{\"name\":\"{name}\",\"millis\":{millis:.1},\"peak_rss_mb\":{:.1}}}",
        peak_rss_mb()
    );
}

fn main() {
    let t = Instant::now();
    let mut objects = build();
    report(
        "parse_10k_routes_50k_endpoints",
        t.elapsed().as_secs_f64() * 1000.0,
    );
    let opts = CompileOptions::default();

    let t = Instant::now();
    let compiled = compile(&objects, &opts);
    report("compile_full", t.elapsed().as_secs_f64() * 1000.0);
    let rules: usize = compiled
        .model
        .http
        .iter()
        .flat_map(|l| &l.hosts)
        .map(|h| h.rules.len())
        .sum();
    assert_eq!(rules, ROUTES, "every route compiled to a rule");
    drop(compiled);

    // One route changes; the model is rebuilt from the changed snapshot.
    let changed = parse_documents("bench", &route_yaml(17, "/changed"))
        .remove(0)
        .expect("route");
    objects.insert(changed);
    let t = Instant::now();
    let compiled = compile(&objects, &opts);
    report(
        "compile_after_one_route_changed",
        t.elapsed().as_secs_f64() * 1000.0,
    );
    assert!(compiled.statuses.len() > ROUTES);
}
