//! End to end, as root, in every attach mode: TCPRoute and UDPRoute traffic is load-balanced by
//! the kernel program with NAT through the gateway namespace (client → gateway → backends), with
//! real sockets at both ends; weights hold over many flows; an established connection survives a
//! route change that adds a backend; traffic for ports without a listener still reaches the
//! gateway's own sockets; the connection table never grows past --conntrack-size; ICMP and
//! ICMPv6 errors about a flow reach its client; and next hops without a resolved neighbour
//! entry (backends, clients) are resolved rather than left to drop.

mod support;

use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use support::{Agent, ConfigDir};
use testbed::{GATEWAY_V4, GATEWAY_V6, TempBpffs, Topology, backend_v4, backend_v6};

fn service(name: &str, ips: &[std::net::Ipv4Addr], port: u16, proto: &str) -> String {
    let eps: Vec<String> = ips
        .iter()
        .map(|ip| format!("- addresses: ['{ip}']"))
        .collect();
    // The same endpoints over IPv6 (backend i answers on 10.90.2.(2+i) and fd00:90:2::(2+i)).
    let eps6: Vec<String> = ips
        .iter()
        .map(|ip| format!("- addresses: ['{}']", backend_v6(ip.octets()[3] - 2)))
        .collect();
    format!(
        "---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec: {{ports: [{{name: p, port: {port}, protocol: {proto}}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-1, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{name: p, port: {port}, protocol: {proto}}}]
endpoints:
{}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-6, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv6
ports: [{{name: p, port: {port}, protocol: {proto}}}]
endpoints:
{}
",
        eps.join("\n"),
        eps6.join("\n")
    )
}

