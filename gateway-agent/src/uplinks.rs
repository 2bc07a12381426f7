//! `--interface auto`: the node's uplinks, chosen the way Cilium's device auto-detection does.
//!
//! An interface is an uplink when it is up, not loopback, holds a global unicast address and
//! carries a default route (IPv4 or IPv6), or holds one of the Node's InternalIPs (cluster mode).
//! Pod-network, bridge and tunnel interfaces (veth pairs, CNI bridges, overlays) never are, whatever
//! their routes. The facts come from getifaddrs(3) and the kernel's `/proc/net/route` and
//! `/proc/net/ipv6_route` (the main routing table), so no netlink crate is needed.

use std::{
    collections::BTreeMap,
    ffi::CStr,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::Context as _;

/// The value of `--interface` that asks for auto-detection.
pub const AUTO: &str = "auto";

/// Name prefixes of interfaces that are never uplinks: pod veths of the common CNIs, bridges,
/// IPVS dummies and tunnels.
const EXCLUDED_PREFIXES: [&str; 13] = [
    "lxc",
    "cali",
    "cni",
    "flannel",
    "docker",
    "br-",
    "veth",
    "kube-ipvs",
    "vxlan",
    "genev",
    "tunl",
    "cilium",
    "weave",
];

/// What auto-detection looks at for one interface.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Link {
    /// Interface name.
    pub name: String,
    /// IFF_UP.
    pub up: bool,
    /// IFF_LOOPBACK.
    pub loopback: bool,
    /// Its addresses (any scope).
    pub addrs: Vec<IpAddr>,
    /// A default route (IPv4 or IPv6, main table) leaves through it.
    pub default_route: bool,
}

/// Whether `ip` is a global unicast address (as Go's `IP.IsGlobalUnicast`: private ranges and
/// ULAs count; loopback, link-local, multicast, broadcast and unspecified do not).
pub fn is_global_unicast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            !(a.is_loopback()
                || a.is_link_local()
                || a.is_multicast()
                || a.is_broadcast()
                || a.is_unspecified())
        }
        IpAddr::V6(a) => {
            !(a.is_loopback()
                || a.is_multicast()
                || a.is_unspecified()
                || (a.segments()[0] & 0xffc0) == 0xfe80)
        }
    }
}

/// Whether the name marks a pod-network, bridge or tunnel interface.
pub fn is_excluded(name: &str) -> bool {
    EXCLUDED_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// The uplinks among `links`, in their order: up, not loopback, not an excluded kind, with a
/// global unicast address, and either a default route or one of `node_ips`.
pub fn select(links: &[Link], node_ips: &[IpAddr]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for l in links {
        if !l.up || l.loopback || is_excluded(&l.name) || out.contains(&l.name) {
            continue;
        }
        if !l.addrs.iter().copied().any(is_global_unicast) {
            continue;
        }
        if l.default_route || l.addrs.iter().any(|a| node_ips.contains(a)) {
            out.push(l.name.clone());
        }
    }
    out
}

/// Expands `auto` in the `--interface` list (other names are kept, duplicates dropped) and logs
/// what was chosen. A list without `auto` is returned as it is.
pub fn resolve(requested: &[String], node_ips: &[IpAddr]) -> anyhow::Result<Vec<String>> {
    if !requested.iter().any(|i| i == AUTO) {
        return Ok(requested.to_vec());
    }
    let links = discover()?;
    let detected = select(&links, node_ips);
    if detected.is_empty() {
        tracing::warn!(candidates = ?links.iter().map(|l| &l.name).collect::<Vec<_>>(),
            "--interface auto found no uplink (up, global address, default route or node IP); L4 routes are not served");
    } else {
        tracing::info!(interfaces = ?detected, node_ips = ?node_ips, "--interface auto chose");
    }
    let mut out: Vec<String> = Vec::new();
    for name in requested {
        let names = if name == AUTO {
            detected.clone()
        } else {
            vec![name.clone()]
        };
        for n in names {
            if !out.contains(&n) {
                out.push(n);
            }
        }
    }
    Ok(out)
}

/// The interfaces of this network namespace, ordered by ifindex, with their flags, addresses and
/// whether a default route leaves through them.
pub fn discover() -> anyhow::Result<Vec<Link>> {
    let mut by_index: BTreeMap<u32, Link> = BTreeMap::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below; we only read it meanwhile.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getifaddrs");
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        // SAFETY: the name is NUL-terminated.
        let index = unsafe { libc::if_nametoindex(ifa.ifa_name) };
        if index == 0 {
            continue;
        }
        let link = by_index.entry(index).or_insert_with(|| Link {
            // SAFETY: as above.
            name: unsafe { CStr::from_ptr(ifa.ifa_name) }
                .to_string_lossy()
                .into_owned(),
            ..Link::default()
        });
        link.up |= ifa.ifa_flags & libc::IFF_UP as u32 != 0;
        link.loopback |= ifa.ifa_flags & libc::IFF_LOOPBACK as u32 != 0;
        if ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_addr is non-null and points at a sockaddr of the family it names.
        match i32::from(unsafe { (*ifa.ifa_addr).sa_family }) {
            libc::AF_INET => {
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                link.addrs.push(IpAddr::V4(ip));
            }
            libc::AF_INET6 => {
                let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                link.addrs
                    .push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
            }
            _ => {}
        }
    }
    // SAFETY: freeing the list getifaddrs allocated, once.
    unsafe { libc::freeifaddrs(head) };
    let mut defaults = Vec::new();
    for (path, parse) in [
        ("/proc/net/route", default_v4 as fn(&str) -> Vec<String>),
        ("/proc/net/ipv6_route", default_v6),
    ] {
        // A kernel without IPv6 has no ipv6_route: no IPv6 default routes.
        if let Ok(text) = std::fs::read_to_string(path) {
            defaults.extend(parse(&text));
        }
    }
    let mut links: Vec<Link> = by_index.into_values().collect();
    for l in &mut links {
        l.default_route = defaults.contains(&l.name);
    }
    Ok(links)
}

