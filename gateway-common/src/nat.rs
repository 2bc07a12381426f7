//! The L4 load balancer's maps: services, Maglev rings, backends, the connection table and the
//! gateway's own addresses. Every map is written by the agent except `FLOWS`, which the kernel
//! programs write (the agent only reads and ages it).

/// Entries per Maglev ring (a prime, as Maglev requires). A ring maps a flow hash to a backend id.
pub const MAGLEV_SIZE: u32 = 4099;
/// Ring slots: every L4 service owns two (the live one and the one being rewritten).
pub const MAX_RING_SLOTS: u32 = 128;
/// Backend ids are below this.
pub const MAX_BACKENDS: u32 = 4096;
/// Default capacity of the connection table (both directions count); `--conntrack-size` changes it.
pub const DEFAULT_FLOWS: u32 = 65536;
/// Interfaces with an address entry.
pub const MAX_IFADDRS: u32 = 256;

/// `SERVICES` value, keyed by listener id. Written by the agent after the ring it names is
/// complete (so a flow never sees a half-written ring); read by XDP/TC for new flows.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceValue {
    /// Index of the live ring in `MAGLEV_RINGS` (entries `ring_slot * MAGLEV_SIZE ..`).
    pub ring_slot: u32,
    /// Number of backends in the ring; 0 means none (packets go to the stack).
    pub backends: u32,
}

/// `BACKENDS` value, indexed by backend id. Written by the agent; read by XDP/TC.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BackendValue {
    /// Address (IPv4 in the first four bytes).
    pub addr: [u8; 16],
    /// Port, host byte order.
    pub port: u16,
    /// 4 or 6.
    pub family: u8,
    /// Explicit padding.
    pub _pad: u8,
}

/// `FLOWS` key: a packet's 5-tuple as it arrives (client → gateway, or backend → gateway).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowKey {
    /// Source address.
    pub src: [u8; 16],
    /// Destination address.
    pub dst: [u8; 16],
    /// Source port, host order.
    pub sport: u16,
    /// Destination port, host order.
    pub dport: u16,
    /// 6 or 17.
    pub proto: u8,
    /// 4 or 6.
    pub family: u8,
    /// Explicit padding.
    pub _pad: [u8; 2],
}

/// `FLOWS` value: how to rewrite packets of the flow. Written by XDP/TC when a flow starts (one
/// entry per direction); refreshed on every packet; aged by the agent and bounded by the LRU.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowNat {
    /// New source address.
    pub new_src: [u8; 16],
    /// New destination address.
    pub new_dst: [u8; 16],
    /// New source port.
    pub new_sport: u16,
    /// New destination port.
    pub new_dport: u16,
    /// The backend id of the flow.
    pub backend: u32,
    /// `bpf_ktime_get_ns` of the last packet.
    pub last_seen_ns: u64,
    /// `FLOW_F_*` bits.
    pub flags: u32,
    /// The listener id the flow belongs to (for counters).
    pub listener: u32,
}

/// The entry describes the reply direction (backend → client).
pub const FLOW_F_REPLY: u32 = 1;
/// A FIN was seen on this direction.
pub const FLOW_F_FIN: u32 = 2;
/// A RST was seen.
pub const FLOW_F_RST: u32 = 4;

/// A TCP flow's SNAT port goes back into use for a new flow once the flow has closed (a RST
/// either way, or a FIN each way) and nothing has come from the backend for this long, as a
/// conntrack entry in TIME_WAIT gives way to a new SYN. The backend's last packet was its FIN
/// (or a RST); the client's ACK of it has already passed the gateway, so all this waits for is
/// that ACK's way to the backend. Should it be lost, the backend's retransmitted FIN reaches the
/// new flow's client, whose RST clears it: one connection pays a SYN retry (~10 ms), where
/// holding the port longer would cap every connection rate. A backend that closed first is held
/// for [`BACKEND_TIME_WAIT_NS`]. Without this a closed flow would hold its port for the whole
/// `--tcp-closed-timeout`, capping short connections to one backend at about range / timeout
/// per second (4,536 / 10 s with the defaults); with it the cap is about range / 100 ms.
pub const SNAT_REUSE_AFTER_CLOSE_NS: u64 = 100_000_000;

/// A UDP flow quiet both ways for this long gives up its SNAT port to a new flow that found no
/// free one, rather than that flow's packet being dropped: the old flow's forward entry is
/// removed with it, so its next packet is NATed afresh, from another port, as after a conntrack
/// timeout (no reply can reach the wrong client). Otherwise a UDP flow holds its port for
/// `--udp-idle-timeout` (30 s), which capped new flows to one backend — a DNS client with a
/// fresh source port per query — at about range / 30 s, 150 a second with the defaults.
pub const UDP_SNAT_STEAL_AFTER_NS: u64 = 1_000_000_000;

