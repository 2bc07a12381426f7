//! Listener and route conflicts, attachment counts and invalid rules, each case quoting the
//! spec (or the conformance test) it comes from.

mod support;

use gateway_model::http::RequestView;
use support::*;

const T0: &str = "2026-01-01T00:00:00Z";
const T1: &str = "2026-01-02T00:00:00Z";

/// (why, objects, gateway, listener, expected Accepted, expected Conflicted).
type ConflictCase = (
    &'static str,
    String,
    &'static str,
    &'static str,
    (&'static str, &'static str),
    (&'static str, &'static str),
);

#[test]
fn listener_conflicts_within_and_across_gateways() {
    let https = "{name: https, protocol: HTTPS, port: 443, hostname: a.example.com, tls: {certificateRefs: [{name: cert}]}}";
    let tls =
        "{name: tls, protocol: TLS, port: 443, hostname: b.example.com, tls: {mode: Passthrough}}";
    let table: Vec<ConflictCase> = vec![
        (
            "the spec lets an implementation that 'cannot mix HTTPS and generic TLS listens on \
             the same port' call them incompatible: ProtocolConflict",
            gateway("a", T0, "", &[https, tls]),
            "a",
            "tls",
            ("False", "ProtocolConflict"),
            ("True", "ProtocolConflict"),
        ),
        (
            "conformance TLSRouteListenerTerminateNotSupported: 'a Gateway Listener with TLS \
             mode Terminate MUST have Accepted=False with Reason=UnsupportedValue'",
            gateway(
                "a",
                T0,
                "",
                &[
                    "{name: t, protocol: TLS, port: 443, tls: {mode: Terminate, certificateRefs: [{name: c}]}}",
                ],
            ),
            "a",
            "t",
            ("False", "UnsupportedValue"),
            ("False", "NoConflicts"),
        ),
        (
            "Gateways share this node: HTTP listeners of two Gateways on one port with distinct \
             hostnames are compatible",
            format!(
                "{}{}",
                gateway(
                    "a",
                    T0,
                    "",
                    &["{name: h, protocol: HTTP, port: 80, hostname: a.example.com}"]
                ),
                gateway(
                    "b",
                    T1,
                    "",
                    &["{name: h, protocol: HTTP, port: 80, hostname: b.example.com}"]
                )
            ),
            "b",
            "h",
            ("True", "Accepted"),
            ("False", "NoConflicts"),
        ),
        (
            "the newer Gateway's listener with the same port and hostname: HostnameConflict",
            format!(
                "{}{}",
                gateway(
                    "a",
                    T0,
                    "",
                    &["{name: h, protocol: HTTP, port: 80, hostname: a.example.com}"]
                ),
                gateway(
                    "b",
                    T1,
                    "",
                    &["{name: h, protocol: HTTP, port: 80, hostname: a.example.com}"]
                )
            ),
            "b",
            "h",
            ("False", "HostnameConflict"),
            ("True", "HostnameConflict"),
        ),
        (
            "the older Gateway keeps its socket",
            format!(
                "{}{}",
                gateway(
                    "a",
                    T1,
                    "",
                    &["{name: h, protocol: HTTP, port: 80, hostname: a.example.com}"]
                ),
                gateway(
                    "b",
                    T0,
                    "",
                    &["{name: h, protocol: HTTP, port: 80, hostname: a.example.com}"]
                )
            ),
            "b",
            "h",
            ("True", "Accepted"),
            ("False", "NoConflicts"),
        ),
        (
            "same port, incompatible protocols across Gateways: ProtocolConflict",
            format!(
                "{}{}",
                gateway("a", T0, "", &["{name: h, protocol: HTTP, port: 80}"]),
                gateway("b", T1, "", &["{name: t, protocol: TCP, port: 80}"])
            ),
            "b",
            "t",
            ("False", "ProtocolConflict"),
            ("True", "ProtocolConflict"),
        ),
        (
            "a wildcard bind and a specific address on one port cannot both be bound",
            format!(
                "{}{}",
                gateway(
                    "a",
                    T0,
                    "  addresses: [{type: IPAddress, value: 10.0.0.1}]",
                    &["{name: h, protocol: HTTP, port: 80}"]
                ),
                gateway(
                    "b",
                    T1,
                    "",
                    &["{name: h, protocol: HTTP, port: 80, hostname: x.example.com}"]
                )
            ),
            "b",
            "h",
            ("False", "PortUnavailable"),
            ("False", "NoConflicts"),
        ),
    ];
    for (why, yaml, gw, name, accepted, conflicted) in table {
        let c = compiled(&yaml);
        let l = &listener(&c, "default", gw, name)["conditions"];
        assert_eq!(
            cond(l, "Accepted"),
            (accepted.0.into(), accepted.1.into()),
            "{why}"
        );
        assert_eq!(
            cond(l, "Conflicted"),
            (conflicted.0.into(), conflicted.1.into()),
            "{why}"
        );
        if conflicted.0 == "True" {
            // Conformance (ListenerSetHostnameConflict and ...ProtocolConflict): Programmed is
            // False with the conflict's reason.
            assert_eq!(
                cond(l, "Programmed"),
                ("False".into(), conflicted.1.into()),
                "{why}"
            );
        }
    }
}

