//! Managed neighbour (ARP/NDP) entries for the next hops of the L4 backends.
//!
//! The NAT programs forward with `bpf_fib_lookup`, which finds a next hop's MAC only in the
//! kernel's neighbour table and never resolves one itself. Traffic the programs forward skips
//! the stack, so nothing else would ever resolve a new backend's address, or confirm an old
//! one, on a gateway whose stack does not talk to it: every packet to it would fail the lookup.
//! As Cilium does, the agent asks the kernel for a *managed* entry (`NTF_EXT_MANAGED`, Linux
//! 5.16+) per next hop: the kernel resolves it at once and keeps it resolved, re-probing it
//! while it lives. `extern_learn` keeps the neighbour GC from collecting it.
//!
//! Each backend's next hop is the gateway of its route (`RTM_GETROUTE`), or the backend itself
//! when it is on a connected subnet. Entries are written with replace semantics, which keeps a
//! resolved entry's address (a reachable or stale entry only moves on to re-probing), so
//! asserting them again on every model and every [`REFRESH`] is harmless and brings back any
//! that were flushed.
//!
//! Other next hops (towards clients, for replies) are not known in advance. TC resolves them
//! itself (`bpf_redirect_neigh`); XDP drops the packet and reports the hop in
//! `UNRESOLVED_HOPS`, and [`Neighbours::adopt_reported`] makes it managed, so the sender's
//! retransmit finds it resolved. A reported hop is held managed for
//! `--reported-neighbour-hold` (5 min by default), then [`Neighbours::release_expired`] hands
//! it back to the kernel's own aging as an ordinary stale entry with the address it learnt
//! (still used by the programs, collected only when the table needs room, reported again if a
//! packet meets it missing), so clients that come and go do not leave the kernel probing them
//! for ever.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use futures::TryStreamExt as _;
use netlink_packet_route::{
    neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourExtFlags, NeighbourFlags, NeighbourMessage,
        NeighbourState,
    },
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteType},
};

/// How often the entries are asserted again between model changes.
pub const REFRESH: Duration = Duration::from_secs(30);

/// A next hop: egress ifindex and the hop's address.
type Hop = (u32, IpAddr);

/// An rtnetlink connection (its socket driven by a task of its own) for neighbour entries.
pub struct Neighbours {
    handle: rtnetlink::Handle,
    connection: tokio::task::JoinHandle<()>,
    /// The backends' next hops as of the last [`Neighbours::ensure`]: managed for good.
    backend_hops: BTreeSet<Hop>,
    /// Reported hops made managed, with when.
    reported: BTreeMap<Hop, Instant>,
    /// How long a reported hop stays managed (`--reported-neighbour-hold`).
    hold: Duration,
}

impl Neighbours {
    /// Opens the rtnetlink socket in the agent's network namespace; reported hops are held
    /// managed for `hold`.
    pub fn new(hold: Duration) -> anyhow::Result<Self> {
        let (conn, handle, _) = rtnetlink::new_connection().context("opening rtnetlink")?;
        Ok(Self {
            handle,
            connection: tokio::spawn(conn),
            backend_hops: BTreeSet::new(),
            reported: BTreeMap::new(),
            hold,
        })
    }

    /// Makes sure every next hop towards `backends` has a managed neighbour entry. A backend
    /// without a route, or on this host, is skipped; one that fails is logged and the rest
    /// still go through.
    pub async fn ensure(&mut self, backends: impl IntoIterator<Item = IpAddr>) {
        let mut hops = BTreeSet::new();
        for backend in backends.into_iter().collect::<BTreeSet<_>>() {
            match self.next_hop(backend).await {
                Ok(Some(hop)) => {
                    hops.insert(hop);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(%backend, error = %format!("{e:#}"), "no route to an L4 backend")
                }
            }
        }
        for &(ifindex, hop) in &hops {
            if let Err(e) = self.manage(ifindex, hop).await {
                tracing::warn!(%hop, ifindex, error = %format!("{e:#}"),
                    "could not add a managed neighbour entry; packets to it wait for the stack to resolve it");
            }
        }
        // A backend's hop is managed for good, whoever reported it first.
        self.reported.retain(|hop, _| !hops.contains(hop));
        self.backend_hops = hops;
    }