/// Gateway with TCP 9000 (TCPRoute: a weight 3, b weight 1) and UDP 5353 (UDPRoute: dns).
fn config(b_backends: &[std::net::Ipv4Addr]) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: nodegate}}
spec: {{controllerName: nodegate.io/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge, namespace: default}}
spec:
  gatewayClassName: nodegate
  addresses: [{{type: IPAddress, value: 10.90.1.1}}, {{type: IPAddress, value: 'fd00:90:1::1'}}]
  listeners:
  - {{name: tcp, protocol: TCP, port: 9000}}
  - {{name: dns, protocol: UDP, port: 5353}}
{}{}{}
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {{name: echo, namespace: default}}
spec:
  parentRefs: [{{name: edge, sectionName: tcp}}]
  rules: [{{backendRefs: [{{name: a, port: 9000, weight: 3}}, {{name: b, port: 9000, weight: 1}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: UDPRoute
metadata: {{name: dns, namespace: default}}
spec:
  parentRefs: [{{name: edge, sectionName: dns}}]
  rules: [{{backendRefs: [{{name: dns, port: 5353}}]}}]
",
        service("a", &[backend_v4(0)], 9000, "TCP"),
        service("b", b_backends, 9000, "TCP"),
        service("dns", &[backend_v4(0)], 5353, "UDP"),
    )
}

fn start_backends(topo: &Topology) {
    testbed::tcp_echo_server(
        &topo.backend,
        SocketAddr::new(backend_v4(0).into(), 9000),
        "a",
    )
    .unwrap();
    testbed::tcp_echo_server(
        &topo.backend,
        SocketAddr::new(backend_v4(1).into(), 9000),
        "b1",
    )
    .unwrap();
    testbed::tcp_echo_server(
        &topo.backend,
        SocketAddr::new(backend_v4(2).into(), 9000),
        "b2",
    )
    .unwrap();
    testbed::udp_echo_server(
        &topo.backend,
        SocketAddr::new(backend_v4(0).into(), 5353),
        "dns",
    )
    .unwrap();
    for (i, name) in [(0u8, "a"), (1, "b1"), (2, "b2")] {
        testbed::tcp_echo_server(
            &topo.backend,
            SocketAddr::new(backend_v6(i).into(), 9000),
            name,
        )
        .unwrap();
    }
    testbed::udp_echo_server(
        &topo.backend,
        SocketAddr::new(backend_v6(0).into(), 5353),
        "dns",
    )
    .unwrap();
}

fn forwards_tcp_and_udp_with_weights(attach: &str) {
    let topo = Topology::create("fwd", 3).expect("topology");
    start_backends(&topo);
    let bpffs = TempBpffs::mount("fwd").unwrap();
    let dir = ConfigDir::new(
        &format!("fwd-{attach}"),
        &[("all.yaml", &config(&[backend_v4(1)]))],
    )
    .unwrap();
    let agent = Agent::start(&topo, &bpffs, dir.path(), attach).expect("agent starts");
    let vip_tcp = SocketAddr::new(GATEWAY_V4.into(), 9000);
    let vip_udp = SocketAddr::new(GATEWAY_V4.into(), 5353);

    // Weighted split over many flows, every connection with a full echo round trip.
    let split = topo
        .client
        .run(move || {
            let mut split: BTreeMap<String, u32> = BTreeMap::new();
            for _ in 0..400 {
                *split
                    .entry(testbed::tcp_hello(vip_tcp).expect("TCP round trip"))
                    .or_default() += 1;
            }
            split
        })
        .unwrap();
    let a = split.get("a").copied().unwrap_or(0);
    assert!(
        (260..=340).contains(&a),
        "weights 3:1 over 400 flows, got {split:?}"
    );
    assert_eq!(split.values().sum::<u32>(), 400);

    // UDP request/response.
    let reply = topo
        .client
        .run(move || testbed::udp_request(vip_udp, b"q"))
        .unwrap()
        .unwrap();
    assert_eq!(reply, b"dns:q");

    // The same over IPv6.
    let vip6_tcp = SocketAddr::new(GATEWAY_V6.into(), 9000);
    let vip6_udp = SocketAddr::new(GATEWAY_V6.into(), 5353);
    let split6 = topo
        .client
        .run(move || {
            let mut split: BTreeMap<String, u32> = BTreeMap::new();
            for _ in 0..100 {
                *split
                    .entry(testbed::tcp_hello(vip6_tcp).expect("TCP over IPv6"))
                    .or_default() += 1;
            }
            split
        })
        .unwrap();
    assert!(
        split6.get("a").copied().unwrap_or(0) >= 55,
        "IPv6 flows weighted too: {split6:?}"
    );
    let reply = topo
        .client
        .run(move || testbed::udp_request(vip6_udp, b"q6"))
        .unwrap()
        .unwrap();
    assert_eq!(reply, b"dns:q6");

    // A long-lived connection keeps its backend across a route change that adds one.
    let (mut conn, greeting) = topo
        .client
        .run(move || {
            use std::io::{BufRead as _, BufReader};
            let s = TcpStream::connect_timeout(&vip_tcp, Duration::from_secs(2)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let mut line = String::new();
            BufReader::new(s.try_clone().unwrap())
                .read_line(&mut line)
                .unwrap();
            (s, line.trim().to_string())
        })
        .unwrap();
    std::fs::write(
        dir.path().join("all.yaml"),
        config(&[backend_v4(1), backend_v4(2)]),
    )
    .unwrap();
    testbed::wait_for(Duration::from_secs(10), "the route change", || {
        let (_, body) = agent.get("/debug/model").ok()?;
        body.contains("10.90.2.4:9000").then_some(())
    })
    .expect("model with the added backend");
    std::thread::sleep(Duration::from_millis(300));
    {
        use std::io::{Read as _, Write as _};
        conn.write_all(b"still there\n").unwrap();
        let mut buf = [0u8; 12];
        conn.read_exact(&mut buf).unwrap();
        assert_eq!(
            &buf, b"still there\n",
            "the established connection (to {greeting}) kept working"
        );
    }

    // Traffic for ports without a listener is not ours: it reaches the gateway's own socket.
    let (tx, rx) = std::sync::mpsc::channel();
    topo.gateway
        .spawn(move || {
            let sock = std::net::UdpSocket::bind("10.90.1.1:7777").unwrap();
            let _ = tx.send(());
            let mut buf = [0u8; 64];
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(&buf[..n], from);
            }
        })
        .unwrap();
    rx.recv().unwrap();
    let echoed = topo
        .client
        .run(|| testbed::udp_request(SocketAddr::new(GATEWAY_V4.into(), 7777), b"local"))
        .unwrap()
        .unwrap();
    assert_eq!(echoed, b"local");
    let m = agent.metrics().unwrap();
    let to_a = testbed::metric_value(
        &m,
        "nodegate_backend_packets_total",
        &[("backend", "10.90.2.2:9000"), ("direction", "to_backend")],
    )
    .unwrap();
    let from_a = testbed::metric_value(
        &m,
        "nodegate_backend_packets_total",
        &[("backend", "10.90.2.2:9000"), ("direction", "from_backend")],
    )
    .unwrap();
    assert!(
        to_a >= 260.0 * 3.0 && from_a >= 260.0 * 3.0,
        "per-backend counters in both directions: {to_a} {from_a}"
    );
    let tcp = testbed::metric_value(
        &m,
        "nodegate_listener_packets_total",
        &[("listener", "default/edge/tcp")],
    )
    .unwrap();
    assert!(
        tcp >= 400.0 * 3.0,
        "client packets of every flow counted on the listener: {tcp}"
    );
}

#[test]
fn forwards_tcp_and_udp_xdp() {
    forwards_tcp_and_udp_with_weights("xdp");
}

#[test]
fn forwards_tcp_and_udp_xdp_generic() {
    forwards_tcp_and_udp_with_weights("xdp-generic");
}

#[test]
fn forwards_tcp_and_udp_tc() {
    forwards_tcp_and_udp_with_weights("tc");
}

/// A flood of new flows from many source ports never grows the table past its bound.
#[test]
fn connection_table_is_bounded_under_a_flood() {
    let topo = Topology::create("cap", 3).expect("topology");
    start_backends(&topo);
    let bpffs = TempBpffs::mount("cap").unwrap();
    let dir = ConfigDir::new("cap", &[("all.yaml", &config(&[backend_v4(1)]))]).unwrap();
    let agent = Agent::start_with(
        &topo,
        &bpffs,
        dir.path(),
        "xdp",
        &["--conntrack-size", "512"],
    )
    .expect("agent");
    let vip_udp = SocketAddr::new(GATEWAY_V4.into(), 5353);
    topo.client
        .run(move || {
            // 3,000 flows: one socket (and so one source port) each.
            for _ in 0..3000 {
                let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
                s.send_to(b"x", vip_udp).unwrap();
            }
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let entries = flow_count(&agent.bpffs);
    assert!(entries <= 512, "FLOWS holds {entries} entries, bound 512");
    assert!(entries >= 256, "the flood did create flows ({entries})");
    // New flows still work after the flood.
    let reply = topo
        .client
        .run(move || testbed::udp_request(vip_udp, b"after"))
        .unwrap()
        .unwrap();
    assert_eq!(reply, b"dns:after");
}

fn flow_count(bpffs: &std::path::Path) -> usize {
    support::pinned_map_entries(bpffs, "FLOWS").unwrap().len()
}

/// Idle UDP flows and closed TCP flows leave the table (both directions), open ones stay.
#[test]
fn flows_age_out() {
    let topo = Topology::create("age", 3).expect("topology");
    start_backends(&topo);
    let bpffs = TempBpffs::mount("age").unwrap();
    let dir = ConfigDir::new("age", &[("all.yaml", &config(&[backend_v4(1)]))]).unwrap();
    let agent = Agent::start_with(
        &topo,
        &bpffs,
        dir.path(),
        "xdp",
        &[
            "--udp-idle-timeout",
            "1s",
            "--tcp-closed-timeout",
            "1s",
            "--aging-interval",
            "500ms",
        ],
    )
    .expect("agent");
    let vip_udp = SocketAddr::new(GATEWAY_V4.into(), 5353);
    let vip_tcp = SocketAddr::new(GATEWAY_V4.into(), 9000);
    // One open TCP connection (kept), one closed one and one UDP exchange (both aged out).
    let open = topo
        .client
        .run(move || TcpStream::connect_timeout(&vip_tcp, Duration::from_secs(2)).unwrap())
        .unwrap();
    topo.client
        .run(move || testbed::tcp_hello(vip_tcp).unwrap())
        .unwrap();
    topo.client
        .run(move || testbed::udp_request(vip_udp, b"x").unwrap())
        .unwrap();
    assert_eq!(flow_count(&agent.bpffs), 6, "three flows, two entries each");
    testbed::wait_for(
        Duration::from_secs(10),
        "idle and closed flows aged out",
        || (flow_count(&agent.bpffs) == 2).then_some(()),
    )
    .expect("only the open connection's two entries remain");
    drop(open);
}

/// With --keep-on-exit an agent restart does not reset established connections: the programs
/// stay attached while no agent runs, and the next agent adopts the pinned links and maps.
#[test]
fn established_connections_survive_an_agent_restart() {
    use std::io::{BufRead as _, BufReader, Read as _, Write as _};
    let topo = Topology::create("rst", 3).expect("topology");
    start_backends(&topo);
    let bpffs = TempBpffs::mount("rst").unwrap();
    let dir = ConfigDir::new("rst", &[("all.yaml", &config(&[backend_v4(1)]))]).unwrap();
    let mut first = Agent::start_with(&topo, &bpffs, dir.path(), "xdp", &["--keep-on-exit"])
        .expect("first agent");
    let vip_tcp = SocketAddr::new(GATEWAY_V4.into(), 9000);
    let mut conn = topo
        .client
        .run(move || {
            let s = TcpStream::connect_timeout(&vip_tcp, Duration::from_secs(2)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let mut line = String::new();
            BufReader::new(s.try_clone().unwrap())
                .read_line(&mut line)
                .unwrap();
            s
        })
        .unwrap();
    let mut round_trip = |what: &str| {
        conn.write_all(b"ping-pong\n").unwrap();
        let mut buf = [0u8; 10];
        conn.read_exact(&mut buf)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(&buf, b"ping-pong\n", "{what}");
    };
    round_trip("before the restart");
    first.stop().expect("first agent exits cleanly");
    assert!(
        bpffs.path().join("links").read_dir().unwrap().count() >= 2,
        "links left pinned"
    );
    round_trip("while no agent runs");
    let mut second = Agent::start(&topo, &bpffs, dir.path(), "xdp").expect("second agent adopts");
    round_trip("after the new agent adopted the data plane");
    assert!(
        second.log().contains("adopted the running XDP link"),
        "{}",
        second.log()
    );
    // New connections work through the new agent too.
    topo.client
        .run(move || testbed::tcp_hello(vip_tcp).unwrap())
        .unwrap();
    second.stop().unwrap();
    assert!(
        !bpffs.path().join("FLOWS").exists(),
        "without --keep-on-exit the pins are removed"
    );
}

/// The ICMP tests' configuration, on both gateway addresses: UDP 5400 goes to `nobody` (backend
/// 2, where nothing listens, so its kernel answers "port unreachable"), UDP 5401 to `sink`
/// (backend 0, where a test binds its own socket when it needs one).
fn icmp_config() -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: nodegate}}
spec: {{controllerName: nodegate.io/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge, namespace: default}}
spec:
  gatewayClassName: nodegate
  addresses: [{{type: IPAddress, value: 10.90.1.1}}, {{type: IPAddress, value: 'fd00:90:1::1'}}]
  listeners:
  - {{name: udp, protocol: UDP, port: 5400}}
  - {{name: sink, protocol: UDP, port: 5401}}
{}{}
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: UDPRoute
metadata: {{name: nobody, namespace: default}}
spec:
  parentRefs: [{{name: edge, sectionName: udp}}]
  rules: [{{backendRefs: [{{name: nobody, port: 5400}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: UDPRoute
metadata: {{name: sink, namespace: default}}
spec:
  parentRefs: [{{name: edge, sectionName: sink}}]
  rules: [{{backendRefs: [{{name: sink, port: 5401}}]}}]
",
        service("nobody", &[backend_v4(2)], 5400, "UDP"),
        service("sink", &[backend_v4(0)], 5401, "UDP"),
    )
}

/// Sends one datagram from a connected UDP socket (in the client namespace) to `to` and returns
/// the error its next receive reports, with the socket.
fn connected_udp_error(
    topo: &Topology,
    to: SocketAddr,
    prepare: impl FnOnce(&std::net::UdpSocket) + Send + 'static,
) -> (std::net::UdpSocket, std::io::Error) {
    topo.client
        .run(move || {
            let any: SocketAddr = if to.is_ipv4() {
                "0.0.0.0:0".parse().unwrap()
            } else {
                "[::]:0".parse().unwrap()
            };
            let s = std::net::UdpSocket::bind(any).unwrap();
            s.connect(to).unwrap();
            prepare(&s);
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            s.send(b"anyone?").unwrap();
            let mut buf = [0u8; 64];
            let err = s.recv(&mut buf).unwrap_err();
            (s, err)
        })
        .unwrap()
}

/// An ICMP error about a NATed flow (here: port unreachable from a backend with nothing
/// listening) is translated back, so the client's socket sees "connection refused".
#[test]
fn icmp_errors_are_translated_back_to_the_client() {
    let topo = Topology::create("icmp", 3).expect("topology");
    let bpffs = TempBpffs::mount("icmp").unwrap();
    let dir = ConfigDir::new("icmp", &[("all.yaml", &icmp_config())]).unwrap();
    let _agent = Agent::start(&topo, &bpffs, dir.path(), "xdp").expect("agent");
    let (_, err) = connected_udp_error(&topo, SocketAddr::new(GATEWAY_V4.into(), 5400), |_| {});
    assert_eq!(
        err.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "got {err:?}"
    );
}

/// The IPv6 counterpart, in `attach` mode: the backend kernel's ICMPv6 port unreachable (type 1)
/// reaches the client from the service address, quoting the client's own datagram, so its
/// connected socket sees "connection refused". The client kernel drops an ICMPv6 error with a
/// wrong checksum or a quote that matches none of its sockets, so this holds only if the outer
/// addresses, the quoted addresses and ports and the checksum are all right.
fn icmpv6_port_unreachable(attach: &str) {
    let topo = Topology::create("icmp6", 3).expect("topology");
    let bpffs = TempBpffs::mount("icmp6").unwrap();
    let dir = ConfigDir::new(&format!("icmp6-{attach}"), &[("all.yaml", &icmp_config())]).unwrap();
    let agent = Agent::start(&topo, &bpffs, dir.path(), attach).expect("agent");
    let (_, err) = connected_udp_error(&topo, SocketAddr::new(GATEWAY_V6.into(), 5400), |_| {});
    assert_eq!(
        err.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "got {err:?}"
    );
    // The datagram went to the backend through the kernel program, so the gateway's own stack
    // (which would answer "port unreachable" itself) never saw it: the error is the backend's.
    let to_backend = testbed::metric_value(
        &agent.metrics().unwrap(),
        "nodegate_backend_packets_total",
        &[
            ("backend", &format!("[{}]:5400", backend_v6(2))),
            ("direction", "to_backend"),
        ],
    );
    assert_eq!(to_backend, Some(1.0), "forwarded to the backend once");
}

#[test]
fn icmpv6_errors_are_translated_back_to_the_client_xdp() {
    icmpv6_port_unreachable("xdp");
}

#[test]
fn icmpv6_errors_are_translated_back_to_the_client_xdp_generic() {
    icmpv6_port_unreachable("xdp-generic");
}

#[test]
fn icmpv6_errors_are_translated_back_to_the_client_tc() {
    icmpv6_port_unreachable("tc");
}

/// The one's-complement sum of `bytes` (16-bit big-endian words, odd length zero-padded), folded.
fn ones_sum(mut acc: u32, bytes: &[u8]) -> u32 {
    for chunk in bytes.chunks(2) {
        acc += u32::from(u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]));
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc
}

/// An IPv6 packet carrying `udp` (header and payload, checksum computed here) from `src` to `dst`.
fn ipv6_udp_packet(
    src: std::net::Ipv6Addr,
    dst: std::net::Ipv6Addr,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let len = (8 + payload.len()) as u16;
    let mut udp = Vec::new();
    udp.extend(sport.to_be_bytes());
    udp.extend(dport.to_be_bytes());
    udp.extend(len.to_be_bytes());
    udp.extend([0, 0]);
    udp.extend(payload);
    let mut pseudo = Vec::new();
    pseudo.extend(src.octets());
    pseudo.extend(dst.octets());
    pseudo.extend(u32::from(len).to_be_bytes());
    pseudo.extend([0, 0, 0, 17]);
    let sum = ones_sum(ones_sum(0, &pseudo), &udp);
    let check = match !(sum as u16) {
        0 => 0xffff,
        c => c,
    };
    udp[6..8].copy_from_slice(&check.to_be_bytes());
    let mut ip = vec![0x60, 0, 0, 0];
    ip.extend(len.to_be_bytes());
    ip.extend([17, 64]);
    ip.extend(src.octets());
    ip.extend(dst.octets());
    ip.extend(udp);
    ip
}

/// Sends an ICMPv6 message (type, code, 4 bytes of type-specific data, body) from `src` to `dst`
/// over a raw socket of the current thread's namespace; the kernel fills in the checksum.
fn send_icmpv6(
    src: std::net::Ipv6Addr,
    dst: std::net::Ipv6Addr,
    ty: u8,
    code: u8,
    data: [u8; 4],
    body: &[u8],
) -> std::io::Result<()> {
    let mut msg = vec![ty, code, 0, 0];
    msg.extend(data);
    msg.extend(body);
    let addr = |a: std::net::Ipv6Addr| libc::sockaddr_in6 {
        sin6_family: libc::AF_INET6 as libc::sa_family_t,
        sin6_port: 0,
        sin6_flowinfo: 0,
        sin6_addr: libc::in6_addr {
            s6_addr: a.octets(),
        },
        sin6_scope_id: 0,
    };
    let len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
    // SAFETY: plain socket calls on a descriptor this function owns, with valid buffers.
    unsafe {
        let fd = libc::socket(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_ICMPV6);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let (from, to) = (addr(src), addr(dst));
        let ok = libc::bind(fd, (&raw const from).cast(), len) == 0
            && libc::sendto(
                fd,
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&raw const to).cast(),
                len,
            ) == msg.len() as isize;
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if ok { Ok(()) } else { Err(err) }
    }
}

/// A Packet Too Big (ICMPv6 type 2) about a NATed flow reaches the client with its MTU: the
/// client's socket reports EMSGSIZE and its path MTU to the service becomes the MTU the message
/// carried. The router that would send it is played by the backend host: it learns the flow's
/// SNAT address and port from the datagram it receives and quotes that datagram, as a router on
/// a smaller-MTU link would. (A real MTU drop on the backend side is not used: XDP redirects
/// into a veth bypass the IPv6 forwarding path that emits Packet Too Big.)
#[test]
fn icmpv6_packet_too_big_keeps_its_mtu() {
    const MTU: u32 = 1300;
    let topo = Topology::create("ptb6", 1).expect("topology");
    let bpffs = TempBpffs::mount("ptb6").unwrap();
    let dir = ConfigDir::new("ptb6", &[("all.yaml", &icmp_config())]).unwrap();
    let _agent = Agent::start(&topo, &bpffs, dir.path(), "xdp").expect("agent");
    let backend = backend_v6(0);
    let (bound_tx, bound_rx) = std::sync::mpsc::channel();
    let (sent_tx, sent_rx) = std::sync::mpsc::channel();
    topo.backend
        .spawn(move || {
            let sock = std::net::UdpSocket::bind(SocketAddr::new(backend.into(), 5401)).unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let _ = bound_tx.send(());
            let mut buf = [0u8; 256];
            let result = sock.recv_from(&mut buf).and_then(|(n, from)| {
                let SocketAddr::V6(from) = from else {
                    unreachable!("an IPv6 socket")
                };
                let quoted = ipv6_udp_packet(*from.ip(), backend, from.port(), 5401, &buf[..n]);
                send_icmpv6(backend, *from.ip(), 2, 0, MTU.to_be_bytes(), &quoted)
            });
            let _ = sent_tx.send(result);
        })
        .unwrap();
    bound_rx.recv().unwrap();
    let (sock, err) = connected_udp_error(&topo, SocketAddr::new(GATEWAY_V6.into(), 5401), |s| {
        use std::os::fd::AsRawFd as _;
        // Path MTU discovery on: a Packet Too Big is then a hard error for the socket.
        let on: libc::c_int = libc::IPV6_PMTUDISC_DO;
        // SAFETY: setsockopt on a live socket with a valid int.
        let rc = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::IPPROTO_IPV6,
                libc::IPV6_MTU_DISCOVER,
                (&raw const on).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0);
    });
    sent_rx
        .recv()
        .unwrap()
        .expect("the backend saw the datagram and sent the Packet Too Big");
    assert_eq!(err.raw_os_error(), Some(libc::EMSGSIZE), "got {err:?}");
    let path_mtu = topo
        .client
        .run(move || {
            use std::os::fd::AsRawFd as _;
            let mut mtu: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: getsockopt on a live socket into a valid int.
            let rc = unsafe {
                libc::getsockopt(
                    sock.as_raw_fd(),
                    libc::IPPROTO_IPV6,
                    libc::IPV6_MTU,
                    (&raw mut mtu).cast(),
                    &mut len,
                )
            };
            assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
            mtu
        })
        .unwrap();
    assert_eq!(
        path_mtu as u32, MTU,
        "the MTU field survived the translation"
    );
}

/// Maglev end to end: adding a fourth endpoint moves only about a quarter of the flows.
#[test]
fn adding_an_endpoint_moves_about_one_nth_of_flows() {
    let topo = Topology::create("mv", 4).expect("topology");
    let names = ["e0", "e1", "e2", "e3"];
    for (i, name) in names.iter().enumerate() {
        testbed::udp_echo_server(
            &topo.backend,
            SocketAddr::new(backend_v4(i as u8).into(), 5353),
            name,
        )
        .unwrap();
    }
    let yaml = |n: u8| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: nodegate}}
spec: {{controllerName: nodegate.io/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge, namespace: default}}
spec:
  gatewayClassName: nodegate
  addresses: [{{type: IPAddress, value: 10.90.1.1}}]
  listeners: [{{name: dns, protocol: UDP, port: 5353}}]
{}
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: UDPRoute
metadata: {{name: dns, namespace: default}}
spec:
  parentRefs: [{{name: edge}}]
  rules: [{{backendRefs: [{{name: dns, port: 5353}}]}}]
",
            service(
                "dns",
                &(0..n).map(backend_v4).collect::<Vec<_>>(),
                5353,
                "UDP"
            )
        )
    };
    let bpffs = TempBpffs::mount("mv").unwrap();
    let dir = ConfigDir::new("mv", &[("all.yaml", &yaml(3))]).unwrap();
    let agent = Agent::start_with(
        &topo,
        &bpffs,
        dir.path(),
        "xdp",
        &["--udp-idle-timeout", "1s", "--aging-interval", "300ms"],
    )
    .expect("agent");
    let vip = SocketAddr::new(GATEWAY_V4.into(), 5353);
    // 300 flows, each from its own fixed source port, so the same 5-tuples can be sent again.
    let sample = move || {
        let mut out = Vec::new();
        for i in 0..300u16 {
            let s = std::net::UdpSocket::bind(("0.0.0.0", 30000 + i)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            s.send_to(b"?", vip).unwrap();
            let mut buf = [0u8; 16];
            let n = s.recv(&mut buf).unwrap();
            out.push(
                String::from_utf8_lossy(&buf[..n])
                    .split(':')
                    .next()
                    .unwrap()
                    .to_string(),
            );
        }
        out
    };
    let before = topo.client.run(sample).unwrap();
    assert!(before.iter().all(|b| b != "e3"), "e3 is not a backend yet");
    std::fs::write(dir.path().join("all.yaml"), yaml(4)).unwrap();
    testbed::wait_for(Duration::from_secs(10), "the fourth endpoint", || {
        let (_, body) = agent.get("/debug/model").ok()?;
        body.contains("10.90.2.5:5353").then_some(())
    })
    .unwrap();
    // Let the old flows age out, so the same 5-tuples choose again through the new ring.
    std::thread::sleep(Duration::from_secs(3));
    let after = topo.client.run(sample).unwrap();
    let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
    let to_new = after.iter().filter(|b| *b == "e3").count();
    assert!(to_new > 30, "the new endpoint takes a share ({to_new}/300)");
    assert!(
        moved <= 300 * 35 / 100,
        "only ~1/4 of flows moved ({moved}/300)"
    );
}

/// A topology with the usual backends and an XDP agent serving `yaml` whose SNAT range is two
/// ports (the bpffs and config dir are returned to keep them alive).
fn two_snat_ports_agent(tag: &str, yaml: &str) -> (Topology, TempBpffs, ConfigDir, Agent) {
    let topo = Topology::create(tag, 3).expect("topology");
    start_backends(&topo);
    let bpffs = TempBpffs::mount(tag).unwrap();
    let dir = ConfigDir::new(tag, &[("all.yaml", yaml)]).unwrap();
    let agent = Agent::start_with(
        &topo,
        &bpffs,
        dir.path(),
        "xdp",
        &["--snat-ports", "61000-61001"],
    )
    .expect("agent");
    (topo, bpffs, dir, agent)
}

/// A TCP connection from the client's address and port on `vip`, made the way a load generator
/// with `tcp_tw_reuse` makes it: SO_REUSEADDR and an explicit bind, so the connect may take over
/// the port's TIME_WAIT. Read and write time out after 1 s.
fn connect_from(port: u16, vip: SocketAddr) -> std::io::Result<std::net::TcpStream> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    sock.set_reuse_address(true)?;
    sock.bind(&SocketAddr::from(([0, 0, 0, 0], port)).into())?;
    sock.connect_timeout(&vip.into(), Duration::from_secs(1))?;
    let stream: std::net::TcpStream = sock.into();
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    Ok(stream)
}

