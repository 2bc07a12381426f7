//! Multi-document YAML into typed objects. Each document is parsed on its own, so one bad document
//! never hides the others; errors carry the file and the 1-based line.

use serde::de::DeserializeOwned;

use crate::objects::Object;

/// A document that could not be read as an object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}:{}: {message}", line.map(|l| l.to_string()).unwrap_or_else(|| "?".into()))]
pub struct ParseError {
    /// Where the text came from (a file path).
    pub origin: String,
    /// 1-based line in the whole text, when known.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

/// The API groups and versions accepted for Gateway API kinds: v1 and the older versions clusters
/// still serve (all map to the same typed object).
const GATEWAY_VERSIONS: [&str; 4] = ["v1", "v1beta1", "v1alpha2", "v1alpha3"];

/// Splits `text` into documents at `---` lines, returning (first line number, document text).
fn documents(text: &str) -> Vec<(usize, String)> {
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut start = 1;
    for (i, line) in text.lines().enumerate() {
        if line.trim_end() == "---" || line.starts_with("--- ") {
            docs.push((start, std::mem::take(&mut current)));
            start = i + 2;
            continue;
        }
        current.push_str(line);
        current.push('\n');
    }
    docs.push((start, current));
    docs
}

/// Parses every document of `text`. Empty documents and kinds nodegate does not read are skipped.
pub fn parse_documents(origin: &str, text: &str) -> Vec<Result<Object, ParseError>> {
    let mut out = Vec::new();
    for (start, doc) in documents(text) {
        let err = |line: Option<usize>, message: String| ParseError {
            origin: origin.to_string(),
            line,
            message,
        };
        let value: serde_yaml::Value = match serde_yaml::from_str(&doc) {
            Ok(v) => v,
            Err(e) => {
                let line = e.location().map(|l| start + l.line() - 1).or(Some(start));
                out.push(Err(err(line, e.to_string())));
                continue;
            }
        };
        if value.is_null() {
            continue;
        }
        match object_from_value(value) {
            Ok(Some(object)) => out.push(Ok(object)),
            Ok(None) => {}
            Err(message) => out.push(Err(err(Some(start), message))),
        }
    }
    out
}

fn typed<T: DeserializeOwned>(
    mut value: serde_yaml::Value,
    api_version: &str,
) -> Result<T, String> {
    // The typed structs check apiVersion against their own; older served versions share the schema.
    if let Some(map) = value.as_mapping_mut() {
        map.insert("apiVersion".into(), api_version.into());
    }
    serde_yaml::from_value(value).map_err(|e| e.to_string())
}

/// Reads one document's value as an object: `Ok(None)` for kinds nodegate does not read.
pub fn object_from_value(value: serde_yaml::Value) -> Result<Option<Object>, String> {
    let api_version = value
        .get("apiVersion")
        .and_then(|v| v.as_str())
        .ok_or("document has no apiVersion")?
        .to_string();
    let kind = value
        .get("kind")
        .and_then(|v| v.as_str())
        .ok_or("document has no kind")?
        .to_string();
    let name = value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(|n| n.as_str());
    if name.is_none_or(str::is_empty) {
        return Err(format!("{kind} has no metadata.name"));
    }
    let (group, version) = api_version
        .rsplit_once('/')
        .unwrap_or(("", api_version.as_str()));
    let gw = |canonical: &str| -> Result<String, String> {
        if GATEWAY_VERSIONS.contains(&version) {
            Ok(format!("gateway.networking.k8s.io/{canonical}"))
        } else {
            Err(format!("{kind}: unsupported version {api_version}"))
        }
    };
    let object = match (group, kind.as_str()) {
        ("gateway.networking.k8s.io", "GatewayClass") => {
            Object::GatewayClass(typed(value, &gw("v1")?)?)
        }
        ("gateway.networking.k8s.io", "Gateway") => Object::Gateway(typed(value, &gw("v1")?)?),
        ("gateway.networking.k8s.io", "HTTPRoute") => Object::HTTPRoute(typed(value, &gw("v1")?)?),
        ("gateway.networking.k8s.io", "GRPCRoute") => Object::GRPCRoute(typed(value, &gw("v1")?)?),
        ("gateway.networking.k8s.io", "TLSRoute") => Object::TLSRoute(typed(value, &gw("v1")?)?),
        ("gateway.networking.k8s.io", "TCPRoute") => {
            Object::TCPRoute(typed(value, &gw("v1alpha2")?)?)
        }
        ("gateway.networking.k8s.io", "UDPRoute") => {
            Object::UDPRoute(typed(value, &gw("v1alpha2")?)?)
        }
        ("gateway.networking.k8s.io", "ReferenceGrant") => {
            Object::ReferenceGrant(typed(value, &gw("v1")?)?)
        }
        ("", "Service") => Object::Service(typed(value, "v1")?),
        ("", "Namespace") => Object::Namespace(typed(value, "v1")?),
        ("", "Secret") => Object::Secret(typed(value, "v1")?),
        ("discovery.k8s.io", "EndpointSlice") => {
            Object::EndpointSlice(typed(value, "discovery.k8s.io/v1")?)
        }
        _ => return Ok(None),
    };
    Ok(Some(object))
}
