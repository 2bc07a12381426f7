//! Cluster source: watches the Kubernetes API and feeds the same `gateway_model::Objects` the
//! standalone source reads from files; writes statuses back when this agent holds the
//! status-writer Lease.
//!
//! - `watch`: one kube-runtime watcher per kind (list + watch, relist after 410, backoff, kinds
//!   the server does not serve reported once and retried quietly);
//! - `store`: the objects, and one debounced reading per burst of changes;
//! - `nodes`: the Nodes' addresses, for Gateways without spec.addresses;
//! - `pods`: which nodes have a ready agent (the leader watches the agent Pods);
//! - `lease`: leader election among the agents;
//! - `status` + `shape`: server-side apply of statuses and Events for rejected objects.

mod lease;
mod nodes;
mod pods;
mod shape;
mod status;
mod store;
mod watch;

use std::{fmt::Debug, sync::Arc, time::Duration};

use anyhow::Context as _;
use gateway_api::apis::experimental::{
    gatewayclasses::GatewayClass, gateways::Gateway, grpcroutes::GrpcRoute, httproutes::HttpRoute,
    referencegrants::ReferenceGrant, tcproutes::TcpRoute, tlsroutes::TlsRoute, udproutes::UdpRoute,
};
use gateway_model::{Kind, Object};
use k8s_openapi::api::{
    core::v1::{Namespace, Node, Secret, Service},
    discovery::v1::EndpointSlice,
};
use kube::{Api, Client, Resource, runtime::watcher};
use serde::de::DeserializeOwned;
use tokio::{
    sync::{mpsc, watch as tokio_watch},
    task::JoinHandle,
};

use crate::{snapshot::Snapshot, source::file::Reading};

/// How the cluster source connects and behaves.
#[derive(Debug, Clone)]
pub struct KubeOptions {
    /// API server URL without credentials (tests, `kubectl proxy`); `None` for in-cluster config
    /// or the kubeconfig (`KUBECONFIG`, `~/.kube/config`).
    pub api: Option<String>,
    /// This node's name: the Lease identity and the Events' reportingInstance.
    pub node_name: String,
    /// Namespace of the status-writer Lease.
    pub lease_namespace: String,
    /// Name of the status-writer Lease.
    pub lease_name: String,
    /// leaseDurationSeconds of the Lease (renewed every third of it).
    pub lease_duration: Duration,
    /// How often a kind the server does not serve is tried again.
    pub missing_retry: Duration,
    /// Longest pause between watch retries.
    pub max_backoff: Duration,
    /// Whether to write statuses at all (when leader).
    pub write_status: bool,
    /// Prefer endpoints on `node_name` (see `Objects::set_preferred_node`).
    pub prefer_local_endpoints: bool,
    /// Label selector of the agent's own Pods in `lease_namespace`: Gateway addresses are the
    /// addresses of the nodes where one of them is Ready.
    pub agent_selector: String,
}

/// The running source.
pub struct KubeSource {
    /// The first reading: after every kind was listed (or found not served).
    first: Option<Reading>,
    /// Every later reading, one per debounced burst of changes.
    readings: Option<mpsc::Receiver<Reading>>,
    client: Client,
    opts: KubeOptions,
    nodes: tokio_watch::Receiver<std::collections::BTreeMap<String, Vec<String>>>,
    /// Retry delays of the agent Pod watch (started with the status writer).
    backoff: watch::Backoff,
    uids: store::Uids,
    tasks: Vec<JoinHandle<()>>,
    /// The election: its stop signal and task, for [`KubeSource::shutdown`].
    lease: Option<(tokio::sync::oneshot::Sender<()>, JoinHandle<()>)>,
}

/// Longest wait for the Lease release on shutdown.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(3);

/// The kinds of the model's input, all watched.
const KINDS: [Kind; 12] = [
    Kind::GatewayClass,
    Kind::Gateway,
    Kind::HTTPRoute,
    Kind::GRPCRoute,
    Kind::TLSRoute,
    Kind::TCPRoute,
    Kind::UDPRoute,
    Kind::ReferenceGrant,
    Kind::Service,
    Kind::EndpointSlice,
    Kind::Namespace,
    Kind::Secret,
];

/// Longest wait for the first complete list before starting with what is known.
const INITIAL_SYNC: Duration = Duration::from_secs(30);