/// Writes `line` and reads until its echo has come back; returns everything read (the greeting,
/// on a new connection, included).
fn echo_line(stream: &mut std::net::TcpStream, line: &str) -> std::io::Result<String> {
    use std::io::{Read as _, Write as _};
    stream.write_all(line.as_bytes())?;
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !got.ends_with(line.as_bytes()) {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        got.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8_lossy(&got).into_owned())
}

/// A client that reuses its port for a new connection once the old one's TIME_WAIT gives way (as
/// `tcp_tw_reuse` lets it) gets a flow of its own. Riding on the closed flow's entries, it would
/// inherit their FIN flags, and once quiet for a second its SNAT port would be handed to another
/// flow while it still lives. Two SNAT ports: the reopened connection holds one, a second
/// connection takes the other, a third finds none, and the reopened one still echoes.
#[test]
fn a_reused_client_port_opens_a_flow_of_its_own() {
    // One backend for the TCP listener: SNAT ports are per backend.
    let one_backend = config(&[backend_v4(1)]).replace(
        "{name: a, port: 9000, weight: 3}, {name: b, port: 9000, weight: 1}",
        "{name: a, port: 9000}",
    );
    let (topo, _bpffs, _dir, agent) = two_snat_ports_agent("reopen", &one_backend);
    topo.client
        .exec("sysctl", &["-q", "-w", "net.ipv4.tcp_tw_reuse=1"])
        .unwrap();
    let vip = SocketAddr::new(GATEWAY_V4.into(), 9000);
    let port = 40123;
    let (third, still) = topo
        .client
        .run(move || {
            use std::io::Read as _;
            // The first connection from `port`, closed by the client: a FIN each way, then the
            // client's side sits in TIME_WAIT.
            let mut first = connect_from(port, vip).expect("first connection");
            echo_line(&mut first, "one\n").expect("first echo");
            first.shutdown(std::net::Shutdown::Write).unwrap();
            let mut rest = Vec::new();
            first.read_to_end(&mut rest).expect("the backend's FIN");
            drop(first);
            std::thread::sleep(Duration::from_millis(1300));
            let mut reopened = connect_from(port, vip)
                .expect("the same port again (tcp_tw_reuse takes over the TIME_WAIT)");
            echo_line(&mut reopened, "two\n").expect("the reopened connection echoes");
            // Everyone quiet past SNAT_REUSE_AFTER_CLOSE_NS.
            std::thread::sleep(Duration::from_millis(1300));
            let mut second =
                connect_from(0, vip).expect("a second connection takes the other SNAT port");
            echo_line(&mut second, "three\n").expect("the second connection echoes");
            let third = connect_from(0, vip).map(|_| ());
            let still = echo_line(&mut reopened, "four\n");
            (third, still)
        })
        .unwrap();
    let still = still.expect("the reopened connection kept its SNAT port");
    assert!(still.ends_with("four\n"), "{still:?}");
    assert!(
        third.is_err(),
        "a third connection found a port while both are held by live flows"
    );
    let drops = testbed::wait_for(Duration::from_secs(5), "the drop counted", || {
        let m = agent.metrics().ok()?;
        testbed::metric_value(
            &m,
            "nodegate_dropped_packets_total",
            &[("reason", "no_snat_port")],
        )
        .filter(|n| *n >= 1.0)
    })
    .unwrap();
    assert!(drops >= 1.0);
}

