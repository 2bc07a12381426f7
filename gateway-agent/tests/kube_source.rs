//! Cluster mode end to end, as root (the agent loads its BPF object, with no interface attached):
//! the real agent binary runs `run --kube` against an API server stand-in on loopback
//! (`support/apiserver.rs`) and must follow created, changed and deleted objects into its model,
//! relist after 410 Gone, re-watch after dropped connections, ignore a CRD that is not
//! installed, write each status once by server-side apply, record an Event for a rejected
//! object, and elect one status writer among two agents, with take-over when the writer dies and
//! at once when it shuts down cleanly (it releases the Lease); Gateway addresses are those of the
//! nodes whose agent Pod is Ready (every Node's when the Pods cannot be listed).

#[path = "support/apiserver.rs"]
mod apiserver;
mod support;

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use apiserver::ApiServer;
use serde_json::{Value, json};
use testbed::TempBpffs;

const GW: &str = "gateway.networking.k8s.io/v1";
const GW_ALPHA: &str = "gateway.networking.k8s.io/v1alpha2";
const CONTROLLER: &str = "nodegate.io/gateway-controller";

fn class(name: &str, parameters: bool) -> Value {
    let mut c = json!({"apiVersion": GW, "kind": "GatewayClass", "metadata": {"name": name},
                       "spec": {"controllerName": CONTROLLER}});
    if parameters {
        c["spec"]["parametersRef"] = json!({"group": "example.com", "kind": "Config", "name": "x"});
    }
    c
}

fn gateway(listeners: &[(&str, u16)]) -> Value {
    let listeners: Vec<Value> = listeners
        .iter()
        .map(|(name, port)| json!({"name": name, "protocol": "UDP", "port": port}))
        .collect();
    json!({"apiVersion": GW, "kind": "Gateway", "metadata": {"name": "edge", "namespace": "default"},
           "spec": {"gatewayClassName": "nodegate", "listeners": listeners}})
}

fn udp_route(name: &str, section: &str, service: &str) -> Value {
    json!({"apiVersion": GW_ALPHA, "kind": "UDPRoute", "metadata": {"name": name, "namespace": "default"},
           "spec": {"parentRefs": [{"name": "edge", "sectionName": section}],
                    "rules": [{"backendRefs": [{"name": service, "port": 53}]}]}})
}

fn service(name: &str, endpoint: &str) -> [Value; 2] {
    [
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
               "spec": {"ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]}}),
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": format!("{name}-1"), "namespace": "default",
                            "labels": {"kubernetes.io/service-name": name}},
               "addressType": "IPv4", "ports": [{"name": "dns", "port": 5353}],
               "endpoints": [{"addresses": [endpoint], "nodeName": "node-a"}]}),
    ]
}

/// An agent Pod (label `app.kubernetes.io/name=nodegate`) on `node`, Ready or not.
fn agent_pod(node: &str, ready: bool) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": format!("nodegate-{node}"), "namespace": "nodegate-system",
                        "labels": {"app.kubernetes.io/name": "nodegate"}},
           "spec": {"nodeName": node, "containers": [{"name": "agent", "image": "nodegate"}]},
           "status": {"conditions": [
               {"type": "ContainersReady", "status": if ready { "True" } else { "False" }},
               {"type": "Ready", "status": if ready { "True" } else { "False" }}]}})
}

/// A cluster with a class, a Gateway with one UDP listener routed to a Service, three
/// namespaces (so lists take several pages), a Node with a Ready agent Pod and Secrets of two
/// types.
fn cluster() -> ApiServer {
    let api = ApiServer::start();
    api.set_missing("gateway.networking.k8s.io/v1alpha2/tcproutes");
    api.apply(class("nodegate", false));
    for ns in ["default", "team-a", "team-b"] {
        api.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}));
    }
    api.apply(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"},
        "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.1"}, {"type": "Hostname", "address": "node-a"}]}}));
    api.apply(agent_pod("node-a", true));
    for (name, type_) in [("tls", "kubernetes.io/tls"), ("opaque", "Opaque")] {
        api.apply(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": "default"},
            "type": type_, "data": {}}));
    }
    api.apply(gateway(&[("dns", 5353)]));
    for o in service("dns", "10.9.0.1") {
        api.apply(o);
    }
    api.apply(udp_route("dns", "dns", "dns"));
    api
}

