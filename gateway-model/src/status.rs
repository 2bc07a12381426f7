//! `.status` as the API server holds it: conditions and the per-object shapes.

use serde::Serialize;
use serde_json::{Value, json};

/// The status of one object of ours, ready to print (`check`) or to apply (cluster mode).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ObjectStatus {
    /// e.g. `gateway.networking.k8s.io/v1`.
    pub api_version: String,
    /// e.g. `Gateway`.
    pub kind: String,
    /// Namespace ("" for cluster-scoped kinds).
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The `.status` object.
    pub status: Value,
}

/// A metav1.Condition under construction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    /// Type, e.g. `Accepted`.
    pub type_: &'static str,
    /// True or False.
    pub status: bool,
    /// CamelCase reason from the spec.
    pub reason: &'static str,
    /// Human-readable detail.
    pub message: String,
}

impl Condition {
    /// A condition that holds.
    pub fn ok(type_: &'static str, reason: &'static str, message: impl Into<String>) -> Self {
        Condition {
            type_,
            status: true,
            reason,
            message: message.into(),
        }
    }

    /// A condition that does not hold.
    pub fn fail(type_: &'static str, reason: &'static str, message: impl Into<String>) -> Self {
        Condition {
            type_,
            status: false,
            reason,
            message: message.into(),
        }
    }

    /// As JSON, stamped with the object's generation and the transition time.
    pub fn to_json(&self, generation: Option<i64>, time: &str) -> Value {
        let mut v = json!({
            "type": self.type_,
            "status": if self.status { "True" } else { "False" },
            "reason": self.reason,
            "message": self.message,
            "lastTransitionTime": time,
        });
        if let Some(g) = generation {
            v["observedGeneration"] = json!(g);
        }
        v
    }
}

/// Conditions as a JSON array.
pub fn conditions_json(conditions: &[Condition], generation: Option<i64>, time: &str) -> Value {
    Value::Array(
        conditions
            .iter()
            .map(|c| c.to_json(generation, time))
            .collect(),
    )
}