    /// Makes the hops the XDP program reported unresolved managed, so the kernel resolves them
    /// now; each is held for `--reported-neighbour-hold` from its latest report.
    pub async fn adopt_reported(&mut self, hops: Vec<Hop>, now: Instant) {
        for (ifindex, hop) in hops {
            if self.backend_hops.contains(&(ifindex, hop)) {
                // Reported before its managed entry resolved; already managed.
                continue;
            }
            match self.manage(ifindex, hop).await {
                Ok(()) => {
                    tracing::debug!(%hop, ifindex, "resolving a next hop the data plane met unresolved");
                    self.reported.insert((ifindex, hop), now);
                }
                Err(e) => tracing::warn!(%hop, ifindex, error = %format!("{e:#}"),
                    "could not add a managed neighbour entry for an unresolved next hop"),
            }
        }
    }

    /// Hands the reported hops held longer than `--reported-neighbour-hold` back to the
    /// kernel: an entry that resolved becomes an ordinary stale one with its address (no longer
    /// managed or externally learnt, so it ages as any other), one that did not is removed.
    pub async fn release_expired(&mut self, now: Instant) {
        let expired: Vec<Hop> = self
            .reported
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= self.hold)
            .map(|(hop, _)| *hop)
            .collect();
        if expired.is_empty() {
            return;
        }
        let learnt = match self.link_addresses().await {
            Ok(learnt) => learnt,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "could not read the neighbour table");
                return;
            }
        };
        for hop in expired {
            self.reported.remove(&hop);
            let (ifindex, addr) = hop;
            let done = match learnt.get(&hop) {
                Some(lladdr) => self
                    .handle
                    .neighbours()
                    .add(ifindex, addr)
                    .link_layer_address(lladdr)
                    .state(NeighbourState::Stale)
                    .replace()
                    .execute()
                    .await
                    .context("RTM_NEWNEIGH"),
                None => self.delete(ifindex, addr).await,
            };
            if let Err(e) = done {
                tracing::debug!(%addr, ifindex, error = %format!("{e:#}"), "releasing a reported next hop");
            }
        }
    }

    /// Every neighbour entry's link-layer address, by (ifindex, address).
    async fn link_addresses(&self) -> anyhow::Result<BTreeMap<Hop, Vec<u8>>> {
        let mut dump = self.handle.neighbours().get().execute();
        let mut learnt = BTreeMap::new();
        while let Some(msg) = dump.try_next().await.context("RTM_GETNEIGH")? {
            if let Some((hop, lladdr)) = learnt_address(&msg) {
                learnt.insert(hop, lladdr);
            }
        }
        Ok(learnt)
    }

    /// Removes the entry for `hop` on `ifindex`.
    async fn delete(&self, ifindex: u32, hop: IpAddr) -> anyhow::Result<()> {
        let mut msg = NeighbourMessage::default();
        msg.header.ifindex = ifindex;
        msg.header.family = match hop {
            IpAddr::V4(_) => netlink_packet_route::AddressFamily::Inet,
            IpAddr::V6(_) => netlink_packet_route::AddressFamily::Inet6,
        };
        msg.attributes
            .push(NeighbourAttribute::Destination(match hop {
                IpAddr::V4(a) => NeighbourAddress::Inet(a),
                IpAddr::V6(a) => NeighbourAddress::Inet6(a),
            }));
        self.handle
            .neighbours()
            .del(msg)
            .execute()
            .await
            .context("RTM_DELNEIGH")
    }

    /// (egress ifindex, next-hop address) of the route to `dst`; `None` for local addresses.
    async fn next_hop(&self, dst: IpAddr) -> anyhow::Result<Option<(u32, IpAddr)>> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = match dst {
            IpAddr::V4(_) => netlink_packet_route::AddressFamily::Inet,
            IpAddr::V6(_) => netlink_packet_route::AddressFamily::Inet6,
        };
        msg.header.destination_prefix_length = if dst.is_ipv4() { 32 } else { 128 };
        msg.attributes.push(RouteAttribute::Destination(match dst {
            IpAddr::V4(a) => RouteAddress::Inet(a),
            IpAddr::V6(a) => RouteAddress::Inet6(a),
        }));
        let mut routes = self.handle.route().get(msg).execute();
        let route = routes
            .try_next()
            .await
            .context("RTM_GETROUTE")?
            .context("the kernel returned no route")?;
        Ok(hop_of(&route, dst))
    }

    /// Adds (or re-asserts) a managed, externally learned entry for `hop` on `ifindex`.
    async fn manage(&self, ifindex: u32, hop: IpAddr) -> anyhow::Result<()> {
        let mut req = self
            .handle
            .neighbours()
            .add(ifindex, hop)
            // No address given: the kernel resolves it (NUD_NONE, as `ip neigh replace ...
            // managed` sends; a managed entry may not be permanent).
            .state(NeighbourState::None)
            .flags(NeighbourFlags::ExtLearned)
            .replace();
        req.message_mut()
            .attributes
            .push(NeighbourAttribute::ExtFlags(NeighbourExtFlags::Managed));
        req.execute().await.context("RTM_NEWNEIGH")
    }
}

