//! Reads the per-CPU counter maps and sums them over CPUs.

use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::{PerCpuArray, PerCpuValues},
    util::nr_cpus,
};
use gateway_common::{
    counters::{DropReason, TrafficCounters},
    map_names,
};

use super::ListenerEntry;

/// Counters of one listener, summed over CPUs.
#[derive(Debug, Clone)]
pub struct ListenerStats {
    /// The listener.
    pub entry: ListenerEntry,
    /// Packets and bytes.
    pub counters: TrafficCounters,
}

/// Every counter the kernel programs keep.
#[derive(Debug, Clone, Default)]
pub struct DataplaneStats {
    /// Per listener.
    pub listeners: Vec<ListenerStats>,
    /// Per drop reason label.
    pub drops: Vec<(&'static str, TrafficCounters)>,
    /// Per backend: (address, towards it, replies from it).
    pub backends: Vec<(std::net::SocketAddr, TrafficCounters, TrafficCounters)>,
}

/// Sums one key's per-CPU counters.
pub(super) fn sum(values: &PerCpuValues<TrafficCounters>) -> TrafficCounters {
    values
        .iter()
        .fold(TrafficCounters::default(), |acc, v| TrafficCounters {
            packets: acc.packets + v.packets,
            bytes: acc.bytes + v.bytes,
        })
}

fn array<'a>(
    ebpf: &'a Ebpf,
    name: &str,
) -> anyhow::Result<PerCpuArray<&'a aya::maps::MapData, TrafficCounters>> {
    Ok(PerCpuArray::try_from(
        ebpf.map(name)
            .with_context(|| format!("{name} map missing"))?,
    )?)
}

/// Reads listener and drop counters.
pub fn read<'a>(
    ebpf: &Ebpf,
    listeners: impl Iterator<Item = (u32, &'a ListenerEntry)>,
    backends: impl Iterator<Item = (std::net::SocketAddr, u32)>,
) -> anyhow::Result<DataplaneStats> {
    let per_listener = array(ebpf, map_names::LISTENER_STATS)?;
    let drops = array(ebpf, map_names::DROP_STATS)?;
    let mut out = DataplaneStats::default();
    for (id, entry) in listeners {
        out.listeners.push(ListenerStats {
            entry: entry.clone(),
            counters: sum(&per_listener.get(&id, 0)?),
        });
    }
    for (reason, label) in DropReason::ALL {
        out.drops
            .push((label, sum(&drops.get(&(reason as u32), 0)?)));
    }
    let per_backend = array(ebpf, map_names::BACKEND_STATS)?;
    for (addr, id) in backends {
        let to = sum(&per_backend.get(&(id * 2), 0)?);
        let from = sum(&per_backend.get(&(id * 2 + 1), 0)?);
        out.backends.push((addr, to, from));
    }
    Ok(out)
}

/// Resets the counters of freshly assigned listener ids, so a reused id does not inherit counts.
pub fn zero_listener_counters(ebpf: &mut Ebpf, ids: &[u32]) -> anyhow::Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let cpus = nr_cpus().map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))?;
    let mut map: PerCpuArray<_, TrafficCounters> = PerCpuArray::try_from(
        ebpf.map_mut(map_names::LISTENER_STATS)
            .context("LISTENER_STATS map missing")?,
    )?;
    for &id in ids {
        let zeros = PerCpuValues::try_from(vec![TrafficCounters::default(); cpus])?;
        map.set(id, zeros, 0)?;
    }
    Ok(())
}
