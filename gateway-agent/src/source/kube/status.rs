//! Status write-back: the leader applies every object's status (server-side apply on `/status`,
//! field manager [`FIELD_MANAGER`], forced) and records a Warning Event for each object that is
//! rejected. The last body written per object is kept; an object whose body did not change is
//! not written again, and an Event is recorded once per change of the rejection, not per compile.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use gateway_model::{Kind, ObjectKey, ObjectStatus};
use k8s_openapi::{
    api::core::v1::{Event, EventSource, ObjectReference},
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{
        ApiResource, DynamicObject, GroupVersionKind, ObjectMeta, Patch, PatchParams, PostParams,
    },
};
use serde_json::Value;
use tokio::sync::watch;

use super::{
    nodes::gateway_addresses,
    pods::Readiness,
    shape::{apply_body, keep_transition_times, rejection},
    store::Uids,
};
use crate::snapshot::Snapshot;

/// The field manager of our status applies.
pub const FIELD_MANAGER: &str = "nodegate.io/gateway-controller";
/// Failed writes are tried again after this.
const RETRY: Duration = Duration::from_secs(5);

/// (kind, namespace, name) as the status names them.
type StatusKey = (String, String, String);

/// What the writer remembers between snapshots.
pub struct Writer {
    client: Client,
    /// reportingInstance of our Events (the node name).
    instance: String,
    uids: Uids,
    written: BTreeMap<StatusKey, Value>,
    rejected: BTreeMap<StatusKey, String>,
}

impl Writer {
    /// A writer that has written nothing yet.
    pub fn new(client: Client, instance: String, uids: Uids) -> Self {
        Writer {
            client,
            instance,
            uids,
            written: BTreeMap::new(),
            rejected: BTreeMap::new(),
        }
    }

    /// Writes while `leader` says so, after every snapshot, node-address or agent-readiness
    /// change. Gateways without spec.addresses get the addresses of the nodes `ready` names
    /// (every node's when it is [`Readiness::Unavailable`]); nothing is written while it is
    /// [`Readiness::Pending`] (the leader's first Pod list), so no address set is written only
    /// to be corrected a moment later.
    pub async fn run(
        mut self,
        mut snapshots: watch::Receiver<Arc<Snapshot>>,
        mut nodes: watch::Receiver<BTreeMap<String, Vec<String>>>,
        mut ready: watch::Receiver<Readiness>,
        mut leader: watch::Receiver<bool>,
    ) {
        let mut failed;
        loop {
            let readiness = ready.borrow_and_update().clone();
            if *leader.borrow_and_update() {
                if readiness == Readiness::Pending {
                    failed = false;
                } else {
                    let snap = snapshots.borrow_and_update().clone();
                    let addresses =
                        gateway_addresses(&nodes.borrow_and_update(), readiness.restriction());
                    failed = !self.sync(&snap.statuses, &addresses).await;
                }
            } else {
                // Whoever leads meanwhile may write; on taking over we write everything once.
                self.written.clear();
                self.rejected.clear();
                failed = false;
            }
            tokio::select! {
                r = snapshots.changed() => if r.is_err() { return },
                r = nodes.changed() => if r.is_err() { return },
                r = ready.changed() => if r.is_err() { return },
                r = leader.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(RETRY), if failed => {}
            }
        }
    }

    /// Applies every status that changed; `false` if some write failed (to be retried).
    async fn sync(&mut self, statuses: &[ObjectStatus], node_addresses: &[String]) -> bool {
        let mut ok = true;
        let current: std::collections::BTreeSet<StatusKey> = statuses.iter().map(key).collect();
        self.written.retain(|k, _| current.contains(k));
        self.rejected.retain(|k, _| current.contains(k));
        for st in statuses {
            let k = key(st);
            let addressed = st.kind == "Gateway"
                && kind_of(&st.kind).is_some_and(|kind| {
                    let key = ObjectKey {
                        kind,
                        namespace: st.namespace.clone(),
                        name: st.name.clone(),
                    };
                    self.uids.lock().is_ok_and(|k| k.addressed.contains(&key))
                });
            let nodes = (st.kind == "Gateway" && !addressed).then_some(node_addresses);
            let mut body = apply_body(st, nodes);
            if let Some(old) = self.written.get(&k) {
                keep_transition_times(&mut body, old);
                if &body == old {
                    continue;
                }
            }
            match self.patch(st, &body).await {
                Ok(()) => {
                    tracing::debug!(kind = %st.kind, namespace = %st.namespace, name = %st.name, "status written");
                    self.written.insert(k.clone(), body);
                }
                Err(e) => {
                    ok = false;
                    tracing::warn!(kind = %st.kind, namespace = %st.namespace, name = %st.name,
                        error = %format!("{e:#}"), "status write failed; will retry");
                }
            }
            self.report_rejection(st, k).await;
        }
        ok
    }