/// One `gateway-agent run --kube` process, killed on drop (its log printed on failure).
struct KubeAgent {
    child: Option<Child>,
    admin: SocketAddr,
    log_path: PathBuf,
    _kubeconfig: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl KubeAgent {
    fn start(api: &ApiServer, bpffs: &TempBpffs, node: &str, extra: &[&str]) -> Self {
        Self::start_with_lease(api, bpffs, node, "3s", extra)
    }

    /// [`KubeAgent::start`] with the given `--lease-duration`.
    fn start_with_lease(
        api: &ApiServer,
        bpffs: &TempBpffs,
        node: &str,
        lease_duration: &str,
        extra: &[&str],
    ) -> Self {
        let tag = format!("{}-{node}-{}", std::process::id(), free_port());
        let kubeconfig = std::env::temp_dir().join(format!("nodegate-kubeconfig-{tag}"));
        api.write_kubeconfig(&kubeconfig, node);
        let log_path = std::env::temp_dir().join(format!("nodegate-kube-agent-{tag}.log"));
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_gateway-agent"))
            .args([
                "--log",
                "info,gateway_agent=debug",
                "run",
                "--kube",
                "--bpffs",
            ])
            .arg(bpffs.path())
            .args([
                "--admin-address",
                &admin.to_string(),
                "--bind-address",
                "127.0.0.1",
            ])
            .args(["--node-name", node, "--lease-namespace", "nodegate-system"])
            .args([
                "--lease-duration",
                lease_duration,
                "--kube-missing-retry",
                "1s",
                "--kube-max-backoff",
                "1s",
            ])
            .args(extra)
            .env("KUBECONFIG", &kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .expect("spawning gateway-agent");
        let mut agent = KubeAgent {
            child: Some(child),
            admin,
            log_path,
            _kubeconfig: kubeconfig,
        };
        testbed::wait_for(Duration::from_secs(30), "the agent's /readyz", || {
            if let Some(Ok(Some(status))) = agent.child.as_mut().map(Child::try_wait) {
                panic!(
                    "gateway-agent exited before it was ready: {status}\n{}",
                    agent.log()
                );
            }
            matches!(testbed::http_get(agent.admin, "/readyz"), Ok((200, _))).then_some(())
        })
        .unwrap();
        agent
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    fn json(&self, path: &str) -> Option<Value> {
        match testbed::http_get(self.admin, path) {
            Ok((200, body)) => serde_json::from_str(&body).ok(),
            _ => None,
        }
    }

    /// L4 listener name → backend addresses, from /debug/model.
    fn l4(&self) -> Option<Vec<(String, Vec<String>)>> {
        let v = self.json("/debug/model")?;
        let mut out: Vec<(String, Vec<String>)> = v["model"]["l4"]
            .as_array()?
            .iter()
            .map(|l| {
                let backends = l["backends"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|b| b["address"].as_str().map(str::to_string))
                    .collect();
                (l["name"].as_str().unwrap_or_default().to_string(), backends)
            })
            .collect();
        out.sort();
        Some(out)
    }

    fn wait_l4(&self, what: &str, want: &[(&str, &[&str])]) {
        let want: Vec<(String, Vec<String>)> = want
            .iter()
            .map(|(n, b)| (n.to_string(), b.iter().map(|s| s.to_string()).collect()))
            .collect();
        let r = testbed::wait_for(Duration::from_secs(15), what, || {
            self.l4().filter(|l| *l == want)
        });
        if r.is_err() {
            panic!("{what}: model is {:?}, want {want:?}", self.l4());
        }
    }

    /// SIGTERM, and the agent must exit successfully.
    fn term(&mut self) {
        let mut c = self.child.take().expect("agent running");
        let sent = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let status = c.wait().unwrap();
        assert!(
            status.success(),
            "exit after SIGTERM: {status}\n{}",
            self.log()
        );
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for KubeAgent {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "---- agent log ({}) ----\n{}",
                self.log_path.display(),
                self.log()
            );
        }
        let _ = std::fs::remove_file(&self.log_path);
        let _ = std::fs::remove_file(&self._kubeconfig);
    }
}

/// The last status patch for `kind name` (by URL), if any.
fn last_patch(api: &ApiServer, plural: &str, name: &str) -> Option<apiserver::Request> {
    api.status_patches()
        .into_iter()
        .rfind(|r| r.uri.contains(&format!("/{plural}/{name}/status")))
}

fn condition<'a>(conditions: &'a Value, type_: &str) -> &'a Value {
    conditions
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} in {conditions}"))
}

