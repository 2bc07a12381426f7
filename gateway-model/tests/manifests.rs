//! Every Gateway API and core object shipped under `deploy/`, `examples/` and `bench/kind/`
//! parses with gateway-model's parser and has no field its typed form (gateway-api's and
//! k8s-openapi's structs, generated from the CRDs' and Kubernetes' OpenAPI schemas) does not
//! know: a misspelled or misplaced field, which serde would drop silently and the API server
//! would reject, fails here. Kinds nodegate does not read (DaemonSet, RBAC, kustomization) are
//! validated by `deploy/validate.sh` (kubernetes-validate) instead; GatewayClass has no schema
//! there, so this is its schema check, plus the CRD's string constraints the types do not encode.

use std::path::{Path, PathBuf};

use gateway_model::{Object, parse::object_from_value};
use serde_json::Value;

/// The kinds gateway-model reads.
const READ_KINDS: [&str; 12] = [
    "GatewayClass",
    "Gateway",
    "HTTPRoute",
    "GRPCRoute",
    "TLSRoute",
    "TCPRoute",
    "UDPRoute",
    "ReferenceGrant",
    "Service",
    "EndpointSlice",
    "Namespace",
    "Secret",
];

/// The object in its typed form, serialised back.
fn typed_json(o: &Object) -> Value {
    let v = match o {
        Object::GatewayClass(x) => serde_json::to_value(x),
        Object::Gateway(x) => serde_json::to_value(x),
        Object::HTTPRoute(x) => serde_json::to_value(x),
        Object::GRPCRoute(x) => serde_json::to_value(x),
        Object::TLSRoute(x) => serde_json::to_value(x),
        Object::TCPRoute(x) => serde_json::to_value(x),
        Object::UDPRoute(x) => serde_json::to_value(x),
        Object::ReferenceGrant(x) => serde_json::to_value(x),
        Object::Service(x) => serde_json::to_value(x),
        Object::EndpointSlice(x) => serde_json::to_value(x),
        Object::Namespace(x) => serde_json::to_value(x),
        Object::Secret(x) => serde_json::to_value(x),
    };
    v.expect("typed objects serialise")
}

/// Paths of fields present in `written` but absent from `typed` (the round trip through the
/// typed form): the fields the schema does not know. Nulls are not fields.
fn unknown_fields(written: &Value, typed: &Value, path: &str, out: &mut Vec<String>) {
    match (written, typed) {
        (Value::Object(w), Value::Object(t)) => {
            for (k, v) in w {
                let p = format!("{path}.{k}");
                match t.get(k) {
                    Some(tv) => unknown_fields(v, tv, &p, out),
                    None if v.is_null() => {}
                    None => out.push(p),
                }
            }
        }
        (Value::Array(w), Value::Array(t)) => {
            for (i, (wv, tv)) in w.iter().zip(t).enumerate() {
                unknown_fields(wv, tv, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Problems of one document: parse errors, unknown fields, CRD constraints. `None` when the
/// document is of a kind nodegate does not read.
fn check_document(doc: serde_yaml::Value) -> Option<Result<String, Vec<String>>> {
    let written: Value = serde_json::to_value(&doc).expect("YAML as JSON");
    // Kinds the model does not read (Kustomization, kind's Cluster, DaemonSet …) are not ours.
    if !READ_KINDS.contains(&written["kind"].as_str().unwrap_or_default()) {
        return None;
    }
    let object = match object_from_value(doc) {
        Ok(Some(o)) => o,
        Ok(None) => return None,
        Err(e) => return Some(Err(vec![e])),
    };
    let mut problems = Vec::new();
    unknown_fields(&written, &typed_json(&object), "", &mut problems);
    let problems: Vec<String> = problems
        .into_iter()
        .map(|p| format!("unknown field {p}"))
        .chain(crd_constraints(&object))
        .collect();
    let name = format!(
        "{} {}",
        object.kind().as_str(),
        written["metadata"]["name"].as_str().unwrap_or_default()
    );
    Some(if problems.is_empty() {
        Ok(name)
    } else {
        Err(problems)
    })
}

/// The GatewayClass CRD's constraints on its strings (pattern and maxLength in its OpenAPI
/// schema; the generated types keep them as plain `String`s).
fn crd_constraints(o: &Object) -> Vec<String> {
    let Object::GatewayClass(c) = o else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let controller = &c.spec.controller_name;
    // ^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/[A-Za-z0-9\/\-._~%!$&'()*+,;=:]+$
    let valid_domain = |d: &str| {
        !d.is_empty()
            && d.split('.').all(|l| {
                !l.is_empty()
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            })
    };
    let valid_path = |p: &str| {
        !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/-._~%!$&'()*+,;=:".contains(&b))
    };
    match controller.split_once('/') {
        Some((d, p)) if valid_domain(d) && valid_path(p) && controller.len() <= 253 => {}
        _ => out.push(format!(
            "spec.controllerName {controller:?} is not a domain-prefixed path"
        )),
    }
    if let Some(d) = &c.spec.description
        && d.chars().count() > 64
    {
        out.push(format!(
            "spec.description is longer than 64 characters: {d:?}"
        ));
    }
    out
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries {
        let p = e.unwrap().path();
        if p.is_dir() {
            yaml_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            out.push(p);
        }
    }
}

#[test]
fn shipped_manifests_have_no_unknown_fields() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for dir in ["deploy", "examples", "bench/kind"] {
        yaml_files(&root.join(dir), &mut files);
    }
    files.sort();
    let (mut checked, mut failures) = (Vec::new(), Vec::new());
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = match serde::Deserialize::deserialize(doc) {
                Ok(serde_yaml::Value::Null) => continue,
                Ok(v) => v,
                Err(e) => {
                    failures.push(format!("{}: {e}", f.display()));
                    continue;
                }
            };
            match check_document(value) {
                None => {}
                Some(Ok(name)) => checked.push(name),
                Some(Err(problems)) => {
                    for p in problems {
                        failures.push(format!("{}: {p}", f.display()));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        checked.iter().any(|n| n == "GatewayClass nodegate"),
        "deploy/'s GatewayClass was checked: {checked:?}"
    );
    assert!(checked.len() > 20, "checked only {checked:?}");
}

#[test]
fn a_misspelled_field_and_a_bad_controller_name_are_caught() {
    let doc: serde_yaml::Value = serde_yaml::from_str(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata:\n  name: x\n\
         spec:\n  controllerName: Nodegate.io\n  descripton: typo\n",
    )
    .unwrap();
    let problems = check_document(doc).unwrap().unwrap_err();
    assert!(
        problems
            .iter()
            .any(|p| p == "unknown field .spec.descripton"),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("controllerName")),
        "{problems:?}"
    );
    let route: serde_yaml::Value = serde_yaml::from_str(
        "apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: UDPRoute\nmetadata:\n  name: r\n\
         spec:\n  parentRefs: [{name: gw, sectionNmae: dns}]\n  rules: [{backendRefs: [{name: s, port: 53}]}]\n",
    )
    .unwrap();
    assert_eq!(
        check_document(route).unwrap().unwrap_err(),
        ["unknown field .spec.parentRefs[0].sectionNmae"]
    );
}
