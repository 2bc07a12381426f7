//! Benchmark (not a test): parse and compile 10,000 HTTPRoutes over 1,000 Services with 50,000
//! endpoints, then recompile with a held [`Compiler`] after one route changed and after one
//! EndpointSlice changed. Prints one JSON line per measurement:
//! `{"name", "millis", "peak_rss_mb", "runs"}` — `millis` is the median of `runs` runs and
//! `peak_rss_mb` the process's peak RSS during the step (VmHWM, reset before it). Run with
//! `cargo bench -p gateway-model --bench compile`.

use std::time::Instant;

use gateway_model::{CompileOptions, Compiler, Objects, compile, parse::parse_documents};

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

fn slice_yaml(ns: usize, s: usize, endpoints: usize) -> String {
    let mut text = format!(
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: s{s}-a, namespace: ns{ns}, labels: {{kubernetes.io/service-name: s{s}}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n"
    );
    for e in 0..endpoints {
        text.push_str(&format!(
            "- {{addresses: ['10.{ns}.{s}.{e}'], conditions: {{ready: true}}}}\n"
        ));
    }
    text
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
                "---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{s}, namespace: ns{ns}}}\nspec: {{ports: [{{name: http, port: 80}}]}}\n"
            ));
            text.push_str(&slice_yaml(ns, s, ENDPOINTS_PER_SERVICE));
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

/// Resets the peak RSS (VmHWM) to the current RSS, so the next reading is this step's peak.
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn report(name: &str, runs: Vec<f64>) {
    let n = runs.len();
    println!(
        "{{\"name\":\"{name}\",\"millis\":{:.2},\"peak_rss_mb\":{:.1},\"runs\":{n}}}",
        median(runs),
        peak_rss_mb()
    );
}

fn millis(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

fn http_rules(c: &gateway_model::Compiled) -> usize {
    c.model
        .http
        .iter()
        .flat_map(|l| &l.hosts)
        .map(|h| h.rules.len())
        .sum()
}

fn main() {
    reset_peak();
    let t = Instant::now();
    let mut objects = build();
    report("parse_10k_routes_50k_endpoints", vec![millis(t)]);
    let opts = CompileOptions::default();

    // From scratch, as `compile` does it (a fresh Compiler each time).
    reset_peak();
    let mut runs = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let compiled = compile(&objects, &opts);
        runs.push(millis(t));
        assert_eq!(
            http_rules(&compiled),
            ROUTES,
            "every route compiled to a rule"
        );
        drop(compiled);
    }
    report("compile_full", runs);

    // A Compiler held across updates: the first update is a full compile.
    reset_peak();
    let mut compiler = Compiler::new(opts.clone());
    let t = Instant::now();
    compiler.update(&objects);
    report("compiler_first_update", vec![millis(t)]);

    // One route changes.
    reset_peak();
    let mut runs = Vec::new();
    for k in 0..7 {
        let changed = parse_documents("bench", &route_yaml(17, &format!("/changed{k}")))
            .remove(0)
            .expect("route");
        objects.insert(changed);
        let t = Instant::now();
        let compiled = compiler.update(&objects);
        runs.push(millis(t));
        assert!(compiled.statuses.len() > ROUTES);
    }
    report("incremental_one_route_changed", runs);

    // One EndpointSlice changes (endpoints of a Service that about 20 routes use).
    reset_peak();
    let mut runs = Vec::new();
    for k in 0..7 {
        let changed = parse_documents("bench", &slice_yaml(3, 7, ENDPOINTS_PER_SERVICE - 1 - k))
            .remove(0)
            .expect("slice");
        objects.insert(changed);
        let t = Instant::now();
        let compiled = compiler.update(&objects);
        runs.push(millis(t));
        assert_eq!(http_rules(compiled), ROUTES);
    }
    report("incremental_one_endpoint_slice_changed", runs);

    // What a consumer pays to own the result: the model clone shares virtual hosts.
    let t = Instant::now();
    let model = compiler.compiled().model.clone();
    report("clone_model", vec![millis(t)]);
    drop(model);

    // The held compiler agrees with a fresh compile of the final objects.
    let fresh = compile(&objects, &opts);
    assert_eq!(
        serde_json::to_value(&compiler.compiled().model).ok(),
        serde_json::to_value(&fresh.model).ok()
    );
    assert!(compiler.compiled().statuses == fresh.statuses);
}
