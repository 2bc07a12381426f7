//! The gateway's own IPv4 addresses per interface, for `IFADDRS` (the SNAT source of NATed
//! packets leaving through an interface).

use std::{collections::BTreeMap, ffi::CStr, net::Ipv4Addr};

use anyhow::Context as _;
use aya::{Ebpf, maps::HashMap};
use gateway_common::{map_names, nat::IfAddr};

/// ifindex → first IPv4 address of the interface, from getifaddrs(3).
pub fn ipv4_by_ifindex() -> anyhow::Result<BTreeMap<u32, Ipv4Addr>> {
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
        if ifa.ifa_addr.is_null()
            || i32::from(unsafe { (*ifa.ifa_addr).sa_family }) != libc::AF_INET
        {
            continue;
        }
        // SAFETY: an AF_INET address is a sockaddr_in; the name is NUL-terminated.
        let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
        let index = unsafe { libc::if_nametoindex(ifa.ifa_name) };
        if index == 0 {
            continue;
        }
        let _name = unsafe { CStr::from_ptr(ifa.ifa_name) };
        out.entry(index)
            .or_insert(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
    }
    // SAFETY: freeing the list getifaddrs allocated, once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// Rewrites `IFADDRS` from the current interface addresses.
pub fn sync(ebpf: &mut Ebpf) -> anyhow::Result<()> {
    let addrs = ipv4_by_ifindex()?;
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
    for (index, addr) in addrs {
        map.insert(index, IfAddr { v4: addr.octets() }, 0)?;
    }
    Ok(())
}
