//! The agents' readiness, for Gateway `status.addresses`: a Gateway is reachable on the nodes
//! whose agent is ready, so the leader watches the agent's own Pods (in its namespace, by label
//! selector) and takes the nodes of those whose `Ready` condition is True (the DaemonSet's
//! readiness probe is the agent's `/readyz`).
//!
//! Only the leader watches (no other agent writes statuses). When the Pods cannot be listed (no
//! RBAC for them, or not served), the Gateway addresses fall back to every Node's, with one
//! warning, so that status writing goes on.

use std::collections::{BTreeMap, BTreeSet};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api,
    runtime::{WatchStreamExt as _, watcher},
};
use tokio::sync::watch;

use super::watch::Backoff;

/// What is known about which nodes have a ready agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// Not listed yet (or not leader): the writer waits rather than write addresses it would
    /// correct a moment later.
    Pending,
    /// The Pods cannot be listed: every Node counts.
    Unavailable,
    /// The names of the nodes whose agent Pod is Ready.
    Nodes(BTreeSet<String>),
}

impl Readiness {
    /// The ready set the addresses are restricted to; `None` for every node.
    pub fn restriction(&self) -> Option<&BTreeSet<String>> {
        match self {
            Readiness::Nodes(n) => Some(n),
            Readiness::Pending | Readiness::Unavailable => None,
        }
    }
}

/// Whether `pod`'s `Ready` condition is True.
fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// The `spec.nodeName` of every Ready pod among `pods` (unscheduled pods have none).
pub fn ready_nodes<'a>(pods: impl IntoIterator<Item = &'a Pod>) -> BTreeSet<String> {
    pods.into_iter()
        .filter(|p| is_ready(p))
        .filter_map(|p| p.spec.as_ref()?.node_name.clone())
        .filter(|n| !n.is_empty())
        .collect()
}

/// While `leader` says so, watches the Pods of `api` matching the label `selector` and publishes
/// the [`Readiness`] on `tx`; back to [`Readiness::Pending`] when leadership is lost.
pub async fn run(
    api: Api<Pod>,
    selector: String,
    backoff: Backoff,
    mut leader: watch::Receiver<bool>,
    tx: watch::Sender<Readiness>,
) {
    loop {
        if leader.wait_for(|l| *l).await.map(|_| ()).is_err() {
            return;
        }
        tokio::select! {
            () = follow(&api, &selector, backoff.clone(), &tx) => {}
            r = leader.wait_for(|l| !*l) => if r.map(|_| ()).is_err() { return },
        }
        tx.send_replace(Readiness::Pending);
    }
}

/// One watcher on the agent Pods, for ever (kube-runtime relists and re-watches on its own).
async fn follow(api: &Api<Pod>, selector: &str, backoff: Backoff, tx: &watch::Sender<Readiness>) {
    let config = watcher::Config::default().labels(selector);
    let stream = watcher(api.clone(), config).backoff(backoff);
    let mut stream = std::pin::pin!(stream);
    let name = |p: &Pod| p.metadata.name.clone().unwrap_or_default();
    let mut pods: BTreeMap<String, Pod> = BTreeMap::new();
    let mut buffer: BTreeMap<String, Pod> = BTreeMap::new();
    let mut warned = false;
    let publish = |pods: &BTreeMap<String, Pod>| {
        let new = Readiness::Nodes(ready_nodes(pods.values()));
        tx.send_if_modified(|current| {
            let changed = *current != new;
            *current = new;
            changed
        });
    };
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Init) => buffer.clear(),
            Ok(watcher::Event::InitApply(p)) => {
                buffer.insert(name(&p), p);
            }
            Ok(watcher::Event::InitDone) => {
                pods = std::mem::take(&mut buffer);
                if warned {
                    tracing::info!(
                        selector,
                        "agent Pods listed; Gateway addresses are the ready agents' nodes again"
                    );
                    warned = false;
                }
                publish(&pods);
            }
            Ok(watcher::Event::Apply(p)) => {
                pods.insert(name(&p), p);
                publish(&pods);
            }
            Ok(watcher::Event::Delete(p)) => {
                pods.remove(&name(&p));
                publish(&pods);
            }
            Err(watcher::Error::InitialListFailed(e)) => {
                if !warned {
                    tracing::warn!(selector, error = %e,
                        "listing the agent Pods failed (RBAC?); Gateway addresses are every Node's until it works");
                    warned = true;
                }
                tx.send_replace(Readiness::Unavailable);
            }
            Err(e) => {
                tracing::debug!(error = %e, "agent Pod watch failed; retrying with backoff");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodSpec, PodStatus};

    fn pod(node: Option<&str>, ready: Option<&str>) -> Pod {
        Pod {
            spec: Some(PodSpec {
                node_name: node.map(str::to_string),
                ..Default::default()
            }),
            status: Some(PodStatus {
                conditions: Some(
                    [
                        Some(PodCondition {
                            type_: "ContainersReady".into(),
                            status: "True".into(),
                            ..Default::default()
                        }),
                        ready.map(|s| PodCondition {
                            type_: "Ready".into(),
                            status: s.into(),
                            ..Default::default()
                        }),
                    ]
                    .into_iter()
                    .flatten()
                    .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn only_pods_whose_ready_condition_is_true_count_by_node_name() {
        let pods = [
            pod(Some("n1"), Some("True")),
            pod(Some("n2"), Some("False")),
            pod(Some("n3"), None),
            pod(None, Some("True")),
            pod(Some("n4"), Some("Unknown")),
            pod(Some("n5"), Some("True")),
            Pod::default(),
        ];
        assert_eq!(
            ready_nodes(&pods),
            BTreeSet::from(["n1".to_string(), "n5".to_string()])
        );
        assert!(ready_nodes(&[] as &[Pod]).is_empty());
    }

    #[test]
    fn only_a_listed_set_restricts_the_nodes() {
        let set = BTreeSet::from(["n1".to_string()]);
        assert_eq!(Readiness::Nodes(set.clone()).restriction(), Some(&set));
        assert_eq!(Readiness::Unavailable.restriction(), None);
        assert_eq!(Readiness::Pending.restriction(), None);
    }
}
