//! The gateway's own addresses per interface, for `IFADDRS` (the SNAT source of NATed packets
//! leaving through an interface): the first IPv4 address and the first global IPv6 address.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
};

use anyhow::Context as _;
use aya::{Ebpf, maps::HashMap};
use gateway_common::{map_names, nat::IfAddr};

/// An interface's first IPv4 and first global IPv6 address.
pub type Addrs = (Option<Ipv4Addr>, Option<Ipv6Addr>);

/// ifindex → (first IPv4 address, first global IPv6 address) of the interface, from getifaddrs(3).
pub fn addrs_by_ifindex() -> anyhow::Result<BTreeMap<u32, Addrs>> {
    let mut out = BTreeMap::new();
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
        if ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: the name is NUL-terminated.
        let index = unsafe { libc::if_nametoindex(ifa.ifa_name) };
        if index == 0 {
            continue;
        }
        let entry: &mut Addrs = out.entry(index).or_default();
        // SAFETY: ifa_addr is non-null and points at a sockaddr of the family it names.
        match i32::from(unsafe { (*ifa.ifa_addr).sa_family }) {
            libc::AF_INET => {
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                entry
                    .0
                    .get_or_insert(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
            }
            libc::AF_INET6 => {
                let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                // Link-local addresses are not routable sources for NAT.
                if !ip.is_loopback() && (ip.segments()[0] & 0xffc0) != 0xfe80 {
                    entry.1.get_or_insert(ip);
                }
            }
            _ => {}
        }
    }
    // SAFETY: freeing the list getifaddrs allocated, once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// Rewrites `IFADDRS` from the current interface addresses.
pub fn sync(ebpf: &mut Ebpf) -> anyhow::Result<()> {
    let addrs = addrs_by_ifindex()?;
    let mut map: HashMap<_, u32, IfAddr> = HashMap::try_from(
        ebpf.map_mut(map_names::IFADDRS)
            .context("IFADDRS map missing")?,
    )?;
    let stale: Vec<u32> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !addrs.contains_key(k))
        .collect();
    for k in stale {
        let _ = map.remove(&k);
    }
    for (index, (v4, v6)) in addrs {
        let value = IfAddr {
            v4: v4.map(|a| a.octets()).unwrap_or_default(),
            v6: v6.map(|a| a.octets()).unwrap_or_default(),
        };
        map.insert(index, value, 0)?;
    }
    Ok(())
}
