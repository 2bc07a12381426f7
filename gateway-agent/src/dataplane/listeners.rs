//! Keeps the `LISTENERS` map equal to the listener sockets of the current model.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use anyhow::Context as _;
use aya::{Ebpf, maps::HashMap};
use gateway_common::{
    listener::{
        FAMILY_V4, FAMILY_V6, ListenerKey, ListenerValue, MAX_LISTENERS, PROTO_TCP, PROTO_UDP,
    },
    map_names,
};

/// Transport protocol of a listener socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Transport {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// One listener socket the kernel programs own, with the name its metrics carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerEntry {
    /// Bound address and port (the unspecified address matches any destination of its family).
    pub socket: SocketAddr,
    /// TCP or UDP.
    pub transport: Transport,
    /// `namespace/gateway/listener`, for metrics and logs.
    pub name: String,
    /// The backends of the route it serves, with weights (empty: packets go to the stack).
    pub backends: Vec<(SocketAddr, u32)>,
}

impl ListenerEntry {
    /// The map key this entry is stored under.
    pub fn key(&self) -> ListenerKey {
        let mut addr = [0u8; 16];
        let family = match self.socket.ip() {
            IpAddr::V4(v4) => {
                addr[..4].copy_from_slice(&v4.octets());
                FAMILY_V4
            }
            IpAddr::V6(v6) => {
                addr = v6.octets();
                FAMILY_V6
            }
        };
        ListenerKey {
            addr,
            port: self.socket.port(),
            proto: match self.transport {
                Transport::Tcp => PROTO_TCP,
                Transport::Udp => PROTO_UDP,
            },
            family,
        }
    }
}

/// What the agent last wrote into `LISTENERS`: key → (id, entry). Ids are dense and stable for a
/// key as long as it stays, so its counters keep counting across model changes.
#[derive(Default)]
pub struct ListenerTable {
    written: BTreeMap<Key, (u32, ListenerEntry)>,
}

type Key = ([u8; 16], u16, u8, u8);

fn sort_key(k: &ListenerKey) -> Key {
    (k.addr, k.port, k.proto, k.family)
}

impl ListenerTable {
    /// The table as a previous agent left `LISTENERS`: its keys keep their ids (and counters);
    /// names and backends are filled in by the next sync.
    pub fn adopt(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        let map: HashMap<_, ListenerKey, ListenerValue> = HashMap::try_from(
            ebpf.map_mut(map_names::LISTENERS)
                .context("LISTENERS map missing")?,
        )?;
        let mut written = BTreeMap::new();
        for (key, value) in map.iter().filter_map(Result::ok) {
            let ip = if key.family == FAMILY_V4 {
                IpAddr::from([key.addr[0], key.addr[1], key.addr[2], key.addr[3]])
            } else {
                IpAddr::from(key.addr)
            };
            let entry = ListenerEntry {
                socket: SocketAddr::new(ip, key.port),
                transport: if key.proto == PROTO_UDP {
                    Transport::Udp
                } else {
                    Transport::Tcp
                },
                name: String::new(),
                backends: Vec::new(),
            };
            written.insert(sort_key(&key), (value.id, entry));
        }
        Ok(ListenerTable { written })
    }

    /// The entries currently in the map, with their ids.
    pub fn entries(&self) -> impl Iterator<Item = (u32, &ListenerEntry)> {
        self.written.values().map(|(id, e)| (*id, e))
    }

    /// Writes the difference between what the map holds and `wanted`: new keys are inserted with a
    /// free id (their counters zeroed first), vanished keys removed, kept keys left alone.
    pub fn sync(&mut self, ebpf: &mut Ebpf, wanted: &[ListenerEntry]) -> anyhow::Result<()> {
        let wanted: BTreeMap<Key, &ListenerEntry> =
            wanted.iter().map(|e| (sort_key(&e.key()), e)).collect();
        let mut map: HashMap<_, ListenerKey, ListenerValue> = HashMap::try_from(
            ebpf.map_mut(map_names::LISTENERS)
                .context("LISTENERS map missing")?,
        )?;
        let stale: Vec<Key> = self
            .written
            .keys()
            .filter(|k| !wanted.contains_key(*k))
            .copied()
            .collect();
        for k in stale {
            if let Some((_, entry)) = self.written.remove(&k) {
                map.remove(&entry.key())
                    .with_context(|| format!("removing listener {}", entry.name))?;
            }
        }
        let mut used: Vec<u32> = self.written.values().map(|(id, _)| *id).collect();
        used.sort_unstable();
        let mut zero_ids = Vec::new();
        for (k, entry) in wanted {
            if let Some((_, old)) = self.written.get_mut(&k) {
                old.name = entry.name.clone();
                old.backends = entry.backends.clone();
                continue;
            }
            let id = (0..MAX_LISTENERS)
                .find(|id| used.binary_search(id).is_err())
                .with_context(|| format!("more than {MAX_LISTENERS} listeners"))?;
            used.insert(used.binary_search(&id).unwrap_err(), id);
            zero_ids.push(id);
            map.insert(entry.key(), ListenerValue { id, flags: 0 }, 0)
                .with_context(|| format!("inserting listener {}", entry.name))?;
            self.written.insert(k, (id, entry.clone()));
        }
        super::stats::zero_listener_counters(ebpf, &zero_ids)?;
        Ok(())
    }
}
