//! TLS passthrough listeners: SNI tables from TLSRoutes.

use std::{collections::BTreeMap, net::SocketAddr};

use crate::{
    attach::ByListener,
    compile::RouteView,
    gateway::{GatewayState, Protocol},
    hostname,
    l4::weighted_endpoints,
    model::{Model, PassthroughListener, SniRoute},
    objects::Objects,
    refs::RefProblem,
    routes::RouteRules,
};

/// One [`PassthroughListener`] per bound socket (listeners of several Gateways with distinct
/// hostnames may share it). Each TLSRoute contributes its hostnames intersected with the
/// listener's ("any TLSRoute hostnames that do not match any Listener hostname MUST be
/// ignored"); when two routes claim one hostname, the oldest keeps it.
pub(crate) fn build(
    objects: &Objects,
    gateways: &[GatewayState],
    routes: &[&RouteView],
    attached: &ByListener,
    model: &mut Model,
    problems: &mut [Option<RefProblem>],
) {
    let mut by_socket: BTreeMap<SocketAddr, PassthroughListener> = BTreeMap::new();
    for (gi, g) in gateways.iter().enumerate() {
        for (li, l) in g.listeners.iter().enumerate() {
            if l.protocol != Some(Protocol::Tls) || !l.programmable() {
                continue;
            }
            for ip in &g.addresses {
                let address = SocketAddr::new(*ip, l.port);
                let listener = by_socket
                    .entry(address)
                    .or_insert_with(|| PassthroughListener {
                        names: Vec::new(),
                        address,
                        routes: Vec::new(),
                    });
                listener.names.push(format!("{}/{}", g.id(), l.name));
                for &ri in attached.get(&(gi, li)).into_iter().flatten() {
                    let r = routes[ri];
                    let RouteRules::L4(refs) = &r.rules else {
                        continue;
                    };
                    let Some(patterns) = hostname::intersect(l.hostname.as_deref(), &r.hostnames)
                    else {
                        continue;
                    };
                    let backends = weighted_endpoints(objects, r, refs, &mut problems[ri]);
                    for hostname in patterns {
                        if listener.routes.iter().any(|x| x.hostname == hostname) {
                            continue; // an older route already holds this hostname
                        }
                        listener.routes.push(SniRoute {
                            hostname,
                            route: r.id(),
                            backends: backends.clone(),
                        });
                    }
                }
            }
        }
    }
    for (_, mut l) in by_socket {
        l.routes.sort_by_key(|r| hostname::order_key(&r.hostname));
        model.passthrough.push(l);
    }
}
