//! The status body we apply for one object, and what changed since the last write.

use serde_json::{Value, json};

use gateway_model::{CONTROLLER_NAME, ObjectStatus};

/// The server-side-apply body for `st`: only the fields we own. With `node_addresses` (a Gateway
/// without spec.addresses), status.addresses are those instead of the model's bind address.
/// Routes keep only the `status.parents[]` entries of our controller, so entries other
/// controllers own are never part of our apply.
pub fn apply_body(st: &ObjectStatus, node_addresses: Option<&[String]>) -> Value {
    let mut status = st.status.clone();
    if st.kind == "Gateway"
        && let Some(node_addresses) = node_addresses
    {
        status["addresses"] = node_addresses
            .iter()
            .map(|a| {
                let type_ = if a.parse::<std::net::IpAddr>().is_ok() {
                    "IPAddress"
                } else {
                    "Hostname"
                };
                json!({"type": type_, "value": a})
            })
            .collect();
    }
    if let Some(parents) = status.get_mut("parents").and_then(Value::as_array_mut) {
        parents.retain(|p| p["controllerName"] == CONTROLLER_NAME);
    }
    let mut metadata = json!({ "name": st.name });
    if !st.namespace.is_empty() {
        metadata["namespace"] = json!(st.namespace);
    }
    json!({
        "apiVersion": st.api_version,
        "kind": st.kind,
        "metadata": metadata,
        "status": status,
    })
}

/// Copies `lastTransitionTime` from `old` into `new` for every condition whose status did not
/// change (conditions matched by type; listeners by name; route parents by parentRef), so a
/// recompile that changes nothing produces the same body and nothing is written.
pub fn keep_transition_times(new: &mut Value, old: &Value) {
    match (new, old) {
        (Value::Object(n), Value::Object(o)) => {
            if n.contains_key("type") && n.contains_key("lastTransitionTime") {
                if n.get("type") == o.get("type")
                    && n.get("status") == o.get("status")
                    && let Some(t) = o.get("lastTransitionTime")
                {
                    n.insert("lastTransitionTime".into(), t.clone());
                }
                return;
            }
            for (k, v) in n.iter_mut() {
                if let Some(ov) = o.get(k) {
                    keep_transition_times(v, ov);
                }
            }
        }
        (Value::Array(n), Value::Array(o)) => {
            for item in n.iter_mut() {
                let key = match_key(item);
                let counterpart = o.iter().find(|c| key.is_some() && match_key(c) == key);
                if let Some(c) = counterpart {
                    keep_transition_times(item, c);
                }
            }
        }
        _ => {}
    }
}

/// What identifies an element of a status list: a condition's type, a listener's name, a route
/// parent's parentRef.
fn match_key(v: &Value) -> Option<Value> {
    ["type", "name", "parentRef"]
        .iter()
        .find_map(|k| v.get(*k).cloned())
        .map(|id| json!([v.get("type").is_some(), id]))
}

/// "reason: message" of every Accepted=False condition of `st` (top level, or per route parent),
/// joined; `None` when the object is accepted everywhere.
pub fn rejection(st: &ObjectStatus) -> Option<(String, String)> {
    let mut found: Vec<(String, String)> = Vec::new();
    let mut scan = |conditions: &Value| {
        for c in conditions.as_array().into_iter().flatten() {
            if c["type"] == "Accepted" && c["status"] == "False" {
                found.push((
                    c["reason"].as_str().unwrap_or_default().to_string(),
                    c["message"].as_str().unwrap_or_default().to_string(),
                ));
            }
        }
    };
    scan(&st.status["conditions"]);
    for p in st.status["parents"].as_array().into_iter().flatten() {
        scan(&p["conditions"]);
    }
    if found.is_empty() {
        return None;
    }
    let reason = found[0].0.clone();
    let message = found
        .iter()
        .map(|(r, m)| format!("{r}: {m}"))
        .collect::<Vec<_>>()
        .join("; ");
    Some((reason, message))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(kind: &str, status: Value) -> ObjectStatus {
        ObjectStatus {
            api_version: "gateway.networking.k8s.io/v1".into(),
            kind: kind.into(),
            namespace: "default".into(),
            name: "x".into(),
            status,
        }
    }

    #[test]
    fn gateway_without_addresses_gets_node_addresses() {
        let st = status(
            "Gateway",
            json!({"addresses": [{"type": "IPAddress", "value": "0.0.0.0"}], "conditions": []}),
        );
        let body = apply_body(&st, Some(&["10.0.0.1".into(), "node-a.example".into()]));
        assert_eq!(
            body["status"]["addresses"],
            json!([{"type": "IPAddress", "value": "10.0.0.1"}, {"type": "Hostname", "value": "node-a.example"}])
        );
        assert_eq!(
            body["metadata"],
            json!({"name": "x", "namespace": "default"})
        );
        let st = status(
            "Gateway",
            json!({"addresses": [{"type": "IPAddress", "value": "192.0.2.1"}]}),
        );
        assert_eq!(
            apply_body(&st, None)["status"]["addresses"][0]["value"],
            "192.0.2.1"
        );
    }

    #[test]
    fn route_body_keeps_only_our_parents() {
        let st = status(
            "HTTPRoute",
            json!({"parents": [
                {"controllerName": CONTROLLER_NAME, "parentRef": {"name": "a"}},
                {"controllerName": "example.com/other", "parentRef": {"name": "b"}},
            ]}),
        );
        let parents = apply_body(&st, None)["status"]["parents"].clone();
        assert_eq!(parents.as_array().unwrap().len(), 1);
        assert_eq!(parents[0]["parentRef"]["name"], "a");
    }

    #[test]
    fn unchanged_conditions_keep_their_time_and_changed_ones_do_not() {
        let cond = |status: &str, time: &str| json!({"type": "Accepted", "status": status, "lastTransitionTime": time});
        let old = json!({"parents": [{"parentRef": {"name": "a"}, "conditions": [cond("True", "T1")]}],
                          "listeners": [{"name": "l", "conditions": [cond("True", "T1")]}]});
        let mut same = json!({"parents": [{"parentRef": {"name": "a"}, "conditions": [cond("True", "T2")]}],
                               "listeners": [{"name": "l", "conditions": [cond("True", "T2")]}]});
        keep_transition_times(&mut same, &old);
        assert_eq!(same, old);
        let mut changed =
            json!({"parents": [{"parentRef": {"name": "a"}, "conditions": [cond("False", "T2")]}]});
        keep_transition_times(&mut changed, &old);
        assert_eq!(
            changed["parents"][0]["conditions"][0]["lastTransitionTime"],
            "T2"
        );
    }

    #[test]
    fn rejection_reads_top_level_and_parent_conditions() {
        let ok = status(
            "Gateway",
            json!({"conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted"}]}),
        );
        assert_eq!(rejection(&ok), None);
        let bad = status(
            "HTTPRoute",
            json!({"parents": [{"conditions": [{"type": "Accepted", "status": "False", "reason": "NoMatchingParent", "message": "no such listener"}]}]}),
        );
        assert_eq!(
            rejection(&bad),
            Some((
                "NoMatchingParent".into(),
                "NoMatchingParent: no such listener".into()
            ))
        );
    }
}