#[test]
fn cluster_objects_reach_the_model_and_statuses_are_applied_once() {
    testbed::require_root("the cluster-mode test (the agent loads its BPF object)").unwrap();
    let api = cluster();
    let bpffs = TempBpffs::mount("kube1").unwrap();
    let agent = KubeAgent::start(&api, &bpffs, "node-a", &[]);

    // Created objects: the first model has the listener and its backend.
    agent.wait_l4(
        "the first model",
        &[("default/edge/dns", &["10.9.0.1:5353"])],
    );
    let reqs = api.requests();
    assert!(
        reqs.iter().any(|r| r.uri.contains("continue=")),
        "lists larger than a page are followed with continue"
    );
    assert!(
        reqs.iter()
            .any(|r| r.uri.starts_with("/api/v1/secrets?") && r.uri.contains("fieldSelector=type")),
        "Secrets are listed with the kubernetes.io/tls field selector: {:?}",
        reqs.iter()
            .filter(|r| r.uri.contains("secrets"))
            .map(|r| &r.uri)
            .collect::<Vec<_>>()
    );

    // Statuses: server-side apply, our field manager, forced, observedGeneration 1.
    let patch = testbed::wait_for(Duration::from_secs(15), "the Gateway status", || {
        last_patch(&api, "gateways", "edge")
    })
    .unwrap();
    assert_eq!(
        patch.content_type.as_deref(),
        Some("application/apply-patch+yaml")
    );
    assert!(
        patch
            .uri
            .contains("fieldManager=nodegate.io%2Fgateway-controller")
            || patch
                .uri
                .contains("fieldManager=nodegate.io/gateway-controller"),
        "{}",
        patch.uri
    );
    assert!(patch.uri.contains("force=true"), "{}", patch.uri);
    assert!(
        patch.uri.starts_with(
            "/apis/gateway.networking.k8s.io/v1/namespaces/default/gateways/edge/status"
        )
    );
    let accepted = condition(&patch.body["status"]["conditions"], "Accepted");
    assert_eq!(accepted["status"], "True");
    assert_eq!(accepted["observedGeneration"], 1);
    assert_eq!(
        patch.body["status"]["addresses"],
        json!([{"type": "IPAddress", "value": "10.0.0.1"}]),
        "a Gateway without spec.addresses reports the Nodes' addresses"
    );
    let route = testbed::wait_for(Duration::from_secs(10), "the UDPRoute status", || {
        last_patch(&api, "udproutes", "dns")
    })
    .unwrap();
    let parents = route.body["status"]["parents"].as_array().unwrap();
    assert_eq!(parents.len(), 1);
    assert_eq!(parents[0]["controllerName"], CONTROLLER);
    assert_eq!(
        condition(&parents[0]["conditions"], "Accepted")["status"],
        "True"
    );
    assert!(last_patch(&api, "gatewayclasses", "nodegate").is_some());

    // Nothing changed (the status writes themselves come back as MODIFIED events): no new patch.
    let before = api.status_patches().len();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        api.status_patches().len(),
        before,
        "no patch without a change"
    );

    // A missing CRD (TCPRoute, 404) was retried quietly and reported once.
    let tcp_lists = api
        .requests()
        .iter()
        .filter(|r| r.uri.contains("tcproutes"))
        .count();
    assert!(
        tcp_lists >= 2,
        "the missing kind is retried ({tcp_lists} requests)"
    );
    assert_eq!(
        agent.log().matches("not served by the API server").count(),
        1,
        "a missing CRD is logged once"
    );

    // Changed: a second listener (generation 2) and its route.
    api.apply(gateway(&[("dns", 5353), ("syslog", 5514)]));
    for o in service("syslog", "10.9.0.2") {
        api.apply(o);
    }
    api.apply(udp_route("syslog", "syslog", "syslog"));
    agent.wait_l4(
        "the changed Gateway",
        &[
            ("default/edge/dns", &["10.9.0.1:5353"]),
            ("default/edge/syslog", &["10.9.0.2:5353"]),
        ],
    );
    testbed::wait_for(Duration::from_secs(10), "observedGeneration 2", || {
        let p = last_patch(&api, "gateways", "edge")?;
        (condition(&p.body["status"]["conditions"], "Accepted")["observedGeneration"] == 2)
            .then_some(())
    })
    .unwrap();

    // Deleted: the route goes, the listener stays without backends.
    api.delete(GW_ALPHA, "UDPRoute", "default", "syslog");
    agent.wait_l4(
        "the deleted route",
        &[
            ("default/edge/dns", &["10.9.0.1:5353"]),
            ("default/edge/syslog", &[]),
        ],
    );

    // Dropped watch connections: the watchers resume from their resourceVersion.
    api.drop_watches();
    api.apply(udp_route("syslog", "syslog", "syslog"));
    agent.wait_l4(
        "the change after a dropped watch",
        &[
            ("default/edge/dns", &["10.9.0.1:5353"]),
            ("default/edge/syslog", &["10.9.0.2:5353"]),
        ],
    );

    // 410 Gone: a change only a relist can see.
    let [svc, slice] = service("syslog", "10.9.0.3");
    api.compact_with(vec![svc, slice]);
    agent.wait_l4(
        "the relist after 410",
        &[
            ("default/edge/dns", &["10.9.0.1:5353"]),
            ("default/edge/syslog", &["10.9.0.3:5353"]),
        ],
    );
    assert!(api.gone_sent() > 0, "the stand-in answered 410 Gone");

    // A rejected object: one Warning Event, not one per compile.
    api.apply(class("broken", true));
    testbed::wait_for(Duration::from_secs(10), "the Event", || {
        api.list("v1", "Event")
            .into_iter()
            .find(|e| e["involvedObject"]["name"] == "broken")
    })
    .map(|e| {
        assert_eq!(e["reason"], "InvalidParameters");
        assert_eq!(e["type"], "Warning");
        assert_eq!(e["involvedObject"]["kind"], "GatewayClass");
        assert!(
            e["involvedObject"]["uid"]
                .as_str()
                .is_some_and(|u| u.starts_with("uid-"))
        );
    })
    .unwrap();
    api.apply(gateway(&[("dns", 5353), ("syslog", 5514), ("ntp", 123)]));
    agent.wait_l4(
        "another compile",
        &[
            ("default/edge/dns", &["10.9.0.1:5353"]),
            ("default/edge/ntp", &[]),
            ("default/edge/syslog", &["10.9.0.3:5353"]),
        ],
    );
    std::thread::sleep(Duration::from_secs(1));
    let events = api
        .list("v1", "Event")
        .into_iter()
        .filter(|e| e["involvedObject"]["name"] == "broken")
        .count();
    assert_eq!(events, 1, "one Event per change of the rejection");

    // /debug/status keeps working in cluster mode.
    let status = agent.json("/debug/status").expect("/debug/status");
    assert!(
        status["items"].as_array().is_some_and(|i| i.len() >= 4),
        "{status}"
    );
}

