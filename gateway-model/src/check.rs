//! `gateway-agent check`: every object's status as a list a Kubernetes user recognises.

use serde_json::{Value, json};

use crate::status::ObjectStatus;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A YAML list.
    Yaml,
    /// A JSON array.
    Json,
}

/// Renders statuses as a list of `{apiVersion, kind, metadata: {namespace, name}, status}`.
pub fn render(statuses: &[ObjectStatus], format: Format) -> String {
    let items: Vec<Value> = statuses
        .iter()
        .map(|s| {
            let mut metadata = json!({ "name": s.name });
            if !s.namespace.is_empty() {
                metadata["namespace"] = json!(s.namespace);
            }
            json!({
                "apiVersion": s.api_version,
                "kind": s.kind,
                "metadata": metadata,
                "status": s.status,
            })
        })
        .collect();
    match format {
        Format::Json => serde_json::to_string_pretty(&items).unwrap_or_default() + "\n",
        Format::Yaml => serde_yaml::to_string(&items).unwrap_or_default(),
    }
}
