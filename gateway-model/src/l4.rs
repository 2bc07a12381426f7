//! TCP and UDP listeners: the kernel data plane's backend sets.

use std::net::SocketAddr;

use crate::{
    attach::ByListener,
    compile::RouteView,
    gateway::{GatewayState, Protocol},
    model::{L4Listener, L4Protocol, Model, WeightedEndpoint},
    objects::Objects,
    refs::{BackendRef, RefProblem, resolve_backend},
    routes::RouteRules,
};

/// Spreads backendRef weights over endpoints: "a backendRef's weight divided among its ready
/// endpoints". Each endpoint gets `weight × 1000 / endpoints` (at least 1), so shares stay
/// proportional across Services of different sizes. Weight 0 and unresolved refs contribute no
/// endpoint; a resolved Service with no ready endpoint contributes none either.
pub(crate) fn weighted_endpoints(
    objects: &Objects,
    r: &RouteView,
    refs: &[BackendRef],
    problem: &mut Option<RefProblem>,
) -> Vec<WeightedEndpoint> {
    let mut out = Vec::new();
    for br in refs {
        let weight = u32::try_from(br.weight.unwrap_or(1)).unwrap_or(0);
        match resolve_backend(objects, r.kind.as_str(), &r.namespace, br) {
            Ok(svc) => {
                if weight == 0 || svc.endpoints.is_empty() {
                    continue;
                }
                let n = u32::try_from(svc.endpoints.len()).unwrap_or(u32::MAX);
                let each = (weight.saturating_mul(1000) / n).max(1);
                for &address in svc.endpoints.iter() {
                    out.push(WeightedEndpoint {
                        address,
                        weight: each,
                        backend: svc.name.clone(),
                    });
                }
            }
            Err(p) => {
                problem.get_or_insert(p);
            }
        }
    }
    out
}

/// One [`L4Listener`] per bound TCP/UDP socket. A TCP or UDP listener serves one route: every
/// attached route counts and is Accepted (the conformance suite's TCPRouteMultipleRoutesAttachment:
/// "Both routes report Accepted=True ... only the oldest route is bound to the listener"), but
/// only the oldest (creationTimestamp, then namespace/name) receives traffic.
pub(crate) fn build(
    objects: &Objects,
    gateways: &[GatewayState],
    routes: &[&RouteView],
    attached: &ByListener,
    model: &mut Model,
    problems: &mut [Option<RefProblem>],
) {
    let mut seen: Vec<(SocketAddr, L4Protocol)> = Vec::new();
    for (gi, g) in gateways.iter().enumerate() {
        for (li, l) in g.listeners.iter().enumerate() {
            let protocol = match l.protocol {
                Some(Protocol::Tcp) if l.programmable() => L4Protocol::Tcp,
                Some(Protocol::Udp) if l.programmable() => L4Protocol::Udp,
                _ => continue,
            };
            let route = attached
                .get(&(gi, li))
                .and_then(|list| list.first())
                .map(|&ri| (ri, routes[ri]));
            let mut backends = Vec::new();
            if let Some((ri, r)) = route
                && let RouteRules::L4(refs) = &r.rules
            {
                backends = weighted_endpoints(objects, r, refs, &mut problems[ri]);
            }
            for ip in &g.addresses {
                let address = SocketAddr::new(*ip, l.port);
                // Socket conflicts were settled between Gateways; this only guards the model.
                if seen.contains(&(address, protocol)) {
                    continue;
                }
                seen.push((address, protocol));
                model.l4.push(L4Listener {
                    name: format!("{}/{}", g.id(), l.name),
                    address,
                    protocol,
                    route: route.map(|(_, r)| format!("{} {}", r.kind.as_str(), r.id())),
                    backends: backends.clone(),
                });
            }
        }
    }
    model.l4.sort_by_key(|l| (l.address, l.protocol));
}