fn holder(api: &ApiServer) -> Option<String> {
    api.get(
        "coordination.k8s.io/v1",
        "Lease",
        "nodegate-system",
        "nodegate-status-writer",
    )?["spec"]["holderIdentity"]
        .as_str()
        .map(str::to_string)
}

/// Tokens (agent names) that sent status patches at or after request index `from`.
fn patchers(api: &ApiServer, from: usize) -> std::collections::BTreeSet<String> {
    api.requests()
        .into_iter()
        .skip(from)
        .filter(|r| r.method == "PATCH")
        .filter_map(|r| r.token)
        .collect()
}

#[test]
fn two_agents_elect_one_status_writer_and_the_second_takes_over() {
    testbed::require_root("the cluster-mode test (the agent loads its BPF object)").unwrap();
    let api = cluster();
    let (bpffs_a, bpffs_b) = (
        TempBpffs::mount("kubea").unwrap(),
        TempBpffs::mount("kubeb").unwrap(),
    );
    let a = KubeAgent::start(&api, &bpffs_a, "node-a", &[]);
    let b = KubeAgent::start(&api, &bpffs_b, "node-b", &[]);
    a.wait_l4(
        "agent a's model",
        &[("default/edge/dns", &["10.9.0.1:5353"])],
    );
    b.wait_l4(
        "agent b's model",
        &[("default/edge/dns", &["10.9.0.1:5353"])],
    );
    testbed::wait_for(Duration::from_secs(15), "a status patch", || {
        last_patch(&api, "gateways", "edge")
    })
    .unwrap();
    // Let a few renewals pass: still one writer.
    std::thread::sleep(Duration::from_secs(3));
    let leader = holder(&api).expect("a lease holder");
    assert_eq!(
        patchers(&api, 0),
        [leader.clone()].into_iter().collect(),
        "only the lease holder patches"
    );

    // Kill the holder: it stops renewing; the other agent takes over and writes the next change.
    let (mut dead, survivor) = if leader == "node-a" { (a, b) } else { (b, a) };
    let survivor_name = if leader == "node-a" {
        "node-b"
    } else {
        "node-a"
    };
    dead.kill();
    let mark = api.requests().len();
    api.apply(gateway(&[("dns", 5353), ("syslog", 5514)]));
    survivor.wait_l4(
        "the survivor's model",
        &[
            ("default/edge/dns", &["10.9.0.1:5353"]),
            ("default/edge/syslog", &[]),
        ],
    );
    testbed::wait_for(Duration::from_secs(15), "the take-over", || {
        (holder(&api).as_deref() == Some(survivor_name)).then_some(())
    })
    .unwrap();
    testbed::wait_for(Duration::from_secs(10), "the survivor's patch", || {
        let p = last_patch(&api, "gateways", "edge")?;
        (p.token.as_deref() == Some(survivor_name)
            && condition(&p.body["status"]["conditions"], "Accepted")["observedGeneration"] == 2)
            .then_some(())
    })
    .unwrap();
    assert_eq!(
        patchers(&api, mark),
        [survivor_name.to_string()].into_iter().collect(),
        "after the take-over only the survivor patches"
    );
    drop(dead);
}

