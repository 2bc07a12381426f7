//! Multi-document YAML into typed objects. Each document is parsed on its own, so one bad document
//! never hides the others; errors carry the file and the 1-based line.

use serde::de::DeserializeOwned;

use crate::objects::Object;

/// How bad a [`ParseError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Severity {
    /// The document is not an object nodegate can use; the file is broken.
    #[default]
    Error,
    /// The document was skipped on purpose (a kind nodegate does not read): worth a log line,
    /// not a failure.
    Warning,
}

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
    /// Error, or a warning for a skipped document.
    pub severity: Severity,
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

/// Parses every document of `text`. Empty documents and kinds nodegate does not read are
/// skipped silently; every `Err` is a real error (see [`parse_documents_with_warnings`] for the
/// skipped kinds too).
pub fn parse_documents(origin: &str, text: &str) -> Vec<Result<Object, ParseError>> {
    parse_documents_with_warnings(origin, text)
        .into_iter()
        .filter(|r| {
            r.as_ref()
                .err()
                .is_none_or(|e| e.severity == Severity::Error)
        })
        .collect()
}

/// Like [`parse_documents`], and a document of a kind nodegate does not read yields an `Err`
/// with [`Severity::Warning`] naming it, so the caller can log it without failing the file.
pub fn parse_documents_with_warnings(origin: &str, text: &str) -> Vec<Result<Object, ParseError>> {
    let mut out = Vec::new();
    for (start, doc) in documents(text) {
        let err = |line: Option<usize>, message: String, severity: Severity| ParseError {
            origin: origin.to_string(),
            line,
            message,
            severity,
        };
        let value: serde_yaml::Value = match serde_yaml::from_str(&doc) {
            Ok(v) => v,
            Err(e) => {
                let line = e.location().map(|l| start + l.line() - 1).or(Some(start));
                out.push(Err(err(line, e.to_string(), Severity::Error)));
                continue;
            }
        };
        if value.is_null() {
            continue;
        }
        match object_from_document(value, &doc) {
            Ok(Read::Object(object)) => out.push(Ok(object)),
            Ok(Read::Skipped(what)) => out.push(Err(err(
                Some(start),
                format!("{what} is not read by nodegate; skipped"),
                Severity::Warning,
            ))),
            Err((line, message)) => out.push(Err(err(
                Some(line.map_or(start, |l| start + l - 1)),
                message,
                Severity::Error,
            ))),
        }
    }
    out
}

/// What one document turned out to be (short-lived: one per document, moved out at once).
#[allow(
    clippy::large_enum_variant,
    reason = "returned by value once per document and unpacked immediately"
)]
enum Read {
    Object(Object),
    /// `apiVersion kind` of a document nodegate does not read.
    Skipped(String),
}

/// Deserialises the document's text (so type errors have a line) as `T`. Older served versions
/// share the v1 schema; when the apiVersion differs from the typed struct's, it is rewritten in
/// place (same length of lines) if it occurs exactly once, else the value is used without lines.
fn typed<T: DeserializeOwned>(
    mut value: serde_yaml::Value,
    doc: &str,
    api_version: &str,
) -> Result<T, (Option<usize>, String)> {
    let written = value
        .get("apiVersion")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string();
    let text = if written == api_version {
        Some(doc.to_string())
    } else if doc.matches(written.as_str()).count() == 1 {
        Some(doc.replacen(written.as_str(), api_version, 1))
    } else {
        None
    };
    if let Some(text) = text {
        return serde_yaml::from_str(&text)
            .map_err(|e| (e.location().map(|l| l.line()), e.to_string()));
    }
    if let Some(map) = value.as_mapping_mut() {
        map.insert("apiVersion".into(), api_version.into());
    }
    serde_yaml::from_value(value).map_err(|e| (None, e.to_string()))
}

/// Reads one document's value as an object: `Ok(None)` for kinds nodegate does not read.
pub fn object_from_value(value: serde_yaml::Value) -> Result<Option<Object>, String> {
    let doc = serde_yaml::to_string(&value).map_err(|e| e.to_string())?;
    match object_from_document(value, &doc) {
        Ok(Read::Object(o)) => Ok(Some(o)),
        Ok(Read::Skipped(_)) => Ok(None),
        Err((_, message)) => Err(message),
    }
}

/// Reads one document (its value and its text) as an object.
fn object_from_document(
    value: serde_yaml::Value,
    doc: &str,
) -> Result<Read, (Option<usize>, String)> {
    let api_version = value
        .get("apiVersion")
        .and_then(|v| v.as_str())
        .ok_or((None, "document has no apiVersion".to_string()))?
        .to_string();
    let kind = value
        .get("kind")
        .and_then(|v| v.as_str())
        .ok_or((None, "document has no kind".to_string()))?
        .to_string();
    let name = value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(|n| n.as_str());
    if name.is_none_or(str::is_empty) {
        return Err((None, format!("{kind} has no metadata.name")));
    }
    let (group, version) = api_version
        .rsplit_once('/')
        .unwrap_or(("", api_version.as_str()));
    let gw = |canonical: &str| -> Result<String, (Option<usize>, String)> {
        if GATEWAY_VERSIONS.contains(&version) {
            Ok(format!("gateway.networking.k8s.io/{canonical}"))
        } else {
            Err((None, format!("{kind}: unsupported version {api_version}")))
        }
    };
    let object = match (group, kind.as_str()) {
        ("gateway.networking.k8s.io", "GatewayClass") => {
            Object::GatewayClass(typed(value, doc, &gw("v1")?)?)
        }
        ("gateway.networking.k8s.io", "Gateway") => Object::Gateway(typed(value, doc, &gw("v1")?)?),
        ("gateway.networking.k8s.io", "HTTPRoute") => {
            Object::HTTPRoute(typed(value, doc, &gw("v1")?)?)
        }
        ("gateway.networking.k8s.io", "GRPCRoute") => {
            Object::GRPCRoute(typed(value, doc, &gw("v1")?)?)
        }
        ("gateway.networking.k8s.io", "TLSRoute") => {
            Object::TLSRoute(typed(value, doc, &gw("v1")?)?)
        }
        ("gateway.networking.k8s.io", "TCPRoute") => {
            Object::TCPRoute(typed(value, doc, &gw("v1alpha2")?)?)
        }
        ("gateway.networking.k8s.io", "UDPRoute") => {
            Object::UDPRoute(typed(value, doc, &gw("v1alpha2")?)?)
        }
        ("gateway.networking.k8s.io", "ReferenceGrant") => {
            Object::ReferenceGrant(typed(value, doc, &gw("v1")?)?)
        }
        ("", "Service") => Object::Service(typed(value, doc, "v1")?),
        ("", "Namespace") => Object::Namespace(typed(value, doc, "v1")?),
        ("", "Secret") => Object::Secret(typed(value, doc, "v1")?),
        ("discovery.k8s.io", "EndpointSlice") => {
            Object::EndpointSlice(typed(value, doc, "discovery.k8s.io/v1")?)
        }
        _ => return Ok(Read::Skipped(format!("{api_version} {kind}"))),
    };
    Ok(Read::Object(object))
}