    async fn patch(&self, st: &ObjectStatus, body: &Value) -> anyhow::Result<()> {
        let resource = api_resource(&st.api_version, &st.kind);
        let api: Api<DynamicObject> = if st.namespace.is_empty() {
            Api::all_with(self.client.clone(), &resource)
        } else {
            Api::namespaced_with(self.client.clone(), &st.namespace, &resource)
        };
        api.patch_status(
            &st.name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(body),
        )
        .await?;
        Ok(())
    }

    /// Records a Warning Event when the object's rejection is new or different.
    async fn report_rejection(&mut self, st: &ObjectStatus, k: StatusKey) {
        let Some((reason, message)) = rejection(st) else {
            self.rejected.remove(&k);
            return;
        };
        if self.rejected.get(&k) == Some(&message) {
            return;
        }
        self.rejected.insert(k, message.clone());
        if let Err(e) = self.event(st, &reason, &message).await {
            tracing::warn!(kind = %st.kind, name = %st.name, error = %e, "recording an Event failed");
        }
    }

    async fn event(&self, st: &ObjectStatus, reason: &str, message: &str) -> kube::Result<()> {
        let namespace = if st.namespace.is_empty() {
            "default"
        } else {
            st.namespace.as_str()
        };
        let uid = kind_of(&st.kind).and_then(|kind| {
            let key = ObjectKey {
                kind,
                namespace: st.namespace.clone(),
                name: st.name.clone(),
            };
            self.uids.lock().ok()?.uids.get(&key).cloned()
        });
        let now = Timestamp::now();
        let event = Event {
            metadata: ObjectMeta {
                name: Some(format!("{}.{:x}", st.name, now.as_nanosecond())),
                namespace: Some(namespace.to_string()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some(st.api_version.clone()),
                kind: Some(st.kind.clone()),
                name: Some(st.name.clone()),
                namespace: (!st.namespace.is_empty()).then(|| st.namespace.clone()),
                uid,
                ..Default::default()
            },
            reason: Some(reason.to_string()),
            message: Some(message.to_string()),
            type_: Some("Warning".into()),
            action: Some("Reconcile".into()),
            count: Some(1),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            source: Some(EventSource {
                component: Some("nodegate".into()),
                host: Some(self.instance.clone()),
            }),
            reporting_component: Some(FIELD_MANAGER.into()),
            reporting_instance: Some(self.instance.clone()),
            ..Default::default()
        };
        Api::<Event>::namespaced(self.client.clone(), namespace)
            .create(&PostParams::default(), &event)
            .await?;
        Ok(())
    }
}

fn key(st: &ObjectStatus) -> StatusKey {
    (st.kind.clone(), st.namespace.clone(), st.name.clone())
}

/// The model's kind for a status kind name.
fn kind_of(kind: &str) -> Option<Kind> {
    [
        Kind::GatewayClass,
        Kind::Gateway,
        Kind::HTTPRoute,
        Kind::GRPCRoute,
        Kind::TLSRoute,
        Kind::TCPRoute,
        Kind::UDPRoute,
    ]
    .into_iter()
    .find(|k| k.as_str() == kind)
}

/// The dynamic API resource for `apiVersion` + `kind` (plural: lower case + s, or es after an s).
pub fn api_resource(api_version: &str, kind: &str) -> ApiResource {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let lower = kind.to_lowercase();
    let plural = if lower.ends_with('s') {
        format!("{lower}es")
    } else {
        format!("{lower}s")
    };
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), &plural)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plurals_match_the_gateway_api_crds() {
        let r = api_resource("gateway.networking.k8s.io/v1", "GatewayClass");
        assert_eq!(
            (r.group.as_str(), r.version.as_str(), r.plural.as_str()),
            ("gateway.networking.k8s.io", "v1", "gatewayclasses")
        );
        assert_eq!(
            api_resource("gateway.networking.k8s.io/v1", "HTTPRoute").plural,
            "httproutes"
        );
        assert_eq!(
            api_resource("gateway.networking.k8s.io/v1alpha2", "TCPRoute").plural,
            "tcproutes"
        );
        assert_eq!(
            api_resource("gateway.networking.k8s.io/v1", "Gateway").plural,
            "gateways"
        );
    }
}