/// The SNAT port the forward entry of the flow from client port `cport` to the VIP rewrites to.
fn snat_port_of(bpffs: &std::path::Path, cport: u16) -> Option<u64> {
    let entries = support::pinned_map_entries(bpffs, "FLOWS").unwrap();
    entries.iter().find_map(|e| {
        let e = &e["formatted"];
        (e["key"]["sport"].as_u64() == Some(u64::from(cport)))
            .then(|| e["value"]["new_sport"].as_u64())
            .flatten()
    })
}

/// A backend that closed first holds its side of the tuple in TIME_WAIT for 60 s and would
/// refuse about half the SYNs that reuse its SNAT port, so that port is the last resort. Two
/// ports: one left in the backend's TIME_WAIT, one by a flow the client closed first. The next
/// flow takes the second; the one after it, finding no other, takes the first (and connects).
#[test]
fn ports_left_in_backend_time_wait_are_the_last_resort() {
    use std::io::{Read as _, Write as _};
    let yaml = config(&[backend_v4(1)]).replace(
        "{name: a, port: 9000, weight: 3}, {name: b, port: 9000, weight: 1}",
        "{name: closer, port: 9100}",
    ) + &service("closer", &[backend_v4(0)], 9100, "TCP");
    let (topo, bpffs, _dir, agent) = two_snat_ports_agent("timewait", &yaml);
    // Sent `c`, the backend closes first; sent `w`, it waits for the client's FIN.
    let addr = SocketAddr::new(backend_v4(0).into(), 9100);
    topo.backend
        .spawn(move || {
            let listener = std::net::TcpListener::bind(addr).unwrap();
            for mut stream in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut cmd = [0u8; 1];
                    if stream.read_exact(&mut cmd).is_ok() && cmd[0] == b'w' {
                        let _ = stream.read_to_end(&mut Vec::new());
                    }
                });
            }
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let vip = SocketAddr::new(GATEWAY_V4.into(), 9000);
    let open = |cmd: &'static [u8]| {
        topo.client
            .run(move || {
                let mut s = connect_from(0, vip)?;
                s.write_all(cmd)?;
                Ok::<_, std::io::Error>(s)
            })
            .unwrap()
    };
    let close = |mut s: std::net::TcpStream, client_first: bool| {
        if client_first {
            s.shutdown(std::net::Shutdown::Write).unwrap();
        }
        s.read_to_end(&mut Vec::new()).expect("the backend's FIN");
    };
    let port = |s: &std::net::TcpStream| s.local_addr().unwrap().port();
    let backend_first = open(b"c").expect("first connection");
    let client_first = open(b"w").expect("second connection");
    let (in_time_wait, clean) = (port(&backend_first), port(&client_first));
    close(backend_first, false);
    close(client_first, true);
    let in_time_wait = snat_port_of(&agent.bpffs, in_time_wait).unwrap();
    let clean = snat_port_of(&agent.bpffs, clean).unwrap();
    assert_ne!(in_time_wait, clean);
    std::thread::sleep(Duration::from_millis(300));
    let third = open(b"w").expect("third connection");
    assert_eq!(
        snat_port_of(&agent.bpffs, port(&third)),
        Some(clean),
        "the port without a TIME_WAIT behind it goes first"
    );
    let fourth = open(b"w").expect("fourth connection: the TIME_WAIT port as the last resort");
    assert_eq!(
        snat_port_of(&agent.bpffs, port(&fourth)),
        Some(in_time_wait)
    );
    drop(bpffs);
}

