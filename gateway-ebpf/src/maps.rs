//! The maps of the kernel programs. Types and names come from `gateway-common`; each map's doc says
//! its key, value, writer and reader. All are BTF maps, so `bpftool map dump` prints field names.

use aya_ebpf::{
    btf_maps::{Array, HashMap, LruHashMap, PerCpuArray},
    macros::btf_map,
};
use gateway_common::{
    counters::{DropReason, MAX_DROP_REASONS, TrafficCounters},
    listener::{ListenerKey, ListenerValue, MAX_LISTENERS},
    nat::{
        BackendValue, DEFAULT_FLOWS, FlowKey, FlowNat, IfAddr, MAGLEV_SIZE, MAX_BACKENDS,
        MAX_IFADDRS, MAX_RING_SLOTS, MAX_UNRESOLVED_HOPS, NatConfig, NextHop, ServiceValue,
    },
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

/// L4 services by listener id: which Maglev ring is live and how many backends it holds. Written
/// by the agent after the ring is complete; read here when a flow starts.
#[btf_map]
pub static SERVICES: HashMap<u32, ServiceValue, { MAX_LISTENERS as usize }> = HashMap::new();

/// Maglev rings: `ring_slot * MAGLEV_SIZE + hash % MAGLEV_SIZE` → backend id. Written by the agent
/// (into a slot no service points at, before the flip in `SERVICES`); read here.
#[btf_map]
pub static MAGLEV_RINGS: Array<u32, { (MAX_RING_SLOTS * MAGLEV_SIZE) as usize }> = Array::new();

/// Backend id → address and port. Written by the agent; read here.
#[btf_map]
pub static BACKENDS: Array<BackendValue, { MAX_BACKENDS as usize }> = Array::new();

/// The connection table, both directions: arriving 5-tuple → rewrite. Written here when a flow
/// starts and on every packet (last seen); bounded by LRU (size set by `--conntrack-size`); aged
/// and read by the agent.
#[btf_map]
pub static FLOWS: LruHashMap<FlowKey, FlowNat, { DEFAULT_FLOWS as usize }> = LruHashMap::new();

/// ifindex → the gateway's IPv4 address there (the SNAT source). Written by the agent.
#[btf_map]
pub static IFADDRS: HashMap<u32, IfAddr, { MAX_IFADDRS as usize }> = HashMap::new();

/// `[0]`: the SNAT port range. Written by the agent at start.
#[btf_map]
pub static NAT_CONFIG: Array<NatConfig, 1> = Array::new();

/// Next hops an XDP program found no resolved neighbour entry for. Key: [`NextHop`]; value:
/// when last seen (`bpf_ktime_get_ns`). Written by XDP when it drops such a packet (TC resolves
/// them itself); read and emptied by the agent, which asks the kernel for a managed neighbour
/// entry per hop. LRU: a burst of new hops between two reads keeps the latest.
#[btf_map]
pub static UNRESOLVED_HOPS: LruHashMap<NextHop, u64, { MAX_UNRESOLVED_HOPS as usize }> =
    LruHashMap::new();

/// Per-CPU packets/bytes per backend and direction: index `backend id * 2` for packets sent to the
/// backend, `+ 1` for its replies; value [`TrafficCounters`]. Written here; summed by the agent.
#[btf_map]
static BACKEND_STATS: PerCpuArray<TrafficCounters, { (MAX_BACKENDS * 2) as usize }> =
    PerCpuArray::new();

/// Adds a forwarded packet to its backend's counters (`reply`: the backend → client direction).
#[inline(always)]
pub fn count_backend(backend: u32, reply: bool, len: u64) {
    bump(&BACKEND_STATS, backend * 2 + u32::from(reply), len);
}

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

/// [`note_unresolved_hop`]'s key and value, built here rather than on the stack, whose 512
/// bytes the deepest forwarding path already nearly fills.
#[repr(C)]
pub struct HopReport {
    hop: NextHop,
    seen_ns: u64,
}

/// One per CPU: [`HopReport`] under construction. Only [`note_unresolved_hop`] touches it.
#[btf_map]
static HOP_REPORT: PerCpuArray<HopReport, 1> = PerCpuArray::new();

/// Reports the next hop `bpf_fib_lookup` left in `params` (egress ifindex and the hop's
/// address: the route's gateway, or the destination itself) as unresolved, for the agent. A
/// BPF subprogram, for the same reason as [`count_drop`].
#[inline(never)]
pub fn note_unresolved_hop(params: &aya_ebpf::bindings::bpf_fib_lookup, family: u8, now: u64) {
    let Some(r) = HOP_REPORT.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: a per-CPU slot no one else uses during this program run; the lookup wrote the
    // union member of the family it was given.
    unsafe {
        let r = &mut *r;
        r.hop.ifindex = params.ifindex;
        r.hop.family = family;
        r.hop._pad = [0; 3];
        if family == gateway_common::listener::FAMILY_V4 {
            r.hop.addr = [0; 16];
            r.hop.addr[..4].copy_from_slice(&params.__bindgen_anon_4.ipv4_dst.to_ne_bytes());
        } else {
            r.hop.addr =
                core::mem::transmute::<[u32; 4], [u8; 16]>(params.__bindgen_anon_4.ipv6_dst);
        }
        r.seen_ns = now;
        #[allow(
            clippy::needless_borrows_for_generic_args,
            reason = "by value, the key and value would be copied onto the stack this avoids"
        )]
        let _ = UNRESOLVED_HOPS.insert(&r.hop, &r.seen_ns, 0);
    }
}

/// Adds one packet of `len` bytes to the counters of drop reason `reason` on this CPU. A BPF
/// subprogram: the drop paths are cold, and inlined at each of them their map keys would take
/// stack slots of the caller's frame, which the 512-byte limit shares with `pick_port`'s.
#[inline(never)]
pub fn count_drop(reason: DropReason, len: u64) {
    bump(&DROP_STATS, reason as u32, len);
}
