//! The maps of the kernel programs. Types and names come from `gateway-common`; each map's doc says
//! its key, value, writer and reader. All are BTF maps, so `bpftool map dump` prints field names.

use aya_ebpf::{
    btf_maps::{HashMap, PerCpuArray},
    macros::btf_map,
};
use gateway_common::{
    counters::{DropReason, MAX_DROP_REASONS, TrafficCounters},
    listener::{ListenerKey, ListenerValue, MAX_LISTENERS},
};

use crate::parse::Packet;

/// Listener sockets the data plane owns. Key: [`ListenerKey`] (exact address, or all-zero for a
/// wildcard bind); value: [`ListenerValue`] (dense id, flags). Written by the agent from the model;
/// read here on every packet.
#[btf_map]
static LISTENERS: HashMap<ListenerKey, ListenerValue, { MAX_LISTENERS as usize }> = HashMap::new();

/// Per-CPU packets/bytes per listener. Index: `ListenerValue::id`; value: [`TrafficCounters`].
/// Written here; summed over CPUs by the agent for `/metrics`.
#[btf_map]
static LISTENER_STATS: PerCpuArray<TrafficCounters, { MAX_LISTENERS as usize }> =
    PerCpuArray::new();

/// Per-CPU packets/bytes dropped or refused, per reason. Index: [`DropReason`] as u32; value:
/// [`TrafficCounters`]. Written here; summed by the agent for `/metrics`.
#[btf_map]
static DROP_STATS: PerCpuArray<TrafficCounters, { MAX_DROP_REASONS as usize }> = PerCpuArray::new();

/// Finds the listener a packet is addressed to: exact address first, then the wildcard address.
#[inline(always)]
pub fn find_listener(packet: &Packet) -> Option<ListenerValue> {
    let mut key = ListenerKey {
        addr: packet.dst,
        port: packet.dport,
        proto: packet.proto,
        family: packet.family,
    };
    if let Some(v) = LISTENERS.get_ptr(key) {
        return Some(unsafe { *v });
    }
    key.addr = [0; 16];
    LISTENERS.get_ptr(key).map(|v| unsafe { *v })
}

/// Adds one packet of `len` bytes to slot `index` of a per-CPU counter array on this CPU.
#[inline(always)]
fn bump<const N: usize>(map: &PerCpuArray<TrafficCounters, N>, index: u32, len: u64) {
    if let Some(c) = map.get_ptr_mut(index) {
        unsafe {
            (*c).packets += 1;
            (*c).bytes += len;
        }
    }
}

/// Adds one packet of `len` bytes to listener `id`'s counters on this CPU.
#[inline(always)]
pub fn count_listener(id: u32, len: u64) {
    bump(&LISTENER_STATS, id, len);
}

/// Adds one packet of `len` bytes to the counters of drop reason `reason` on this CPU.
#[inline(always)]
pub fn count_drop(reason: DropReason, len: u64) {
    bump(&DROP_STATS, reason as u32, len);
}
