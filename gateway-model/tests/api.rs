//! The lookups the data planes share with the tests, and the YAML reader's error reporting.

mod support;

use gateway_model::{
    model::L4Protocol,
    parse::{Severity, parse_documents, parse_documents_with_warnings},
};
use support::*;

#[test]
fn model_lookups_route_http_grpc_l4_and_sni() {
    let yaml = format!(
        "{}{}{}{}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: g, namespace: default}}
spec:
  parentRefs: [{{name: gw, sectionName: grpc}}]
  rules: [{{matches: [{{method: {{service: echo.Echo, method: Say}}}}], backendRefs: [{{name: web, port: 80}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: TCPRoute
metadata: {{name: t, namespace: default}}
spec:
  parentRefs: [{{name: gw, sectionName: tcp}}]
  rules: [{{backendRefs: [{{name: web, port: 80}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {{name: s, namespace: default}}
spec:
  parentRefs: [{{name: gw, sectionName: tls}}]
  hostnames: [secure.example.com]
  rules: [{{backendRefs: [{{name: web, port: 80}}]}}]
",
        gateway(
            "gw",
            "2026-01-01T00:00:00Z",
            "",
            &[
                "{name: http, protocol: HTTP, port: 80}",
                "{name: grpc, protocol: HTTP, port: 81}",
                "{name: tcp, protocol: TCP, port: 82}",
                "{name: tls, protocol: TLS, port: 443, tls: {mode: Passthrough}}",
            ]
        ),
        svc("web", "default", 80, &["10.0.0.1", "10.0.0.2"]),
        http_route(
            "r",
            "default",
            "2026-01-01T00:00:00Z",
            "  parentRefs: [{name: gw, sectionName: http}]\n  rules: [{matches: [{path: {type: Exact, value: /x}, queryParams: [{name: a, value: b}]}], backendRefs: [{name: web, port: 80}]}]"
        ),
        ""
    );
    let c = compiled(&yaml);
    let m = &c.model;
    let at = |port: u16| format!("0.0.0.0:{port}").parse().unwrap();
    let rule = m
        .route_http(at(80), "h", "GET", "/x", &no_headers, "a=b")
        .expect("exact path and query match");
    assert_eq!(rule.route, "HTTPRoute default/r");
    assert_eq!(rule.backends[0].endpoints.len(), 2);
    assert!(
        m.route_http(at(80), "h", "GET", "/x", &no_headers, "a=c")
            .is_none()
    );
    assert!(
        m.route_http(at(99), "h", "GET", "/x", &no_headers, "a=b")
            .is_none()
    );
    let g = m
        .route_grpc(at(81), "h", "echo.Echo", "Say", &no_headers)
        .expect("gRPC method match");
    assert!(g.grpc && g.backends[0].h2c);
    assert!(
        m.route_grpc(at(81), "h", "echo.Echo", "Other", &no_headers)
            .is_none()
    );
    let tcp = m.l4_listener(at(82), L4Protocol::Tcp).unwrap();
    assert_eq!(tcp.backends.len(), 2);
    assert!(m.l4_listener(at(82), L4Protocol::Udp).is_none());
    assert_eq!(
        m.route_sni(at(443), "secure.example.com").unwrap().route,
        "default/s"
    );
    assert!(m.route_sni(at(443), "other.example.com").is_none());
}

#[test]
fn type_errors_carry_the_line_of_the_offending_field() {
    let text = "apiVersion: v1
kind: Namespace
metadata: {name: ok}
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: Gateway
metadata: {name: gw}
spec:
  gatewayClassName: nodegate
  listeners:
  - name: http
    protocol: HTTP
    port: not-a-number
";
    let results = parse_documents("dir/gw.yaml", text);
    assert_eq!(results.len(), 2);
    assert!(results[0].is_ok());
    let e = results[1].as_ref().unwrap_err();
    assert_eq!(e.origin, "dir/gw.yaml");
    assert_eq!(
        e.line,
        Some(13),
        "the port line, counted in the whole file: {e}"
    );
    assert_eq!(e.severity, Severity::Error);
}

#[test]
fn unknown_kinds_are_warnings_not_failures() {
    let text = "apiVersion: apps/v1
kind: Deployment
metadata: {name: d}
---
apiVersion: v1
kind: Namespace
metadata: {name: ok}
";
    assert_eq!(
        parse_documents("f.yaml", text).len(),
        1,
        "parse_documents only reports errors"
    );
    let all = parse_documents_with_warnings("f.yaml", text);
    assert_eq!(all.len(), 2);
    let w = all[0].as_ref().unwrap_err();
    assert_eq!(w.severity, Severity::Warning);
    assert_eq!(w.line, Some(1));
    assert!(w.message.contains("apps/v1 Deployment"), "{}", w.message);
    assert!(all[1].is_ok());
}

#[test]
fn every_served_version_maps_to_the_same_typed_object() {
    let l4 = "{rules: [{backendRefs: [{name: s, port: 1}]}]}";
    for (kind, versions, spec) in [
        ("HTTPRoute", &["v1", "v1beta1"][..], "{}"),
        ("GRPCRoute", &["v1", "v1alpha2"][..], "{}"),
        (
            "TLSRoute",
            &["v1", "v1alpha2", "v1alpha3"][..],
            "{hostnames: [a.example.com], rules: [{backendRefs: [{name: s, port: 1}]}]}",
        ),
        ("TCPRoute", &["v1", "v1alpha2"][..], l4),
        ("UDPRoute", &["v1", "v1alpha2"][..], l4),
        (
            "ReferenceGrant",
            &["v1", "v1beta1", "v1alpha2"][..],
            "{from: [], to: []}",
        ),
    ] {
        for v in versions {
            let text = format!(
                "apiVersion: gateway.networking.k8s.io/{v}\nkind: {kind}\nmetadata: {{name: x}}\nspec: {spec}\n"
            );
            let r = parse_documents("f.yaml", &text);
            let object = r[0].as_ref().unwrap_or_else(|e| panic!("{kind} {v}: {e}"));
            assert_eq!(object.kind().as_str(), kind, "{v}");
        }
    }
}