/// `n` UDP sockets connected to `vip`, each its own flow (its own source port), reading with a
/// 500 ms timeout.
fn udp_flows(n: usize, vip: SocketAddr) -> Vec<std::net::UdpSocket> {
    (0..n)
        .map(|_| {
            let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            s.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            s.connect(vip).unwrap();
            s
        })
        .collect()
}

/// With the SNAT port range held by active flows for a backend, a new flow is dropped and counted
/// under `no_snat_port` (not handed to the stack), while the flows holding the ports keep
/// working.
#[test]
fn exhausted_snat_ports_drop_new_flows_counted() {
    let (topo, _bpffs, _dir, agent) = two_snat_ports_agent("snat", &config(&[backend_v4(1)]));
    let vip_udp = SocketAddr::new(GATEWAY_V4.into(), 5353);
    let answered: Vec<bool> = topo
        .client
        .run(move || {
            // Three flows (three source ports) to one backend; two SNAT ports.
            let socks = udp_flows(3, vip_udp);
            let mut answered = Vec::new();
            for (i, s) in socks.iter().enumerate() {
                s.send(format!("f{i}").as_bytes()).unwrap();
                let mut buf = [0u8; 64];
                answered.push(s.recv(&mut buf).is_ok());
            }
            // The flows that got a port keep it.
            for (i, s) in socks.iter().enumerate().filter(|(i, _)| answered[*i]) {
                s.send(format!("again{i}").as_bytes()).unwrap();
                let mut buf = [0u8; 64];
                let n = s.recv(&mut buf).expect("a flow with a port keeps working");
                assert_eq!(&buf[..n], format!("dns:again{i}").as_bytes());
            }
            answered
        })
        .unwrap();
    assert_eq!(
        answered,
        [true, true, false],
        "two flows got the two SNAT ports, the third none"
    );
    let drops = testbed::wait_for(Duration::from_secs(5), "the drop counted", || {
        let m = agent.metrics().ok()?;
        let n = testbed::metric_value(
            &m,
            "nodegate_dropped_packets_total",
            &[("reason", "no_snat_port")],
        )?;
        (n >= 1.0).then_some(n)
    })
    .expect("no_snat_port counter");
    assert_eq!(drops, 1.0, "one datagram found no port");
}

