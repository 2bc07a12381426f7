//! `examples/model/` parses and compiles, and its objects get the statuses their comments
//! promise.

use std::path::Path;

use gateway_model::{
    CompileOptions, Compiled, Objects, compile,
    http::Fallback,
    model::L4Protocol,
    parse::{Severity, parse_documents_with_warnings},
};
use serde_json::Value;

fn compile_examples() -> (Compiled, Vec<String>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/model");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("examples/model exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut objects = Objects::default();
    let mut warnings = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for r in parse_documents_with_warnings(&f.display().to_string(), &text) {
            match r {
                Ok(o) => objects.insert(o),
                Err(e) if e.severity == Severity::Warning => warnings.push(e.message),
                Err(e) => panic!("{e}"),
            }
        }
    }
    (compile(&objects, &CompileOptions::default()), warnings)
}

fn status<'a>(c: &'a Compiled, kind: &str, ns: &str, name: &str) -> Option<&'a Value> {
    c.statuses
        .iter()
        .find(|s| s.kind == kind && s.namespace == ns && s.name == name)
        .map(|s| &s.status)
}

fn cond(conditions: &Value, ty: &str) -> (String, String) {
    let c = conditions
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == ty)
        .unwrap_or_else(|| panic!("no {ty} in {conditions}"));
    (
        c["status"].as_str().unwrap().into(),
        c["reason"].as_str().unwrap().into(),
    )
}

fn route(c: &Compiled, kind: &str, ns: &str, name: &str, ty: &str) -> (String, String) {
    cond(
        &status(c, kind, ns, name).unwrap_or_else(|| panic!("{name}"))["parents"][0]["conditions"],
        ty,
    )
}

fn pair(a: &str, b: &str) -> (String, String) {
    (a.into(), b.into())
}

#[test]
fn examples_compile_with_the_promised_statuses() {
    let (c, warnings) = compile_examples();
    assert_eq!(warnings.len(), 1, "the ConfigMap is skipped: {warnings:?}");

    // Classes and Gateways.
    let class = status(&c, "GatewayClass", "", "nodegate").unwrap();
    assert_eq!(
        cond(&class["conditions"], "Accepted"),
        pair("True", "Accepted")
    );
    assert!(status(&c, "GatewayClass", "", "someone-else").is_none());
    assert!(status(&c, "Gateway", "infra", "not-ours").is_none());
    let web = status(&c, "Gateway", "infra", "web").unwrap();
    assert_eq!(
        cond(&web["conditions"], "Accepted"),
        pair("True", "ListenersNotValid")
    );
    let listener = |gw: &Value, name: &str| -> Value {
        gw["listeners"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(
        cond(&listener(web, "sctp")["conditions"], "Accepted"),
        pair("False", "UnsupportedProtocol")
    );
    assert_eq!(
        cond(&listener(web, "https")["conditions"], "ResolvedRefs"),
        pair("True", "ResolvedRefs")
    );
    // store, echo and billing on http (wrong-host and sandbox are not accepted); store on https.
    assert_eq!(listener(web, "http")["attachedRoutes"], 3);
    assert_eq!(listener(web, "https")["attachedRoutes"], 1);
    let edge = status(&c, "Gateway", "infra", "edge").unwrap();
    assert_eq!(edge["addresses"][0]["value"], "192.0.2.10");
    assert_eq!(listener(edge, "postgres")["attachedRoutes"], 2);

    // Routes.
    assert_eq!(
        route(&c, "HTTPRoute", "shop", "store", "Accepted"),
        pair("True", "Accepted")
    );
    assert_eq!(
        route(&c, "HTTPRoute", "shop", "store", "ResolvedRefs"),
        pair("True", "ResolvedRefs"),
        "the ReferenceGrant admits the catalog backend"
    );
    assert_eq!(
        route(&c, "HTTPRoute", "shop", "wrong-host", "Accepted"),
        pair("False", "NoMatchingListenerHostname")
    );
    assert_eq!(
        route(&c, "HTTPRoute", "shop", "billing", "ResolvedRefs"),
        pair("False", "RefNotPermitted")
    );
    assert_eq!(
        route(&c, "HTTPRoute", "sandbox", "sandbox", "Accepted"),
        pair("False", "NotAllowedByListeners")
    );
    assert_eq!(
        route(&c, "GRPCRoute", "shop", "echo", "Accepted"),
        pair("True", "Accepted")
    );
    for name in ["postgres", "postgres-new"] {
        assert_eq!(
            route(&c, "TCPRoute", "data", name, "Accepted"),
            pair("True", "Accepted")
        );
    }
    assert_eq!(
        route(&c, "UDPRoute", "data", "dns", "Accepted"),
        pair("True", "Accepted")
    );
    assert_eq!(
        route(&c, "TLSRoute", "data", "vault", "Accepted"),
        pair("True", "Accepted")
    );

    // The model.
    let m = &c.model;
    let none = |_: &str| Vec::new();
    let http = "0.0.0.0:80".parse().unwrap();
    let api = m
        .route_http(http, "store.example.com", "GET", "/api/items", &none, "")
        .unwrap();
    assert_eq!(api.rule, 1, "no canary header: the weighted rule");
    assert_eq!(
        api.backends
            .iter()
            .map(|b| (b.weight, b.endpoints.len()))
            .collect::<Vec<_>>(),
        [(90, 2), (10, 0)],
        "store-v1's terminating endpoint is left out while two are ready; store-v2 has none"
    );
    let billing = m
        .route_http(http, "billing.example.com", "GET", "/", &none, "")
        .unwrap();
    assert_eq!(billing.fallback, Fallback::InternalError);
    let grpc = m
        .route_grpc(http, "grpc.example.com", "echo.v1.Echo", "Say", &none)
        .unwrap();
    assert!(grpc.backends[0].h2c);
    let https = m.http_listener("0.0.0.0:443".parse().unwrap()).unwrap();
    let certs = https.tls.as_ref().unwrap();
    assert!(
        certs[0]
            .cert_pem
            .starts_with(b"-----BEGIN CERTIFICATE-----")
    );
    let pg = m
        .l4_listener("192.0.2.10:5432".parse().unwrap(), L4Protocol::Tcp)
        .unwrap();
    assert_eq!(pg.route.as_deref(), Some("TCPRoute data/postgres"));
    assert_eq!(pg.backends.len(), 2);
    let dns = m
        .l4_listener("192.0.2.10:53".parse().unwrap(), L4Protocol::Udp)
        .unwrap();
    assert_eq!(dns.backends[0].address.to_string(), "10.3.0.53:5353");
    let vault = m
        .route_sni("192.0.2.10:8443".parse().unwrap(), "vault.example.com")
        .unwrap();
    assert_eq!(vault.backends[0].address.to_string(), "10.3.0.80:8200");
}
