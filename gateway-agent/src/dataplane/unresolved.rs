//! Reads and empties `UNRESOLVED_HOPS`: the next hops the XDP program found no resolved
//! neighbour entry for and dropped a packet to. [`super::Neighbours::adopt_reported`] makes the
//! kernel resolve them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::Context as _;
use aya::{Ebpf, maps::HashMap};
use gateway_common::{listener::FAMILY_V4, map_names, nat::NextHop};

/// Takes every reported hop out of the map: (egress ifindex, hop address).
pub fn take(ebpf: &mut Ebpf) -> anyhow::Result<Vec<(u32, IpAddr)>> {
    let mut map: HashMap<_, NextHop, u64> = HashMap::try_from(
        ebpf.map_mut(map_names::UNRESOLVED_HOPS)
            .context("UNRESOLVED_HOPS map missing")?,
    )?;
    let keys: Vec<NextHop> = map.keys().filter_map(Result::ok).collect();
    let mut hops = Vec::with_capacity(keys.len());
    for key in keys {
        // A hop reported again after this read is kept for the next one.
        let _ = map.remove(&key);
        hops.push((key.ifindex, address(&key)));
    }
    Ok(hops)
}

/// The hop's address as the program wrote it.
fn address(hop: &NextHop) -> IpAddr {
    if hop.family == FAMILY_V4 {
        let [a, b, c, d, ..] = hop.addr;
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    } else {
        IpAddr::V6(Ipv6Addr::from(hop.addr))
    }
}

#[cfg(test)]
mod tests {
    use gateway_common::listener::FAMILY_V6;

    use super::*;

    #[test]
    fn addresses_read_as_the_program_writes_them() {
        let mut v4 = NextHop {
            ifindex: 3,
            family: FAMILY_V4,
            ..NextHop::default()
        };
        v4.addr[..4].copy_from_slice(&[10, 90, 1, 2]);
        assert_eq!(address(&v4), IpAddr::V4(Ipv4Addr::new(10, 90, 1, 2)));
        let six: Ipv6Addr = "fd00:90:1::2".parse().unwrap();
        let v6 = NextHop {
            ifindex: 3,
            family: FAMILY_V6,
            addr: six.octets(),
            ..NextHop::default()
        };
        assert_eq!(address(&v6), IpAddr::V6(six));
    }
}
