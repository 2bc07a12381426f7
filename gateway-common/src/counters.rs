//! Per-CPU traffic counters written by the kernel programs and summed by the agent for `/metrics`.

/// Packets and bytes. The value type of `LISTENER_STATS` (index: listener id) and `DROP_STATS`
/// (index: [`DropReason`]). Written by XDP/TC on their own CPU's slot; read (summed over CPUs) by the agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TrafficCounters {
    /// Packets seen.
    pub packets: u64,
    /// Bytes seen (whole frame as the program saw it).
    pub bytes: u64,
}

/// Why a kernel program dropped (or refused to handle) a packet: the index into `DROP_STATS`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The frame ended before a header it claimed to carry.
    Truncated = 0,
    /// An IPv4 header with IHL < 5 or a total length that disagrees with the frame.
    BadIpHeader = 1,
    /// A TCP header whose data offset is below 5 words.
    BadL4Header = 2,
    /// A new flow found no free SNAT port: every port probed for it already carries a flow to
    /// the same backend (the `--snat-ports` range is exhausted for it). The client retries.
    NoSnatPort = 3,
    /// A packet of a NATed flow whose next hop has no resolved neighbour (ARP/NDP) entry yet,
    /// in XDP (TC hands it to `bpf_redirect_neigh` instead). Handed to the stack it would be
    /// answered as addressed to the gateway itself (a RST to the client, or to the backend for a
    /// reply); dropped, the sender retransmits once the hop has resolved (the agent keeps the
    /// backends' next hops resolved with managed entries, and makes the hops XDP reports in
    /// `UNRESOLVED_HOPS` managed as they come).
    NoNeighbour = 4,
}

impl DropReason {
    /// Every reason, in index order, with the label used in metrics.
    pub const ALL: [(DropReason, &'static str); 5] = [
        (DropReason::Truncated, "truncated"),
        (DropReason::BadIpHeader, "bad_ip_header"),
        (DropReason::BadL4Header, "bad_l4_header"),
        (DropReason::NoSnatPort, "no_snat_port"),
        (DropReason::NoNeighbour, "no_neighbour"),
    ];
}

/// Capacity of `DROP_STATS`.
pub const MAX_DROP_REASONS: u32 = 16;

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::TrafficCounters {}
}
