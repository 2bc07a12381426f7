//! The Nodes' addresses: what a Gateway without spec.addresses reports in status.addresses.
//!
//! Every node runs an agent that serves every Gateway of our class, so the addresses of the
//! Nodes whose agent is ready (see `pods`) are the Gateway's addresses; all Nodes' when the
//! agents' readiness is not known.

use std::collections::{BTreeMap, BTreeSet};

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

/// The Gateway addresses: those of the nodes in `ready` (every node when `None`), in node-name
/// order, each address once.
pub fn gateway_addresses(
    by_node: &BTreeMap<String, Vec<String>>,
    ready: Option<&BTreeSet<String>>,
) -> Vec<String> {
    let mut all: Vec<String> = Vec::new();
    let nodes = by_node
        .iter()
        .filter(|(name, _)| ready.is_none_or(|r| r.contains(*name)));
    for a in nodes.flat_map(|(_, a)| a) {
        if !all.contains(a) {
            all.push(a.clone());
        }
    }
    all
}

/// Watches Nodes and publishes every node's addresses by node name.
pub async fn run(
    api: Api<Node>,
    opts: WatchOptions,
    tx: watch::Sender<BTreeMap<String, Vec<String>>>,
) {
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
            tx.send_if_modified(|current| {
                let changed = *current != by_node;
                if changed {
                    current.clone_from(&by_node);
                }
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

    #[test]
    fn gateway_addresses_are_the_ready_nodes_in_name_order_each_once() {
        let by_node: BTreeMap<String, Vec<String>> = [
            ("n2", vec!["10.0.0.2", "203.0.113.9"]),
            ("n1", vec!["10.0.0.1"]),
            ("n3", vec!["10.0.0.3", "203.0.113.9"]),
            ("n4", vec![]),
        ]
        .into_iter()
        .map(|(n, a)| (n.to_string(), a.into_iter().map(str::to_string).collect()))
        .collect();
        let ready =
            |names: &[&str]| -> BTreeSet<String> { names.iter().map(|n| n.to_string()).collect() };
        assert_eq!(
            gateway_addresses(&by_node, None),
            ["10.0.0.1", "10.0.0.2", "203.0.113.9", "10.0.0.3"]
        );
        assert_eq!(
            gateway_addresses(&by_node, Some(&ready(&["n3", "n4"]))),
            ["10.0.0.3", "203.0.113.9"]
        );
        assert_eq!(
            gateway_addresses(&by_node, Some(&ready(&["n2", "n3", "gone"]))),
            ["10.0.0.2", "203.0.113.9", "10.0.0.3"]
        );
        assert!(gateway_addresses(&by_node, Some(&ready(&[]))).is_empty());
    }
}