/// Connects to the API server.
pub async fn client(api: Option<&str>) -> anyhow::Result<Client> {
    let config = match api {
        Some(url) => kube::Config::new(url.parse().with_context(|| format!("--kube-api {url}"))?),
        None => kube::Config::infer()
            .await
            .context("no in-cluster config and no usable kubeconfig")?,
    };
    Client::try_from(config).context("building the Kubernetes client")
}

impl KubeSource {
    /// Starts every watcher and waits for the first reading.
    pub async fn start(opts: KubeOptions) -> anyhow::Result<Self> {
        let client = client(opts.api.as_deref()).await?;
        let watch_opts = watch::WatchOptions {
            backoff: watch::Backoff::new(Duration::from_millis(200), opts.max_backoff),
            missing_retry: opts.missing_retry,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        let all = watcher::Config::default();
        let c = &client;
        let mut spawn = |task: JoinHandle<()>| tasks.push(task);
        spawn(kind::<GatewayClass>(
            c,
            all.clone(),
            Kind::GatewayClass,
            Object::GatewayClass,
            &watch_opts,
            &tx,
        ));
        spawn(kind::<Gateway>(
            c,
            all.clone(),
            Kind::Gateway,
            Object::Gateway,
            &watch_opts,
            &tx,
        ));
        spawn(kind::<HttpRoute>(
            c,
            all.clone(),
            Kind::HTTPRoute,
            Object::HTTPRoute,
            &watch_opts,
            &tx,
        ));
        spawn(kind::<GrpcRoute>(
            c,
            all.clone(),
            Kind::GRPCRoute,
            Object::GRPCRoute,
            &watch_opts,
            &tx,
        ));
        spawn(kind::<TlsRoute>(
            c,
            all.clone(),
            Kind::TLSRoute,
            Object::TLSRoute,
            &watch_opts,
            &tx,
        ));
        spawn(kind::<TcpRoute>(
            c,
            all.clone(),
            Kind::TCPRoute,
            Object::TCPRoute,
            &watch_opts,
            &tx,
        ));
        spawn(kind::<UdpRoute>(
            c,
            all.clone(),
            Kind::UDPRoute,
            Object::UDPRoute,
            &watch_opts,
            &tx,
        ));
        spawn(kind::<ReferenceGrant>(
            c,
            all.clone(),
            Kind::ReferenceGrant,
            Object::ReferenceGrant,
            &watch_opts,
            &tx,
        ));
        spawn(kind::<Service>(
            c,
            all.clone(),
            Kind::Service,
            Object::Service,
            &watch_opts,
            &tx,
        ));
        spawn(kind::<EndpointSlice>(
            c,
            all.clone(),
            Kind::EndpointSlice,
            Object::EndpointSlice,
            &watch_opts,
            &tx,
        ));
        spawn(kind::<Namespace>(
            c,
            all.clone(),
            Kind::Namespace,
            Object::Namespace,
            &watch_opts,
            &tx,
        ));
        // Only TLS Secrets: the server filters, so other Secrets never reach this process.
        let tls = watcher::Config::default().fields("type=kubernetes.io/tls");
        spawn(kind::<Secret>(
            c,
            tls,
            Kind::Secret,
            Object::Secret,
            &watch_opts,
            &tx,
        ));
        drop(tx);

        let (nodes_tx, nodes) = tokio_watch::channel(Default::default());
        tasks.push(tokio::spawn(nodes::run(
            Api::<Node>::all(client.clone()),
            watch_opts.clone(),
            nodes_tx,
        )));

        let uids = store::Uids::default();
        let (readings_tx, mut readings) = mpsc::channel(1);
        let preferred = opts.prefer_local_endpoints.then(|| opts.node_name.clone());
        tasks.push(tokio::spawn(store::run(
            rx,
            preferred,
            KINDS.to_vec(),
            INITIAL_SYNC,
            uids.clone(),
            readings_tx,
        )));
        let first = readings
            .recv()
            .await
            .context("the cluster source stopped before its first reading")?;
        tracing::info!(objects = first.objects.len(), "cluster objects listed");
        Ok(KubeSource {
            first: Some(first),
            readings: Some(readings),
            client,
            opts,
            nodes,
            backoff: watch_opts.backoff,
            uids,
            tasks,
            lease: None,
        })
    }

    /// The first reading; empty if taken before.
    pub fn take_first(&mut self) -> Reading {
        self.first.take().unwrap_or_else(|| Reading {
            objects: gateway_model::Objects::default(),
            errors: Vec::new(),
        })
    }

    /// The later readings (a closed channel if taken before).
    pub fn take_readings(&mut self) -> mpsc::Receiver<Reading> {
        self.readings.take().unwrap_or_else(|| mpsc::channel(1).1)
    }

    /// This node's InternalIP addresses (for `--interface auto`); none, with a warning, when the
    /// Node cannot be read.
    pub async fn node_internal_ips(&self) -> Vec<std::net::IpAddr> {
        match Api::<Node>::all(self.client.clone())
            .get_opt(&self.opts.node_name)
            .await
        {
            Ok(Some(node)) => nodes::internal_ips(&node),
            Ok(None) => {
                tracing::warn!(node = %self.opts.node_name, "no Node of this name; interfaces are chosen by default route only");
                Vec::new()
            }
            Err(e) => {
                tracing::warn!(node = %self.opts.node_name, error = %e, "reading this Node failed; interfaces are chosen by default route only");
                Vec::new()
            }
        }
    }

    /// Starts the Lease election and the status writer on `snapshots`.
    pub fn write_statuses(&mut self, snapshots: tokio_watch::Receiver<Arc<Snapshot>>) {
        if !self.opts.write_status {
            return;
        }
        let (leader_tx, leader) = tokio_watch::channel(false);
        let lease_opts = lease::LeaseOptions {
            namespace: self.opts.lease_namespace.clone(),
            name: self.opts.lease_name.clone(),
            identity: self.opts.node_name.clone(),
            duration: self.opts.lease_duration,
        };
        let leases = Api::namespaced(self.client.clone(), &self.opts.lease_namespace);
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let election = tokio::spawn(lease::run(leases, lease_opts, leader_tx, stopped));
        self.lease = Some((stop, election));
        let (ready_tx, ready) = tokio_watch::channel(pods::Readiness::Pending);
        self.tasks.push(tokio::spawn(pods::run(
            Api::namespaced(self.client.clone(), &self.opts.lease_namespace),
            self.opts.agent_selector.clone(),
            self.backoff.clone(),
            leader.clone(),
            ready_tx,
        )));
        let writer = status::Writer::new(
            self.client.clone(),
            self.opts.node_name.clone(),
            self.uids.clone(),
        );
        self.tasks.push(tokio::spawn(writer.run(
            snapshots,
            self.nodes.clone(),
            ready,
            leader,
        )));
    }
}

impl KubeSource {
    /// Clean shutdown: stops writing statuses and releases the status-writer Lease if we hold it
    /// (waiting at most [`RELEASE_TIMEOUT`]), so another agent takes over at once.
    pub async fn shutdown(&mut self) {
        if let Some((stop, election)) = self.lease.take() {
            let _ = stop.send(());
            let abort = election.abort_handle();
            if tokio::time::timeout(RELEASE_TIMEOUT, election)
                .await
                .is_err()
            {
                tracing::warn!("releasing the status-writer lease timed out");
                abort.abort();
            }
        }
    }
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Some((_, election)) = &self.lease {
            election.abort();
        }
    }
}

/// Spawns the watcher of one kind, wrapping each object as the model's [`Object`].
fn kind<K>(
    client: &Client,
    config: watcher::Config,
    kind: Kind,
    wrap: fn(K) -> Object,
    opts: &watch::WatchOptions,
    tx: &mpsc::UnboundedSender<store::Message>,
) -> JoinHandle<()>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let tx = tx.clone();
    let api = Api::<K>::all(client.clone());
    tokio::spawn(watch::run(
        api,
        config,
        kind.as_str(),
        opts.clone(),
        move |change| {
            let change = match change {
                watch::Change::Replace(v) => {
                    watch::Change::Replace(v.into_iter().map(wrap).collect())
                }
                watch::Change::Apply(o) => watch::Change::Apply(wrap(o)),
                watch::Change::Delete(o) => watch::Change::Delete(wrap(o)),
            };
            let _ = tx.send((kind, change));
        },
    ))
}
