//! Keeps `SERVICES`, `MAGLEV_RINGS` and `BACKENDS` equal to the L4 services of the model, without
//! a gap: a changed service's new ring is written into the slot no flow reads, and only then does
//! `SERVICES` flip to it. Established flows are untouched (they live in `FLOWS`).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf,
    maps::{Array, HashMap},
};
use gateway_common::{
    listener::{FAMILY_V4, FAMILY_V6},
    map_names,
    nat::{BackendValue, MAGLEV_SIZE, MAX_BACKENDS, MAX_RING_SLOTS, ServiceValue},
};

use super::maglev::{self, MaglevBackend};

/// A service as the maps hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Installed {
    /// The slot pair (2k, 2k+1) this service owns.
    pair: u32,
    /// Which of the two is live.
    live: u32,
    /// What the live ring was built from.
    backends: Vec<(SocketAddr, u32)>,
}

/// What the agent has written.
#[derive(Default)]
pub struct ServiceTable {
    by_listener: BTreeMap<u32, Installed>,
    backend_ids: BTreeMap<SocketAddr, u32>,
}

impl ServiceTable {
    /// The table as a previous agent left the maps: live ring slots stay untouched until the
    /// next sync writes each service's other slot and flips to it, and the backend ids the live
    /// rings use keep their `BACKENDS` entries until then.
    pub fn adopt(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        let mut table = ServiceTable::default();
        let services: HashMap<_, u32, ServiceValue> = HashMap::try_from(
            ebpf.map_mut(map_names::SERVICES)
                .context("SERVICES map missing")?,
        )?;
        for (listener, value) in services.iter().filter_map(Result::ok) {
            table.by_listener.insert(
                listener,
                Installed {
                    pair: value.ring_slot / 2,
                    live: value.ring_slot % 2,
                    backends: Vec::new(),
                },
            );
        }
        let backends: Array<_, BackendValue> = Array::try_from(
            ebpf.map_mut(map_names::BACKENDS)
                .context("BACKENDS map missing")?,
        )?;
        for id in 0..MAX_BACKENDS {
            let Ok(b) = backends.get(&id, 0) else {
                continue;
            };
            let ip = match b.family {
                FAMILY_V4 => IpAddr::from([b.addr[0], b.addr[1], b.addr[2], b.addr[3]]),
                FAMILY_V6 => IpAddr::from(b.addr),
                _ => continue,
            };
            table.backend_ids.insert(SocketAddr::new(ip, b.port), id);
        }
        Ok(table)
    }

    /// Makes the maps serve `wanted`: listener id → weighted backends (empty: no service).
    pub fn sync(
        &mut self,
        ebpf: &mut Ebpf,
        wanted: &BTreeMap<u32, Vec<(SocketAddr, u32)>>,
    ) -> anyhow::Result<()> {
        // Services that went away (or lost every backend): unhook first, then free.
        let gone: Vec<u32> = self
            .by_listener
            .keys()
            .filter(|id| wanted.get(id).is_none_or(Vec::is_empty))
            .copied()
            .collect();
        if !gone.is_empty() {
            let mut services: HashMap<_, u32, ServiceValue> = HashMap::try_from(
                ebpf.map_mut(map_names::SERVICES)
                    .context("SERVICES map missing")?,
            )?;
            for id in gone {
                let _ = services.remove(&id);
                self.by_listener.remove(&id);
            }
        }
        for (&listener, backends) in wanted {
            if backends.is_empty() {
                continue;
            }
            if self
                .by_listener
                .get(&listener)
                .is_some_and(|i| &i.backends == backends)
            {
                continue;
            }
            let ids = self.backend_ids_for(ebpf, backends)?;
            let pair = match self.by_listener.get(&listener) {
                Some(i) => i.pair,
                None => self.free_pair()?,
            };
            let live = self.by_listener.get(&listener).map_or(1, |i| i.live);
            let target = 1 - live;
            let table = maglev::build(
                &backends
                    .iter()
                    .zip(&ids)
                    .map(|((addr, weight), id)| MaglevBackend {
                        id: *id,
                        name: addr.to_string(),
                        weight: *weight,
                    })
                    .collect::<Vec<_>>(),
                MAGLEV_SIZE,
            );
            if table.is_empty() {
                continue;
            }
            let slot = pair * 2 + target;
            let mut rings: Array<_, u32> = Array::try_from(
                ebpf.map_mut(map_names::MAGLEV_RINGS)
                    .context("MAGLEV_RINGS map missing")?,
            )?;
            for (i, backend) in table.iter().enumerate() {
                rings.set(slot * MAGLEV_SIZE + i as u32, backend, 0)?;
            }
            let mut services: HashMap<_, u32, ServiceValue> = HashMap::try_from(
                ebpf.map_mut(map_names::SERVICES)
                    .context("SERVICES map missing")?,
            )?;
            services.insert(
                listener,
                ServiceValue {
                    ring_slot: slot,
                    backends: backends.len() as u32,
                },
                0,
            )?;
            self.by_listener.insert(
                listener,
                Installed {
                    pair,
                    live: target,
                    backends: backends.clone(),
                },
            );
        }
        // Backend ids no live ring uses any more are free again.
        let used: BTreeSet<SocketAddr> = self
            .by_listener
            .values()
            .flat_map(|i| i.backends.iter().map(|(a, _)| *a))
            .collect();
        self.backend_ids.retain(|addr, _| used.contains(addr));
        Ok(())
    }

    /// Every backend with an id, for per-backend counters.
    pub fn backends(&self) -> impl Iterator<Item = (SocketAddr, u32)> + '_ {
        self.backend_ids.iter().map(|(a, id)| (*a, *id))
    }

    fn free_pair(&self) -> anyhow::Result<u32> {
        let used: BTreeSet<u32> = self.by_listener.values().map(|i| i.pair).collect();
        (0..MAX_RING_SLOTS / 2)
            .find(|p| !used.contains(p))
            .with_context(|| format!("more than {} L4 services", MAX_RING_SLOTS / 2))
    }

    /// Ids for backends, allocating (and writing `BACKENDS`) for new ones.
    fn backend_ids_for(
        &mut self,
        ebpf: &mut Ebpf,
        backends: &[(SocketAddr, u32)],
    ) -> anyhow::Result<Vec<u32>> {
        let mut out = Vec::with_capacity(backends.len());
        for (addr, _) in backends {
            if let Some(id) = self.backend_ids.get(addr) {
                out.push(*id);
                continue;
            }
            let used: BTreeSet<u32> = self.backend_ids.values().copied().collect();
            let Some(id) = (0..MAX_BACKENDS).find(|i| !used.contains(i)) else {
                bail!("more than {MAX_BACKENDS} backends");
            };
            let mut value = BackendValue {
                port: addr.port(),
                ..BackendValue::default()
            };
            match addr.ip() {
                IpAddr::V4(v4) => {
                    value.addr[..4].copy_from_slice(&v4.octets());
                    value.family = FAMILY_V4;
                }
                IpAddr::V6(v6) => {
                    value.addr = v6.octets();
                    value.family = FAMILY_V6;
                }
            }
            let mut map: Array<_, BackendValue> = Array::try_from(
                ebpf.map_mut(map_names::BACKENDS)
                    .context("BACKENDS map missing")?,
            )?;
            map.set(id, value, 0)?;
            self.backend_ids.insert(*addr, id);
            out.push(id);
        }
        Ok(out)
    }
}