/// How long a backend that closed first holds its side of the tuple in TIME_WAIT (Linux's
/// `TCP_TIMEWAIT_LEN`). A new flow given that SNAT port sooner has its SYN refused, by PAWS or
/// a sequence check, about half the time: the backend answers with an ACK, the client resets
/// it and retries its SYN some 10 ms later. So such a port is taken only when no other free one
/// is at hand, and the agent keeps its entries until this has passed.
pub const BACKEND_TIME_WAIT_NS: u64 = 60_000_000_000;

/// Whether a TCP flow whose two entries carry `flags` and `other_flags` has closed: a RST either
/// way, or a FIN each way. Judged the same by the kernel (a closed flow's SNAT port may go to a
/// new flow) and the agent (a closed flow ages by `--tcp-closed-timeout`).
#[inline(always)]
pub fn flow_closed(flags: u32, other_flags: u32) -> bool {
    (flags | other_flags) & FLOW_F_RST != 0 || flags & other_flags & FLOW_F_FIN != 0
}

/// Whether a closed TCP flow, given its forward (client → backend) and reply entries, has left
/// the backend in TIME_WAIT: the side that closes first ends in TIME_WAIT and sends the flow's
/// last packet (the ACK of the other side's FIN), so the backend closed first when its reply
/// entry was seen after the forward entry. A RST ends TIME_WAIT.
#[inline(always)]
pub fn backend_time_wait(forward: &FlowNat, reply: &FlowNat) -> bool {
    (forward.flags | reply.flags) & FLOW_F_RST == 0 && reply.last_seen_ns > forward.last_seen_ns
}

/// `IFADDRS` value, keyed by ifindex: the gateway's own addresses on an interface, used as the
/// source of NATed packets leaving through it. Written by the agent; read by XDP/TC.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IfAddr {
    /// IPv4 address (zero if none).
    pub v4: [u8; 4],
    /// Global IPv6 address (zero if none).
    pub v6: [u8; 16],
}

/// `NAT_CONFIG[0]`: the source-port range for SNAT. Written by the agent at start.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NatConfig {
    /// First port of the range.
    pub port_min: u16,
    /// Last port of the range.
    pub port_max: u16,
}

/// Capacity of `UNRESOLVED_HOPS`: distinct unresolved next hops reported between two reads.
pub const MAX_UNRESOLVED_HOPS: u32 = 256;

/// `UNRESOLVED_HOPS` key: a next hop `bpf_fib_lookup` found no resolved neighbour entry for
/// (`BPF_FIB_LKUP_RET_NO_NEIGH`) in XDP, where the packet is dropped. Written by XDP with the
/// value the time it was last seen (`bpf_ktime_get_ns`); read and removed by the agent, which
/// adds a managed neighbour entry for it, so the kernel resolves it and the sender's retransmit
/// gets through.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NextHop {
    /// Egress interface.
    pub ifindex: u32,
    /// `FAMILY_V4` or `FAMILY_V6`.
    pub family: u8,
    /// Zero.
    pub _pad: [u8; 3],
    /// The hop's address (IPv4 in the first 4 bytes, the rest zero).
    pub addr: [u8; 16],
}

/// Capacity of the passthrough splice maps (sockets; each connection takes two).
pub const MAX_SPLICED_SOCKETS: u32 = 65536;

/// `SPLICE_PEERS` value, keyed by socket cookie: where a spliced socket's bytes go. Written by the
/// agent when it hands a passthrough connection to the kernel; read by the SK_SKB verdict program.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SplicePeer {
    /// The peer socket's key in `SPLICE_SOCKS`.
    pub peer_key: u32,
    /// Index of the TLSRoute's counters in `SPLICE_STATS`.
    pub route: u32,
    /// Bytes the verdict program redirected from this socket to its peer (written by the
    /// program; the agent reads it to know when the peer has taken them all before it passes a
    /// half-close on).
    pub bytes: u64,
}

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::SplicePeer {}
    unsafe impl aya::Pod for super::ServiceValue {}
    unsafe impl aya::Pod for super::BackendValue {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowNat {}
    unsafe impl aya::Pod for super::IfAddr {}
    unsafe impl aya::Pod for super::NatConfig {}
    unsafe impl aya::Pod for super::NextHop {}
}
