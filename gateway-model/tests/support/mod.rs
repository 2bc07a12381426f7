//! Helpers shared by the integration tests: YAML in, compiled model and statuses out.
#![allow(dead_code, reason = "each test file uses a subset")]

use gateway_model::{CompileOptions, Compiled, Objects, compile, parse::parse_documents};
use serde_json::Value;

/// Our GatewayClass and another controller's.
pub const CLASS: &str = "
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: nodegate}
spec: {controllerName: nodegate.io/gateway-controller}
";

/// Parses `yaml` (plus [`CLASS`]), panicking on any document that does not parse.
pub fn objects(yaml: &str) -> Objects {
    let mut objects = Objects::default();
    for text in [CLASS, yaml] {
        for r in parse_documents("test.yaml", text) {
            objects.insert(r.unwrap_or_else(|e| panic!("{e}")));
        }
    }
    objects
}

/// Compiles `yaml` with the default options.
pub fn compiled(yaml: &str) -> Compiled {
    compile(&objects(yaml), &CompileOptions::default())
}

/// The status of one object.
pub fn status<'a>(c: &'a Compiled, kind: &str, ns: &str, name: &str) -> &'a Value {
    &c.statuses
        .iter()
        .find(|s| s.kind == kind && s.namespace == ns && s.name == name)
        .unwrap_or_else(|| panic!("no status for {kind} {ns}/{name}: {:#?}", c.statuses))
        .status
}

/// (status, reason) of condition `ty`.
pub fn cond(conditions: &Value, ty: &str) -> (String, String) {
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

/// Whether condition `ty` is present.
pub fn has_cond(conditions: &Value, ty: &str) -> bool {
    conditions
        .as_array()
        .is_some_and(|a| a.iter().any(|c| c["type"] == ty))
}

/// A listener's status in Gateway `ns/gw`.
pub fn listener<'a>(c: &'a Compiled, ns: &str, gw: &str, name: &str) -> &'a Value {
    status(c, "Gateway", ns, gw)["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == name)
        .unwrap_or_else(|| panic!("no listener {name}"))
}

/// Condition `ty` of the first parent of a route.
pub fn parent_cond(c: &Compiled, kind: &str, ns: &str, name: &str, ty: &str) -> (String, String) {
    cond(&status(c, kind, ns, name)["parents"][0]["conditions"], ty)
}

/// A Service with one port named `p` and one EndpointSlice of ready endpoints.
pub fn svc(name: &str, ns: &str, port: u16, ips: &[&str]) -> String {
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
  ports: [{{name: p, port: {port}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-1
  namespace: {ns}
  labels: {{kubernetes.io/service-name: {name}}}
addressType: IPv4
ports: [{{name: p, port: {port}}}]
endpoints:
{}
",
        if eps.is_empty() {
            "[]".to_string()
        } else {
            eps.join("\n")
        }
    )
}

/// A Gateway `default/{name}` of our class with the given listener lines (YAML list items).
pub fn gateway(name: &str, created: &str, extra: &str, listeners: &[&str]) -> String {
    format!(
        "---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: {name}, namespace: default, creationTimestamp: '{created}'}}
spec:
  gatewayClassName: nodegate
{extra}
  listeners:
{}
",
        listeners
            .iter()
            .map(|l| format!("  - {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    )
}

/// An HTTPRoute `ns/name` with the given spec body (indented two spaces).
pub fn http_route(name: &str, ns: &str, created: &str, spec: &str) -> String {
    format!(
        "---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: {ns}, creationTimestamp: '{created}'}}
spec:
{spec}
"
    )
}

/// A request with no headers.
pub fn no_headers(_: &str) -> Vec<String> {
    Vec::new()
}