#[test]
fn the_leader_releases_its_lease_on_sigterm_and_the_other_takes_over_at_once() {
    testbed::require_root("the cluster-mode test (the agent loads its BPF object)").unwrap();
    let api = cluster();
    let (bpffs_a, bpffs_b) = (
        TempBpffs::mount("kubera").unwrap(),
        TempBpffs::mount("kuberb").unwrap(),
    );
    // A 6s lease (attempts every 2s): a holder that merely stopped renewing is taken over no
    // sooner than 4s after its last renewal; a released one at the other's next attempt.
    const LEASE: Duration = Duration::from_secs(6);
    let a = KubeAgent::start_with_lease(&api, &bpffs_a, "node-a", "6s", &[]);
    let b = KubeAgent::start_with_lease(&api, &bpffs_b, "node-b", "6s", &[]);
    let leader =
        testbed::wait_for(Duration::from_secs(15), "a lease holder", || holder(&api)).unwrap();
    let (mut leaving, survivor, survivor_name) = if leader == "node-a" {
        (a, b, "node-b")
    } else {
        (b, a, "node-a")
    };
    // Let the other agent see the holder renew at least once.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(holder(&api).as_deref(), Some(leader.as_str()));

    let sigterm = std::time::Instant::now();
    leaving.term();
    assert!(
        leaving.log().contains("released the status-writer lease"),
        "{}",
        leaving.log()
    );
    testbed::wait_for(LEASE, "the take-over", || {
        (holder(&api).as_deref() == Some(survivor_name)).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", survivor.log()));
    let took = sigterm.elapsed();
    assert!(
        took < Duration::from_millis(3500),
        "take-over {took:?} after SIGTERM: not well before the {LEASE:?} lease"
    );
    let lease = api
        .get(
            "coordination.k8s.io/v1",
            "Lease",
            "nodegate-system",
            "nodegate-status-writer",
        )
        .unwrap();
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 6, "{lease}");
    drop(survivor);
}

/// `status.addresses` of the last patch of Gateway `name`, and how many patches it had.
fn gateway_addresses(api: &ApiServer, name: &str) -> (Option<Value>, usize) {
    let patches: Vec<_> = api
        .status_patches()
        .into_iter()
        .filter(|r| r.uri.contains(&format!("/gateways/{name}/status")))
        .collect();
    (
        patches
            .last()
            .map(|p| p.body["status"]["addresses"].clone()),
        patches.len(),
    )
}

#[test]
fn gateway_addresses_are_those_of_the_nodes_whose_agent_is_ready() {
    testbed::require_root("the cluster-mode test (the agent loads its BPF object)").unwrap();
    let api = cluster();
    api.apply(
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-b"},
        "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.2"},
                                 {"type": "ExternalIP", "address": "203.0.113.2"}]}}),
    );
    // node-b's agent is not Ready; a Ready Pod there that is not an agent (other label) and a
    // Ready agent-labelled Pod in another namespace do not count.
    api.apply(agent_pod("node-b", false));
    let mut other = agent_pod("node-b", true);
    other["metadata"]["name"] = json!("someone-else");
    other["metadata"]["labels"] = json!({"app.kubernetes.io/name": "other"});
    api.apply(other);
    let mut elsewhere = agent_pod("node-b", true);
    elsewhere["metadata"]["namespace"] = json!("default");
    api.apply(elsewhere);
    // A Gateway with spec.addresses keeps them whatever the agents' readiness.
    let mut fixed = gateway(&[("ntp", 5123)]);
    fixed["metadata"]["name"] = json!("fixed");
    fixed["spec"]["addresses"] = json!([{"type": "IPAddress", "value": "127.0.0.1"}]);
    api.apply(fixed);
    let bpffs = TempBpffs::mount("kube4").unwrap();
    let agent = KubeAgent::start(&api, &bpffs, "node-a", &[]);

    let only_a = json!([{"type": "IPAddress", "value": "10.0.0.1"}]);
    let fixed_addresses = json!([{"type": "IPAddress", "value": "127.0.0.1"}]);
    testbed::wait_for(Duration::from_secs(15), "both Gateway statuses", || {
        (gateway_addresses(&api, "edge").0.is_some()
            && gateway_addresses(&api, "fixed").0.is_some())
        .then_some(())
    })
    .unwrap();
    assert_eq!(
        gateway_addresses(&api, "edge"),
        (Some(only_a.clone()), 1),
        "only node-a's agent is Ready, and no all-nodes status came first\n{}",
        agent.log()
    );
    let (fixed_before, fixed_patches) = gateway_addresses(&api, "fixed");
    assert_eq!(fixed_before, Some(fixed_addresses.clone()));
    assert!(
        api.requests().iter().any(|r| r
            .uri
            .starts_with("/api/v1/namespaces/nodegate-system/pods?")
            && r.uri
                .contains("labelSelector=app.kubernetes.io%2Fname%3Dnodegate")),
        "the agent Pods are listed in the lease namespace by label: {:?}",
        api.requests()
            .iter()
            .filter(|r| r.uri.contains("pods"))
            .map(|r| &r.uri)
            .collect::<Vec<_>>()
    );

    // node-b's agent becomes Ready (a MODIFIED event): a new patch lists both nodes, in node order.
    api.apply(agent_pod("node-b", true));
    let both = json!([{"type": "IPAddress", "value": "10.0.0.1"},
                      {"type": "IPAddress", "value": "10.0.0.2"},
                      {"type": "IPAddress", "value": "203.0.113.2"}]);
    testbed::wait_for(Duration::from_secs(10), "both nodes' addresses", || {
        (gateway_addresses(&api, "edge").0.as_ref() == Some(&both)).then_some(())
    })
    .unwrap();
    // And back: node-a's agent is not Ready any more.
    api.apply(agent_pod("node-a", false));
    let only_b = json!([{"type": "IPAddress", "value": "10.0.0.2"},
                        {"type": "IPAddress", "value": "203.0.113.2"}]);
    testbed::wait_for(Duration::from_secs(10), "node-b's addresses only", || {
        (gateway_addresses(&api, "edge").0.as_ref() == Some(&only_b)).then_some(())
    })
    .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        gateway_addresses(&api, "edge"),
        (Some(only_b), 3),
        "one patch per change of the ready set"
    );
    assert_eq!(
        gateway_addresses(&api, "fixed"),
        (Some(fixed_addresses), fixed_patches),
        "the Gateway with spec.addresses is not rewritten when readiness changes"
    );
}