/// RTF_UP: the route is usable.
const RTF_UP: u32 = 0x0001;
/// RTF_REJECT: an unreachable/prohibit route (the IPv6 table's default on `lo`).
const RTF_REJECT: u32 = 0x0200;

/// Interfaces of the IPv4 default routes in `/proc/net/route` (destination and mask 0, up).
pub fn default_v4(text: &str) -> Vec<String> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (iface, dest, flags, mask) = (f.first()?, f.get(1)?, f.get(3)?, f.get(7)?);
            let flags = u32::from_str_radix(flags, 16).ok()?;
            let default = u32::from_str_radix(dest, 16).ok()? == 0
                && u32::from_str_radix(mask, 16).ok()? == 0;
            (default && flags & RTF_UP != 0 && flags & RTF_REJECT == 0).then(|| iface.to_string())
        })
        .collect()
}

/// Interfaces of the IPv6 default routes in `/proc/net/ipv6_route` (::/0, up, not a reject
/// route).
pub fn default_v6(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (dest, plen, flags, iface) = (f.first()?, f.get(1)?, f.get(8)?, f.get(9)?);
            let flags = u32::from_str_radix(flags, 16).ok()?;
            let default =
                dest.bytes().all(|b| b == b'0') && u32::from_str_radix(plen, 16).ok()? == 0;
            (default && flags & RTF_UP != 0 && flags & RTF_REJECT == 0).then(|| iface.to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(name: &str, addrs: &[&str], default_route: bool) -> Link {
        Link {
            name: name.into(),
            up: true,
            loopback: false,
            addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            default_route,
        }
    }

    #[test]
    fn uplinks_have_a_global_address_and_a_default_route() {
        let mut lo = link("lo", &["127.0.0.1", "::1"], true);
        lo.loopback = true;
        let mut down = link("eth2", &["192.0.2.9"], true);
        down.up = false;
        let links = [
            lo,
            link("eth0", &["10.0.0.5", "fe80::1"], true),
            // IPv6-only default route still makes an uplink.
            link("eth1", &["2001:db8::5"], true),
            down,
            // Only link-local addresses: not an uplink even with a default route.
            link("eth3", &["169.254.1.1", "fe80::3"], true),
            // No default route and no node IP.
            link("eth4", &["192.0.2.4"], false),
            // CNI and tunnel kinds are excluded whatever their routes.
            link("lxc12ab", &["10.1.0.1"], true),
            link("cali0f", &["10.1.0.2"], true),
            link("cni0", &["10.1.0.3"], true),
            link("flannel.1", &["10.1.0.4"], true),
            link("docker0", &["172.17.0.1"], true),
            link("br-1234", &["172.18.0.1"], true),
            link("veth9", &["10.1.0.5"], true),
            link("kube-ipvs0", &["10.96.0.1"], true),
            link("vxlan.calico", &["10.1.0.6"], true),
            link("genev_sys_6081", &["10.1.0.7"], true),
            link("tunl0", &["10.1.0.8"], true),
        ];
        assert_eq!(select(&links, &[]), ["eth0", "eth1"]);
    }

    #[test]
    fn an_interface_holding_a_node_ip_is_an_uplink_without_a_default_route() {
        let links = [
            link("eth0", &["10.0.0.5"], true),
            link("eth1", &["192.168.7.2"], false),
            link("eth2", &["192.168.8.2"], false),
            link("cni0", &["10.1.0.1"], false),
        ];
        let node_ips = ["192.168.7.2".parse().unwrap(), "10.1.0.1".parse().unwrap()];
        assert_eq!(select(&links, &node_ips), ["eth0", "eth1"]);
    }

    #[test]
    fn default_routes_are_read_from_proc() {
        let v4 = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
            eth0\t00000000\t0100000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
            eth0\t0000000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
            eth1\t00000000\t0101A8C0\t0002\t0\t0\t0\t00000000\t0\t0\t0\n";
        // eth1's default route is not up (no RTF_UP).
        assert_eq!(default_v4(v4), ["eth0"]);
        let v6 = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003     eth1\n\
            20010db8000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth1\n\
            00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo\n";
        assert_eq!(default_v6(v6), ["eth1"]);
    }

    #[test]
    fn a_list_without_auto_is_kept_as_it_is() {
        let plain = vec!["eth9".to_string(), "eth8".to_string()];
        assert_eq!(resolve(&plain, &[]).unwrap(), plain);
    }
}
