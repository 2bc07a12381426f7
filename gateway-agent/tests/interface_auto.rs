//! `--interface auto` end to end, as root: in a gateway namespace with an IPv4 default route on
//! one interface, an IPv6 default route on another, a pod-network-like interface (`lxc…`) that
//! also carries a default route and a plain interface without one, the agent attaches to exactly
//! the two uplinks.

mod support;

use support::{Agent, ConfigDir};
use testbed::{GATEWAY_BACKEND_IFACE, GATEWAY_CLIENT_IFACE, TempBpffs, Topology};

const CONFIG: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata:
  name: nodegate
spec:
  controllerName: nodegate.io/gateway-controller
"#;

#[test]
fn auto_attaches_to_the_interfaces_with_default_routes_only() {
    testbed::require_root("the --interface auto test (namespaces and BPF)").unwrap();
    let topo = Topology::create("auto", 1).expect("topology");
    let gw = &topo.gateway;
    // Uplinks: the IPv4 default route leaves through client0, the IPv6 one through backend0.
    gw.ip(&[
        "route",
        "add",
        "default",
        "via",
        &testbed::CLIENT_V4.to_string(),
    ])
    .unwrap();
    gw.ip(&[
        "-6",
        "route",
        "add",
        "default",
        "via",
        &testbed::backend_v6(0).to_string(),
    ])
    .unwrap();
    // Not uplinks: a CNI-style interface with a (worse) default route, and an interface with a
    // global address but no default route (and its peer, up but without an address).
    for (name, addr) in [("lxc0abc", "10.77.0.1/24"), ("eth9", "10.78.0.1/24")] {
        // veth pairs (the dummy module may be missing); the peers have no address.
        let peer = format!("{name}p");
        gw.ip(&["link", "add", name, "type", "veth", "peer", "name", &peer])
            .unwrap();
        gw.ip(&["addr", "add", addr, "dev", name]).unwrap();
        gw.ip(&["link", "set", name, "up"]).unwrap();
        gw.ip(&["link", "set", &peer, "up"]).unwrap();
    }
    gw.ip(&[
        "route",
        "add",
        "default",
        "via",
        "10.77.0.2",
        "dev",
        "lxc0abc",
        "metric",
        "500",
    ])
    .unwrap();

    let bpffs = TempBpffs::mount("auto").expect("bpffs");
    let config = ConfigDir::new("auto", &[("gateway.yaml", CONFIG)]).unwrap();
    let mut agent = Agent::start_on(&topo, &bpffs, config.path(), "xdp-generic", &["auto"], &[])
        .expect("agent starts");
    let mut want = vec![
        GATEWAY_BACKEND_IFACE.to_string(),
        GATEWAY_CLIENT_IFACE.to_string(),
    ];
    want.sort();
    assert_eq!(
        agent.attached_interfaces().unwrap(),
        want,
        "{}",
        agent.log()
    );
    assert!(
        agent.log().contains("--interface auto chose"),
        "the choice is logged:\n{}",
        agent.log()
    );
    agent.stop().unwrap();
}