#[test]
fn two_listeners_on_one_port_with_overlapping_hostnames() {
    // "Listeners ... distinct ... if they have different hostnames"; a request goes to the most
    // specific listener hostname that matches it.
    let yaml = format!(
        "{}{}{}{}",
        gateway(
            "gw",
            T0,
            "",
            &[
                "{name: wild, protocol: HTTP, port: 80, hostname: '*.example.com'}",
                "{name: exact, protocol: HTTP, port: 80, hostname: a.example.com}",
            ]
        ),
        svc("web", "default", 80, &["10.0.0.1"]),
        http_route(
            "to-wild",
            "default",
            T0,
            "  parentRefs: [{name: gw, sectionName: wild}]\n  rules: [{backendRefs: [{name: web, port: 80}]}]"
        ),
        http_route(
            "to-exact",
            "default",
            T1,
            "  parentRefs: [{name: gw, sectionName: exact}]\n  rules: [{backendRefs: [{name: web, port: 80}]}]"
        ),
    );
    let c = compiled(&yaml);
    for l in ["wild", "exact"] {
        assert_eq!(
            cond(
                &listener(&c, "default", "gw", l)["conditions"],
                "Conflicted"
            )
            .0,
            "False"
        );
        assert_eq!(listener(&c, "default", "gw", l)["attachedRoutes"], 1);
    }
    assert_eq!(c.model.http.len(), 1, "one socket serves both listeners");
    let who = |host: &str| {
        let req = RequestView {
            host,
            method: "GET",
            path: "/",
            query: "",
            headers: &no_headers,
        };
        c.model.http[0].route(&req).map(|r| r.route.clone())
    };
    assert_eq!(
        who("a.example.com").as_deref(),
        Some("HTTPRoute default/to-exact")
    );
    assert_eq!(
        who("b.example.com").as_deref(),
        Some("HTTPRoute default/to-wild")
    );
    assert_eq!(
        who("example.com"),
        None,
        "a wildcard does not match the bare domain"
    );
}

#[test]
fn attached_routes_count_even_on_an_invalid_listener() {
    // "Listener or Route status does not impact successful attachment, i.e. the AttachedRoutes
    // field count MUST be set for Listeners, even if the Accepted condition of an individual
    // Listener is set to False."
    let yaml = format!(
        "{}{}",
        gateway(
            "gw",
            T0,
            "",
            &[
                "{name: https, protocol: HTTPS, port: 443, tls: {certificateRefs: [{name: missing}]}}"
            ]
        ),
        http_route(
            "r",
            "default",
            T0,
            "  parentRefs: [{name: gw}]\n  rules: [{}]"
        )
    );
    let c = compiled(&yaml);
    let l = listener(&c, "default", "gw", "https");
    assert_eq!(l["attachedRoutes"], 1);
    assert_eq!(
        cond(&l["conditions"], "ResolvedRefs"),
        ("False".into(), "InvalidCertificateRef".into())
    );
    assert_eq!(cond(&l["conditions"], "Programmed").0, "False");
    assert!(
        c.model.http.is_empty(),
        "nothing is served without the certificate"
    );
}

#[test]
fn invalid_rules_are_dropped_and_reported() {
    let valid = "  - backendRefs: []";
    // (why, the invalid rule, expected reason)
    let table = [
        (
            "'incompatible filters ... for example if the URLRewrite and RequestRedirect are both \
             present'",
            "  - filters: [{type: RequestRedirect, requestRedirect: {scheme: https}}, {type: URLRewrite, urlRewrite: {hostname: x}}]",
            "IncompatibleFilters",
        ),
        (
            "CEL: 'RequestRedirect filter must not be used together with backendRefs'",
            "  - filters: [{type: RequestRedirect, requestRedirect: {scheme: https}}]\n    backendRefs: [{name: web, port: 80}]",
            "IncompatibleFilters",
        ),
        (
            "'ReplacePrefixMatch is only compatible with a PathPrefix HTTPRouteMatch'",
            "  - matches: [{path: {type: Exact, value: /a}}]\n    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}}}]",
            "UnsupportedValue",
        ),
        (
            "CEL: 'backendRequest timeout cannot be longer than request timeout'",
            "  - timeouts: {request: 1s, backendRequest: 2s}",
            "UnsupportedValue",
        ),
        (
            "an invalid regular expression",
            "  - matches: [{headers: [{type: RegularExpression, name: x, value: '(('}]}]",
            "UnsupportedValue",
        ),
    ];
    for (why, invalid, reason) in table {
        // With a valid rule beside it: "Drop Rule(s) ... The message for this condition MUST
        // start with the prefix 'Dropped Rule' ... the Accepted condition MUST be set to True".
        let c = compiled(&format!(
            "{}{}",
            gateway("gw", T0, "", &["{name: h, protocol: HTTP, port: 80}"]),
            http_route(
                "r",
                "default",
                T0,
                &format!("  parentRefs: [{{name: gw}}]\n  rules:\n{valid}\n{invalid}")
            )
        ));
        let conditions = &status(&c, "HTTPRoute", "default", "r")["parents"][0]["conditions"];
        assert_eq!(cond(conditions, "Accepted").0, "True", "{why}");
        assert_eq!(
            cond(conditions, "PartiallyInvalid"),
            ("True".into(), reason.into()),
            "{why}"
        );
        let message = conditions
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "PartiallyInvalid")
            .unwrap()["message"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(message.starts_with("Dropped Rule"), "{why}: {message}");
        let rules = &c.model.http[0].hosts[0].rules;
        assert!(
            rules.iter().all(|r| r.rule == 0),
            "{why}: only rule 0 is served"
        );

        // Alone: "This condition MUST NOT be set if a Route is ... fully invalid"; the route is
        // not accepted.
        let c = compiled(&format!(
            "{}{}",
            gateway("gw", T0, "", &["{name: h, protocol: HTTP, port: 80}"]),
            http_route(
                "r",
                "default",
                T0,
                &format!("  parentRefs: [{{name: gw}}]\n  rules:\n{invalid}")
            )
        ));
        let conditions = &status(&c, "HTTPRoute", "default", "r")["parents"][0]["conditions"];
        assert_eq!(
            cond(conditions, "Accepted"),
            ("False".into(), reason.into()),
            "{why}"
        );
        assert!(!has_cond(conditions, "PartiallyInvalid"), "{why}");
        assert_eq!(
            listener(&c, "default", "gw", "h")["attachedRoutes"],
            0,
            "{why}"
        );
    }
}