#[test]
fn without_access_to_the_agent_pods_every_node_counts_with_one_warning() {
    testbed::require_root("the cluster-mode test (the agent loads its BPF object)").unwrap();
    let api = cluster();
    api.apply(
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-b"},
        "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.2"}]}}),
    );
    api.set_forbidden("/v1/pods");
    let bpffs = TempBpffs::mount("kube5").unwrap();
    let agent = KubeAgent::start(&api, &bpffs, "node-a", &[]);
    let all = json!([{"type": "IPAddress", "value": "10.0.0.1"},
                     {"type": "IPAddress", "value": "10.0.0.2"}]);
    testbed::wait_for(Duration::from_secs(15), "every Node's addresses", || {
        (gateway_addresses(&api, "edge").0.as_ref() == Some(&all)).then_some(())
    })
    .unwrap();
    assert!(
        last_patch(&api, "udproutes", "dns").is_some(),
        "other statuses are written too"
    );
    // The Pod list is retried (--kube-max-backoff 1s) but the failure is reported once.
    testbed::wait_for(Duration::from_secs(10), "Pod list retries", || {
        (api.requests()
            .iter()
            .filter(|r| r.uri.contains("/pods?"))
            .count()
            >= 3)
            .then_some(())
    })
    .unwrap();
    assert_eq!(
        agent.log().matches("listing the agent Pods failed").count(),
        1,
        "{}",
        agent.log()
    );
}