/// With both SNAT ports held by UDP flows idle past a second, a new flow takes one instead of
/// being dropped, and the flow that lost it is NATed afresh on its next datagram: every client
/// gets its own answers and nothing else (no reply reaches the wrong socket), and nothing is
/// dropped.
#[test]
fn idle_udp_flows_give_their_port_when_none_is_free() {
    let (topo, _bpffs, _dir, agent) = two_snat_ports_agent("udpsteal", &config(&[backend_v4(1)]));
    let vip_udp = SocketAddr::new(GATEWAY_V4.into(), 5353);
    let strays = topo
        .client
        .run(move || {
            let socks = udp_flows(3, vip_udp);
            let ask = |i: usize, what: &str| {
                let payload = format!("{what}{i}");
                socks[i].send(payload.as_bytes()).unwrap();
                let mut buf = [0u8; 64];
                let n = socks[i]
                    .recv(&mut buf)
                    .unwrap_or_else(|e| panic!("flow {i} ({what}) unanswered: {e}"));
                assert_eq!(&buf[..n], format!("dns:{payload}").as_bytes(), "flow {i}");
            };
            // Two flows take the two ports.
            ask(0, "first");
            ask(1, "first");
            std::thread::sleep(Duration::from_millis(1300));
            // Both idle: the third flow takes one of their ports.
            ask(2, "first");
            std::thread::sleep(Duration::from_millis(1300));
            // The one that lost its port starts afresh, from whichever port is idle now.
            ask(0, "again");
            ask(1, "again");
            // Nobody got anyone else's answer.
            let mut buf = [0u8; 64];
            socks
                .iter()
                .filter(|s| {
                    s.set_read_timeout(Some(Duration::from_millis(200)))
                        .unwrap();
                    s.recv(&mut buf).is_ok()
                })
                .count()
        })
        .unwrap();
    assert_eq!(strays, 0, "a datagram reached a socket that had not asked");
    let m = agent.metrics().unwrap();
    assert_eq!(
        testbed::metric_value(
            &m,
            "nodegate_dropped_packets_total",
            &[("reason", "no_snat_port")]
        ),
        Some(0.0),
        "no datagram was dropped for want of a port\n{m}"
    );
}

