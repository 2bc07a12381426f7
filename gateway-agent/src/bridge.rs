//! From the compiled model to what each data plane consumes.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use gateway_model::{Model, model::L4Protocol};

use crate::dataplane::{ListenerEntry, Transport};

/// Every address the model's L4 routes forward to (the next hops the NAT needs resolved).
pub fn l4_backend_addrs(model: &Model) -> Vec<IpAddr> {
    model
        .l4
        .iter()
        .flat_map(|l| l.backends.iter().map(|b| b.address.ip()))
        .collect()
}

/// The L4 listener sockets of the model, for the `LISTENERS` map. A listener bound to the
/// unspecified IPv4 address serves both families (as a dual-stack socket on `[::]` would), so it
/// is programmed under both wildcard keys.
pub fn l4_listeners(model: &Model) -> Vec<ListenerEntry> {
    let mut out = Vec::new();
    for l in &model.l4 {
        let transport = match l.protocol {
            L4Protocol::Tcp => Transport::Tcp,
            L4Protocol::Udp => Transport::Udp,
        };
        let mut sockets = vec![l.address];
        if l.address.ip().is_unspecified() && l.address.is_ipv4() {
            sockets.push(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                l.address.port(),
            ));
        }
        for socket in sockets {
            if out
                .iter()
                .any(|e: &ListenerEntry| e.socket == socket && e.transport == transport)
            {
                continue;
            }
            out.push(ListenerEntry {
                socket,
                transport,
                name: l.name.clone(),
                // Only backends of the socket's family can be reached by its NAT.
                backends: l
                    .backends
                    .iter()
                    .filter(|b| b.address.is_ipv4() == socket.is_ipv4())
                    .map(|b| (b.address, b.weight))
                    .collect(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use gateway_model::model::L4Listener;

    use super::*;

    fn listener(addr: &str, protocol: L4Protocol) -> L4Listener {
        L4Listener {
            name: "default/gw/l".into(),
            address: addr.parse().unwrap(),
            protocol,
            route: None,
            backends: Vec::new(),
        }
    }

    #[test]
    fn wildcard_ipv4_covers_both_families_and_exact_addresses_stay_exact() {
        let model = Model {
            l4: vec![
                listener("0.0.0.0:53", L4Protocol::Udp),
                listener("10.0.0.1:80", L4Protocol::Tcp),
            ],
            ..Model::default()
        };
        let entries: Vec<(String, Transport)> = l4_listeners(&model)
            .into_iter()
            .map(|e| (e.socket.to_string(), e.transport))
            .collect();
        assert_eq!(
            entries,
            [
                ("0.0.0.0:53".to_string(), Transport::Udp),
                ("[::]:53".to_string(), Transport::Udp),
                ("10.0.0.1:80".to_string(), Transport::Tcp)
            ]
        );
    }
}
