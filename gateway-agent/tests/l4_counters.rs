//! End to end, as root: the real agent in a gateway namespace loads and attaches its programs in
//! each attach mode, programs the listeners of a Gateway from YAML, counts the client's packets per
//! listener in a pinned BTF map (checked through bpftool and /metrics), and detaches on SIGTERM.

mod support;

use std::{
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use support::{Agent, ConfigDir};
use testbed::{GATEWAY_V4, GATEWAY_V6, TempBpffs, Topology};

const GATEWAY_YAML: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata:
  name: nodegate
spec:
  controllerName: nodegate.io/gateway-controller
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: edge
  namespace: default
spec:
  gatewayClassName: nodegate
  addresses:
  - type: IPAddress
    value: 10.90.1.1
  - type: IPAddress
    value: fd00:90:1::1
  listeners:
  - name: dns
    protocol: UDP
    port: 5353
  - name: tcp
    protocol: TCP
    port: 8080
"#;

const UDP_DATAGRAMS: usize = 50;

/// Sum of the "packets" fields of every CPU's value in a `bpftool -j map dump` of a per-CPU array.
fn pinned_packets(bpffs: &std::path::Path) -> u64 {
    let entries = support::pinned_map_entries(bpffs, "LISTENER_STATS").expect("bpftool map dump");
    let mut total = 0;
    for entry in &entries {
        // With BTF, bpftool adds a "formatted" rendering with the field names.
        for per_cpu in entry["formatted"]["values"]
            .as_array()
            .expect("BTF-formatted per-CPU values")
        {
            total += per_cpu["value"]["packets"]
                .as_u64()
                .expect("a named `packets` field (BTF)");
        }
    }
    total
}

fn counts_packets_per_listener(attach: &str) {
    let topo = Topology::create("cnt", 1).expect("topology");
    let bpffs = TempBpffs::mount("cnt").expect("bpffs");
    let config =
        ConfigDir::new(&format!("cnt-{attach}"), &[("gateway.yaml", GATEWAY_YAML)]).unwrap();
    let mut agent = Agent::start(&topo, &bpffs, config.path(), attach).expect("agent starts");

    let bpffs_path = bpffs.path().to_path_buf();
    let prog_ids = agent.program_ids().unwrap();
    assert_eq!(
        prog_ids.len(),
        2,
        "both interfaces attached in {attach} mode"
    );
    for id in &prog_ids {
        let shown = testbed::sh("bpftool", &["prog", "show", "id", &id.to_string()]).unwrap();
        assert!(
            shown.contains("nodegate_"),
            "program {id} is nodegate's: {shown}"
        );
    }
    assert_eq!(pinned_packets(&agent.bpffs), 0, "counters start at zero");

    topo.client
        .run(|| {
            for ip in [
                std::net::IpAddr::V4(GATEWAY_V4),
                std::net::IpAddr::V6(GATEWAY_V6),
            ] {
                testbed::send_udp(SocketAddr::new(ip, 5353), UDP_DATAGRAMS, 64).unwrap();
                // Nothing listens on 8080 yet: the SYN is counted, then refused by the stack.
                let _ =
                    TcpStream::connect_timeout(&SocketAddr::new(ip, 8080), Duration::from_secs(1));
            }
        })
        .unwrap();

    let metrics = testbed::wait_for(Duration::from_secs(5), "counters to reach /metrics", || {
        let m = agent.metrics().ok()?;
        let udp = testbed::metric_value(
            &m,
            "nodegate_listener_packets_total",
            &[("protocol", "udp")],
        )?;
        (udp >= (2 * UDP_DATAGRAMS) as f64).then_some(m)
    })
    .expect("UDP datagrams counted");
    let udp = testbed::metric_value(
        &metrics,
        "nodegate_listener_packets_total",
        &[
            ("listener", "default/edge/dns"),
            ("address", "10.90.1.1:5353"),
        ],
    )
    .expect("per-address UDP listener series");
    assert_eq!(
        udp, UDP_DATAGRAMS as f64,
        "every IPv4 datagram counted once\n{metrics}"
    );
    let tcp = testbed::metric_value(
        &metrics,
        "nodegate_listener_packets_total",
        &[("protocol", "tcp")],
    )
    .expect("TCP listener series");
    assert!(
        tcp >= 2.0,
        "a SYN per family counted on the TCP listener\n{metrics}"
    );
    let bytes = testbed::metric_value(
        &metrics,
        "nodegate_listener_bytes_total",
        &[("protocol", "udp")],
    )
    .unwrap();
    assert!(
        bytes >= (2 * UDP_DATAGRAMS * 64) as f64,
        "bytes include the payload\n{metrics}"
    );
    assert!(
        pinned_packets(&agent.bpffs) >= (2 * UDP_DATAGRAMS + 2) as u64,
        "the pinned map shows the same counts"
    );

    agent.stop().expect("clean exit on SIGTERM");
    for id in prog_ids {
        assert!(
            testbed::sh("bpftool", &["prog", "show", "id", &id.to_string()]).is_err(),
            "program {id} still loaded after SIGTERM"
        );
    }
    for map in ["LISTENERS", "LISTENER_STATS", "DROP_STATS"] {
        assert!(
            !bpffs_path.join(map).exists(),
            "pin {map} removed on SIGTERM"
        );
    }
}

#[test]
fn counts_packets_per_listener_xdp() {
    counts_packets_per_listener("xdp");
}

#[test]
fn counts_packets_per_listener_xdp_generic() {
    counts_packets_per_listener("xdp-generic");
}

#[test]
fn counts_packets_per_listener_tc() {
    counts_packets_per_listener("tc");
}

/// Sends one raw Ethernet frame out of `iface` from the current thread's namespace.
fn send_raw_frame(iface: &str, frame: &[u8]) -> std::io::Result<()> {
    let name = std::ffi::CString::new(iface).unwrap();
    // SAFETY: plain socket calls on a socket we own, with initialised arguments.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
        addr.sll_halen = 6;
        let rc = libc::sendto(
            fd,
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&raw const addr).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        );
        libc::close(fd);
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A frame that announces IPv4 but ends inside the IP header is dropped, counted under
/// `truncated`, and the kernel's aya-log record reaches the agent's own log.
#[test]
fn malformed_frames_are_dropped_counted_and_logged() {
    let topo = Topology::create("bad", 1).expect("topology");
    let bpffs = TempBpffs::mount("bad").expect("bpffs");
    let config = ConfigDir::new("bad", &[("gateway.yaml", GATEWAY_YAML)]).unwrap();
    let agent = Agent::start(&topo, &bpffs, config.path(), "xdp").expect("agent starts");

    let mut frame = vec![0xff; 6];
    frame.extend([0x02; 6]);
    frame.extend([0x08, 0x00]); // IPv4
    frame.extend([0x45, 0x00, 0x00]); // 3 of the 20 header bytes
    topo.client
        .run(move || {
            for _ in 0..3 {
                send_raw_frame("eth0", &frame).unwrap();
            }
        })
        .unwrap();

    testbed::wait_for(Duration::from_secs(5), "truncated frames counted", || {
        let m = agent.metrics().ok()?;
        let n = testbed::metric_value(
            &m,
            "nodegate_dropped_packets_total",
            &[("reason", "truncated")],
        )?;
        (n >= 3.0).then_some(())
    })
    .expect("drop counter");
    testbed::wait_for(
        Duration::from_secs(5),
        "the kernel's log record in the agent log",
        || {
            agent
                .log()
                .contains("dropped a malformed packet")
                .then_some(())
        },
    )
    .expect("aya-log record forwarded");
}
