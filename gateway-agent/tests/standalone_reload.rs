//! End to end, as root: standalone mode re-reads its directory on change, swaps in the new model
//! (new listeners reach the kernel maps), and a file that stops parsing is reported with its path
//! and line while its last good objects stay in force.

mod support;

use std::{net::SocketAddr, time::Duration};

use support::{Agent, ConfigDir};
use testbed::{GATEWAY_V4, TempBpffs, Topology};

const CLASS: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: nodegate}
spec: {controllerName: nodegate.io/gateway-controller}
";

fn gateway(listeners: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge, namespace: default}}
spec:
  gatewayClassName: nodegate
  listeners:
{listeners}"
    )
}

fn model_l4_names(agent: &Agent) -> Option<(u64, Vec<String>)> {
    let (status, body) = agent.get("/debug/model").ok()?;
    if status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    let mut names: Vec<String> = v["model"]["l4"]
        .as_array()?
        .iter()
        .filter_map(|l| l["name"].as_str().map(str::to_string))
        .collect();
    names.sort();
    Some((v["generation"].as_u64()?, names))
}

#[test]
fn reloads_on_change_and_keeps_the_last_good_file() {
    let topo = Topology::create("rld", 1).expect("topology");
    let bpffs = TempBpffs::mount("rld").expect("bpffs");
    let config = ConfigDir::new(
        "rld",
        &[
            ("class.yaml", CLASS),
            (
                "gateway.yaml",
                &gateway("  - {name: dns, protocol: UDP, port: 5353}\n"),
            ),
        ],
    )
    .unwrap();
    let agent = Agent::start(&topo, &bpffs, config.path(), "xdp").expect("agent starts");
    let (first_gen, names) = model_l4_names(&agent).expect("model");
    assert_eq!(names, ["default/edge/dns"]);

    // Add a listener: the new model reaches the kernel without a restart.
    std::fs::write(
        config.path().join("gateway.yaml"),
        gateway("  - {name: dns, protocol: UDP, port: 5353}\n  - {name: syslog, protocol: UDP, port: 5514}\n"),
    )
    .unwrap();
    let (second_gen, _) = testbed::wait_for(Duration::from_secs(10), "the reload", || {
        model_l4_names(&agent).filter(|(_, n)| n.len() == 2)
    })
    .expect("reloaded model");
    assert!(second_gen > first_gen);
    topo.client
        .run(|| testbed::send_udp(SocketAddr::new(GATEWAY_V4.into(), 5514), 10, 32))
        .unwrap()
        .unwrap();
    testbed::wait_for(Duration::from_secs(5), "the new listener counting", || {
        let m = agent.metrics().ok()?;
        let n = testbed::metric_value(
            &m,
            "nodegate_listener_packets_total",
            &[("listener", "default/edge/syslog")],
        )?;
        (n >= 10.0).then_some(())
    })
    .expect("new listener programmed in the kernel");

    // Break the file: it is reported with its line, and its last good objects stay.
    std::fs::write(
        config.path().join("gateway.yaml"),
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: edge\n",
    )
    .unwrap();
    let errors = testbed::wait_for(Duration::from_secs(10), "the broken file reported", || {
        let (_, body) = agent.get("/debug/status").ok()?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let errors = v["fileErrors"].as_array()?.clone();
        (!errors.is_empty()).then_some(errors)
    })
    .expect("file error");
    let error = errors[0].as_str().unwrap();
    assert!(error.contains("gateway.yaml:"), "path and line: {error}");
    let (_, names) = model_l4_names(&agent).unwrap();
    assert_eq!(
        names,
        ["default/edge/dns", "default/edge/syslog"],
        "last good Gateway kept"
    );
    assert!(
        agent.log().contains("gateway.yaml"),
        "the error is logged too"
    );
}