#[test]
fn http_and_grpc_routes_with_overlapping_hostnames() {
    // "If a Route (A) of type HTTPRoute or GRPCRoute is attached to a Listener and that listener
    // already has another Route (B) of the other type attached and the intersection of the
    // hostnames of A and B is non-empty, then the implementation MUST accept exactly one of
    // these two routes ... The oldest Route based on creation timestamp."
    let grpc = |hostname: &str| {
        format!(
            "---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: g, namespace: default, creationTimestamp: '{T1}'}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: ['{hostname}']
  rules: [{{}}]
"
        )
    };
    let base = format!(
        "{}{}",
        gateway("gw", T0, "", &["{name: h, protocol: HTTP, port: 80}"]),
        http_route(
            "h",
            "default",
            T0,
            "  parentRefs: [{name: gw}]\n  hostnames: [a.example.com]\n  rules: [{}]"
        )
    );
    for (why, hostname, grpc_accepted) in [
        (
            "overlapping: the newer GRPCRoute is rejected",
            "*.example.com",
            "False",
        ),
        (
            "disjoint hostnames: both are accepted",
            "b.example.com",
            "True",
        ),
    ] {
        let c = compiled(&format!("{base}{}", grpc(hostname)));
        assert_eq!(
            parent_cond(&c, "GRPCRoute", "default", "g", "Accepted").0,
            grpc_accepted,
            "{why}"
        );
        assert_eq!(
            parent_cond(&c, "HTTPRoute", "default", "h", "Accepted").0,
            "True",
            "{why}"
        );
    }
}

#[test]
fn namespace_selectors_see_the_metadata_name_label() {
    // The API server labels every Namespace with kubernetes.io/metadata.name; a selector on it
    // works even when the Namespace object is not among the inputs.
    let yaml = format!(
        "{}{}{}",
        gateway(
            "gw",
            T0,
            "",
            &[
                "{name: h, protocol: HTTP, port: 80, allowedRoutes: {namespaces: {from: Selector, selector: {matchLabels: {kubernetes.io/metadata.name: team}}}}}"
            ]
        ),
        http_route(
            "a",
            "team",
            T0,
            "  parentRefs: [{name: gw, namespace: default}]\n  rules: [{}]"
        ),
        http_route(
            "b",
            "other",
            T0,
            "  parentRefs: [{name: gw, namespace: default}]\n  rules: [{}]"
        ),
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
fn tls_passthrough_hostname_goes_to_the_oldest_route() {
    let route = |name: &str, created: &str, backend: &str| {
        format!(
            "---
apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {{name: {name}, namespace: default, creationTimestamp: '{created}'}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: [a.example.com]
  rules: [{{backendRefs: [{{name: {backend}, port: 443}}]}}]
"
        )
    };
    let yaml = format!(
        "{}{}{}{}{}",
        gateway(
            "gw",
            T0,
            "",
            &["{name: tls, protocol: TLS, port: 443, tls: {mode: Passthrough}}"]
        ),
        svc("old", "default", 443, &["10.0.0.1"]),
        svc("new", "default", 443, &["10.0.0.2"]),
        route("aa-newer", T1, "new"),
        route("zz-older", T0, "old"),
    );
    let c = compiled(&yaml);
    let p = &c.model.passthrough[0];
    let r = p.route_for("a.example.com").unwrap();
    assert_eq!(r.route, "default/zz-older");
    assert_eq!(r.backends[0].address.to_string(), "10.0.0.1:443");
}