/// A closed TCP flow gives its SNAT port back once the backend has been quiet for 100 ms (the
/// client closed first, so the backend holds no TIME_WAIT), as conntrack's TIME_WAIT gives way
/// to a new SYN: with two ports per backend, six short connections in a row all connect at
/// once, long before `--tcp-closed-timeout` (10 s).
#[test]
fn closed_flows_give_their_snat_port_to_new_ones() {
    let (topo, _bpffs, _dir, agent) = two_snat_ports_agent("reuse", &config(&[backend_v4(1)]));
    let vip_tcp = SocketAddr::new(GATEWAY_V4.into(), 9000);
    for i in 0..6 {
        let started = std::time::Instant::now();
        let greeting = topo
            .client
            .run(move || testbed::tcp_hello(vip_tcp))
            .unwrap()
            .unwrap_or_else(|e| panic!("connection {i}: {e:#}"));
        assert!(
            started.elapsed() < Duration::from_millis(900),
            "connection {i} ({greeting}) took {:?}: its SYN waited for a port",
            started.elapsed()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let m = agent.metrics().unwrap();
    assert_eq!(
        testbed::metric_value(
            &m,
            "nodegate_dropped_packets_total",
            &[("reason", "no_snat_port")]
        ),
        Some(0.0),
        "no SYN found the ports taken\n{m}"
    );
}

/// Connects from the client to each of `vips` in turn, each connect and its greeting given 1 s
/// (no time for a SYN retransmit), and asserts that every backend greeted.
fn greet_each(topo: &Topology, vips: Vec<SocketAddr>) {
    let greetings = topo
        .client
        .run(move || {
            vips.iter()
                .map(|vip| {
                    let mut s = TcpStream::connect_timeout(vip, Duration::from_secs(1))?;
                    s.set_read_timeout(Some(Duration::from_secs(1)))?;
                    let mut buf = [0u8; 16];
                    let n = std::io::Read::read(&mut s, &mut buf)?;
                    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
                })
                .collect::<std::io::Result<Vec<_>>>()
        })
        .unwrap()
        .expect("every connect answered at once");
    assert!(
        greetings.iter().all(|g| !g.is_empty()),
        "every backend greeted: {greetings:?}"
    );
}

/// Asserts that the agent's programs dropped no packet for want of a resolved next hop.
fn assert_no_neighbour_drops(agent: &Agent) {
    let m = agent.metrics().unwrap();
    assert_eq!(
        testbed::metric_value(
            &m,
            "nodegate_dropped_packets_total",
            &[("reason", "no_neighbour")]
        ),
        Some(0.0),
        "no packet waited for a neighbour:\n{m}"
    );
}

/// A gateway whose stack has never talked to the backends (testbed leaves it no neighbour
/// entry for them) has no next hop for them, and `bpf_fib_lookup` resolves none: the agent adds
/// a managed entry for every L4 backend's next hop, so the very first SYN through the NAT is
/// forwarded (not handed to the stack, which would refuse it, nor dropped to wait a 1 s
/// retransmit).
fn first_connects_need_no_resolved_neighbour(attach: &str) {
    let tag = format!("nb{}", &attach[..2]);
    let topo = Topology::create(&tag, 3).expect("topology");
    start_backends(&topo);
    let bpffs = TempBpffs::mount(&tag).unwrap();
    let dir = ConfigDir::new(
        &format!("neigh-{attach}"),
        &[("all.yaml", &config(&[backend_v4(1)]))],
    )
    .unwrap();
    let agent = Agent::start(&topo, &bpffs, dir.path(), attach).expect("agent starts");
    let neighbours = topo
        .gateway
        .ip(&["-d", "neigh", "show", "dev", testbed::GATEWAY_BACKEND_IFACE])
        .unwrap();
    for b in [backend_v4(0), backend_v4(1)] {
        let line = neighbours
            .lines()
            .find(|l| l.starts_with(&format!("{b} ")))
            .unwrap_or_else(|| panic!("no neighbour entry for backend {b}:\n{neighbours}"));
        assert!(line.contains("managed"), "{line}");
    }
    greet_each(&topo, vec![SocketAddr::new(GATEWAY_V4.into(), 9000); 20]);
    assert_no_neighbour_drops(&agent);
}

#[test]
fn first_connects_need_no_resolved_neighbour_xdp() {
    first_connects_need_no_resolved_neighbour("xdp");
}

#[test]
fn first_connects_need_no_resolved_neighbour_tc() {
    first_connects_need_no_resolved_neighbour("tc");
}

/// Deletes the gateway's neighbour entries for the client (IPv4 and IPv6). The client keeps
/// its permanent entry for the gateway, so it never asks, and the gateway cannot learn it from
/// an ARP or ND request: only the data plane can get it resolved.
fn forget_the_client(topo: &Topology) {
    for client in CLIENTS {
        topo.gateway
            .ip(&[
                "neigh",
                "del",
                &client.to_string(),
                "dev",
                GATEWAY_CLIENT_IFACE,
            ])
            .unwrap();
    }
    let left = topo.gateway.neighbour_lines_for_client();
    assert!(left.iter().all(Option::is_none), "{left:?}");
}

const CLIENTS: [std::net::IpAddr; 2] = [
    std::net::IpAddr::V4(testbed::CLIENT_V4),
    std::net::IpAddr::V6(testbed::CLIENT_V6),
];
const GATEWAY_CLIENT_IFACE: &str = testbed::GATEWAY_CLIENT_IFACE;

/// The gateway's `ip -d neigh` line for each of [`CLIENTS`], if it has one.
trait ClientNeighbours {
    fn neighbour_lines_for_client(&self) -> Vec<Option<String>>;
}

impl ClientNeighbours for testbed::Netns {
    fn neighbour_lines_for_client(&self) -> Vec<Option<String>> {
        let all = self
            .ip(&["-d", "neigh", "show", "dev", GATEWAY_CLIENT_IFACE])
            .unwrap();
        CLIENTS
            .iter()
            .map(|c| {
                all.lines()
                    .find(|l| l.starts_with(&format!("{c} ")))
                    .map(str::to_owned)
            })
            .collect()
    }
}

/// Five IPv4 and five IPv6 connects to the TCP listener.
fn both_families() -> Vec<SocketAddr> {
    let mut vips = vec![SocketAddr::new(GATEWAY_V4.into(), 9000); 5];
    vips.extend([SocketAddr::new(GATEWAY_V6.into(), 9000); 5]);
    vips
}

/// In TC mode a next hop with no neighbour entry is no reason to drop: the program hands the
/// rewritten packet to `bpf_redirect_neigh`, which resolves the hop and sends it. With the
/// gateway's entries for the client deleted, every reply meets an unresolved next hop, and
/// still reaches the client, over IPv4 and IPv6, with no drop counted and the entry resolved
/// by the kernel afterwards.
#[test]
fn replies_reach_a_client_the_gateway_has_no_neighbour_entry_for_tc() {
    let topo = Topology::create("nbrep", 3).expect("topology");
    start_backends(&topo);
    let bpffs = TempBpffs::mount("nbrep").unwrap();
    let dir = ConfigDir::new("neigh-reply", &[("all.yaml", &config(&[backend_v4(1)]))]).unwrap();
    let agent = Agent::start(&topo, &bpffs, dir.path(), "tc").expect("agent starts");
    forget_the_client(&topo);
    greet_each(&topo, both_families());
    for line in topo.gateway.neighbour_lines_for_client() {
        let line = line.expect("the kernel resolved the client");
        assert!(line.contains("lladdr"), "{line}");
    }
    assert_no_neighbour_drops(&agent);
}

/// XDP cannot queue a packet while its next hop resolves: it drops it (counted under
/// `no_neighbour`) and reports the hop, which the agent makes managed, so the sender's
/// retransmit gets through and the connects after it are answered at once. After
/// `--reported-neighbour-hold` the entry goes back to the kernel as an ordinary one with its
/// address, which the program still forwards with.
#[test]
fn replies_to_a_client_with_no_neighbour_entry_resume_after_one_retransmit_xdp() {
    let topo = Topology::create("nbrx", 3).expect("topology");
    start_backends(&topo);
    let bpffs = TempBpffs::mount("nbrx").unwrap();
    let dir = ConfigDir::new(
        "neigh-reply-xdp",
        &[("all.yaml", &config(&[backend_v4(1)]))],
    )
    .unwrap();
    let agent = Agent::start_with(
        &topo,
        &bpffs,
        dir.path(),
        "xdp",
        &["--reported-neighbour-hold", "3s"],
    )
    .expect("agent starts");
    forget_the_client(&topo);
    // The first reply of each family is dropped; a retransmit (1 s) gets through.
    let firsts = [
        SocketAddr::new(GATEWAY_V4.into(), 9000),
        SocketAddr::new(GATEWAY_V6.into(), 9000),
    ];
    topo.client
        .run(move || {
            firsts.iter().try_for_each(|vip| {
                let mut s = TcpStream::connect_timeout(vip, Duration::from_secs(4))?;
                s.set_read_timeout(Some(Duration::from_secs(4)))?;
                let mut buf = [0u8; 16];
                std::io::Read::read(&mut s, &mut buf).map(drop)
            })
        })
        .unwrap()
        .expect("each family's first connect answered after a retransmit");
    for line in topo.gateway.neighbour_lines_for_client() {
        let line = line.expect("a managed entry for the client");
        assert!(
            line.contains("managed") && line.contains("lladdr"),
            "{line}"
        );
    }
    greet_each(&topo, both_families());
    let m = agent.metrics().unwrap();
    let drops = testbed::metric_value(
        &m,
        "nodegate_dropped_packets_total",
        &[("reason", "no_neighbour")],
    )
    .unwrap_or_default();
    assert!(
        drops >= 2.0,
        "a reply of each family was dropped first:\n{m}"
    );
    // Past the hold: ordinary (not managed) entries that keep the client's address.
    let ordinary = |lines: &[Option<String>]| {
        lines.iter().all(|l| {
            l.as_deref().is_some_and(|l| {
                !l.contains("managed") && !l.contains("extern_learn") && l.contains("lladdr")
            })
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut lines = topo.gateway.neighbour_lines_for_client();
    while !ordinary(&lines) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        lines = topo.gateway.neighbour_lines_for_client();
    }
    assert!(ordinary(&lines), "released to the kernel: {lines:?}");
    greet_each(&topo, both_families());
    let after = testbed::metric_value(
        &agent.metrics().unwrap(),
        "nodegate_dropped_packets_total",
        &[("reason", "no_neighbour")],
    );
    assert_eq!(after, Some(drops), "released entries still forward");
}
