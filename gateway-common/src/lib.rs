//! Types shared by nodegate's kernel programs (`gateway-ebpf`) and its agent (`gateway-agent`).
//!
//! Every map key and value is `#[repr(C)]`, has no implicit padding (explicit `_pad` fields) and is
//! plain old data, so the kernel and userspace agree byte for byte and BTF describes every field.
//! The `user` feature adds `aya::Pod` impls for the agent.
#![no_std]

pub mod counters;
pub mod listener;
pub mod nat;

/// Names under which the agent pins each map below `--bpffs`, and the symbols in the object file.
pub mod map_names {
    /// [`crate::listener::ListenerKey`] → [`crate::listener::ListenerValue`].
    pub const LISTENERS: &str = "LISTENERS";
    /// Per-CPU [`crate::counters::TrafficCounters`] indexed by listener id.
    pub const LISTENER_STATS: &str = "LISTENER_STATS";
    /// Per-CPU [`crate::counters::TrafficCounters`] indexed by [`crate::counters::DropReason`].
    pub const DROP_STATS: &str = "DROP_STATS";
    /// listener id → [`crate::nat::ServiceValue`].
    pub const SERVICES: &str = "SERVICES";
    /// Ring entries (backend ids), `MAX_RING_SLOTS * MAGLEV_SIZE` of them.
    pub const MAGLEV_RINGS: &str = "MAGLEV_RINGS";
    /// backend id → [`crate::nat::BackendValue`].
    pub const BACKENDS: &str = "BACKENDS";
    /// [`crate::nat::FlowKey`] → [`crate::nat::FlowNat`] (LRU).
    pub const FLOWS: &str = "FLOWS";
    /// ifindex → [`crate::nat::IfAddr`].
    pub const IFADDRS: &str = "IFADDRS";
    /// `[0]` → [`crate::nat::NatConfig`].
    pub const NAT_CONFIG: &str = "NAT_CONFIG";
    /// [`crate::nat::NextHop`] → last seen (ns), next hops XDP found unresolved (LRU).
    pub const UNRESOLVED_HOPS: &str = "UNRESOLVED_HOPS";
    /// Per-CPU [`crate::counters::TrafficCounters`] at `backend id * 2 + direction`
    /// (0: towards the backend, 1: replies from it).
    pub const BACKEND_STATS: &str = "BACKEND_STATS";
    /// SockHash of spliced passthrough sockets: key → socket.
    pub const SPLICE_SOCKS: &str = "SPLICE_SOCKS";
    /// Socket cookie → [`crate::nat::SplicePeer`].
    pub const SPLICE_PEERS: &str = "SPLICE_PEERS";
    /// Per-CPU [`crate::counters::TrafficCounters`] of spliced bytes per TLSRoute index.
    pub const SPLICE_STATS: &str = "SPLICE_STATS";
}

/// Names of the programs in the object file.
pub mod program_names {
    /// The XDP entry point (native or generic mode).
    pub const XDP: &str = "nodegate_xdp";
    /// The TC clsact ingress entry point (`--attach tc`).
    pub const TC_INGRESS: &str = "nodegate_tc_ingress";
    /// The SK_SKB stream verdict program splicing passthrough connections.
    pub const SPLICE: &str = "nodegate_splice";
}
