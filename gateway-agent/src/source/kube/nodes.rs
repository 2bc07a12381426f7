//! The Nodes' addresses: what a Gateway without spec.addresses reports in status.addresses.
//!
//! Every node runs an agent that serves every Gateway of our class, so the addresses of all
//! Nodes are the Gateway's addresses (no per-node readiness is taken into account).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;
use kube::{Api, runtime::watcher};
use tokio::sync::watch;

use super::watch::{Change, WatchOptions, run as watch_run};

/// InternalIP and ExternalIP addresses of `node`, in the order the Node lists them.
pub fn addresses(node: &Node) -> Vec<String> {
    node.status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
        .map(|a| a.address.clone())
        .collect()
}

/// The InternalIP addresses of `node` that parse as IP addresses.
pub fn internal_ips(node: &Node) -> Vec<std::net::IpAddr> {
    node.status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP")
        .filter_map(|a| a.address.parse().ok())
        .collect()
}

/// Watches Nodes and publishes every node's addresses (by node name, deduplicated).
pub async fn run(api: Api<Node>, opts: WatchOptions, tx: watch::Sender<Vec<String>>) {
    let mut by_node: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let name = |n: &Node| n.metadata.name.clone().unwrap_or_default();
    watch_run(
        api,
        watcher::Config::default(),
        "Node",
        opts,
        move |change| {
            match change {
                Change::Replace(nodes) => {
                    by_node = nodes.iter().map(|n| (name(n), addresses(n))).collect();
                }
                Change::Apply(n) => {
                    by_node.insert(name(&n), addresses(&n));
                }
                Change::Delete(n) => {
                    by_node.remove(&name(&n));
                }
            }
            let mut all: Vec<String> = Vec::new();
            for a in by_node.values().flatten() {
                if !all.contains(a) {
                    all.push(a.clone());
                }
            }
            tx.send_if_modified(|current| {
                let changed = *current != all;
                *current = all;
                changed
            });
        },
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeAddress, NodeStatus};

    #[test]
    fn only_ip_addresses_are_gateway_addresses() {
        let node = Node {
            status: Some(NodeStatus {
                addresses: Some(vec![
                    NodeAddress {
                        type_: "Hostname".into(),
                        address: "n1".into(),
                    },
                    NodeAddress {
                        type_: "InternalIP".into(),
                        address: "10.0.0.1".into(),
                    },
                    NodeAddress {
                        type_: "ExternalIP".into(),
                        address: "203.0.113.1".into(),
                    },
                ]),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(addresses(&node), ["10.0.0.1", "203.0.113.1"]);
        assert_eq!(
            internal_ips(&node),
            ["10.0.0.1".parse::<std::net::IpAddr>().unwrap()]
        );
    }
}