impl Drop for Neighbours {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

/// The (ifindex, address) of a neighbour entry and the link-layer address it resolved to, if
/// it has one.
fn learnt_address(msg: &NeighbourMessage) -> Option<(Hop, Vec<u8>)> {
    let mut dst = None;
    let mut lladdr = None;
    for attr in &msg.attributes {
        match attr {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => {
                dst = Some(IpAddr::V4(*a))
            }
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                dst = Some(IpAddr::V6(*a))
            }
            NeighbourAttribute::LinkLayerAddress(l) if !l.is_empty() => lladdr = Some(l.clone()),
            _ => {}
        }
    }
    Some(((msg.header.ifindex, dst?), lladdr?))
}

/// The next hop a route gives for `dst`: its gateway, or `dst` itself on a connected subnet;
/// `None` unless it is a unicast route with an output interface.
fn hop_of(route: &RouteMessage, dst: IpAddr) -> Option<(u32, IpAddr)> {
    if route.header.kind != RouteType::Unicast {
        return None;
    }
    let mut oif = None;
    let mut gateway = None;
    for attr in &route.attributes {
        match attr {
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Gateway(RouteAddress::Inet(a)) => gateway = Some(IpAddr::V4(*a)),
            RouteAttribute::Gateway(RouteAddress::Inet6(a)) => gateway = Some(IpAddr::V6(*a)),
            _ => {}
        }
    }
    Some((oif?, gateway.unwrap_or(dst)))
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn route(kind: RouteType, attrs: Vec<RouteAttribute>) -> RouteMessage {
        let mut r = RouteMessage::default();
        r.header.kind = kind;
        r.attributes = attrs;
        r
    }

    #[test]
    fn next_hop_is_the_gateway_or_the_backend_itself() {
        let dst = IpAddr::V4(Ipv4Addr::new(10, 90, 2, 2));
        let router = Ipv4Addr::new(10, 90, 2, 254);
        for (r, want) in [
            (
                route(RouteType::Unicast, vec![RouteAttribute::Oif(3)]),
                Some((3, dst)),
            ),
            (
                route(
                    RouteType::Unicast,
                    vec![
                        RouteAttribute::Oif(4),
                        RouteAttribute::Gateway(RouteAddress::Inet(router)),
                    ],
                ),
                Some((4, IpAddr::V4(router))),
            ),
            // The gateway's own address, or one it cannot reach.
            (route(RouteType::Local, vec![RouteAttribute::Oif(1)]), None),
            (route(RouteType::Unreachable, vec![]), None),
            (route(RouteType::Unicast, vec![]), None),
        ] {
            assert_eq!(hop_of(&r, dst), want, "{r:?}");
        }
    }
}
